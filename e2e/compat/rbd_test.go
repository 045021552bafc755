//go:build compat

package compat

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/testutil"

	"github.com/google/uuid"
)

const (
	rbdPool = "rbd"
	mib     = int64(1) << 20
)

func mountCaps() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

// rbdImage is what a user reads off an image: size, parent, user snapshots.
type rbdImage struct {
	size   int64
	parent string // image@snapshot, "" for none
}

func inspectImage(s *step, io *rados.IOContext, name string) rbdImage {
	s.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		s.fatalf("image %s/%s: %v", rbdPool, name, err)
	}
	defer func() { _ = img.Close() }()
	size, err := img.GetSize()
	if err != nil {
		s.fatalf("size of %s: %v", name, err)
	}
	r := rbdImage{size: int64(size)}
	if p, err := img.GetParent(); err == nil {
		r.parent = p.Image.ImageName + "@" + p.Snap.SnapName
	}
	return r
}

// parentImage is the image part of an image@snapshot parent.
func parentImage(parent string) string { name, _, _ := strings.Cut(parent, "@"); return name }

func writeImage(s *step, io *rados.IOContext, name string, data []byte, off int64) {
	s.Helper()
	img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
	if err != nil {
		s.fatalf("open %s to write: %v", name, err)
	}
	defer func() { _ = img.Close() }()
	if _, err := img.WriteAt(data, off); err != nil {
		s.fatalf("write %s: %v", name, err)
	}
	if err := img.Flush(); err != nil {
		s.fatalf("flush %s: %v", name, err)
	}
}

func readImage(s *step, io *rados.IOContext, name string, n int, off int64) []byte {
	s.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		s.fatalf("open %s to read: %v", name, err)
	}
	defer func() { _ = img.Close() }()
	buf := make([]byte, n)
	if _, err := img.ReadAt(buf, off); err != nil {
		s.fatalf("read %s: %v", name, err)
	}
	return buf
}

// rbdLeftovers lists every image, trash entry, image object and journal key
// of the pool: the cluster is private to the run, so all of it is ours.
func rbdLeftovers(t *testing.T, io *rados.IOContext) []string {
	t.Helper()
	var left []string
	names, err := rbd.GetImageNames(io)
	if err != nil {
		left = append(left, fmt.Sprintf("listing images: %v", err))
	}
	for _, n := range names {
		left = append(left, "image "+n)
	}
	trash, err := rbd.GetTrashList(io)
	if err != nil {
		left = append(left, fmt.Sprintf("listing the trash: %v", err))
	}
	for _, e := range trash {
		left = append(left, "trash entry "+e.Name)
	}
	_ = io.ListObjects(func(oid string) {
		for _, p := range []string{"rbd_header.", "rbd_id.", "rbd_data.", "rbd_object_map."} {
			if strings.HasPrefix(oid, p) {
				left = append(left, "object "+oid)
				return
			}
		}
	})
	return append(left, journalLeftovers(t, io, rbdPool)...)
}

// testRBD: create, snapshot, restore into a larger volume, PVC clone,
// expand and delete, each checked on the cluster.
func testRBD(t *testing.T, c *cluster) {
	d := startDriver(t, c, "rbd")
	io := c.ioctx(t, rbdPool, "")
	secrets := map[string]string{"userID": c.vars["CEPH_RBD_PROVISIONER_ID"], "userKey": c.vars["CEPH_RBD_PROVISIONER_KEY"]}
	params := map[string]string{"clusterID": c.clusterID, "pool": rbdPool, "imageFeatures": "layering"}
	run := uuid.NewString()[:8]
	q := newSequence(t, c, "rbd")

	d.deleteOnFailure(t, secrets)
	var (
		snapshotID string
		srcImage   string
		snapImage  string
		original   = bytes.Repeat([]byte("before the snapshot "), 1<<16/20+1)[:1<<16]
		changed    = bytes.Repeat([]byte("after the snapshot. "), 1<<16/20+1)[:1<<16]
	)
	create := func(s *step, name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
		s.Helper()
		vol := d.createVolume(s, name, size, src, params, secrets)
		image := vol.GetVolumeContext()["imageName"]
		if want := "csi-vol-" + testutil.UUIDOf(s.T, vol.GetVolumeId()); image != want {
			s.errorf("volume context imageName = %q, want %q", image, want)
		}
		if got := inspectImage(s, io, image).size; got != size {
			s.errorf("image %s is %d bytes, want %d", image, got, size)
		}
		checkJournal(s, io, "volume", name, testutil.UUIDOf(s.T, vol.GetVolumeId()), image)
		return vol
	}

	var src, restored, clone *csi.Volume
	q.run("create", func(s *step) {
		src = create(s, "compat-"+run+"-src", 64*mib, nil)
		srcImage = src.GetVolumeContext()["imageName"]
		if p := inspectImage(s, io, srcImage).parent; p != "" {
			s.errorf("new image %s has parent %s", srcImage, p)
		}
		// Data at both ends of the image, to find again in the copies.
		writeImage(s, io, srcImage, original, 0)
		writeImage(s, io, srcImage, original, 64*mib-int64(len(original)))
	})

	q.run("snapshot", func(s *step) {
		name := "compat-" + run + "-snap"
		snap := d.createSnapshot(s, name, src.GetVolumeId(), c.clusterID, secrets)
		snapshotID = snap.GetSnapshotId()
		if !snap.GetReadyToUse() || snap.GetSizeBytes() != 64*mib || snap.GetSourceVolumeId() != src.GetVolumeId() {
			s.errorf("snapshot = ready %v, size %d, source %s; want ready, 64 MiB, %s",
				snap.GetReadyToUse(), snap.GetSizeBytes(), snap.GetSourceVolumeId(), src.GetVolumeId())
		}
		snapImage = "csi-snap-" + testutil.UUIDOf(s.T, snapshotID)
		// The snapshot is an image cloned from the source, with a snapshot
		// of its own for restores.
		if p := parentImage(inspectImage(s, io, snapImage).parent); p != srcImage {
			s.errorf("snapshot image %s has parent %q, want %s", snapImage, p, srcImage)
		}
		checkJournal(s, io, "snapshot", name, testutil.UUIDOf(s.T, snapshotID), snapImage)
		// Later writes to the source must not reach the snapshot.
		writeImage(s, io, srcImage, changed, 0)
	})

	q.run("restore (larger)", func(s *step) {
		restored = create(s, "compat-"+run+"-restored", 128*mib, testutil.FromSnapshot(snapshotID))
		image := restored.GetVolumeContext()["imageName"]
		if p := inspectImage(s, io, image).parent; p != snapImage+"@"+snapImage {
			s.errorf("restored image %s has parent %q, want %s@%s", image, p, snapImage, snapImage)
		}
		if got := readImage(s, io, image, len(original), 0); !bytes.Equal(got, original) {
			s.errorf("restored image does not hold the data of the snapshot at offset 0")
		}
		if got := readImage(s, io, image, len(original), 64*mib-int64(len(original))); !bytes.Equal(got, original) {
			s.errorf("restored image does not hold the data of the snapshot at its old end")
		}
	})

	q.run("clone (PVC)", func(s *step) {
		clone = create(s, "compat-"+run+"-clone", 64*mib, testutil.FromVolume(src.GetVolumeId()))
		image := clone.GetVolumeContext()["imageName"]
		// source -> <clone>-temp -> <clone>, the source keeping no snapshot.
		temp := image + "-temp"
		if p := inspectImage(s, io, image).parent; p != temp+"@"+image {
			s.errorf("clone %s has parent %q, want %s@%s", image, p, temp, image)
		}
		if p := parentImage(inspectImage(s, io, temp).parent); p != srcImage {
			s.errorf("%s has parent %q, want %s", temp, p, srcImage)
		}
		if got := readImage(s, io, image, len(changed), 0); !bytes.Equal(got, changed) {
			s.errorf("clone does not hold the source's current data")
		}
		img, err := rbd.OpenImageReadOnly(io, srcImage, rbd.NoSnapshot)
		if err != nil {
			s.fatalf("open %s: %v", srcImage, err)
		}
		defer func() { _ = img.Close() }()
		snaps, err := img.GetSnapshotNames()
		if err != nil {
			s.fatalf("snapshots of %s: %v", srcImage, err)
		}
		for _, sn := range snaps {
			if ns, err := img.GetSnapNamespaceType(sn.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
				s.errorf("source %s keeps user snapshot %s", srcImage, sn.Name)
			}
		}
	})

	q.run("expand", func(s *step) {
		resp := d.expandVolume(s, src.GetVolumeId(), 96*mib, secrets)
		if resp.GetCapacityBytes() != 96*mib || !resp.GetNodeExpansionRequired() {
			s.errorf("expand = %d bytes, node expansion %v; want 96 MiB and true (a filesystem volume)",
				resp.GetCapacityBytes(), resp.GetNodeExpansionRequired())
		}
		if got := inspectImage(s, io, srcImage).size; got != 96*mib {
			s.errorf("image %s is %d bytes after expand, want %d", srcImage, got, 96*mib)
		}
		if got := readImage(s, io, srcImage, len(changed), 0); !bytes.Equal(got, changed) {
			s.errorf("expand changed the data of %s", srcImage)
		}
	})

	q.run("delete", func(s *step) {
		// The source goes first, while the snapshot and the copies still
		// hang off it: it must wait in the trash and leave with the last.
		order := []string{src.GetVolumeId()}
		for _, v := range d.volumes {
			if v != src.GetVolumeId() {
				order = append(order, v)
			}
		}
		s.timed(func() {
			for i, id := range order {
				if i == 1 {
					d.deleteSnapshot(s, snapshotID, secrets)
				}
				d.deleteVolume(s, id, secrets)
			}
		})
		if left := rbdLeftovers(s.T, io); len(left) > 0 {
			s.errorf("left on the cluster after every delete: %s", strings.Join(left, "; "))
		}
	})
}
