//go:build integration

package rbd_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	cephrbd "github.com/leanceph/cephcsi/internal/rbd"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// The driver reads, in one round trip from an image's header object, what
// librbd says after opening the image (its parent, its snapshot count) and
// walks clone chains that way: it must agree with librbd on a chain of
// clones, on a flattened clone whose snapshot still reads from the parent,
// on snapshots moved to the trash namespace and on an image in the RBD
// trash. Describe, which restores use, reads the snapshots and metadata
// librbd lists too.
func TestHeaderMatchesLibrbd(t *testing.T) {
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, pool)
	conns := cephconn.NewPool(time.Minute, 30*time.Second)
	t.Cleanup(conns.Close)
	conn, err := conns.Get([]string{c.Monitors}, cephconn.Credentials{ID: c.Var("CEPH_RBD_PROVISIONER_ID"), Key: c.Var("CEPH_RBD_PROVISIONER_KEY")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	probe, err := cephrbd.NewHeaderProbe(conn, pool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(probe.Close)

	tag := "hdr-" + uuid.NewString()[:8]
	a, b, flat, d := tag+"-a", tag+"-b", tag+"-flat", tag+"-d"
	var made []string // removed newest first
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			removeWithSnapshots(t, io, made[i])
		}
	})
	opts := func(features uint64, clone bool) *rbd.ImageOptions {
		o := rbd.NewRbdImageOptions()
		t.Cleanup(o.Destroy)
		set := [][2]uint64{{uint64(rbd.ImageOptionFormat), 2}, {uint64(rbd.ImageOptionFeatures), features}}
		if clone {
			set = append(set, [2]uint64{uint64(rbd.ImageOptionCloneFormat), 2})
		}
		for _, kv := range set {
			if err := o.SetUint64(rbd.ImageOption(kv[0]), kv[1]); err != nil {
				t.Fatal(err)
			}
		}
		return o
	}
	deep := opts(rbd.FeatureLayering|rbd.FeatureDeepFlatten, true)
	if err := rbd.CreateImage(io, a, 16<<20, opts(rbd.FeatureLayering|rbd.FeatureDeepFlatten, false)); err != nil {
		t.Fatal(err)
	}
	made = append(made, a)
	open := func(name string) *rbd.Image {
		t.Helper()
		img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	snap := func(image, name string) {
		img := open(image)
		defer img.Close()
		if _, err := img.CreateSnapshot(name); err != nil {
			t.Fatal(err)
		}
	}
	clone := func(parent, snapName, dst string, o *rbd.ImageOptions) {
		if err := rbd.CloneImage(io, parent, snapName, io, dst, o); err != nil {
			t.Fatal(err)
		}
		made = append(made, dst)
	}
	snap(a, "s1")
	clone(a, "s1", b, deep)
	snap(b, "s2")
	clone(b, "s2", d, opts(rbd.FeatureLayering, true))
	// Without deep-flatten a flattened clone's snapshot keeps reading from
	// the parent: the header still names it, the head has none.
	clone(a, "s1", flat, opts(rbd.FeatureLayering, true))
	snap(flat, "s3")
	fimg := open(flat)
	if err := fimg.Flatten(); err != nil {
		t.Fatal(err)
	}
	fimg.Close()
	// The snapshot its clones use moves to the trash namespace.
	aimg := open(a)
	if err := aimg.GetSnapshot("s1").Remove(); err != nil {
		t.Fatal(err)
	}
	aimg.Close()

	trashSnaps := 0
	for _, name := range []string{a, b, d, flat} {
		img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := img.GetId()
		snaps, err := img.GetSnapshotNames()
		if err != nil {
			t.Fatal(err)
		}
		want, err := img.GetParent()
		if errors.Is(err, rbd.ErrNotFound) {
			want, err = nil, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		trashSnaps += checkDescribe(t, probe, img, name, id, want)
		img.Close()
		poolID, ns, parentID, nsnaps, err := probe.Header(id)
		if err != nil {
			t.Fatalf("Header(%s): %v", name, err)
		}
		if nsnaps != len(snaps) {
			t.Errorf("%s: header says %d snapshots, librbd %d (%+v)", name, nsnaps, len(snaps), snaps)
		}
		switch {
		case want == nil && parentID != "":
			t.Errorf("%s: header says parent %s, librbd none", name, parentID)
		case want != nil && (parentID != want.Image.ImageID || poolID != io.GetPoolID() || ns != want.Image.PoolNamespace):
			t.Errorf("%s: header parent %d/%q/%s, librbd %+v in pool %d", name, poolID, ns, parentID, want.Image, io.GetPoolID())
		}
		depth, err := probe.Depth(name)
		if err != nil {
			t.Fatal(err)
		}
		if w := librbdDepth(t, io, name); depth != w {
			t.Errorf("%s: clone depth from headers %d, librbd's chain %d", name, depth, w)
		}
	}

	if trashSnaps != 1 {
		t.Errorf("Describe saw %d snapshots in the trash namespace, want 1 (%s@s1)", trashSnaps, a)
	}

	// An image in the RBD trash, marked as ours first.
	dimg := open(d)
	did, _ := dimg.GetId()
	if marked, err := probe.TrashMarked(did); err != nil || marked {
		t.Errorf("TrashMarked before the mark = %v, %v; want false", marked, err)
	}
	if err := dimg.SetMetadata("cephcsi.trashed", "true"); err != nil {
		t.Fatal(err)
	}
	dimg.Close()
	if err := rbd.GetImage(io, d).Trash(0); err != nil {
		t.Fatal(err)
	}
	if marked, err := probe.TrashMarked(did); err != nil || !marked {
		t.Errorf("TrashMarked after the mark = %v, %v; want true", marked, err)
	}
	if _, _, parentID, nsnaps, err := probe.Header(did); err != nil || parentID == "" || nsnaps != 0 {
		t.Errorf("Header of the trashed clone: parent %q, %d snapshots, %v; want its parent and none", parentID, nsnaps, err)
	}
	if err := rbd.TrashRemove(io, did, false); err != nil {
		t.Fatal(err)
	}

	if _, _, _, _, err := probe.Header("0123456789ab"); !csierr.IsNotFound(err) {
		t.Errorf("Header of a missing image: %v, want ENOENT", err)
	}
	if _, err := probe.TrashMarked("0123456789ab"); !csierr.IsNotFound(err) {
		t.Errorf("TrashMarked of a missing image: %v, want ENOENT", err)
	}
}

// checkDescribe compares what Describe reads of an image's header with
// what librbd says of the open image: the parent, every snapshot (ID,
// name, size, namespace, time) and metadata, set and unset. It returns
// how many snapshots are in the trash namespace.
func checkDescribe(t *testing.T, probe *cephrbd.HeaderProbe, img *rbd.Image, name, id string, parent *rbd.ParentInfo) (trash int) {
	t.Helper()
	if err := img.SetMetadata("hdr.test", "v-"+name); err != nil {
		t.Fatal(err)
	}
	parentID, snaps, meta, err := probe.Describe(id, []string{"hdr.test", "hdr.unset"})
	if err != nil {
		t.Fatalf("Describe(%s): %v", name, err)
	}
	if (parent == nil) != (parentID == "") || (parent != nil && parent.Image.ImageID != parentID) {
		t.Errorf("%s: Describe says parent %q, librbd %+v", name, parentID, parent)
	}
	if meta["hdr.test"] != "v-"+name || meta["hdr.unset"] != "" || len(meta) != 2 {
		t.Errorf("%s: Describe's metadata %v, want hdr.test=v-%s and hdr.unset empty", name, meta, name)
	}
	infos, err := img.GetSnapshotNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != len(infos) {
		t.Fatalf("%s: Describe read %d snapshots %+v, librbd lists %d %+v", name, len(snaps), snaps, len(infos), infos)
	}
	for i, want := range infos {
		ns, err := img.GetSnapNamespaceType(want.Id)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := img.GetSnapTimestamp(want.Id)
		if err != nil {
			t.Fatal(err)
		}
		got := snaps[i]
		if got.Trash {
			trash++
		}
		if got.ID != want.Id || got.Name != want.Name || got.Size != want.Size || got.Trash != (ns == rbd.SnapNamespaceTypeTrash) ||
			!got.Created.Equal(time.Unix(ts.Sec, ts.Nsec)) {
			t.Errorf("%s: Describe's snapshot %+v, librbd's %+v (namespace %v, time %v)", name, got, want, ns, time.Unix(ts.Sec, ts.Nsec))
		}
	}
	return trash
}

// librbdDepth walks a chain the way librbd sees it, opening each parent.
func librbdDepth(t *testing.T, io *rados.IOContext, name string) int {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	for depth := 0; ; depth++ {
		parent, err := img.GetParent()
		img.Close()
		if errors.Is(err, rbd.ErrNotFound) {
			return depth
		}
		if err != nil {
			t.Fatal(err)
		}
		if img, err = rbd.OpenImageByIdReadOnly(io, parent.Image.ImageID, rbd.NoSnapshot); err != nil {
			t.Fatal(err)
		}
	}
}

// removeWithSnapshots removes a test image and its user snapshots; a
// missing one is fine.
func removeWithSnapshots(t *testing.T, io *rados.IOContext, name string) {
	img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
	if errors.Is(err, rbd.ErrNotFound) {
		return
	}
	if err != nil {
		t.Errorf("cleanup: opening %s: %v", name, err)
		return
	}
	snaps, _ := img.GetSnapshotNames()
	for _, s := range snaps {
		_ = img.GetSnapshot(s.Name).Remove()
	}
	img.Close()
	if err := rbd.RemoveImage(io, name); err != nil && !errors.Is(err, rbd.ErrNotFound) {
		t.Errorf("cleanup: removing %s: %v", name, err)
	}
}
