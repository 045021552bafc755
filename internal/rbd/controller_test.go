package rbd

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/service"
	"github.com/leanceph/cephcsi/internal/volid"
)

// The controller's decisions on the fake cluster of fake_cluster_test.go.
// The integration tests (-tags integration) check the same on Ceph; these
// add the failures and interruptions a live cluster cannot be made to have
// at a chosen step.

// ctl is a controller on a fake cluster with pools rbd (ID 1) and rbd2.
type ctl struct {
	t   *testing.T
	f   *fakeCluster
	s   *ControllerServer
	ctx context.Context
}

func newCtl(t *testing.T, tweak ...func(*config.Options)) *ctl {
	t.Helper()
	f := newFakeCluster("rbd", "rbd2")
	// The flag defaults.
	o := &config.Options{InstanceID: "default", HardMaxClones: 8, SoftMaxClones: 4, MaxSnapsOnImage: 450, MinSnapsOnImage: 250}
	for _, tw := range tweak {
		tw(o)
	}
	s := NewControllerServer(&service.Deps{Options: o, Locks: &locks.Set{}})
	s.connect = f.connect
	t.Cleanup(func() {
		for _, what := range f.handles {
			t.Errorf("left open by the controller: %s", what)
		}
		for _, m := range f.misuse {
			t.Errorf("misuse of the cluster: %s", m)
		}
	})
	return &ctl{t: t, f: f, s: s, ctx: context.Background()}
}

var ctlSecrets = map[string]string{"userID": "csi-rbd-provisioner", "userKey": unitKey}

func (c *ctl) volReq(name string, size int64, src *csi.VolumeContentSource, kv ...string) *csi.CreateVolumeRequest {
	p := map[string]string{"clusterID": fakeClusterID, "pool": "rbd"}
	for i := 0; i+1 < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{unitFsCap("ext4")}, Parameters: p, Secrets: ctlSecrets,
		VolumeContentSource: src}
}

func (c *ctl) create(req *csi.CreateVolumeRequest) (*csi.Volume, error) {
	resp, err := c.s.CreateVolume(c.ctx, req)
	return resp.GetVolume(), err
}

// volume makes a volume and fails the test when that fails.
func (c *ctl) volume(name string, size int64, src *csi.VolumeContentSource, kv ...string) *csi.Volume {
	c.t.Helper()
	v, err := c.create(c.volReq(name, size, src, kv...))
	if err != nil {
		c.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return v
}

func (c *ctl) snapReq(name, sourceID string, kv ...string) *csi.CreateSnapshotRequest {
	p := map[string]string{"clusterID": fakeClusterID}
	for i := 0; i+1 < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: sourceID, Parameters: p, Secrets: ctlSecrets}
}

func (c *ctl) createSnap(req *csi.CreateSnapshotRequest) (*csi.Snapshot, error) {
	resp, err := c.s.CreateSnapshot(c.ctx, req)
	return resp.GetSnapshot(), err
}

func (c *ctl) snapshot(name, sourceID string) *csi.Snapshot {
	c.t.Helper()
	s, err := c.createSnap(c.snapReq(name, sourceID))
	if err != nil {
		c.t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return s
}

func (c *ctl) deleteVolume(id string) error {
	_, err := c.s.DeleteVolume(c.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: ctlSecrets})
	return err
}

func (c *ctl) deleteSnapshot(id string) error {
	_, err := c.s.DeleteSnapshot(c.ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: ctlSecrets})
	return err
}

func (c *ctl) mustDeleteVolume(id string) {
	c.t.Helper()
	if err := c.deleteVolume(id); err != nil {
		c.t.Fatalf("DeleteVolume: %v", err)
	}
}

func (c *ctl) mustDeleteSnapshot(id string) {
	c.t.Helper()
	if err := c.deleteSnapshot(id); err != nil {
		c.t.Fatalf("DeleteSnapshot: %v", err)
	}
}

// crashesAt arms a crash at the nth call of op matching match (see
// fakeCluster.crash) and runs call, which must die there: what the call
// deferred runs (as a dying process releases its connections and watches),
// nothing else does.
func (c *ctl) crashesAt(op string, nth int, match string, call func()) {
	c.t.Helper()
	c.f.crash(op, nth, match)
	crashed := func() (crashed bool) {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fakeCrash); !ok {
					panic(r)
				}
				crashed = true
			}
		}()
		call()
		return false
	}()
	if !crashed {
		c.t.Fatal("the call did not reach the armed crash")
	}
	c.f.forgetHandles()
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func uuidOfID(t *testing.T, id string) string {
	t.Helper()
	d, err := volid.Decode(id)
	if err != nil {
		t.Fatalf("volume or snapshot ID %q: %v", id, err)
	}
	return d.UUID
}

func volImage(v *csi.Volume) string { return v.GetVolumeContext()["imageName"] }

func (c *ctl) snapImage(s *csi.Snapshot) string {
	return "csi-snap-" + uuidOfID(c.t, s.GetSnapshotId())
}

// img is the live image name of pool rbd, failing the test when missing.
func (c *ctl) img(name string) *fakeImage {
	c.t.Helper()
	img := c.f.image("rbd", name)
	if img == nil {
		c.t.Fatalf("image rbd/%s does not exist; pool has %v, trash %v", name, c.f.images("rbd"), c.f.trash("rbd"))
	}
	return img
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := csierr.Code(err); err == nil || got != want {
		t.Errorf("%s: %v (code %v), want %v", what, err, got, want)
	}
}

func wantList(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// leftovers lists images, trash entries, journal objects and directory
// keys of pool that carry one of uuids.
func (c *ctl) leftovers(pool string, uuids ...string) []string {
	var left []string
	has := func(s string) bool {
		for _, u := range uuids {
			if strings.Contains(s, u) {
				return true
			}
		}
		return false
	}
	for _, n := range c.f.images(pool) {
		if has(n) {
			left = append(left, "image "+n)
		}
	}
	for _, n := range c.f.trash(pool) {
		if has(n) {
			left = append(left, "trash "+n)
		}
	}
	for _, oid := range c.f.objects(pool) {
		if has(oid) {
			left = append(left, "object "+oid)
		}
		for k, v := range c.f.omap(pool, oid) {
			if has(v) {
				left = append(left, "key "+oid+"/"+k)
			}
		}
	}
	return left
}

// state is what a user would compare before and after a call that must
// change nothing: images (their size, parent and snapshots), trash, queued
// flattens, journal objects and keys.
func (c *ctl) state() []string {
	out := c.imageState()
	for _, pool := range []string{"rbd", "rbd2"} {
		for _, oid := range c.f.objects(pool) {
			keys := c.f.omap(pool, oid)
			for _, k := range slices.Sorted(maps.Keys(keys)) {
				out = append(out, "omap "+pool+" "+oid+" "+k+"="+keys[k])
			}
		}
	}
	return out
}

// imageState is state without the journal, which an Aborted create keeps
// its reservation in.
func (c *ctl) imageState() []string {
	var out []string
	for _, pool := range []string{"rbd", "rbd2"} {
		for _, img := range c.f.pool(pool).sortedImages() {
			var snaps []string
			for _, s := range img.snaps {
				snaps = append(snaps, s.name+map[bool]string{true: "(trash)"}[s.trash])
			}
			out = append(out, strings.Join([]string{"image", pool, img.name, map[bool]string{true: "trashed"}[img.trashed],
				strconv.FormatUint(img.size, 10), img.parentSpec(), strings.Join(snaps, ",")}, " "))
		}
		out = append(out, "queued "+pool+" "+strings.Join(c.f.queuedImages(pool), ","))
	}
	return out
}

func (c *ctl) sameState(what string, before []string) {
	c.t.Helper()
	if after := c.state(); !slices.Equal(before, after) {
		c.t.Errorf("%s changed the cluster:\nbefore %q\nafter  %q", what, before, after)
	}
}

// failsAndUndoes makes call fail at the nth call of op matching match
// and checks that it answers Internal with the cluster as it was before;
// a second call, with nothing armed, must then succeed.
func (c *ctl) failsAndUndoes(what, op string, nth int, match string, call func() error) {
	c.t.Helper()
	before := c.state()
	c.f.fail(op, nth, match)
	wantCode(c.t, "failing "+what, call(), codes.Internal)
	if len(c.f.rules) != 0 {
		c.t.Fatalf("the %s never reached the failing step %s", what, op)
	}
	c.sameState("the failed "+what, before)
	if err := call(); err != nil {
		c.t.Errorf("a retry after the undo: %v", err)
	}
}

// refusedWhileWatched checks that call is refused (FailedPrecondition),
// changing nothing, while img has watcher, and succeeds once it has none.
func (c *ctl) refusedWhileWatched(what string, img *fakeImage, watcher string, call func() error) {
	c.t.Helper()
	img.watchers = []string{watcher}
	before := c.state()
	wantCode(c.t, what, call(), codes.FailedPrecondition)
	c.sameState("the refused call", before)
	img.watchers = nil
	if err := call(); err != nil {
		c.t.Fatalf("%s once it has no watcher: %v", what, err)
	}
}

// sameImages is sameState for imageState.
func (c *ctl) sameImages(what string, before []string) {
	c.t.Helper()
	if after := c.imageState(); !slices.Equal(before, after) {
		c.t.Errorf("%s changed the images:\nbefore %q\nafter  %q", what, before, after)
	}
}

func TestCreateVolumeMakesImageAndJournal(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc-1", 10<<20+1, nil, "imageFeatures", "layering,exclusive-lock", "mounter", "rbd-nbd")
	u := uuidOfID(t, vol.GetVolumeId())
	image := "csi-vol-" + u
	if vol.GetCapacityBytes() != 11<<20 {
		t.Errorf("capacity = %d, want 11 MiB (rounded up)", vol.GetCapacityBytes())
	}
	for k, want := range map[string]string{"clusterID": fakeClusterID, "pool": "rbd", "imageName": image, "mounter": "rbd-nbd",
		"imageFeatures": "layering,exclusive-lock"} {
		if got := vol.GetVolumeContext()[k]; got != want {
			t.Errorf("volume_context[%s] = %q, want %q", k, got, want)
		}
	}
	wantList(t, "images", c.f.images("rbd"), []string{image})
	img := c.img(image)
	if img.size != 11<<20 || img.opts.Features != librbd.FeatureLayering|librbd.FeatureExclusiveLock || img.parent != nil {
		t.Errorf("image: size %d, features %#x, parent %q", img.size, img.opts.Features, img.parentSpec())
	}
	if got := c.f.omap("rbd", "csi.volumes.default")["csi.volume.pvc-1"]; got != u {
		t.Errorf("directory key = %q, want %q", got, u)
	}
	e := c.f.omap("rbd", "csi.volume."+u)
	if e["csi.volname"] != "pvc-1" || e["csi.imagename"] != image || e["csi.imageid"] != img.id || e["cephcsi.request"] == "" {
		t.Errorf("journal entry = %v (image ID %s)", e, img.id)
	}
	wantList(t, "trash", c.f.trash("rbd"), nil)
	wantList(t, "queued flattens", c.f.queuedImages("rbd"), nil)
}

func TestCreateVolumeRepeatedAnswersTheSameVolume(t *testing.T) {
	c := newCtl(t)
	req := c.volReq("pvc-1", 8<<20, nil)
	first, err := c.create(req)
	if err != nil {
		t.Fatal(err)
	}
	before := c.state()
	again, err := c.create(req)
	if err != nil || again.GetVolumeId() != first.GetVolumeId() || again.GetCapacityBytes() != first.GetCapacityBytes() {
		t.Fatalf("repeated request = %v, %v; want %v", again, err, first)
	}
	c.sameState("the repeated request", before)
	if n := c.f.calls["CreateImage"]; n != 1 {
		t.Errorf("%d images created for one name", n)
	}
}

func TestCreateVolumeSameNameOtherRequestIsAlreadyExists(t *testing.T) {
	c := newCtl(t)
	src := c.volume("src", 8<<20, nil)
	snap := c.snapshot("snap", src.GetVolumeId())
	plain := c.volume("plain", 8<<20, nil)
	restored := c.volume("restored", 8<<20, fromSnapshot(snap.GetSnapshotId()))
	cloned := c.volume("cloned", 8<<20, fromVolume(src.GetVolumeId()))
	for _, tc := range []struct {
		what string
		req  *csi.CreateVolumeRequest
	}{
		{"plain, other size", c.volReq("plain", 16<<20, nil)},
		{"plain, other parameters", c.volReq("plain", 8<<20, nil, "imageFeatures", "layering,exclusive-lock")},
		{"plain, then from a snapshot", c.volReq("plain", 8<<20, fromSnapshot(snap.GetSnapshotId()))},
		{"plain, then from a volume", c.volReq("plain", 8<<20, fromVolume(src.GetVolumeId()))},
		{"restored, then plain", c.volReq("restored", 8<<20, nil)},
		{"restored, then from a volume", c.volReq("restored", 8<<20, fromVolume(src.GetVolumeId()))},
		{"cloned, then from another volume", c.volReq("cloned", 8<<20, fromVolume(plain.GetVolumeId()))},
		{"cloned, then from a snapshot", c.volReq("cloned", 8<<20, fromSnapshot(snap.GetSnapshotId()))},
		{"cloned, then plain", c.volReq("cloned", 8<<20, nil)},
	} {
		before := c.state()
		_, err := c.create(tc.req)
		wantCode(t, tc.what, err, codes.AlreadyExists)
		c.sameState(tc.what, before)
	}
	// The volumes are still what they were made as.
	if p := c.img(volImage(plain)).parentSpec(); p != "" {
		t.Errorf("plain volume has parent %q", p)
	}
	if p := c.img(volImage(restored)).parentSpec(); p != c.snapImage(snap)+"@"+c.snapImage(snap) {
		t.Errorf("restored volume has parent %q", p)
	}
	if p := c.img(volImage(cloned)).parentImage(); p != volImage(cloned)+"-temp" {
		t.Errorf("cloned volume has parent %q", p)
	}
}

// A journal entry written by ceph-csi carries no request digest: the
// image itself is compared with the request.
func TestCreateVolumeComparesEntryOfAnotherDriver(t *testing.T) {
	c := newCtl(t)
	src := c.volume("src", 8<<20, nil)
	plain := c.volume("plain", 8<<20, nil)
	cloned := c.volume("cloned", 8<<20, fromVolume(src.GetVolumeId()))
	for _, v := range []*csi.Volume{plain, cloned} {
		delete(c.f.pool("rbd").store.objects["csi.volume."+uuidOfID(t, v.GetVolumeId())], "cephcsi.request")
	}
	if again, err := c.create(c.volReq("plain", 8<<20, nil)); err != nil || again.GetVolumeId() != plain.GetVolumeId() {
		t.Errorf("same request for a ceph-csi volume = %v, %v; want %s", again, err, plain.GetVolumeId())
	}
	if again, err := c.create(c.volReq("cloned", 8<<20, fromVolume(src.GetVolumeId()))); err != nil || again.GetVolumeId() != cloned.GetVolumeId() {
		t.Errorf("same clone request for a ceph-csi volume = %v, %v; want %s", again, err, cloned.GetVolumeId())
	}
	before := c.state()
	_, err := c.create(c.volReq("plain", 16<<20, nil))
	wantCode(t, "ceph-csi volume, other size", err, codes.AlreadyExists)
	_, err = c.create(c.volReq("cloned", 8<<20, nil))
	wantCode(t, "ceph-csi clone, request without a source", err, codes.AlreadyExists)
	_, err = c.create(c.volReq("cloned", 8<<20, fromVolume(plain.GetVolumeId())))
	wantCode(t, "ceph-csi clone, request from another volume", err, codes.AlreadyExists)
	c.sameState("the mismatching requests", before)
}

func TestCreateVolumeRepairsHalfCreated(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		c := newCtl(t)
		req := c.volReq("pvc", 8<<20, nil)
		c.crashesAt("CreateImage", 1, "", func() { _, _ = c.create(req) })
		u := c.f.omap("rbd", "csi.volumes.default")["csi.volume.pvc"]
		if u == "" || len(c.f.images("rbd")) != 0 {
			t.Fatalf("after the crash: journal key %q, images %v; want a key and no image", u, c.f.images("rbd"))
		}
		vol, err := c.create(req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if got := uuidOfID(t, vol.GetVolumeId()); got != u {
			t.Errorf("retry answered volume %s, want the reserved %s", got, u)
		}
		img := c.img("csi-vol-" + u)
		if img.size != 8<<20 || c.f.omap("rbd", "csi.volume."+u)["csi.imageid"] != img.id {
			t.Errorf("repaired image size %d, journal %v (image ID %s)", img.size, c.f.omap("rbd", "csi.volume."+u), img.id)
		}
	})
	t.Run("clone stopped after its -temp image", func(t *testing.T) {
		c := newCtl(t)
		src := c.volume("src", 8<<20, nil)
		req := c.volReq("pvc", 8<<20, fromVolume(src.GetVolumeId()))
		c.crashesAt("CloneImage", 2, "", func() { _, _ = c.create(req) })
		vol, err := c.create(req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		image := volImage(vol)
		if p := c.img(image).parentSpec(); p != image+"-temp@"+image {
			t.Errorf("parent of the clone = %q", p)
		}
		if p := c.img(image + "-temp").parentImage(); p != volImage(src) {
			t.Errorf("parent of -temp = %q", p)
		}
		source := c.img(volImage(src))
		if s := source.userSnaps(); len(s) != 0 || len(source.snaps) != 1 {
			t.Errorf("source keeps user snapshots %v and %d in all; want none and the one -temp hangs from", s, len(source.snaps))
		}
	})
}

// A restore or clone larger than its source is grown after the clone; a
// retry after a stop in between grows it and answers OK.
func TestCreateVolumeGrowsCloneInterruptedBeforeResize(t *testing.T) {
	for _, kind := range []string{"restore", "clone"} {
		t.Run(kind, func(t *testing.T) {
			c := newCtl(t)
			src := c.volume("src", 8<<20, nil)
			from := fromVolume(src.GetVolumeId())
			if kind == "restore" {
				from = fromSnapshot(c.snapshot("snap", src.GetVolumeId()).GetSnapshotId())
			}
			req := c.volReq("big", 16<<20, from)
			c.crashesAt("Resize", 1, "", func() { _, _ = c.create(req) })
			u := c.f.omap("rbd", "csi.volumes.default")["csi.volume.big"]
			if img := c.img("csi-vol-" + u); img.size != 8<<20 {
				t.Fatalf("after the crash the clone has %d bytes, want the source's 8 MiB", img.size)
			}
			vol, err := c.create(req)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			img := c.img(volImage(vol))
			if vol.GetCapacityBytes() != 16<<20 || img.size != 16<<20 {
				t.Errorf("retry answered %d bytes, image has %d; want 16 MiB", vol.GetCapacityBytes(), img.size)
			}
			if c.f.omap("rbd", "csi.volume."+u)["csi.imageid"] != img.id {
				t.Errorf("journal = %v, image ID %s", c.f.omap("rbd", "csi.volume."+u), img.id)
			}
		})
	}
}

// A retry that fails never removes what an earlier call made.
func TestFailingRetryKeepsTheVolume(t *testing.T) {
	t.Run("made volume", func(t *testing.T) {
		c := newCtl(t)
		req := c.volReq("pvc", 8<<20, nil)
		vol, err := c.create(req)
		if err != nil {
			t.Fatal(err)
		}
		before := c.state()
		c.f.fail("OpenImage", 1, volImage(vol))
		_, err = c.create(req)
		wantCode(t, "retry that cannot open the image", err, codes.Internal)
		c.sameState("the failing retry", before)
		if again, err := c.create(req); err != nil || again.GetVolumeId() != vol.GetVolumeId() {
			t.Errorf("next retry = %v, %v; want %s", again, err, vol.GetVolumeId())
		}
	})
	t.Run("clone left at the source's size", func(t *testing.T) {
		c := newCtl(t)
		src := c.volume("src", 8<<20, nil)
		req := c.volReq("big", 16<<20, fromVolume(src.GetVolumeId()))
		c.crashesAt("Resize", 1, "", func() { _, _ = c.create(req) })
		before := c.state()
		c.f.fail("Resize", 1, "")
		_, err := c.create(req)
		wantCode(t, "retry whose resize fails", err, codes.Internal)
		c.sameState("the failing retry", before)
		vol, err := c.create(req)
		if err != nil || c.img(volImage(vol)).size != 16<<20 {
			t.Errorf("next retry = %v, %v", vol, err)
		}
	})
}

// A create that fails at any step removes everything it made: images,
// the -temp image, snapshots on the source, journal keys.
func TestFailingCreateUndoesEverything(t *testing.T) {
	for _, tc := range []struct {
		what    string
		restore bool
		size    int64
		op      string
		nth     int
		match   string
		soft    uint // --rbdsoftmaxclonedepth
	}{
		{what: "clone: snapshot of the source", op: "CreateSnapshot", nth: 1},
		{what: "clone: clone into -temp", op: "CloneImage", nth: 1, match: "-temp"},
		{what: "clone: snapshot of -temp", op: "CreateSnapshot", nth: 1, match: "-temp@"},
		{what: "clone: clone of -temp", op: "CloneImage", nth: 2},
		{what: "clone: grow", size: 16 << 20, op: "Resize", nth: 1},
		{what: "clone: queue the flatten of a deep clone", soft: 1, op: "QueueFlatten", nth: 1},
		{what: "clone: record the image ID", op: "SetOmap", nth: 2, match: "csi.volume."},
		{what: "restore: clone", restore: true, op: "CloneImage", nth: 1},
		{what: "restore: grow", restore: true, size: 16 << 20, op: "Resize", nth: 1},
		{what: "restore: queue the flatten of a deep clone", restore: true, soft: 1, op: "QueueFlatten", nth: 1},
		{what: "plain: create", op: "CreateImage", nth: 1},
		{what: "plain: record the image ID", op: "SetOmap", nth: 2, match: "csi.volume."},
	} {
		t.Run(tc.what, func(t *testing.T) {
			c := newCtl(t, func(o *config.Options) {
				if tc.soft != 0 {
					o.SoftMaxClones = tc.soft
				}
			})
			src := c.volume("src", 8<<20, nil)
			var from *csi.VolumeContentSource
			switch {
			case tc.restore:
				from = fromSnapshot(c.snapshot("snap", src.GetVolumeId()).GetSnapshotId())
			case strings.HasPrefix(tc.what, "clone"):
				from = fromVolume(src.GetVolumeId())
			}
			size := tc.size
			if size == 0 {
				size = 8 << 20
			}
			c.failsAndUndoes("create", tc.op, tc.nth, tc.match, func() error {
				_, err := c.create(c.volReq("pvc", size, from))
				return err
			})
		})
	}
}

func TestDeleteVolumeRemovesImagesAndJournal(t *testing.T) {
	c := newCtl(t)
	src := c.volume("src", 8<<20, nil)
	clone := c.volume("clone", 8<<20, fromVolume(src.GetVolumeId()))
	cu := uuidOfID(t, clone.GetVolumeId())
	for i := 0; i < 2; i++ { // a repeated delete is fine
		c.mustDeleteVolume(clone.GetVolumeId())
	}
	if left := c.leftovers("rbd", cu); len(left) != 0 {
		t.Errorf("left of the clone: %v", left)
	}
	if s := c.img(volImage(src)).snaps; len(s) != 0 {
		t.Errorf("the source keeps %d snapshots after its clone went", len(s))
	}
	c.mustDeleteVolume(src.GetVolumeId())
	wantList(t, "images", c.f.images("rbd"), nil)
	wantList(t, "trash", c.f.trash("rbd"), nil)
	if dir := c.f.omap("rbd", "csi.volumes.default"); len(dir) != 0 {
		t.Errorf("directory keys left: %v", dir)
	}
}

func TestDeleteVolumeKeepsWatchedImage(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	// A node has it mapped.
	c.refusedWhileWatched("delete of a watched image", c.img(volImage(vol)), "10.0.0.7:0/2283147",
		func() error { return c.deleteVolume(vol.GetVolumeId()) })
	if left := c.leftovers("rbd", uuidOfID(t, vol.GetVolumeId())); len(left) != 0 {
		t.Errorf("left after the delete: %v", left)
	}
}

// An image that clones depend on goes to the trash, marked as ours, and
// is purged with its last clone.
func TestDeleteVolumeTrashesImageWithClones(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	snap := c.snapshot("snap", vol.GetVolumeId())
	image := volImage(vol)
	c.mustDeleteVolume(vol.GetVolumeId())
	wantList(t, "images", c.f.images("rbd"), []string{c.snapImage(snap)})
	wantList(t, "trash", c.f.trash("rbd"), []string{image})
	if mark := c.f.trashed("rbd", image).meta[trashedByUsKey]; mark != "true" {
		t.Errorf("trashed image metadata %s = %q, want true", trashedByUsKey, mark)
	}
	if c.f.omap("rbd", "csi.volume."+uuidOfID(t, vol.GetVolumeId())) != nil {
		t.Error("journal entry of the deleted volume left")
	}
	if p := c.img(c.snapImage(snap)).parentImage(); p != image {
		t.Errorf("the snapshot's image lost its parent: %q", p)
	}
	c.mustDeleteSnapshot(snap.GetSnapshotId())
	wantList(t, "images", c.f.images("rbd"), nil)
	wantList(t, "trash after the last clone went", c.f.trash("rbd"), nil)
}

// A source deleted while its last clone is deleted too: the clone's delete
// ends between the source's refused removal and its move to the trash, so
// it finds no trashed parent to purge; the source's delete purges it.
func TestDeleteRacingLastCloneLeavesNoTrash(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	snap := c.snapshot("snap", vol.GetVolumeId())
	c.f.before("TrashImage", volImage(vol), func() { c.mustDeleteSnapshot(snap.GetSnapshotId()) })
	c.mustDeleteVolume(vol.GetVolumeId())
	wantList(t, "images", c.f.images("rbd"), nil)
	wantList(t, "trash", c.f.trash("rbd"), nil)
}

// The other order of that race: the last clone's delete has read its
// parent (not yet trashed) when the parent's delete trashes it and cannot
// purge it (the clone is still there); once the clone is removed, its
// delete purges the parent, whatever the parent looked like before.
func TestDeleteLastCloneRacingSourceTrashLeavesNoTrash(t *testing.T) {
	c := newCtl(t)
	vol := c.volume("pvc", 8<<20, nil)
	snap := c.snapshot("snap", vol.GetVolumeId())
	restored := c.volume("restored", 8<<20, fromSnapshot(snap.GetSnapshotId()))
	c.f.before("RemoveImage", volImage(restored), func() { c.mustDeleteSnapshot(snap.GetSnapshotId()) })
	c.mustDeleteVolume(restored.GetVolumeId())
	wantList(t, "trash", c.f.trash("rbd"), nil)
	c.mustDeleteVolume(vol.GetVolumeId())
	wantList(t, "images", c.f.images("rbd"), nil)
	wantList(t, "trash", c.f.trash("rbd"), nil)
}

// Deleting the last clone purges every trashed ancestor of ours that no
// clone needs any more, up the chain, and stops at one still needed.
func TestPurgeWalksUpTheChain(t *testing.T) {
	c := newCtl(t)
	v0 := c.volume("v0", 8<<20, nil)
	s0 := c.snapshot("s0", v0.GetVolumeId())
	r0 := c.volume("r0", 8<<20, fromSnapshot(s0.GetSnapshotId()))
	s1 := c.snapshot("s1", r0.GetVolumeId())
	other := c.snapshot("other", v0.GetVolumeId())
	c.mustDeleteVolume(v0.GetVolumeId())
	c.mustDeleteSnapshot(s0.GetSnapshotId())
	c.mustDeleteVolume(r0.GetVolumeId())
	wantList(t, "trash", c.f.trash("rbd"), slices.Sorted(slices.Values([]string{volImage(v0), c.snapImage(s0), volImage(r0)})))
	c.mustDeleteSnapshot(s1.GetSnapshotId())
	// v0 still holds the other snapshot's image.
	wantList(t, "trash after the chain's last clone went", c.f.trash("rbd"), []string{volImage(v0)})
	c.mustDeleteSnapshot(other.GetSnapshotId())
	wantList(t, "trash", c.f.trash("rbd"), nil)
	wantList(t, "images", c.f.images("rbd"), nil)
	if objs := c.f.objects("rbd"); len(objs) != 2 || len(c.f.omap("rbd", objs[0])) != 0 || len(c.f.omap("rbd", objs[1])) != 0 {
		t.Errorf("journal left: %v", objs)
	}
}

// A trash entry without our mark is never removed, whatever its name.
func TestPurgeNeverRemovesForeignTrash(t *testing.T) {
	t.Run("our volume trashed by hand", func(t *testing.T) {
		c := newCtl(t)
		vol := c.volume("pvc", 8<<20, nil)
		snap := c.snapshot("snap", vol.GetVolumeId())
		c.f.trashByHand("rbd", volImage(vol))
		c.mustDeleteSnapshot(snap.GetSnapshotId())
		c.mustDeleteVolume(vol.GetVolumeId())
		wantList(t, "trash", c.f.trash("rbd"), []string{volImage(vol)})
	})
	t.Run("an interrupted purge finished by a later delete", func(t *testing.T) {
		c := newCtl(t)
		foreign := "csi-vol-" + uuid.NewString()
		c.f.addImage("rbd", foreign, 1<<20)
		c.f.trashByHand("rbd", foreign)
		vol := c.volume("pvc", 8<<20, nil)
		snap := c.snapshot("snap", vol.GetVolumeId())
		c.mustDeleteVolume(vol.GetVolumeId())
		c.crashesAt("RemoveTrashed", 1, "", func() { _ = c.deleteSnapshot(snap.GetSnapshotId()) })
		wantList(t, "trash after the crash", c.f.trash("rbd"), slices.Sorted(slices.Values([]string{foreign, volImage(vol)})))
		c.mustDeleteSnapshot(snap.GetSnapshotId())
		wantList(t, "trash", c.f.trash("rbd"), []string{foreign})
		if left := c.leftovers("rbd", uuidOfID(t, snap.GetSnapshotId()), uuidOfID(t, vol.GetVolumeId())); len(left) != 0 {
			t.Errorf("left: %v", left)
		}
	})
}

// A user snapshot on a volume's image is removed only when the journals
// prove it a temporary snapshot of ours; any other keeps the image.
func TestDeleteVolumeKeepsImageWithForeignSnapshot(t *testing.T) {
	for _, snap := range []string{"backup", "csi-vol-" + uuid.NewString() + "-temp", "csi-snap-" + uuid.NewString()} {
		t.Run(snap, func(t *testing.T) {
			c := newCtl(t)
			vol := c.volume("pvc", 8<<20, nil)
			c.img(volImage(vol)).addSnap(snap)
			before := c.state()
			wantCode(t, "delete", c.deleteVolume(vol.GetVolumeId()), codes.FailedPrecondition)
			c.sameState("the refused delete", before)
		})
	}
	t.Run("temporary snapshot of an interrupted clone", func(t *testing.T) {
		c := newCtl(t)
		src := c.volume("src", 8<<20, nil)
		c.crashesAt("CloneImage", 1, "", func() { _, _ = c.create(c.volReq("clone", 8<<20, fromVolume(src.GetVolumeId()))) })
		if s := c.img(volImage(src)).userSnaps(); len(s) != 1 || !strings.HasSuffix(s[0], "-temp") {
			t.Fatalf("source snapshots after the crash = %v, want the clone's -temp one", s)
		}
		c.mustDeleteVolume(src.GetVolumeId())
		if left := c.leftovers("rbd", uuidOfID(t, src.GetVolumeId())); len(left) != 0 {
			t.Errorf("left of the source: %v", left)
		}
	})
}

// Only a volume the journal knows is deleted.
func TestDeleteVolumeWithoutJournalEntryDeletesNothing(t *testing.T) {
	c := newCtl(t)
	u := uuid.NewString()
	c.f.addImage("rbd", "csi-vol-"+u, 1<<20)
	before := c.state()
	for _, id := range []volid.ID{{ClusterID: fakeClusterID, LocationID: 1, UUID: u}, {ClusterID: fakeClusterID, LocationID: 99, UUID: u}} {
		s, err := id.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.deleteVolume(s); err != nil {
			t.Errorf("delete %s: %v", s, err)
		}
	}
	if err := c.deleteVolume("not-a-volume-id"); err != nil {
		t.Errorf("delete of a malformed ID: %v", err)
	}
	c.sameState("deletes of volumes the journal does not know", before)
}

// An image the manager holds open (flattening it) while a delete removes
// it is kept for a retry, not trashed: with no clone left to purge it, a
// trash entry would stay for good.
func TestDeleteVolumeWaitsForTheFlattenOfItsTemp(t *testing.T) {
	c := newCtl(t)
	src := c.volume("src", 8<<20, nil)
	clone := c.volume("clone", 8<<20, fromVolume(src.GetVolumeId()))
	temp := c.img(volImage(clone) + tempSuffix)
	temp.watchers = []string{"10.0.0.3:0/mgr"}
	wantCode(t, "delete while -temp is being flattened", c.deleteVolume(clone.GetVolumeId()), codes.FailedPrecondition)
	wantList(t, "trash", c.f.trash("rbd"), nil)
	if c.f.omap("rbd", "csi.volume."+uuidOfID(t, clone.GetVolumeId())) == nil {
		t.Error("journal entry released before -temp was removed")
	}
	temp.watchers = nil
	c.mustDeleteVolume(clone.GetVolumeId())
	if left := c.leftovers("rbd", uuidOfID(t, clone.GetVolumeId())); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
	if s := c.img(volImage(src)).snaps; len(s) != 0 {
		t.Errorf("the source keeps %d snapshots", len(s))
	}
}

// A delete stopped at any step is finished by its retry.
func TestInterruptedDeleteFinishesOnRetry(t *testing.T) {
	for _, tc := range []struct {
		what  string
		op    string
		nth   int
		match string
	}{
		{"after the image, before -temp", "RemoveImage", 1, tempSuffix},
		{"before the image is marked for the trash", "SetImageMetadata", 1, ""},
		{"after the image is marked, before it is trashed", "TrashImage", 1, ""},
		{"before the journal key is released", "RemoveOmapKeyIfValue", 1, "csi.volumes."},
		{"before the journal entry is released", "RemoveObject", 1, "csi.volume."},
	} {
		t.Run(tc.what, func(t *testing.T) {
			c := newCtl(t)
			src := c.volume("src", 8<<20, nil)
			clone := c.volume("clone", 8<<20, fromVolume(src.GetVolumeId()))
			snap := c.snapshot("snap", clone.GetVolumeId()) // the clone goes to the trash
			c.crashesAt(tc.op, tc.nth, tc.match, func() { _ = c.deleteVolume(clone.GetVolumeId()) })
			c.mustDeleteVolume(clone.GetVolumeId())
			if c.f.omap("rbd", "csi.volume."+uuidOfID(t, clone.GetVolumeId())) != nil ||
				c.f.omap("rbd", "csi.volumes.default")["csi.volume.clone"] != "" {
				t.Error("journal of the deleted clone left")
			}
			if img := c.f.trashed("rbd", volImage(clone)); img == nil || img.meta[trashedByUsKey] != "true" {
				t.Errorf("the clone, which a snapshot needs, is not in the trash marked as ours; trash %v", c.f.trash("rbd"))
			}
			c.mustDeleteSnapshot(snap.GetSnapshotId())
			if left := c.leftovers("rbd", uuidOfID(t, clone.GetVolumeId()), uuidOfID(t, snap.GetSnapshotId())); len(left) != 0 {
				t.Errorf("left: %v", left)
			}
			if s := c.img(volImage(src)).snaps; len(s) != 0 {
				t.Errorf("the source keeps %d snapshots", len(s))
			}
		})
	}
}

// topologyConstrainedPools: the pool serving the request's preferred
// topology (else a requisite one) holds the image, and the volume carries
// that topology; no pool for it is ResourceExhausted and makes nothing.
func TestTopologyConstrainedPoolsPlaceTheImage(t *testing.T) {
	c := newCtl(t)
	pools := `[{"poolName":"rbd","domainSegments":[{"domainLabel":"zone","value":"zone-a"}]},
		{"poolName":"rbd2","domainSegments":[{"domainLabel":"zone","value":"zone-b"}]}]`
	zone := func(z string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{"topology.rbd.csi.ceph.com/zone": z}}
	}
	req := c.volReq("pvc-topo", 8<<20, nil, "topologyConstrainedPools", pools)
	req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{zone("zone-a"), zone("zone-b")},
		Preferred: []*csi.Topology{zone("zone-b")}}
	vol, err := c.create(req)
	if err != nil {
		t.Fatal(err)
	}
	if vol.GetVolumeContext()["pool"] != "rbd2" || c.f.pool("rbd2").live(vol.GetVolumeContext()["imageName"]) == nil {
		t.Errorf("image placed in %q, want rbd2 (zone-b)", vol.GetVolumeContext()["pool"])
	}
	if len(vol.GetAccessibleTopology()) != 1 || vol.GetAccessibleTopology()[0].GetSegments()["topology.rbd.csi.ceph.com/zone"] != "zone-b" {
		t.Errorf("accessible topology = %v, want zone-b", vol.GetAccessibleTopology())
	}
	before := c.state()
	req = c.volReq("pvc-nowhere", 8<<20, nil, "topologyConstrainedPools", pools)
	req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{zone("zone-c")}}
	if _, err := c.create(req); csierr.Code(err) != codes.ResourceExhausted {
		t.Errorf("no pool for zone-c: %v, want ResourceExhausted", err)
	}
	c.sameState("a create with no pool for its topology", before)
	// Without requirements the StorageClass's pool is used.
	plain, err := c.create(c.volReq("pvc-plain", 8<<20, nil, "topologyConstrainedPools", pools))
	if err != nil || plain.GetVolumeContext()["pool"] != "rbd" || plain.GetAccessibleTopology() != nil {
		t.Errorf("without requirements: %v, %v", plain, err)
	}
}

// The common calls open no image they need not open (each open is a dozen
// round trips, and as many again for every ancestor): a restore reads the
// snapshot image from its header (Describe) and walks the chain through
// headers, opening nothing, and a volume without snapshots, a clone or
// not, is removed without being opened.
func TestCommonCallsOpenOnlyWhatTheyNeed(t *testing.T) {
	c := newCtl(t)
	opens := func() int { return c.f.calls["OpenImage"] + c.f.calls["OpenImageByID"] }
	vol := c.volume("pvc", 8<<20, nil)
	snap := c.snapshot("snap", vol.GetVolumeId())
	before := opens()
	restored := c.volume("restored", 8<<20, fromSnapshot(snap.GetSnapshotId()))
	if n := opens() - before; n != 0 {
		t.Errorf("a restore opened %d images, want none", n)
	}
	if c.f.calls["Describe"] == 0 {
		t.Error("a restore did not read the snapshot image's header")
	}
	for _, v := range []*csi.Volume{restored, c.volume("plain", 8<<20, nil)} {
		before = opens()
		c.mustDeleteVolume(v.GetVolumeId())
		if n := opens() - before; n != 0 {
			t.Errorf("deleting %s opened %d images, want none", volImage(v), n)
		}
		if img := c.f.image("rbd", volImage(v)); img != nil {
			t.Errorf("%s is still there", volImage(v))
		}
	}
	// A volume whose snapshot keeps it is opened, and trashed.
	before = opens()
	c.mustDeleteVolume(vol.GetVolumeId())
	if opens() == before {
		t.Error("a volume with a snapshot's clone was removed without looking at it")
	}
	wantList(t, "trash", c.f.trash("rbd"), []string{volImage(vol)})
	c.mustDeleteSnapshot(snap.GetSnapshotId())
	wantList(t, "trash after the snapshot went", c.f.trash("rbd"), nil)
	wantList(t, "images", c.f.images("rbd"), nil)
}
