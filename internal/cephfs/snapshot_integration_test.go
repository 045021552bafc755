//go:build integration

package cephfs_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotRestoreAndCloneKeepFiles writes files through a ceph-fuse
// mount staged by the node service, snapshots, writes more, and checks what
// a restore (into a bigger size) and a PVC clone contain.
func TestSnapshotRestoreAndCloneKeepFiles(t *testing.T) {
	e := newEnv(t)
	src := e.newVolume("src", 32<<20, nil)
	srcSub := src.GetVolumeContext()["subvolumeName"]
	staging, target := e.mounted(src, rwo()[0])
	before := randomBytes(t, 3<<20)
	writeFile(t, target+"/before.bin", before)
	if err := os.MkdirAll(target+"/dir/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, target+"/dir/sub/small.txt", []byte("nested"))

	snapName := uniqueName("snap")
	snap := e.snapshot(snapName, src.GetVolumeId())
	su := testutil.UUIDOf(t, snap.GetSnapshotId())
	snapSub := "csi-snap-" + su
	if !snap.GetReadyToUse() || snap.GetSizeBytes() != 32<<20 || snap.GetSourceVolumeId() != src.GetVolumeId() {
		t.Errorf("snapshot = %v", snap)
	}
	if names := e.snapshotNames(srcSub); !slices.Contains(names, snapSub) {
		t.Errorf("subvolume snapshots of %s = %v, want %s", srcSub, names, snapSub)
	}
	if got := testutil.Omap(t, e.meta, "csi.snaps.default")["csi.snap."+snapName]; got != su {
		t.Errorf("csi.snaps.default[csi.snap.%s] = %q, want %q", snapName, got, su)
	}
	entry := testutil.Omap(t, e.meta, "csi.snap."+su)
	if entry["csi.snapname"] != snapName || entry["csi.imagename"] != snapSub || entry["csi.source"] != srcSub {
		t.Errorf("csi.snap.%s = %v", su, entry)
	}
	// A retry returns the same snapshot.
	again := e.snapshot(snapName, src.GetVolumeId())
	if again.GetSnapshotId() != snap.GetSnapshotId() {
		t.Errorf("retried CreateSnapshot = %s, want %s", again.GetSnapshotId(), snap.GetSnapshotId())
	}
	if d := again.GetCreationTime().AsTime().Sub(snap.GetCreationTime().AsTime()); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("retried CreateSnapshot reports creation at %v, the first %v", again.GetCreationTime().AsTime(), snap.GetCreationTime().AsTime())
	}

	after := []byte("written after the snapshot")
	writeFile(t, target+"/after.txt", after)

	// Restore into a bigger volume: the clone gets the requested quota.
	restored := e.newVolume("rst", 64<<20, testutil.FromSnapshot(snap.GetSnapshotId()))
	rSub := restored.GetVolumeContext()["subvolumeName"]
	if info := e.subvolumeInfo(rSub); info.Type != "clone" || quota(info) != 64<<20 || restored.GetCapacityBytes() != 64<<20 {
		t.Errorf("restored subvolume: type %s, quota %d, capacity %d; want clone of 64 MiB", info.Type, quota(info), restored.GetCapacityBytes())
	}
	rStaging, rTarget := e.mounted(restored, rwo()[0])
	mustEqual(t, "restored before.bin", readFile(t, rTarget+"/before.bin"), before)
	mustEqual(t, "restored nested file", readFile(t, rTarget+"/dir/sub/small.txt"), []byte("nested"))
	if _, err := os.Stat(rTarget + "/after.txt"); !os.IsNotExist(err) {
		t.Errorf("a file written after the snapshot is in the restore: %v", err)
	}

	// A PVC clone has both files; its temporary snapshot is gone afterwards.
	cloned := e.newVolume("cln", 32<<20, testutil.FromVolume(src.GetVolumeId()))
	cSub := cloned.GetVolumeContext()["subvolumeName"]
	if info := e.subvolumeInfo(cSub); info.Type != "clone" || quota(info) != 32<<20 {
		t.Errorf("cloned subvolume: type %s, quota %d", info.Type, quota(info))
	}
	if names := e.snapshotNames(srcSub); !slices.Equal(names, []string{snapSub}) {
		t.Errorf("snapshots of the source after the PVC clone = %v, want only %s", names, snapSub)
	}
	cStaging, cTarget := e.mounted(cloned, rwo()[0])
	mustEqual(t, "cloned before.bin", readFile(t, cTarget+"/before.bin"), before)
	mustEqual(t, "cloned after.txt", readFile(t, cTarget+"/after.txt"), after)

	// The copies are independent of the source.
	writeFile(t, rTarget+"/own.txt", []byte("restore only"))
	if _, err := os.Stat(target + "/own.txt"); !os.IsNotExist(err) {
		t.Errorf("a write into the restore shows in the source: %v", err)
	}

	// A restore smaller than the snapshot is refused.
	if _, err := e.d.Controller.CreateVolume(e.ctx, e.volReq("small", 16<<20, testutil.FromSnapshot(snap.GetSnapshotId()))); status.Code(err) != codes.OutOfRange {
		t.Errorf("restore into a smaller size: %v, want OutOfRange", err)
	}

	e.release(cloned, cStaging, cTarget)
	e.release(restored, rStaging, rTarget)
	e.release(src, staging, target)
	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteSnapshot(snap.GetSnapshotId())
	for _, v := range []*csi.Volume{cloned, restored, src} {
		e.deleteVolume(v.GetVolumeId())
	}
	e.assertNoLeftovers("after deleting everything")
}

// fillSlowSource makes a volume whose clones take seconds: many files and
// some data, so the states before "complete" can be observed.
func fillSlowSource(t *testing.T, e *env) (*csi.Volume, *csi.Snapshot) {
	vol := e.newVolume("slow", 256<<20, nil)
	e.withMounted(vol, func(target string) {
		for i := 0; i < 300; i++ {
			writeFile(t, fmt.Sprintf("%s/f%03d", target, i), []byte(fmt.Sprint(i)))
		}
		writeFile(t, target+"/big.bin", randomBytes(t, 96<<20))
	})
	return vol, e.snapshot(uniqueName("snap"), vol.GetVolumeId())
}

func (e *env) cloneState(sub string) admin.CloneState {
	e.t.Helper()
	st, err := e.fsa.CloneStatus(fsName, group, sub)
	if err != nil {
		e.t.Fatalf("clone status of %s: %v", sub, err)
	}
	return st.State
}

// TestPendingCloneIsAbortedThenReady covers the asynchronous clone: Aborted
// while it copies (and its snapshot cannot be deleted), success on a retry,
// and a clone that ends badly removed and reported.
func TestPendingCloneIsAbortedThenReady(t *testing.T) {
	e := newEnv(t)
	src, snap := fillSlowSource(t, e)

	req := e.volReq("pend", 256<<20, testutil.FromSnapshot(snap.GetSnapshotId()))
	u := e.pendingClone(req)
	sub := "csi-vol-" + u
	if st := e.cloneState(sub); st != admin.ClonePending && st != admin.CloneInProgress {
		t.Fatalf("clone %s is %s already; the source is too small to observe a pending clone", sub, st)
	}
	// The snapshot cannot go while a clone copies from it.
	_, err := e.d.Controller.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteSnapshot during a clone: %v, want FailedPrecondition", err)
	}
	if !slices.Contains(e.snapshotNames(src.GetVolumeContext()["subvolumeName"]), "csi-snap-"+testutil.UUIDOf(t, snap.GetSnapshotId())) {
		t.Fatal("the snapshot went despite the running clone")
	}
	vol, aborted := e.createVolume(req)
	if testutil.UUIDOf(t, vol.GetVolumeId()) != u {
		t.Errorf("the retry made another volume: %s, want uuid %s", vol.GetVolumeId(), u)
	}
	t.Logf("clone ready after %d more Aborted answers", aborted)
	if st := e.cloneState(sub); st != admin.CloneComplete {
		t.Errorf("clone state after success = %s", st)
	}

	// A clone that ends without completing (cancelled here) is removed with
	// its journal entry, and the error is reported.
	failReq := e.volReq("fail", 256<<20, testutil.FromSnapshot(snap.GetSnapshotId()))
	fu := e.pendingClone(failReq)
	failSub := "csi-vol-" + fu
	if err := e.fsa.CancelClone(fsName, group, failSub); err != nil {
		t.Fatalf("cancelling clone %s: %v", failSub, err)
	}
	_, err = e.d.Controller.CreateVolume(e.ctx, failReq)
	if status.Code(err) != codes.Internal || !containsFold(status.Convert(err).Message(), "canceled") {
		t.Errorf("CreateVolume after the clone was cancelled: %v, want Internal reporting it", err)
	}
	if e.subvolumeExists(failSub) {
		t.Errorf("failed clone %s was not removed", failSub)
	}
	if _, ok := testutil.Omap(t, e.meta, "csi.volumes.default")["csi.volume."+failReq.GetName()]; ok || testutil.Omap(t, e.meta, "csi.volume."+fu) != nil {
		t.Error("the failed clone's journal entry was not removed")
	}

	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteVolume(vol.GetVolumeId())
	e.deleteVolume(src.GetVolumeId())
	e.assertNoLeftovers("after deleting everything")
}

// TestDeleteVolumeDuringPVCClone deletes a PVC clone while it still copies:
// the clone is cancelled and removed, and its temporary snapshot on the
// source goes with it.
func TestDeleteVolumeDuringPVCClone(t *testing.T) {
	e := newEnv(t)
	src, snap := fillSlowSource(t, e)
	srcSub := src.GetVolumeContext()["subvolumeName"]
	u := e.pendingClone(e.volReq("pvcc", 256<<20, testutil.FromVolume(src.GetVolumeId())))
	sub := "csi-vol-" + u
	if !slices.Contains(e.snapshotNames(srcSub), sub) {
		t.Fatalf("no temporary snapshot %s on the source: %v", sub, e.snapshotNames(srcSub))
	}
	id := "0001-000e-" + e.c.ClusterID + fmt.Sprintf("-%016x-", fsID(t, e)) + u
	e.deleteVolume(id)
	deadline := time.Now().Add(10 * time.Second)
	for e.subvolumeExists(sub) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if e.subvolumeExists(sub) {
		t.Errorf("cancelled clone %s still exists", sub)
	}
	if names := e.snapshotNames(srcSub); slices.Contains(names, sub) {
		t.Errorf("temporary snapshot left on the source: %v", names)
	}
	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteVolume(src.GetVolumeId())
	e.assertNoLeftovers("after deleting everything")
}

func fsID(t *testing.T, e *env) int64 {
	vols, err := e.fsa.EnumerateVolumes()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Name == fsName {
			return v.ID
		}
	}
	t.Fatalf("no filesystem %s", fsName)
	return 0
}

// TestBackingSnapshotVolume mounts a snapshot read-only without copying it.
// Deleting the snapshot while the volume exists defers its removal to the
// volume's deletion.
func TestBackingSnapshotVolume(t *testing.T) {
	e := newEnv(t)
	src := e.newVolume("bsrc", 16<<20, nil)
	srcSub := src.GetVolumeContext()["subvolumeName"]
	staging, target := e.mounted(src, rwo()[0])
	data := []byte("seen through the snapshot")
	writeFile(t, target+"/f", data)
	snap := e.snapshot(uniqueName("bsnap"), src.GetVolumeId())
	writeFile(t, target+"/later", []byte("not in the snapshot"))
	e.release(src, staging, target)

	rox := fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	req := e.volReq("bvol", 0, testutil.FromSnapshot(snap.GetSnapshotId()), "backingSnapshot", "true")
	if _, err := e.d.Controller.CreateVolume(e.ctx, req); status.Code(err) != codes.InvalidArgument {
		t.Errorf("writable snapshot-backed volume: %v, want InvalidArgument", err)
	}
	req.VolumeCapabilities = []*csi.VolumeCapability{rox}
	vol, aborted := e.createVolume(req)
	if aborted != 0 {
		t.Errorf("a snapshot-backed volume needed %d retries; it copies nothing", aborted)
	}
	u := testutil.UUIDOf(t, vol.GetVolumeId())
	if e.subvolumeExists("csi-vol-" + u) {
		t.Error("a snapshot-backed volume made a subvolume")
	}
	if got := testutil.Omap(t, e.meta, "csi.volume."+u)["csi.backingsnapshotid"]; got != snap.GetSnapshotId() {
		t.Errorf("journal csi.backingsnapshotid = %q, want %q", got, snap.GetSnapshotId())
	}
	if vol.GetVolumeContext()["backingSnapshotID"] != snap.GetSnapshotId() || vol.GetCapacityBytes() != 16<<20 {
		t.Errorf("volume = %v", vol)
	}
	// The reference object, in ceph-csi's layout: version 1, two counted refs.
	refObj := "rt-backingsnapshot-" + snap.GetSnapshotId()
	checkRefs := func(count byte, snapRef byte) {
		t.Helper()
		ver := make([]byte, 8)
		n, err := e.meta.GetXattr(refObj, "csi.ceph.com/rt-version", ver)
		if err != nil || !bytes.Equal(ver[:n], []byte{0, 0, 0, 1}) {
			t.Errorf("%s version xattr = %v, %v", refObj, ver[:n], err)
		}
		data := make([]byte, 8)
		n, err = e.meta.Read(refObj, data, 0)
		if err != nil || !bytes.Equal(data[:n], []byte{0, 0, 0, count}) {
			t.Errorf("%s count = %v, %v; want %d", refObj, data[:n], err, count)
		}
		refs := testutil.Omap(t, e.meta, refObj)
		if refs[snap.GetSnapshotId()] != string([]byte{snapRef}) || refs[vol.GetVolumeId()] != "\x01" || len(refs) != 2 {
			t.Errorf("%s refs = %q", refObj, refs)
		}
	}
	checkRefs(2, 1)
	bStaging, bTarget := e.mounted(vol, rox)
	mustEqual(t, "file in the snapshot-backed volume", readFile(t, bTarget+"/f"), data)
	if _, err := os.Stat(bTarget + "/later"); !os.IsNotExist(err) {
		t.Errorf("a file written after the snapshot is visible: %v", err)
	}
	if err := os.WriteFile(bTarget+"/w", []byte("x"), 0o644); err == nil {
		t.Error("a snapshot-backed volume accepted a write")
	}
	if _, err := e.d.Controller.ControllerExpandVolume(e.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: size(32 << 20), Secrets: e.secrets}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("expanding a snapshot-backed volume: %v, want InvalidArgument", err)
	}

	// The snapshot is "deleted" but stays while the volume uses it.
	snapSub := "csi-snap-" + testutil.UUIDOf(t, snap.GetSnapshotId())
	e.deleteSnapshot(snap.GetSnapshotId())
	if !slices.Contains(e.snapshotNames(srcSub), snapSub) {
		t.Fatal("the snapshot went while a volume still mounts it")
	}
	mustEqual(t, "file after DeleteSnapshot", readFile(t, bTarget+"/f"), data)
	checkRefs(1, 2) // the snapshot's own ref is masked, the volume's counts
	e.release(vol, bStaging, bTarget)
	e.deleteVolume(vol.GetVolumeId())
	if slices.Contains(e.snapshotNames(srcSub), snapSub) {
		t.Error("the snapshot outlived its last snapshot-backed volume")
	}
	if _, err := e.meta.Stat(refObj); err == nil {
		t.Errorf("%s outlived the last snapshot-backed volume", refObj)
	}
	if testutil.Omap(t, e.meta, "csi.snap."+testutil.UUIDOf(t, snap.GetSnapshotId())) != nil {
		t.Error("the snapshot's journal entry outlived its last snapshot-backed volume")
	}
	e.deleteVolume(src.GetVolumeId())
	e.assertNoLeftovers("after deleting everything")
}

// TestCloneWaitAnswersOnceCopied: with --clonewait a short restore or PVC
// clone is ready on the first CreateVolume, with the source's files.
func TestCloneWaitAnswersOnceCopied(t *testing.T) {
	e := newEnv(t, func(o *config.Options) { o.CloneWait = 30 * time.Second })
	src := e.newVolume("src", 16<<20, nil)
	data := randomBytes(t, 1<<20)
	e.withMounted(src, func(target string) { writeFile(t, target+"/data.bin", data) })
	snap := e.snapshot(uniqueName("snap"), src.GetVolumeId())

	for _, source := range []*csi.VolumeContentSource{testutil.FromSnapshot(snap.GetSnapshotId()), testutil.FromVolume(src.GetVolumeId())} {
		start := time.Now()
		resp, err := e.d.Controller.CreateVolume(e.ctx, e.volReq("waited", 16<<20, source))
		if err != nil {
			t.Fatalf("CreateVolume from %v with --clonewait: %v, want success on the first call", source, err)
		}
		e.adopt(resp.GetVolume().GetVolumeId())
		t.Logf("CreateVolume from %T answered in %v", source.GetType(), time.Since(start))
		vol := resp.GetVolume()
		if st := e.cloneState(vol.GetVolumeContext()["subvolumeName"]); st != admin.CloneComplete {
			t.Errorf("clone state = %s, want complete", st)
		}
		e.withMounted(vol, func(target string) { mustEqual(t, "data.bin in the copy", readFile(t, target+"/data.bin"), data) })
		e.deleteVolume(vol.GetVolumeId())
	}
	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteVolume(src.GetVolumeId())
}
