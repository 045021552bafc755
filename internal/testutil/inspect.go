package testutil

import (
	"errors"
	"testing"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/volid"
)

// What the tests read off the cluster (as admin, through io) to check what
// the driver did, the way a Rook user would with the rados and rbd tools.

// Omap reads all omap values of an object; nil when the object is missing.
func Omap(t testing.TB, io *rados.IOContext, oid string) map[string]string {
	t.Helper()
	vals, err := io.GetAllOmapValues(oid, "", "", 1000)
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

// UUIDOf is the UUID of a volume or snapshot ID.
func UUIDOf(t testing.TB, id string) string {
	t.Helper()
	d, err := volid.Decode(id)
	if err != nil {
		t.Fatalf("volume or snapshot ID %q: %v", id, err)
	}
	return d.UUID
}

// AllocatedBytes is the bytes of an image's data extents, as librbd's diff
// reports them extent by extent (not by whole objects: a trim leaves the
// objects that still hold some filesystem metadata).
func AllocatedBytes(t testing.TB, io *rados.IOContext, name string) uint64 {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		t.Fatal(err)
	}
	var used uint64
	if err := img.DiffIterate(rbd.DiffIterateConfig{Offset: 0, Length: size, WholeObject: rbd.DisableWholeObject,
		Callback: func(_, n uint64, exists int, _ any) int {
			if exists != 0 {
				used += n
			}
			return 0
		}}); err != nil {
		t.Fatal(err)
	}
	return used
}

// ImageExists reports whether the pool of io has a live image name.
func ImageExists(t testing.TB, io *rados.IOContext, name string) bool {
	t.Helper()
	names, err := rbd.GetImageNames(io)
	if err != nil {
		t.Fatalf("listing images: %v", err)
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// openImage opens an image read-only; the caller closes it.
func openImage(t testing.TB, io *rados.IOContext, name string) *rbd.Image {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open image %s: %v", name, err)
	}
	return img
}

// ImageParent is an image's parent as image@snapshot, "" for none.
func ImageParent(t testing.TB, io *rados.IOContext, name string) string {
	t.Helper()
	img := openImage(t, io, name)
	defer img.Close()
	p, err := img.GetParent()
	if err != nil {
		return ""
	}
	return p.Image.ImageName + "@" + p.Snap.SnapName
}

// ImageUserSnaps lists an image's snapshots as `rbd snap ls` shows them:
// user snapshots only, not the ones in the trash namespace that clones
// keep alive.
func ImageUserSnaps(t testing.TB, io *rados.IOContext, name string) []string {
	t.Helper()
	img := openImage(t, io, name)
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		t.Fatalf("snapshots of %s: %v", name, err)
	}
	var out []string
	for _, s := range snaps {
		if ns, err := img.GetSnapNamespaceType(s.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
			out = append(out, s.Name)
		}
	}
	return out
}

// ImageSize is an image's size in bytes.
func ImageSize(t testing.TB, io *rados.IOContext, name string) uint64 {
	t.Helper()
	img := openImage(t, io, name)
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		t.Fatalf("size of %s: %v", name, err)
	}
	return size
}

// WriteImage writes data into an image at off and flushes it.
func WriteImage(t testing.TB, io *rados.IOContext, name string, data []byte, off int64) {
	t.Helper()
	img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open image %s to write: %v", name, err)
	}
	defer img.Close()
	if _, err := img.WriteAt(data, off); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := img.Flush(); err != nil {
		t.Fatalf("flush %s: %v", name, err)
	}
}

// ReadImage reads n bytes of an image at off.
func ReadImage(t testing.TB, io *rados.IOContext, name string, n int, off int64) []byte {
	t.Helper()
	img := openImage(t, io, name)
	defer img.Close()
	buf := make([]byte, n)
	if _, err := img.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return buf
}
