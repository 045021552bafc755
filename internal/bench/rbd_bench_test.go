//go:build integration

package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/volid"
)

const (
	rbdPool     = "rbd"
	rbdSize     = 1 << 30 // every image, driver's and floor's, is 1 GiB
	seqN        = 30
	concN       = 100
	concurrency = 16
)

// rbdRun is one RBD benchmark: the driver, its floor, and what both have
// created and not yet deleted (in creation order, so that cleanup can go
// backwards: clones before their parents).
type rbdRun struct {
	*run
	floor   *rbdFloor
	admin   *rados.IOContext
	secrets map[string]string

	liveVolumes   []string        // driver volume and snapshot IDs, creation order
	isSnapshot    map[string]bool // which of liveVolumes are snapshot IDs
	deleted       map[string]bool
	failedCreates []string // request names whose CreateVolume failed
	liveFloor     []string // floor image names, creation order
	floorDeleted  map[string]bool
	finished      bool
}

func newRBDRun(b *testing.B) *rbdRun {
	b.Helper()
	r := &rbdRun{run: newRun(b, "rbd"), isSnapshot: map[string]bool{}, deleted: map[string]bool{}, floorDeleted: map[string]bool{}}
	r.secrets = r.cluster.RBDSecrets()
	r.admin = r.cluster.IOContext(b, rbdPool)
	r.floor, r.floorAsok = newRBDFloor(b, r.cluster, rbdPool, r.id, rbdSize)
	note("rbd: pool %s, images of %d MiB with feature layering, driver calls with the csi-rbd-provisioner user; floor as the same user in the same process as the client", rbdPool, rbdSize>>20)
	// Registered after the driver started, so it runs before the driver stops.
	b.Cleanup(func() {
		if !r.finished {
			if left := r.cleanup(); len(left) > 0 {
				b.Errorf("leftovers after a failed run: %s", strings.Join(left, ", "))
			}
		}
	})
	return r
}

func (r *rbdRun) mu2() func() { r.mu.Lock(); return r.mu.Unlock }

func (r *rbdRun) addLive(id string, snapshot bool) {
	defer r.mu2()()
	r.liveVolumes = append(r.liveVolumes, id)
	r.isSnapshot[id] = snapshot
}

func (r *rbdRun) markDeleted(id string) {
	defer r.mu2()()
	r.deleted[id] = true
}

func (r *rbdRun) addFloor(name string) {
	defer r.mu2()()
	r.liveFloor = append(r.liveFloor, name)
}

func (r *rbdRun) floorGone(name string) {
	defer r.mu2()()
	r.floorDeleted[name] = true
}

func volumeCaps() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func (r *rbdRun) trackID(id string) {
	if d, err := volid.Decode(id); err == nil {
		r.track(d.UUID)
	}
}

// createVolume asks the driver for a volume (from src when not nil),
// retrying Aborted. It returns the number of retries.
func (r *rbdRun) createVolume(name string, src *csi.VolumeContentSource) (string, int, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	var id string
	retries, err := call(ctx, func(ctx context.Context) error {
		resp, err := r.driver.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name:                name,
			CapacityRange:       &csi.CapacityRange{RequiredBytes: rbdSize},
			VolumeCapabilities:  volumeCaps(),
			Parameters:          map[string]string{"clusterID": r.cluster.ClusterID, "pool": rbdPool},
			Secrets:             r.secrets,
			VolumeContentSource: src,
		})
		if err == nil {
			id = resp.GetVolume().GetVolumeId()
		}
		return err
	})
	if err != nil {
		defer r.mu2()()
		r.failedCreates = append(r.failedCreates, name)
		return "", retries, err
	}
	r.trackID(id)
	r.addLive(id, false)
	return id, retries, nil
}

func (r *rbdRun) deleteVolume(id string) (int, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	retries, err := call(ctx, func(ctx context.Context) error {
		_, err := r.driver.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: r.secrets})
		return err
	})
	if err == nil {
		r.markDeleted(id)
	}
	return retries, err
}

func (r *rbdRun) createSnapshot(name, source string) (string, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	var id string
	_, err := call(ctx, func(ctx context.Context) error {
		resp, err := r.driver.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
			Name: name, SourceVolumeId: source, Secrets: r.secrets,
			Parameters: map[string]string{"clusterID": r.cluster.ClusterID},
		})
		if err == nil {
			id = resp.GetSnapshot().GetSnapshotId()
		}
		return err
	})
	if err != nil {
		return "", err
	}
	r.trackID(id)
	r.addLive(id, true)
	return id, nil
}

func (r *rbdRun) deleteSnapshot(id string) error {
	ctx, cancel := r.ctx()
	defer cancel()
	_, err := call(ctx, func(ctx context.Context) error {
		_, err := r.driver.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: r.secrets})
		return err
	})
	if err == nil {
		r.markDeleted(id)
	}
	return err
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// floorDo runs a floor step that creates image name.
func (r *rbdRun) floorDo(name string, fn func() error) error {
	r.addFloor(name)
	return fn()
}

// imageOf is the image name of a driver volume or snapshot ID.
func imageOf(id string, snapshot bool) string {
	d, err := volid.Decode(id)
	if err != nil {
		return ""
	}
	if snapshot {
		return "csi-snap-" + d.UUID
	}
	return "csi-vol-" + d.UUID
}

// expectImages checks that the driver and the floor really made their
// images, so that the figures are not for calls that did nothing.
func (r *rbdRun) expectImages(names ...string) {
	r.b.Helper()
	have, err := rbd.GetImageNames(r.admin)
	if err != nil {
		r.b.Fatal(err)
	}
	set := map[string]bool{}
	for _, n := range have {
		set[n] = true
	}
	for _, n := range names {
		if !set[n] {
			r.b.Fatalf("image %s is missing from pool %s", n, rbdPool)
		}
	}
}

// warmUp makes one driver and one floor volume and deletes them, so that
// connection setup is not in the figures.
func (r *rbdRun) warmUp() {
	r.b.Helper()
	id, _, err := r.createVolume(r.name("warm", 0), nil)
	if err != nil {
		r.b.Fatalf("warm-up CreateVolume: %v", err)
	}
	if _, err := r.deleteVolume(id); err != nil {
		r.b.Fatalf("warm-up DeleteVolume: %v", err)
	}
	name := r.name("fwarm", 0)
	if err := r.floorDo(name, func() error { return r.floor.createVolume(name) }); err != nil {
		r.b.Fatalf("warm-up floor: %v", err)
	}
	if err := r.floor.deleteVolume(name); err != nil {
		r.b.Fatalf("warm-up floor: %v", err)
	}
	r.floorGone(name)
}

// cleanup deletes, newest first, what is still alive, then lists what is
// left of this run on the cluster.
func (r *rbdRun) cleanup() []string {
	var problems []string
	// A failed create may still have made a volume: repeating the request
	// (idempotent) returns its ID, which is then deleted.
	for _, name := range r.failedCreates {
		if _, _, err := r.createVolume(name, nil); err != nil {
			problems = append(problems, fmt.Sprintf("re-create %s for cleanup: %v", name, err))
		}
	}
	r.failedCreates = nil
	for i := len(r.liveVolumes) - 1; i >= 0; i-- {
		id := r.liveVolumes[i]
		if r.deleted[id] {
			continue
		}
		var err error
		if r.isSnapshot[id] {
			err = r.deleteSnapshot(id)
		} else {
			_, err = r.deleteVolume(id)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("delete %s: %v", id, err))
		}
	}
	for i := len(r.liveFloor) - 1; i >= 0; i-- {
		name := r.liveFloor[i]
		if r.floorDeleted[name] {
			continue
		}
		if err := r.floor.removeAll(name); err != nil {
			problems = append(problems, fmt.Sprintf("floor cleanup %s: %v", name, err))
		} else {
			r.floorGone(name)
		}
	}
	if err := r.floor.removeDir(); err != nil {
		problems = append(problems, fmt.Sprintf("floor directory: %v", err))
	}
	return append(problems, r.leftovers()...)
}

// finish cleans up and fails the benchmark when anything of this run is
// left on the cluster.
func (r *rbdRun) finish() {
	r.b.Helper()
	r.finished = true
	if left := r.cleanup(); len(left) > 0 {
		r.b.Fatalf("the run left things behind: %s", strings.Join(left, ", "))
	}
}

// BenchmarkRBDVolumesSequential: CreateVolume and DeleteVolume one at a
// time, each next to its floor.
func BenchmarkRBDVolumesSequential(b *testing.B) {
	r := newRBDRun(b)
	r.warmUp()
	ids := make([]string, seqN)
	var floorNames, driverImages []string
	res := r.timeSequential(seqN, func(i int) error {
		id, _, err := r.createVolume(r.name("seq", i), nil)
		ids[i] = id
		return err
	}, func(i int) error {
		name := r.name("fseq", i)
		floorNames = append(floorNames, name)
		return r.floorDo(name, func() error { return r.floor.createVolume(name) })
	})
	for _, id := range ids {
		driverImages = append(driverImages, imageOf(id, false))
	}
	r.expectImages(append(driverImages, floorNames...)...)
	r.addRow(seqRow("CreateVolume", res, floorCreate))

	res = r.timeSequential(seqN, func(i int) error {
		_, err := r.deleteVolume(ids[i])
		return err
	}, func(i int) error {
		if err := r.floor.deleteVolume(floorNames[i]); err != nil {
			return err
		}
		r.floorGone(floorNames[i])
		return nil
	})
	r.addRow(seqRow("DeleteVolume", res, floorDelete))
	r.finish()
}

// BenchmarkRBDVolumesConcurrent: 100 CreateVolume and then 100 DeleteVolume
// calls on 16 concurrent clients, then 100 restores from one snapshot the
// same way, each next to the floor run the same way. The driver's resident
// memory is sampled throughout (the lean figures).
func BenchmarkRBDVolumesConcurrent(b *testing.B) {
	r := newRBDRun(b)
	r.warmUp()
	stopSampling := r.sampleRSS()
	mode := fmt.Sprintf("c%d", concurrency)
	ids := make([]string, concN)
	created := r.timeConcurrent(concN, concurrency, false, func(i int) (int, error) {
		id, retries, err := r.createVolume(r.name("conc", i), nil)
		ids[i] = id
		return retries, err
	})
	floorNames := make([]string, concN)
	for i := range floorNames {
		floorNames[i] = r.name("fconc", i)
		r.addFloor(floorNames[i])
	}
	floorCreated := r.timeConcurrent(concN, concurrency, true, func(i int) (int, error) {
		return 0, r.floor.createVolume(floorNames[i])
	})
	if len(floorCreated.errs) > 0 {
		b.Fatalf("floor creates failed: %v", errSummary(floorCreated.errs))
	}
	if len(created.errs) > 0 {
		b.Logf("%d CreateVolume calls failed: %v", len(created.errs), errSummary(created.errs))
	}
	var driverImages []string
	for _, id := range ids {
		if id != "" {
			driverImages = append(driverImages, imageOf(id, false))
		}
	}
	r.expectImages(append(driverImages, floorNames...)...)
	r.addRow(concRow("CreateVolume", mode, concN, created, floorCreated, floorCreate))

	deleted := r.timeConcurrent(concN, concurrency, false, func(i int) (int, error) {
		if ids[i] == "" {
			return 0, fmt.Errorf("no volume (its create failed)")
		}
		return r.deleteVolume(ids[i])
	})
	floorDeleted := r.timeConcurrent(concN, concurrency, true, func(i int) (int, error) {
		if err := r.floor.deleteVolume(floorNames[i]); err != nil {
			return 0, err
		}
		r.floorGone(floorNames[i])
		return 0, nil
	})
	if len(floorDeleted.errs) > 0 {
		b.Fatalf("floor deletes failed: %v", errSummary(floorDeleted.errs))
	}
	if len(deleted.errs) > 0 {
		b.Logf("%d DeleteVolume calls failed: %v", len(deleted.errs), errSummary(deleted.errs))
	}
	r.addRow(concRow("DeleteVolume", mode, concN, deleted, floorDeleted, floorDelete))

	r.concurrentRestores(mode)
	stopSampling()
	r.finish()
}

// concurrentRestores times 100 restores of one snapshot on 16 clients, and
// the floor's 100 clones of one snapshot image the same way; the restored
// volumes are deleted afterwards (untimed).
func (r *rbdRun) concurrentRestores(mode string) {
	b := r.b
	srcID, _, err := r.createVolume(r.name("csrc", 0), nil)
	if err != nil {
		b.Fatalf("source volume: %v", err)
	}
	snapID, err := r.createSnapshot(r.name("csnap", 0), srcID)
	if err != nil {
		b.Fatalf("snapshot: %v", err)
	}
	floorSrc, floorSnap := r.name("fcsrc", 0), r.name("fcsnap", 0)
	if err := r.floorDo(floorSrc, func() error { return r.floor.createVolume(floorSrc) }); err != nil {
		b.Fatalf("floor source: %v", err)
	}
	if err := r.floorDo(floorSnap, func() error { return r.floor.snapshot(floorSrc, floorSnap) }); err != nil {
		b.Fatalf("floor snapshot: %v", err)
	}
	ids := make([]string, concN)
	restored := r.timeConcurrent(concN, concurrency, false, func(i int) (int, error) {
		id, retries, err := r.createVolume(r.name("crestore", i), snapshotSource(snapID))
		ids[i] = id
		return retries, err
	})
	floorNames := make([]string, concN)
	for i := range floorNames {
		floorNames[i] = r.name("fcrestore", i)
		r.addFloor(floorNames[i])
	}
	floorRestored := r.timeConcurrent(concN, concurrency, true, func(i int) (int, error) {
		return 0, r.floor.restore(floorSnap, floorNames[i])
	})
	if len(floorRestored.errs) > 0 {
		b.Fatalf("floor restores failed: %v", errSummary(floorRestored.errs))
	}
	if len(restored.errs) > 0 {
		b.Logf("%d restores failed: %v", len(restored.errs), errSummary(restored.errs))
	}
	var want []string
	for _, id := range ids {
		if id != "" {
			want = append(want, imageOf(id, false))
		}
	}
	r.expectImages(append(want, floorNames...)...)
	r.addRow(concRow("Restore(CreateVolume)", mode, concN, restored, floorRestored, floorRestore))
	// Untimed cleanup, restores before their snapshot.
	cleanup := r.timeConcurrent(concN, concurrency, false, func(i int) (int, error) {
		if ids[i] == "" {
			return 0, nil
		}
		return r.deleteVolume(ids[i])
	})
	if len(cleanup.errs) > 0 {
		b.Fatalf("deleting the restored volumes: %v", errSummary(cleanup.errs))
	}
	for _, name := range floorNames {
		if err := r.floor.removeAll(name); err != nil {
			b.Fatalf("floor cleanup: %v", err)
		}
		r.floorGone(name)
	}
}

// BenchmarkRBDSnapshotsAndClones: CreateSnapshot, restore (CreateVolume
// from a snapshot), PVC clone (CreateVolume from a volume) and
// DeleteSnapshot, each next to its floor. All snapshots and clones hang off
// one source volume (and one floor source image).
func BenchmarkRBDSnapshotsAndClones(b *testing.B) {
	r := newRBDRun(b)
	r.warmUp()
	srcID, _, err := r.createVolume(r.name("src", 0), nil)
	if err != nil {
		b.Fatalf("source volume: %v", err)
	}
	floorSrc := r.name("fsrc", 0)
	if err := r.floorDo(floorSrc, func() error { return r.floor.createVolume(floorSrc) }); err != nil {
		b.Fatalf("floor source: %v", err)
	}

	snapIDs := make([]string, seqN)
	var want []string
	res := r.timeSequential(seqN, func(i int) error {
		id, err := r.createSnapshot(r.name("snap", i), srcID)
		snapIDs[i] = id
		return err
	}, func(i int) error {
		name := r.name("fsnap", i)
		want = append(want, name)
		return r.floorDo(name, func() error { return r.floor.snapshot(floorSrc, name) })
	})
	for _, id := range snapIDs {
		want = append(want, imageOf(id, true))
	}
	r.expectImages(want...)
	r.addRow(seqRow("CreateSnapshot", res, floorSnapshot))

	restoreIDs := make([]string, seqN)
	want = want[:0]
	res = r.timeSequential(seqN, func(i int) error {
		id, _, err := r.createVolume(r.name("restore", i), snapshotSource(snapIDs[i]))
		restoreIDs[i] = id
		return err
	}, func(i int) error {
		name := r.name("frestore", i)
		want = append(want, name)
		return r.floorDo(name, func() error { return r.floor.restore(r.name("fsnap", i), name) })
	})
	for _, id := range restoreIDs {
		want = append(want, imageOf(id, false))
	}
	r.expectImages(want...)
	r.addRow(seqRow("Restore(CreateVolume)", res, floorRestore))

	r.noteChildrenCost(imageOf(srcID, false))
	cloneIDs := make([]string, seqN)
	want = want[:0]
	res = r.timeSequential(seqN, func(i int) error {
		id, _, err := r.createVolume(r.name("clone", i), volumeSource(srcID))
		cloneIDs[i] = id
		return err
	}, func(i int) error {
		name := r.name("fclone", i)
		want = append(want, name, name+"-temp")
		r.addFloor(name + "-temp")
		return r.floorDo(name, func() error { return r.floor.pvcClone(floorSrc, name) })
	})
	for _, id := range cloneIDs {
		img := imageOf(id, false)
		want = append(want, img, img+"-temp")
	}
	r.expectImages(want...)
	r.noteChildrenCost(imageOf(srcID, false))
	r.addRow(seqRow("PVCClone(CreateVolume)", res, floorClone))

	// Clones and restores go first (untimed), so that the snapshots have
	// no clones left when DeleteSnapshot is timed.
	for _, id := range append(append([]string(nil), cloneIDs...), restoreIDs...) {
		if _, err := r.deleteVolume(id); err != nil {
			b.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	for i := range seqN {
		for _, name := range []string{r.name("fclone", i), r.name("fclone", i) + "-temp", r.name("frestore", i)} {
			if err := r.floor.removeAll(name); err != nil {
				b.Fatalf("floor cleanup: %v", err)
			}
			r.floorGone(name)
		}
	}
	res = r.timeSequential(seqN, func(i int) error {
		return r.deleteSnapshot(snapIDs[i])
	}, func(i int) error {
		name := r.name("fsnap", i)
		if err := r.floor.deleteSnapshot(name); err != nil {
			return err
		}
		r.floorGone(name)
		return nil
	})
	r.addRow(seqRow("DeleteSnapshot", res, floorDelSnap))
	r.finish()
}

// noteChildrenCost records, for reading the snapshot and clone rows, how
// many snapshots (all namespaces) the source image carries and what one
// ListChildrenAttributes call on it costs: the driver makes that call in
// every CreateSnapshot and PVC clone, and the floor does not.
func (r *rbdRun) noteChildrenCost(image string) {
	img, err := rbd.OpenImageReadOnly(r.admin, image, rbd.NoSnapshot)
	if err != nil {
		r.b.Fatalf("open %s: %v", image, err)
	}
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		r.b.Fatal(err)
	}
	start := time.Now()
	if _, err := img.ListChildrenAttributes(); err != nil {
		r.b.Fatal(err)
	}
	note("rbd: the snapshot/clone source carries %d snapshots, counting the trash namespace; one ListChildrenAttributes on it takes %s",
		len(snaps), time.Since(start).Round(100*time.Microsecond))
}
