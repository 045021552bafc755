//go:build compat

package compat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/testutil"
)

const (
	fsName       = "myfs"
	metadataPool = "myfs-metadata"
	fsGroup      = "csi" // config.json's cephFS.subvolumeGroup
	fsJournalNS  = "csi" // --radosnamespacecephfs default
)

// fsView is the admin's view of the filesystem: the mgr volumes interface
// and a libcephfs mount of the whole filesystem to read and write files.
type fsView struct {
	fsa *admin.FSAdmin
	mnt *cephfs.MountInfo
}

func newFSView(t *testing.T, c *cluster) *fsView {
	t.Helper()
	mnt, err := cephfs.CreateFromRados(c.admin)
	if err != nil {
		t.Fatalf("libcephfs: %v", err)
	}
	if err := mnt.Mount(); err != nil {
		t.Fatalf("mounting %s as admin: %v", fsName, err)
	}
	t.Cleanup(func() {
		_ = mnt.Unmount()
		_ = mnt.Release()
	})
	return &fsView{fsa: admin.NewFromConn(c.admin), mnt: mnt}
}

func (v *fsView) info(s *step, sub string) *admin.SubVolumeInfo {
	s.Helper()
	info, err := v.fsa.SubVolumeInfo(fsName, fsGroup, sub)
	if err != nil {
		s.fatalf("subvolume info %s: %v", sub, err)
	}
	return info
}

func quotaOf(info *admin.SubVolumeInfo) int64 {
	if q, ok := info.BytesQuota.(admin.ByteCount); ok {
		return int64(q)
	}
	return -1
}

func (v *fsView) writeFile(s *step, p string, data []byte) {
	s.Helper()
	f, err := v.mnt.Open(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		s.fatalf("create %s: %v", p, err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Write(data); err != nil {
		s.fatalf("write %s: %v", p, err)
	}
	if err := f.Fsync(cephfs.SyncAll); err != nil {
		s.fatalf("fsync %s: %v", p, err)
	}
}

func (v *fsView) readFile(s *step, p string) []byte {
	s.Helper()
	f, err := v.mnt.Open(p, os.O_RDONLY, 0)
	if err != nil {
		s.fatalf("open %s: %v", p, err)
	}
	defer func() { _ = f.Close() }()
	var buf bytes.Buffer
	chunk := make([]byte, 1<<16)
	for {
		n, err := f.Read(chunk)
		buf.Write(chunk[:n])
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return buf.Bytes()
		}
		if err != nil {
			s.fatalf("read %s: %v", p, err)
		}
	}
}

// fsLeftovers lists every subvolume (with its snapshots) of the group and
// every journal key and object of the journal namespace: the cluster is
// private to the run, so all of it is ours.
func fsLeftovers(t *testing.T, v *fsView, io *rados.IOContext) []string {
	t.Helper()
	var left []string
	subs, err := v.fsa.ListSubVolumes(fsName, fsGroup)
	if err != nil {
		left = append(left, fmt.Sprintf("listing subvolumes: %v", err))
	}
	for _, sub := range subs {
		left = append(left, "subvolume "+sub)
		snaps, _ := v.fsa.ListSubVolumeSnapshots(fsName, fsGroup, sub)
		for _, sn := range snaps {
			left = append(left, "snapshot "+sub+"@"+sn)
		}
	}
	if err := io.ListObjects(func(oid string) {
		if !strings.HasPrefix(oid, "csi.") { // journal objects: journalLeftovers
			left = append(left, "object "+metadataPool+"/"+fsJournalNS+"/"+oid)
		}
	}); err != nil {
		left = append(left, fmt.Sprintf("listing %s/%s: %v", metadataPool, fsJournalNS, err))
	}
	return append(left, journalLeftovers(t, io, metadataPool+"/"+fsJournalNS)...)
}

// testCephFS: create, mount with ceph-fuse, snapshot, restore into a larger
// volume, clone, expand and delete, each checked on the cluster.
func testCephFS(t *testing.T, c *cluster) {
	d := startDriver(t, c, "cephfs")
	v := newFSView(t, c)
	jio := c.ioctx(t, metadataPool, fsJournalNS)
	secrets := map[string]string{"adminID": c.vars["CEPH_FS_PROVISIONER_ID"], "adminKey": c.vars["CEPH_FS_PROVISIONER_KEY"]}
	nodeSecrets := map[string]string{"userID": c.vars["CEPH_FS_NODE_ID"], "userKey": c.vars["CEPH_FS_NODE_KEY"]}
	params := map[string]string{"clusterID": c.clusterID, "fsName": fsName, "mounter": "fuse"}
	run := uuid.NewString()[:8]
	q := newSequence(t, c, "cephfs")

	d.deleteOnFailure(t, secrets)
	var (
		snapshotID string
		original   = []byte("written before the snapshot\n")
		changed    = []byte("written after the snapshot, before the clone\n")
	)
	create := func(s *step, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, *admin.SubVolumeInfo) {
		s.Helper()
		vol := d.createVolume(s, name, size, src, params, secrets)
		sub := vol.GetVolumeContext()["subvolumeName"]
		if want := "csi-vol-" + testutil.UUIDOf(s.T, vol.GetVolumeId()); sub != want {
			s.errorf("volume context subvolumeName = %q, want %q", sub, want)
		}
		info := v.info(s, sub)
		if got := quotaOf(info); got != size {
			s.errorf("subvolume %s has quota %d, want %d", sub, got, size)
		}
		if info.Path != vol.GetVolumeContext()["subvolumePath"] {
			s.errorf("volume context subvolumePath = %q, the subvolume's path is %q", vol.GetVolumeContext()["subvolumePath"], info.Path)
		}
		checkJournal(s, jio, "volume", name, testutil.UUIDOf(s.T, vol.GetVolumeId()), sub)
		return vol, info
	}

	var src *csi.Volume
	var srcInfo *admin.SubVolumeInfo
	q.run("create", func(s *step) {
		src, srcInfo = create(s, "compat-"+run+"-src", 64*mib, nil)
		if srcInfo.Type != "subvolume" {
			s.errorf("subvolume type %q, want subvolume", srcInfo.Type)
		}
		v.writeFile(s, path.Join(srcInfo.Path, "data"), original)
	})

	q.run("mount (ceph-fuse)", func(s *step) {
		staging := filepath.Join(d.dir, "stage")
		target := filepath.Join(d.dir, "target")
		vcap := mountCaps()[0]
		var err error
		s.timed(func() {
			_, err = d.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: src.GetVolumeId(),
				StagingTargetPath: staging, VolumeCapability: vcap, VolumeContext: src.GetVolumeContext(), Secrets: nodeSecrets})
			if err == nil {
				_, err = d.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: src.GetVolumeId(),
					StagingTargetPath: staging, TargetPath: target, VolumeCapability: vcap, VolumeContext: src.GetVolumeContext()})
			}
		})
		defer func() {
			// Never leave a FUSE mount behind, whatever failed.
			_, _ = d.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: src.GetVolumeId(), TargetPath: target})
			_, _ = d.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: src.GetVolumeId(), StagingTargetPath: staging})
			for _, p := range []string{target, staging} {
				if mounted, _ := mount.New("").IsMountPoint(p); mounted {
					s.errorf("%s is still mounted after unpublish and unstage", p)
					_ = mount.New("").Unmount(p)
				}
			}
		}()
		if err != nil {
			s.fatalf("stage and publish with ceph-fuse: %v", err)
		}
		got, err := os.ReadFile(filepath.Join(target, "data"))
		if err != nil || !bytes.Equal(got, original) {
			s.fatalf("the mounted volume holds %q (%v), want the file written as admin", got, err)
		}
		if err := os.WriteFile(filepath.Join(target, "from-the-pod"), []byte("hello\n"), 0o644); err != nil {
			s.fatalf("writing through the mount: %v", err)
		}
		var uerr error
		s.timed(func() {
			_, uerr = d.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: src.GetVolumeId(), TargetPath: target})
			if uerr == nil {
				_, uerr = d.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: src.GetVolumeId(), StagingTargetPath: staging})
			}
		})
		if uerr != nil {
			s.fatalf("unpublish and unstage: %v", uerr)
		}
		// Written through ceph-fuse, read back as admin once it unmounted.
		if got := v.readFile(s, path.Join(srcInfo.Path, "from-the-pod")); string(got) != "hello\n" {
			s.errorf("file written through the mount reads %q as admin", got)
		}
	})

	var snapName string
	q.run("snapshot", func(s *step) {
		name := "compat-" + run + "-snap"
		snap := d.createSnapshot(s, name, src.GetVolumeId(), c.clusterID, secrets)
		snapshotID = snap.GetSnapshotId()
		if !snap.GetReadyToUse() || snap.GetSizeBytes() != 64*mib {
			s.errorf("snapshot = ready %v, size %d; want ready, 64 MiB", snap.GetReadyToUse(), snap.GetSizeBytes())
		}
		snapName = "csi-snap-" + testutil.UUIDOf(s.T, snapshotID)
		sub := src.GetVolumeContext()["subvolumeName"]
		if _, err := v.fsa.SubVolumeSnapshotInfo(fsName, fsGroup, sub, snapName); err != nil {
			s.errorf("subvolume snapshot %s@%s: %v", sub, snapName, err)
		}
		checkJournal(s, jio, "snapshot", name, testutil.UUIDOf(s.T, snapshotID), snapName)
		// Later writes to the source must not reach the snapshot.
		v.writeFile(s, path.Join(srcInfo.Path, "data"), changed)
	})

	q.run("restore (larger)", func(s *step) {
		vol, info := create(s, "compat-"+run+"-restored", 96*mib, testutil.FromSnapshot(snapshotID))
		if info.Type != "clone" {
			s.errorf("restored subvolume has type %q, want clone", info.Type)
		}
		st, err := v.fsa.CloneStatus(fsName, fsGroup, vol.GetVolumeContext()["subvolumeName"])
		if err != nil || st.State != admin.CloneComplete {
			s.errorf("clone status of the restore = %+v, %v; want complete", st, err)
		}
		if got := v.readFile(s, path.Join(info.Path, "data")); !bytes.Equal(got, original) {
			s.errorf("restored volume holds %q, want the snapshot's %q", got, original)
		}
	})

	q.run("clone (PVC)", func(s *step) {
		vol, info := create(s, "compat-"+run+"-clone", 64*mib, testutil.FromVolume(src.GetVolumeId()))
		if info.Type != "clone" {
			s.errorf("cloned subvolume has type %q, want clone", info.Type)
		}
		if got := v.readFile(s, path.Join(info.Path, "data")); !bytes.Equal(got, changed) {
			s.errorf("clone holds %q, want the source's current %q", got, changed)
		}
		// The temporary snapshot the clone was copied from is gone; only
		// the user's snapshot stays on the source.
		snaps, err := v.fsa.ListSubVolumeSnapshots(fsName, fsGroup, src.GetVolumeContext()["subvolumeName"])
		if err != nil {
			s.fatalf("snapshots of the source: %v", err)
		}
		if len(snaps) != 1 || snaps[0] != snapName {
			s.errorf("source snapshots after the clone = %v, want only %s (%s's temporary one gone)", snaps, snapName, vol.GetVolumeContext()["subvolumeName"])
		}
	})

	q.run("expand", func(s *step) {
		resp := d.expandVolume(s, src.GetVolumeId(), 128*mib, secrets)
		if resp.GetCapacityBytes() != 128*mib || resp.GetNodeExpansionRequired() {
			s.errorf("expand = %d bytes, node expansion %v; want 128 MiB and false (the quota is the size)",
				resp.GetCapacityBytes(), resp.GetNodeExpansionRequired())
		}
		if got := quotaOf(v.info(s, src.GetVolumeContext()["subvolumeName"])); got != 128*mib {
			s.errorf("quota after expand = %d, want %d", got, 128*mib)
		}
	})

	q.run("delete", func(s *step) {
		s.timed(func() {
			d.deleteSnapshot(s, snapshotID, secrets)
			for _, id := range d.volumes {
				d.deleteVolume(s, id, secrets)
			}
		})
		if left := fsLeftovers(s.T, v, jio); len(left) > 0 {
			s.errorf("left on the cluster after every delete: %s", strings.Join(left, "; "))
		}
	})
}
