package rbd

import (
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
)

func limits(soft, hard uint) func(*config.Options) {
	return func(o *config.Options) { o.SoftMaxClones, o.HardMaxClones = soft, hard }
}

func snapLimits(minSnaps, maxSnaps uint) func(*config.Options) {
	return func(o *config.Options) { o.MinSnapsOnImage, o.MaxSnapsOnImage = minSnaps, maxSnaps }
}

// abortedUntilFlat checks a call past the hard depth limit: it is Aborted
// and queues the flatten of source (making no image), is Aborted again
// while that is queued, and succeeds once the manager has flattened it.
func (c *ctl) abortedUntilFlat(what, source string, call func() error) {
	c.t.Helper()
	images := c.f.images("rbd")
	wantCode(c.t, what+" past the hard limit", call(), codes.Aborted)
	wantList(c.t, "queued flattens", c.f.queuedImages("rbd"), []string{source})
	wantList(c.t, "images after the refused "+what, c.f.images("rbd"), images)
	before := c.imageState()
	wantCode(c.t, "retry while the source is being flattened", call(), codes.Aborted)
	c.sameImages("the refused retry", before)
	if err := c.f.runFlatten("rbd", source); err != nil {
		c.t.Fatal(err)
	}
	if err := call(); err != nil {
		c.t.Fatalf("retry once the source is flat: %v", err)
	}
}

// Past the hard depth limit the source is flattened first: the call is
// Aborted (the sidecar retries) until the manager is done, then succeeds.
func TestHardDepthLimitFlattensTheSourceFirst(t *testing.T) {
	t.Run("clone", func(t *testing.T) {
		c := newCtl(t, limits(4, 4))
		v0 := c.volume("v0", 8<<20, nil)
		v1 := c.volume("v1", 8<<20, fromVolume(v0.GetVolumeId()))
		v2 := c.volume("v2", 8<<20, fromVolume(v1.GetVolumeId()))
		if d := c.img(volImage(v2)).depth(); d != 4 {
			t.Fatalf("v2 is %d deep, want 4 (two levels a clone)", d)
		}
		wantList(t, "queued flattens within the limit", c.f.queuedImages("rbd"), nil)
		req := c.volReq("v3", 8<<20, fromVolume(v2.GetVolumeId()))
		var v3 *csi.Volume
		c.abortedUntilFlat("clone", volImage(v2), func() (err error) {
			v3, err = c.create(req)
			return err
		})
		img := c.img(volImage(v3))
		if img.depth() != 2 || img.parentImage() != volImage(v3)+"-temp" || c.img(volImage(v3)+"-temp").parentImage() != volImage(v2) {
			t.Errorf("v3: depth %d, parent %q", img.depth(), img.parentSpec())
		}
	})
	t.Run("snapshot", func(t *testing.T) {
		c := newCtl(t, limits(2, 2))
		v0 := c.volume("v0", 8<<20, nil)
		s0 := c.snapshot("s0", v0.GetVolumeId())
		r0 := c.volume("r0", 8<<20, fromSnapshot(s0.GetSnapshotId()))
		req := c.snapReq("s1", r0.GetVolumeId())
		var s1 *csi.Snapshot
		c.abortedUntilFlat("snapshot", volImage(r0), func() (err error) {
			s1, err = c.createSnap(req)
			return err
		})
		if d := c.img(c.snapImage(s1)).depth(); d != 1 {
			t.Errorf("snapshot image is %d deep, want 1", d)
		}
	})
	t.Run("restore", func(t *testing.T) {
		c := newCtl(t)
		v0 := c.volume("v0", 8<<20, nil)
		s0 := c.snapshot("s0", v0.GetVolumeId())
		r0 := c.volume("r0", 8<<20, fromSnapshot(s0.GetSnapshotId()))
		s1 := c.snapshot("s1", r0.GetVolumeId()) // 3 deep
		c.s.Options.SoftMaxClones, c.s.Options.HardMaxClones = 3, 3
		req := c.volReq("r1", 8<<20, fromSnapshot(s1.GetSnapshotId()))
		images := c.f.images("rbd")
		_, err := c.create(req)
		wantCode(t, "restore past the hard limit", err, codes.Aborted)
		wantList(t, "queued flattens", c.f.queuedImages("rbd"), []string{c.snapImage(s1)})
		wantList(t, "images after the refused restore", c.f.images("rbd"), images)
		if err := c.f.runFlatten("rbd", c.snapImage(s1)); err != nil {
			t.Fatal(err)
		}
		r1, err := c.create(req)
		if err != nil {
			t.Fatalf("retry once the snapshot is flat: %v", err)
		}
		if d := c.img(volImage(r1)).depth(); d != 1 {
			t.Errorf("restore is %d deep, want 1", d)
		}
	})
}

// Past the soft depth limit the new clone is made, and its flatten queued.
func TestSoftDepthLimitQueuesTheNewClonesFlatten(t *testing.T) {
	t.Run("past the limit", func(t *testing.T) {
		c := newCtl(t, limits(1, 8))
		v0 := c.volume("v0", 8<<20, nil)
		s0 := c.snapshot("s0", v0.GetVolumeId()) // 1 deep: within
		wantList(t, "queued flattens", c.f.queuedImages("rbd"), nil)
		v1 := c.volume("v1", 8<<20, fromVolume(v0.GetVolumeId())) // 2 deep
		r0 := c.volume("r0", 8<<20, fromSnapshot(s0.GetSnapshotId()))
		wantList(t, "queued flattens", c.f.queuedImages("rbd"), slices.Sorted(slices.Values([]string{volImage(v1), volImage(r0)})))
	})
	t.Run("within the limit, at the defaults", func(t *testing.T) {
		c := newCtl(t)
		v0 := c.volume("v0", 8<<20, nil)
		s0 := c.snapshot("s0", v0.GetVolumeId())
		c.volume("v1", 8<<20, fromVolume(v0.GetVolumeId()))
		c.volume("r0", 8<<20, fromSnapshot(s0.GetSnapshotId()))
		wantList(t, "queued flattens", c.f.queuedImages("rbd"), nil)
	})
}

// A create stopped after its clone, before queueing the background flatten
// the limits ask for, queues it when retried.
func TestInterruptedCreateStillQueuesItsFlatten(t *testing.T) {
	for _, tc := range []struct {
		what  string
		tweak func(*config.Options)
		// start makes the sources and returns the call to interrupt and
		// retry, which answers the image to flatten.
		start func(c *ctl, v0 *csi.Volume) func() (string, error)
	}{
		{"clone past the soft depth limit", limits(1, 8), func(c *ctl, v0 *csi.Volume) func() (string, error) {
			return c.volumeCall("new", fromVolume(v0.GetVolumeId()), "")
		}},
		{"restore past the soft depth limit", limits(1, 8), func(c *ctl, v0 *csi.Volume) func() (string, error) {
			return c.volumeCall("new", fromSnapshot(c.snapshot("s0", v0.GetVolumeId()).GetSnapshotId()), "")
		}},
		{"snapshot past the soft depth limit", limits(0, 8), func(c *ctl, v0 *csi.Volume) func() (string, error) {
			return c.snapshotCall("s1", v0.GetVolumeId())
		}},
		{"clone past the snapshot minimum", snapLimits(1, 10), func(c *ctl, v0 *csi.Volume) func() (string, error) {
			c.volume("first", 8<<20, fromVolume(v0.GetVolumeId()))
			return c.volumeCall("new", fromVolume(v0.GetVolumeId()), tempSuffix)
		}},
		{"snapshot past the snapshot minimum", snapLimits(1, 10), func(c *ctl, v0 *csi.Volume) func() (string, error) {
			c.snapshot("first", v0.GetVolumeId())
			return c.snapshotCall("s1", v0.GetVolumeId())
		}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			c := newCtl(t, tc.tweak)
			v0 := c.volume("v0", 8<<20, nil)
			call := tc.start(c, v0)
			c.crashesAt("QueueFlatten", 1, "", func() { _, _ = call() })
			wantList(t, "queued flattens after the crash", c.f.queuedImages("rbd"), nil)
			image, err := call()
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			wantList(t, "queued flattens after the retry", c.f.queuedImages("rbd"), []string{image})
			if _, err := call(); err != nil {
				t.Errorf("another retry, the flatten queued: %v", err)
			}
			c.f.runFlattens()
			if _, err := call(); err != nil || len(c.f.queuedImages("rbd")) != 0 {
				t.Errorf("retry once flat = %v, queued %v; want OK, nothing queued", err, c.f.queuedImages("rbd"))
			}
		})
	}
}

// volumeCall is a CreateVolume of an 8 MiB volume that answers its image
// name with suffix.
func (c *ctl) volumeCall(name string, src *csi.VolumeContentSource, suffix string) func() (string, error) {
	req := c.volReq(name, 8<<20, src)
	return func() (string, error) {
		v, err := c.create(req)
		return volImage(v) + suffix, err
	}
}

// snapshotCall is a CreateSnapshot that answers the snapshot's image name.
func (c *ctl) snapshotCall(name, sourceID string) func() (string, error) {
	req := c.snapReq(name, sourceID)
	return func() (string, error) {
		s, err := c.createSnap(req)
		if err != nil {
			return "", err
		}
		return c.snapImage(s), nil
	}
}

// A clone chain whose source is being flattened is not extended: a
// snapshot or clone taken now would lose its parent data when the flatten
// ends.
func TestQueuedFlattenRefusesSnapshotsAndClonesOfTheSource(t *testing.T) {
	c := newCtl(t)
	v0 := c.volume("v0", 8<<20, nil)
	v1 := c.volume("v1", 8<<20, fromVolume(v0.GetVolumeId()))
	c.f.queueByHand("rbd", volImage(v1))
	before := c.imageState()
	_, err := c.createSnap(c.snapReq("snap", v1.GetVolumeId()))
	wantCode(t, "snapshot of an image being flattened", err, codes.Aborted)
	_, err = c.create(c.volReq("clone", 8<<20, fromVolume(v1.GetVolumeId())))
	wantCode(t, "clone of an image being flattened", err, codes.Aborted)
	c.sameImages("the refused calls", before)
	if err := c.f.runFlatten("rbd", volImage(v1)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.createSnap(c.snapReq("snap", v1.GetVolumeId())); err != nil {
		t.Errorf("snapshot after the flatten: %v", err)
	}
	if _, err := c.create(c.volReq("clone", 8<<20, fromVolume(v1.GetVolumeId()))); err != nil {
		t.Errorf("clone after the flatten: %v", err)
	}
}

// Every snapshot or clone of a volume leaves one snapshot on it. From the
// minimum on, what holds the new one is flattened in the background; at the
// maximum the existing ones are flattened first (Aborted until done).
func TestSnapshotCountLimits(t *testing.T) {
	for _, kind := range []string{"snapshot", "clone"} {
		t.Run(kind, func(t *testing.T) {
			c := newCtl(t, snapLimits(2, 3))
			v0 := c.volume("v0", 8<<20, nil)
			source := c.img(volImage(v0))
			take := func(name string) error {
				if kind == "snapshot" {
					_, err := c.createSnap(c.snapReq(name, v0.GetVolumeId()))
					return err
				}
				_, err := c.create(c.volReq(name, 8<<20, fromVolume(v0.GetVolumeId())))
				return err
			}
			for i, name := range []string{"below-1", "below-2"} {
				if err := take(name); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if len(source.snaps) != i+1 {
					t.Fatalf("source carries %d snapshots, want %d", len(source.snaps), i+1)
				}
			}
			wantList(t, "queued flattens below the minimum", c.f.queuedImages("rbd"), nil)
			if err := take("at-min"); err != nil {
				t.Fatal(err)
			}
			if len(c.f.queuedImages("rbd")) != 1 {
				t.Fatalf("queued flattens at the minimum: %v, want one", c.f.queuedImages("rbd"))
			}
			c.f.runFlattens()
			if n := len(source.snaps); n != 2 {
				t.Errorf("after the flatten queued at the minimum the source carries %d snapshots, want 2", n)
			}
			if err := take("again-at-min"); err != nil {
				t.Fatal(err)
			}
			if n := len(source.snaps); n != 3 {
				t.Fatalf("source carries %d snapshots, want 3 (the maximum)", n)
			}
			images := c.f.images("rbd")
			wantCode(t, "at the maximum", take("at-max"), codes.Aborted)
			wantList(t, "images after the refused call", c.f.images("rbd"), images)
			queued := c.f.queuedImages("rbd")
			c.f.runFlattens()
			if n := len(source.snaps); n != 0 {
				t.Errorf("flattens queued at the maximum (%v) left %d snapshots on the source", queued, n)
			}
			if err := take("at-max"); err != nil {
				t.Errorf("retry once the clones are flat: %v", err)
			}
		})
	}
}
