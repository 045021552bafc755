package rbd

import (
	"slices"
	"testing"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/volid"
)

func TestCreateSnapshotMakesImageAndJournal(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	src := volImage(vol)
	snap := c.snapshot("snap-1", vol.GetVolumeId())
	u := uuidOfID(t, snap.GetSnapshotId())
	image := "csi-snap-" + u
	if !snap.GetReadyToUse() || snap.GetSizeBytes() != 8<<20 || snap.GetSourceVolumeId() != vol.GetVolumeId() ||
		snap.GetCreationTime() == nil {
		t.Errorf("snapshot = %v", snap)
	}
	img := c.img(image)
	if img.parentImage() != src || !img.parent.trash {
		t.Errorf("snapshot image parent %q (trash namespace %v), want a trash-namespace snapshot of %s",
			img.parentSpec(), img.parent != nil && img.parent.trash, src)
	}
	if img.opts.Features != librbd.FeatureLayering|librbd.FeatureDeepFlatten {
		t.Errorf("snapshot image features %#x", img.opts.Features)
	}
	wantList(t, "snapshots of the snapshot image", img.userSnaps(), []string{image})
	wantList(t, "user snapshots of the source", c.img(src).userSnaps(), nil)
	if got := c.f.omap("rbd", "csi.snaps.default")["csi.snap.snap-1"]; got != u {
		t.Errorf("directory key = %q, want %q", got, u)
	}
	e := c.f.omap("rbd", "csi.snap."+u)
	if e["csi.snapname"] != "snap-1" || e["csi.imagename"] != image || e["csi.source"] != src || e["csi.imageid"] != img.id {
		t.Errorf("journal entry = %v (image ID %s)", e, img.id)
	}
	wantList(t, "queued flattens", c.f.queuedImages("rbd"), nil)

	before := c.state()
	again, err := c.createSnap(c.snapReq("snap-1", vol.GetVolumeId()))
	if err != nil || again.GetSnapshotId() != snap.GetSnapshotId() || again.GetSizeBytes() != snap.GetSizeBytes() {
		t.Errorf("repeated request = %v, %v; want %v", again, err, snap)
	}
	c.sameState("the repeated request", before)
	other := c.volume("other", 8<<20, nil)
	before = c.state()
	_, err = c.createSnap(c.snapReq("snap-1", other.GetVolumeId()))
	wantCode(t, "same name, other source", err, codes.AlreadyExists)
	_, err = c.createSnap(c.snapReq("snap-1", vol.GetVolumeId(), "snapshotNamePrefix", "mine-"))
	wantCode(t, "same name, other parameters", err, codes.AlreadyExists)
	c.sameState("the mismatching requests", before)
}

func TestCreateSnapshotRepairsHalfCreated(t *testing.T) {
	for _, tc := range []struct {
		what  string
		op    string
		nth   int
		match string
	}{
		{"stopped before the clone", "CloneImage", 1, ""},
		{"stopped before the snapshot image's own snapshot", "CreateSnapshot", 2, ""},
		{"stopped before recording the image ID", "SetOmap", 2, "csi.snap."},
		// The directory key is written, the entry is not: a new reservation.
		{"stopped inside the reservation", "SetOmap", 2, ""},
	} {
		t.Run(tc.what, func(t *testing.T) {
			c := newCtl(t)
			vol := c.volume("pvc", 8<<20, nil)
			req := c.snapReq("snap", vol.GetVolumeId())
			c.crashesAt(tc.op, tc.nth, tc.match, func() { _, _ = c.createSnap(req) })
			u := c.f.omap("rbd", "csi.snaps.default")["csi.snap.snap"]
			if u == "" {
				t.Fatal("no journal key after the crash")
			}
			snap, err := c.createSnap(req)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if tc.match == "" && tc.op == "SetOmap" {
				u = uuidOfID(t, snap.GetSnapshotId())
				if c.f.omap("rbd", "csi.snaps.default")["csi.snap.snap"] != u || len(c.f.objects("rbd")) != 4 {
					t.Errorf("journal after the new reservation: %v", c.f.objects("rbd"))
				}
			} else if got := uuidOfID(t, snap.GetSnapshotId()); got != u {
				t.Errorf("retry answered snapshot %s, want the reserved %s", got, u)
			}
			img := c.img("csi-snap-" + u)
			wantList(t, "snapshots of the snapshot image", img.userSnaps(), []string{img.name})
			if c.f.omap("rbd", "csi.snap."+u)["csi.imageid"] != img.id {
				t.Errorf("journal = %v, image ID %s", c.f.omap("rbd", "csi.snap."+u), img.id)
			}
			source := c.img(volImage(vol))
			if len(source.userSnaps()) != 0 || len(source.snaps) != 1 {
				t.Errorf("source snapshots %v (%d in all), want only the one the snapshot image hangs from",
					source.userSnaps(), len(source.snaps))
			}
		})
	}
}

func TestFailingCreateSnapshotUndoesEverything(t *testing.T) {
	for _, tc := range []struct {
		what  string
		op    string
		nth   int
		match string
		soft  uint
	}{
		{what: "snapshot of the source", op: "CreateSnapshot", nth: 1},
		{what: "clone", op: "CloneImage", nth: 1},
		{what: "snapshot of the snapshot image", op: "CreateSnapshot", nth: 2},
		{what: "record the image ID", op: "SetOmap", nth: 2, match: "csi.snap."},
		{what: "queue the flatten of a deep snapshot", soft: 1, op: "QueueFlatten", nth: 1},
	} {
		t.Run(tc.what, func(t *testing.T) {
			c := newCtl(t)
			src := c.volume("src", 8<<20, nil)
			vol := c.volume("pvc", 8<<20, fromVolume(src.GetVolumeId())) // two levels deep
			if tc.soft != 0 {
				c.s.Options.SoftMaxClones = tc.soft
			}
			c.failsAndUndoes("CreateSnapshot", tc.op, tc.nth, tc.match, func() error {
				_, err := c.createSnap(c.snapReq("snap", vol.GetVolumeId()))
				return err
			})
		})
	}
}

func TestRestoreFromSnapshot(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	snap := c.snapshot("snap", vol.GetVolumeId())
	snapImage := c.snapImage(snap)
	r := c.volume("restore", 8<<20, fromSnapshot(snap.GetSnapshotId()))
	if p := c.img(volImage(r)).parentSpec(); p != snapImage+"@"+snapImage {
		t.Errorf("parent of the restore = %q", p)
	}
	// Into another pool of the cluster.
	other := c.volume("restore-rbd2", 8<<20, fromSnapshot(snap.GetSnapshotId()), "pool", "rbd2")
	img2 := c.f.image("rbd2", volImage(other))
	if other.GetVolumeContext()["pool"] != "rbd2" || img2.parentSpec() != snapImage+"@"+snapImage || img2.parent.image.pool.name != "rbd" {
		t.Errorf("restore into rbd2: context %v, parent %q", other.GetVolumeContext(), img2.parentSpec())
	}
	// Smaller than the snapshot: OutOfRange, nothing made.
	before := c.state()
	_, err := c.create(c.volReq("small", 4<<20, fromSnapshot(snap.GetSnapshotId())))
	wantCode(t, "restore into a smaller size", err, codes.OutOfRange)
	missing, _ := volid.ID{ClusterID: fakeClusterID, LocationID: 1, UUID: uuid.NewString()}.Encode()
	_, err = c.create(c.volReq("orphan", 8<<20, fromSnapshot(missing)))
	wantCode(t, "restore from a missing snapshot", err, codes.NotFound)
	c.sameState("the refused restores", before)
	// A snapshot whose image lost the snapshot restores clone from, or
	// the image itself, is NotFound too (the header says so, unopened).
	broken := c.snapshot("broken", vol.GetVolumeId())
	bimg := c.img(c.snapImage(broken))
	kept := bimg.snaps
	bimg.snaps = nil
	before = c.state()
	_, err = c.create(c.volReq("from-broken", 8<<20, fromSnapshot(broken.GetSnapshotId())))
	wantCode(t, "restore from a snapshot image without its snapshot", err, codes.NotFound)
	c.sameState("the restore from a snapshot image without its snapshot", before)
	bimg.snaps = kept
	delete(bimg.pool.images, bimg.id)
	before = c.state()
	_, err = c.create(c.volReq("from-gone", 8<<20, fromSnapshot(broken.GetSnapshotId())))
	wantCode(t, "restore from a snapshot whose image is gone", err, codes.NotFound)
	c.sameState("the restore from a snapshot whose image is gone", before)
	bimg.pool.images[bimg.id] = bimg
	c.mustDeleteSnapshot(broken.GetSnapshotId())

	// The source and the snapshot go while the restores stay; both images
	// are purged with the last restore, from the other pool too.
	c.mustDeleteVolume(vol.GetVolumeId())
	c.mustDeleteSnapshot(snap.GetSnapshotId())
	trashed := slices.Sorted(slices.Values([]string{snapImage, volImage(vol)}))
	wantList(t, "trash", c.f.trash("rbd"), trashed)
	c.mustDeleteVolume(r.GetVolumeId())
	wantList(t, "trash with a restore left in rbd2", c.f.trash("rbd"), trashed)
	c.mustDeleteVolume(other.GetVolumeId())
	wantList(t, "trash", c.f.trash("rbd"), nil)
	wantList(t, "images", c.f.images("rbd"), nil)
	wantList(t, "images in rbd2", c.f.images("rbd2"), nil)
}

func TestDeleteSnapshot(t *testing.T) {
	t.Run("removes image and journal", func(t *testing.T) {
		c := newCtl(t)
		vol := c.volume("pvc", 8<<20, nil)
		snap := c.snapshot("snap", vol.GetVolumeId())
		for i := 0; i < 2; i++ {
			c.mustDeleteSnapshot(snap.GetSnapshotId())
		}
		if left := c.leftovers("rbd", uuidOfID(t, snap.GetSnapshotId())); len(left) != 0 {
			t.Errorf("left: %v", left)
		}
		if s := c.img(volImage(vol)).snaps; len(s) != 0 {
			t.Errorf("the source keeps %d snapshots", len(s))
		}
	})
	t.Run("restores keep working", func(t *testing.T) {
		c := newCtl(t)
		vol := c.volume("pvc", 8<<20, nil)
		snap := c.snapshot("snap", vol.GetVolumeId())
		r := c.volume("restore", 8<<20, fromSnapshot(snap.GetSnapshotId()))
		c.mustDeleteSnapshot(snap.GetSnapshotId())
		image := c.snapImage(snap)
		wantList(t, "trash", c.f.trash("rbd"), []string{image})
		if c.f.trashed("rbd", image).meta[trashedByUsKey] != "true" {
			t.Error("trashed snapshot image is not marked as ours")
		}
		if p := c.img(volImage(r)).parentImage(); p != image {
			t.Errorf("restore lost its parent: %q", p)
		}
		if c.f.omap("rbd", "csi.snap."+uuidOfID(t, snap.GetSnapshotId())) != nil {
			t.Error("journal entry of the deleted snapshot left")
		}
		c.mustDeleteVolume(r.GetVolumeId())
		wantList(t, "trash", c.f.trash("rbd"), nil)
	})
	t.Run("waits while the manager flattens the image", func(t *testing.T) {
		c := newCtl(t)
		vol := c.volume("pvc", 8<<20, nil)
		snap := c.snapshot("snap", vol.GetVolumeId())
		c.refusedWhileWatched("delete while the image is being flattened", c.img(c.snapImage(snap)), "10.0.0.3:0/mgr",
			func() error { return c.deleteSnapshot(snap.GetSnapshotId()) })
		if left := c.leftovers("rbd", uuidOfID(t, snap.GetSnapshotId())); len(left) != 0 {
			t.Errorf("left: %v", left)
		}
	})
	t.Run("nothing without a journal entry", func(t *testing.T) {
		c := newCtl(t)
		u := uuid.NewString()
		c.f.addImage("rbd", "csi-snap-"+u, 1<<20).addSnap("csi-snap-" + u)
		id, _ := volid.ID{ClusterID: fakeClusterID, LocationID: 1, UUID: u}.Encode()
		before := c.state()
		for _, id := range []string{id, "not-a-snapshot-id"} {
			if err := c.deleteSnapshot(id); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}
		c.sameState("deletes of snapshots the journal does not know", before)
	})
}
