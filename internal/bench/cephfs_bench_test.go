//go:build integration

package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/volid"
)

const (
	fsName     = "myfs"
	fsMetaPool = "myfs-metadata"
	fsGroup    = "csi"
	fsJournal  = "csi" // RADOS namespace of the CephFS journal
	fsSize     = 1 << 30
	fsCloneN   = 20 // clones wait for the cloner: fewer of them, enough for a median that the cloner's timing moves less
	// clonePoll is how often the floor asks for a clone's state; the
	// driver's client retries an Aborted CreateVolume every 20 ms too.
	clonePoll = 20 * time.Millisecond
)

// What each CephFS floor consists of, as printed under the table.
const (
	fsFloorCreate   = "CreateSubVolume + SubVolumeInfo (path) + 2 omap writes (journal reserve)"
	fsFloorDelete   = "RemoveSubVolume + 2 omap ops (directory key removal, entry object delete)"
	fsFloorSnapshot = "SubVolumeInfo (size) + CreateSubVolumeSnapshot + 2 omap writes"
	fsFloorRestore  = "CloneSubVolumeSnapshot, CloneStatus every 20 ms until complete, SubVolumeInfo + 2 omap writes"
	fsFloorClone    = "CreateSubVolumeSnapshot, CloneSubVolumeSnapshot, CloneStatus every 20 ms until complete, RemoveSubVolumeSnapshot, SubVolumeInfo + 2 omap writes"
	fsFloorDelSnap  = "RemoveSubVolumeSnapshot + 2 omap ops"
)

// fsFloor makes the raw go-ceph calls (cephfs/admin through the mgr, and
// omap writes in the metadata pool) a driver operation needs at the least,
// as the CephFS provisioner user with the driver's connection settings.
type fsFloor struct {
	fsa *admin.FSAdmin
	io  *rados.IOContext
	dir string
	run string
}

func newFSFloor(b *testing.B, r *run) *fsFloor {
	b.Helper()
	conns := cephconn.NewPool(time.Hour, 30*time.Second)
	creds := cephconn.Credentials{ID: r.cluster.Var("CEPH_FS_PROVISIONER_ID"), Key: r.cluster.Var("CEPH_FS_PROVISIONER_KEY")}
	var conn *cephconn.Conn
	asok, err := connectCounted(b, func() (err error) {
		conn, err = conns.Get([]string{r.cluster.Monitors}, creds)
		return err
	})
	if err != nil {
		conns.Close()
		b.Fatalf("floor connection as %s: %v", creds, err)
	}
	io, err := conn.OpenIOContext(fsMetaPool)
	if err != nil {
		conn.Release()
		conns.Close()
		b.Fatalf("floor: opening pool %s: %v", fsMetaPool, err)
	}
	io.SetNamespace(fsJournal)
	b.Cleanup(func() {
		io.Destroy()
		conn.Release()
		conns.Close()
	})
	r.floorAsok = asok
	return &fsFloor{fsa: admin.NewFromConn(conn.Conn), io: io, dir: "bench." + r.id + ".dir", run: r.id}
}

func (f *fsFloor) entryObject(name string) string { return "bench." + f.run + ".entry." + name }

func (f *fsFloor) journalReserve(name string) error {
	if err := writeOp(f.io, f.dir, func(op *rados.WriteOp) {
		op.SetOmap(map[string][]byte{"csi.volume." + name: []byte(uuid.NewString())})
	}); err != nil {
		return fmt.Errorf("floor journal directory: %w", err)
	}
	return writeOp(f.io, f.entryObject(name), func(op *rados.WriteOp) {
		op.Create(rados.CreateExclusive)
		op.SetOmap(map[string][]byte{"csi.volname": []byte(name), "csi.imagename": []byte(name)})
	})
}

func (f *fsFloor) journalRelease(name string) error {
	if err := writeOp(f.io, f.dir, func(op *rados.WriteOp) { op.RmOmapKeys([]string{"csi.volume." + name}) }); err != nil {
		return err
	}
	return f.io.Delete(f.entryObject(name))
}

func (f *fsFloor) createVolume(name string) error {
	if err := f.journalReserve(name); err != nil {
		return err
	}
	if err := f.fsa.CreateSubVolume(fsName, fsGroup, name, &admin.SubVolumeOptions{Size: fsSize, Mode: 0o777}); err != nil {
		return err
	}
	_, err := f.fsa.SubVolumeInfo(fsName, fsGroup, name)
	return err
}

func (f *fsFloor) deleteVolume(name string) error {
	if err := f.fsa.RemoveSubVolumeWithFlags(fsName, fsGroup, name, admin.SubVolRmFlags{RetainSnapshots: true}); err != nil {
		return err
	}
	return f.journalRelease(name)
}

func (f *fsFloor) snapshot(src, snap string) error {
	if err := f.journalReserve(snap); err != nil {
		return err
	}
	if _, err := f.fsa.SubVolumeInfo(fsName, fsGroup, src); err != nil {
		return err
	}
	return f.fsa.CreateSubVolumeSnapshot(fsName, fsGroup, src, snap)
}

func (f *fsFloor) deleteSnapshot(src, snap string) error {
	if err := f.fsa.RemoveSubVolumeSnapshot(fsName, fsGroup, src, snap); err != nil {
		return err
	}
	return f.journalRelease(snap)
}

// cloneToReady clones src@snap into dst and waits for the copy to complete.
func (f *fsFloor) cloneToReady(src, snap, dst string) error {
	if err := f.journalReserve(dst); err != nil {
		return err
	}
	if err := f.fsa.CloneSubVolumeSnapshot(fsName, fsGroup, src, snap, dst, &admin.CloneOptions{TargetGroup: fsGroup}); err != nil {
		return err
	}
	deadline := time.Now().Add(callTimeout)
	for {
		st, err := f.fsa.CloneStatus(fsName, fsGroup, dst)
		if err != nil {
			return err
		}
		switch st.State {
		case admin.CloneComplete:
			_, err := f.fsa.SubVolumeInfo(fsName, fsGroup, dst)
			return err
		case admin.ClonePending, admin.CloneInProgress:
		default:
			return fmt.Errorf("floor clone %s ended %s", dst, st.State)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("floor clone %s not complete after %s", dst, callTimeout)
		}
		time.Sleep(clonePoll)
	}
}

// pvcCloneToReady is the PVC clone: a temporary snapshot of src, the clone,
// and the temporary snapshot dropped once the copy is complete.
func (f *fsFloor) pvcCloneToReady(src, dst string) error {
	if err := f.fsa.CreateSubVolumeSnapshot(fsName, fsGroup, src, dst); err != nil {
		return err
	}
	if err := f.cloneToReady(src, dst, dst); err != nil {
		return err
	}
	return f.fsa.RemoveSubVolumeSnapshot(fsName, fsGroup, src, dst)
}

// fsRun is one CephFS benchmark: the driver, its floor, and what both made
// and have not yet deleted.
type fsRun struct {
	*run
	floor   *fsFloor
	fsa     *admin.FSAdmin // admin view for the checks
	meta    *rados.IOContext
	secrets map[string]string

	volumes   []string // driver volume IDs, creation order
	snapshots []string
	floorSubs []string // floor subvolumes, creation order
	floorSnap map[string]string
	finished  bool
}

func newFSRun(b *testing.B) *fsRun {
	b.Helper()
	r := &fsRun{run: newRun(b, "cephfs"), floorSnap: map[string]string{}}
	r.secrets = r.cluster.CephFSSecrets()
	r.fsa = admin.NewFromConn(r.cluster.Admin())
	r.meta = r.cluster.IOContext(b, fsMetaPool)
	r.meta.SetNamespace(fsJournal)
	r.floor = newFSFloor(b, r.run)
	note("cephfs: filesystem %s, subvolume group %s, quota %d MiB, empty sources for clones; driver and floor as the csi-cephfs-provisioner user; clone rows run to a complete clone (the driver's client retries Aborted every 20 ms, the floor polls CloneStatus as often)",
		fsName, fsGroup, fsSize>>20)
	b.Cleanup(func() {
		if !r.finished {
			if left := r.cleanup(); len(left) > 0 {
				b.Errorf("leftovers after a failed run: %s", strings.Join(left, ", "))
			}
		}
	})
	return r
}

func (r *fsRun) trackID(id string) {
	if d, err := volid.Decode(id); err == nil {
		r.track(d.UUID)
	}
}

func (r *fsRun) createVolume(name string, src *csi.VolumeContentSource) (string, int, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	var id string
	retries, err := call(ctx, func(ctx context.Context) error {
		resp, err := r.driver.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: fsSize}, VolumeCapabilities: volumeCaps(),
			Parameters: map[string]string{"clusterID": r.cluster.ClusterID, "fsName": fsName},
			Secrets:    r.secrets, VolumeContentSource: src,
		})
		if err == nil {
			id = resp.GetVolume().GetVolumeId()
		}
		return err
	})
	if err != nil {
		return "", retries, err
	}
	r.trackID(id)
	r.mu.Lock()
	r.volumes = append(r.volumes, id)
	r.mu.Unlock()
	return id, retries, nil
}

func (r *fsRun) deleteVolume(id string) error {
	ctx, cancel := r.ctx()
	defer cancel()
	_, err := call(ctx, func(ctx context.Context) error {
		_, err := r.driver.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: r.secrets})
		return err
	})
	return err
}

func (r *fsRun) createSnapshot(name, source string) (string, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	var id string
	_, err := call(ctx, func(ctx context.Context) error {
		resp, err := r.driver.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source,
			Secrets: r.secrets, Parameters: map[string]string{"clusterID": r.cluster.ClusterID}})
		if err == nil {
			id = resp.GetSnapshot().GetSnapshotId()
		}
		return err
	})
	if err != nil {
		return "", err
	}
	r.trackID(id)
	r.mu.Lock()
	r.snapshots = append(r.snapshots, id)
	r.mu.Unlock()
	return id, nil
}

func (r *fsRun) deleteSnapshot(id string) error {
	ctx, cancel := r.ctx()
	defer cancel()
	_, err := call(ctx, func(ctx context.Context) error {
		_, err := r.driver.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: r.secrets})
		return err
	})
	return err
}

func (r *fsRun) floorSub(name string) {
	r.mu.Lock()
	r.floorSubs = append(r.floorSubs, name)
	r.mu.Unlock()
}

func subOf(id string) string {
	d, err := volid.Decode(id)
	if err != nil {
		return ""
	}
	return "csi-vol-" + d.UUID
}

// expectSubvolumes checks that the driver and the floor really made their
// subvolumes, and that clones are complete.
func (r *fsRun) expectSubvolumes(names ...string) {
	r.b.Helper()
	for _, n := range names {
		info, err := r.fsa.SubVolumeInfo(fsName, fsGroup, n)
		if err != nil || info.State != admin.StateComplete {
			r.b.Fatalf("subvolume %s: %+v, %v; want a complete subvolume", n, info, err)
		}
	}
}

func (r *fsRun) warmUp() {
	r.b.Helper()
	id, _, err := r.createVolume(r.name("warm", 0), nil)
	if err != nil {
		r.b.Fatalf("warm-up CreateVolume: %v", err)
	}
	if err := r.deleteVolume(id); err != nil {
		r.b.Fatalf("warm-up DeleteVolume: %v", err)
	}
	name := r.name("fwarm", 0)
	r.floorSub(name)
	if err := r.floor.createVolume(name); err != nil {
		r.b.Fatalf("warm-up floor: %v", err)
	}
	if err := r.floor.deleteVolume(name); err != nil {
		r.b.Fatalf("warm-up floor: %v", err)
	}
}

// cleanup deletes what is left (driver objects through the driver, floor
// objects directly, newest first) and lists what remains of this run.
func (r *fsRun) cleanup() []string {
	var problems []string
	for _, id := range r.snapshots {
		if err := r.deleteSnapshot(id); err != nil {
			problems = append(problems, fmt.Sprintf("delete snapshot %s: %v", id, err))
		}
	}
	for i := len(r.volumes) - 1; i >= 0; i-- {
		if err := r.deleteVolume(r.volumes[i]); err != nil {
			problems = append(problems, fmt.Sprintf("delete volume %s: %v", r.volumes[i], err))
		}
	}
	for snap, src := range r.floorSnap {
		if err := r.fsa.RemoveSubVolumeSnapshot(fsName, fsGroup, src, snap); err != nil && !isENOENT(err) {
			problems = append(problems, fmt.Sprintf("floor snapshot %s: %v", snap, err))
		}
	}
	for i := len(r.floorSubs) - 1; i >= 0; i-- {
		err := r.fsa.RemoveSubVolumeWithFlags(fsName, fsGroup, r.floorSubs[i], admin.SubVolRmFlags{Force: true})
		if err != nil && !isENOENT(err) {
			problems = append(problems, fmt.Sprintf("floor subvolume %s: %v", r.floorSubs[i], err))
		}
	}
	_ = r.meta.ListObjects(func(oid string) {
		if strings.HasPrefix(oid, "bench."+r.id+".") {
			_ = r.meta.Delete(oid)
		}
	})
	return append(problems, r.leftovers()...)
}

func isENOENT(err error) bool {
	var ec interface{ ErrorCode() int }
	return errors.As(err, &ec) && ec.ErrorCode() == -int(syscall.ENOENT)
}

func (r *fsRun) finish() {
	r.b.Helper()
	r.finished = true
	r.snapshots, r.volumes = nil, nil // everything was deleted through the timed calls
	if left := r.cleanup(); len(left) > 0 {
		r.b.Fatalf("the run left things behind: %s", strings.Join(left, ", "))
	}
}

// BenchmarkCephFS: CreateVolume, CreateSnapshot, restore and PVC clone (both
// until the clone is complete), DeleteSnapshot and DeleteVolume, each next to
// its floor.
func BenchmarkCephFS(b *testing.B) {
	r := newFSRun(b)
	r.warmUp()

	ids := make([]string, seqN)
	var want []string
	res := r.timeSequential(seqN, func(i int) error {
		id, _, err := r.createVolume(r.name("vol", i), nil)
		ids[i] = id
		return err
	}, func(i int) error {
		name := r.name("fvol", i)
		r.floorSub(name)
		want = append(want, name)
		return r.floor.createVolume(name)
	})
	for _, id := range ids {
		want = append(want, subOf(id))
	}
	r.expectSubvolumes(want...)
	r.addRow(seqRow("CreateVolume", res, fsFloorCreate))

	// Snapshots all of one source volume (and one floor source).
	srcID, floorSrc := ids[0], r.name("fvol", 0)
	snapIDs := make([]string, seqN)
	res = r.timeSequential(seqN, func(i int) error {
		id, err := r.createSnapshot(r.name("snap", i), srcID)
		snapIDs[i] = id
		return err
	}, func(i int) error {
		name := r.name("fsnap", i)
		r.floorSnap[name] = floorSrc
		return r.floor.snapshot(floorSrc, name)
	})
	if snaps, err := r.fsa.ListSubVolumeSnapshots(fsName, fsGroup, subOf(srcID)); err != nil || len(snaps) != seqN {
		b.Fatalf("snapshots of %s: %d, %v; want %d", subOf(srcID), len(snaps), err, seqN)
	}
	r.addRow(seqRow("CreateSnapshot", res, fsFloorSnapshot))

	restoreIDs := make([]string, fsCloneN)
	retries := 0
	want = want[:0]
	res = r.timeSequential(fsCloneN, func(i int) error {
		id, n, err := r.createVolume(r.name("restore", i), snapshotSource(snapIDs[i]))
		restoreIDs[i], retries = id, retries+n
		return err
	}, func(i int) error {
		name := r.name("frestore", i)
		r.floorSub(name)
		want = append(want, name)
		return r.floor.cloneToReady(floorSrc, r.name("fsnap", i), name)
	})
	for _, id := range restoreIDs {
		want = append(want, subOf(id))
	}
	r.expectSubvolumes(want...)
	x := seqRow("Restore(to-ready)", res, fsFloorRestore)
	x.Retries = retries
	r.addRow(x)

	cloneIDs := make([]string, fsCloneN)
	retries = 0
	want = want[:0]
	res = r.timeSequential(fsCloneN, func(i int) error {
		id, n, err := r.createVolume(r.name("clone", i), volumeSource(srcID))
		cloneIDs[i], retries = id, retries+n
		return err
	}, func(i int) error {
		name := r.name("fclone", i)
		r.floorSub(name)
		r.floorSnap[name] = floorSrc // the temporary snapshot, until dropped
		want = append(want, name)
		return r.floor.pvcCloneToReady(floorSrc, name)
	})
	for _, id := range cloneIDs {
		want = append(want, subOf(id))
	}
	r.expectSubvolumes(want...)
	if snaps, err := r.fsa.ListSubVolumeSnapshots(fsName, fsGroup, subOf(srcID)); err != nil || len(snaps) != seqN {
		b.Fatalf("snapshots of %s after the PVC clones: %d, %v; want the %d of CreateSnapshot", subOf(srcID), len(snaps), err, seqN)
	}
	x = seqRow("PVCClone(to-ready)", res, fsFloorClone)
	x.Retries = retries
	r.addRow(x)

	// Clones and restores go first (untimed).
	for _, id := range append(append([]string(nil), cloneIDs...), restoreIDs...) {
		if err := r.deleteVolume(id); err != nil {
			b.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	for i := range fsCloneN {
		for _, name := range []string{r.name("fclone", i), r.name("frestore", i)} {
			if err := r.floor.deleteVolume(name); err != nil {
				b.Fatalf("floor cleanup %s: %v", name, err)
			}
		}
	}
	res = r.timeSequential(seqN, func(i int) error {
		return r.deleteSnapshot(snapIDs[i])
	}, func(i int) error {
		name := r.name("fsnap", i)
		if err := r.floor.deleteSnapshot(floorSrc, name); err != nil {
			return err
		}
		delete(r.floorSnap, name)
		return nil
	})
	r.addRow(seqRow("DeleteSnapshot", res, fsFloorDelSnap))

	res = r.timeSequential(seqN, func(i int) error {
		return r.deleteVolume(ids[i])
	}, func(i int) error {
		return r.floor.deleteVolume(r.name("fvol", i))
	})
	r.addRow(seqRow("DeleteVolume", res, fsFloorDelete))
	r.finish()
}
