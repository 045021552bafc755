//go:build integration

package rbd_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/testutil"
	"github.com/leanceph/cephcsi/internal/volid"
)

const pool = "rbd"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mountCap() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func params(c *testutil.Cluster, extra ...string) map[string]string {
	p := map[string]string{"clusterID": c.ClusterID, "pool": pool}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func uniqueName(prefix string) string { return prefix + "-" + uuid.NewString()[:8] }

// omap reads all omap values of an object as admin; nil when it is missing.
func omap(t *testing.T, io *rados.IOContext, oid string) map[string]string {
	t.Helper()
	vals, err := io.GetAllOmapValues(oid, "", "", 100)
	if errors.Is(err, rados.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("omap of %s: %v", oid, err)
	}
	out := map[string]string{}
	for k, v := range vals {
		out[k] = string(v)
	}
	return out
}

func uuidOf(t *testing.T, id string) string {
	t.Helper()
	d, err := volid.Decode(id)
	if err != nil {
		t.Fatal(err)
	}
	return d.UUID
}

func imageExists(t *testing.T, io *rados.IOContext, name string) bool {
	t.Helper()
	names, err := rbd.GetImageNames(io)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// writeImage writes data at offset through librbd as admin.
func writeImage(t *testing.T, io *rados.IOContext, name string, data []byte, off int64) {
	t.Helper()
	img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

func readImage(t *testing.T, io *rados.IOContext, name string, n int, off int64) []byte {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	buf := make([]byte, n)
	if _, err := img.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	return buf
}

func parentOf(t *testing.T, io *rados.IOContext, name string) string {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	p, err := img.GetParent()
	if err != nil {
		return ""
	}
	return p.Image.ImageName + "@" + p.Snap.SnapName
}

func snapNames(t *testing.T, io *rados.IOContext, name string) []string {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range snaps {
		// As `rbd snap ls` shows them: user snapshots only, not the ones in
		// the trash namespace that clones keep alive.
		if ns, err := img.GetSnapNamespaceType(s.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
			out = append(out, s.Name)
		}
	}
	return out
}

// ourLeftovers lists images, trash entries and journal objects whose names
// contain one of the given UUIDs.
func ourLeftovers(t *testing.T, io *rados.IOContext, uuids ...string) []string {
	t.Helper()
	var left []string
	match := func(s string) bool {
		for _, u := range uuids {
			if strings.Contains(s, u) {
				return true
			}
		}
		return false
	}
	names, _ := rbd.GetImageNames(io)
	for _, n := range names {
		if match(n) {
			left = append(left, "image "+n)
		}
	}
	trash, _ := rbd.GetTrashList(io)
	for _, e := range trash {
		if match(e.Name) {
			left = append(left, "trash "+e.Name)
		}
	}
	_ = io.ListObjects(func(oid string) {
		if match(oid) {
			left = append(left, "object "+oid)
		}
	})
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		for k, v := range omap(t, io, dir) {
			if match(v) {
				left = append(left, "journal key "+dir+"/"+k)
			}
		}
	}
	return left
}
