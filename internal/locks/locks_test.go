package locks

import (
	"reflect"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestSecondAcquireFailsUntilRelease(t *testing.T) {
	var s Set
	if !s.TryAcquire(VolumeName("a")) {
		t.Fatal("first acquire failed")
	}
	if s.TryAcquire(VolumeName("a")) {
		t.Fatal("second acquire of a held key succeeded")
	}
	if !s.TryAcquire(VolumeName("b")) {
		t.Fatal("an unrelated key is blocked")
	}
	s.Release(VolumeName("a"))
	if !s.TryAcquire(VolumeName("a")) {
		t.Fatal("acquire after release failed")
	}
}

func TestAcquireAllIsAllOrNothing(t *testing.T) {
	var s Set
	s.TryAcquire(VolumeName("b"))
	if _, ok := s.TryAcquireAll(VolumeName("a"), VolumeName("b"), VolumeName("c")); ok {
		t.Fatal("acquired a set that contains a held key")
	}
	if !s.TryAcquire(VolumeName("a")) || !s.TryAcquire(VolumeName("c")) {
		t.Fatal("a failed TryAcquireAll left keys held")
	}
	s.Release(VolumeName("a"))
	s.Release(VolumeName("b"))
	s.Release(VolumeName("c"))
	release, ok := s.TryAcquireAll(VolumeName("a"), VolumeName("b"))
	if !ok {
		t.Fatal("TryAcquireAll of free keys failed")
	}
	release()
	if !s.TryAcquire(VolumeName("a")) || !s.TryAcquire(VolumeName("b")) {
		t.Fatal("release did not free the keys")
	}
}

func TestConcurrentAcquireHasOneWinner(t *testing.T) {
	var s Set
	var winners atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if s.TryAcquire(VolumeName("same")) {
				winners.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := winners.Load(); n != 1 {
		t.Fatalf("%d goroutines acquired the same key", n)
	}
}

func TestVolumeIDsShareOneLockWhateverTheirSpelling(t *testing.T) {
	var s Set
	lower := "0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4"
	if !s.TryAcquire(VolumeID(lower)) {
		t.Fatal("first acquire failed")
	}
	// A volume ID and a volume name of the same text are different keys.
	if !s.TryAcquire(VolumeName(lower)) {
		t.Fatal("a volume name collided with a volume ID")
	}
	if s.TryAcquire(VolumeID(lower)) {
		t.Fatal("the same volume ID was acquired twice")
	}
}

func TestAcquireIsAbortedWhileHeld(t *testing.T) {
	var s Set
	release, err := s.Acquire(VolumeID("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(VolumeID("v1")); csierr.Code(err) != codes.Aborted {
		t.Fatalf("second acquire: %v, want Aborted", err)
	}
	release()
	if _, err := s.Acquire(VolumeID("v1")); err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
}

func TestKeysOfRequests(t *testing.T) {
	src := "0001-0001-c-0000000000000001-197480ab-6e0f-11ed-b5c4-6efb82c232c4"
	for _, tc := range []struct {
		req  any
		want []Key
	}{
		{&csi.CreateVolumeRequest{Name: "pvc-1"}, []Key{VolumeName("pvc-1")}},
		{&csi.CreateVolumeRequest{Name: "pvc-2", VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src}}}}, []Key{VolumeName("pvc-2"), VolumeID(src)}},
		{&csi.CreateVolumeRequest{Name: "pvc-3", VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: src}}}}, []Key{VolumeName("pvc-3"), SnapshotID(src).Shared()}},
		{&csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src}, []Key{SnapshotName("snap"), VolumeID(src)}},
		{&csi.DeleteSnapshotRequest{SnapshotId: src}, []Key{SnapshotID(src)}},
		{&csi.NodeStageVolumeRequest{VolumeId: src}, []Key{VolumeID(src)}},
		{&csi.NodeUnpublishVolumeRequest{VolumeId: src}, []Key{VolumeID(src)}},
		{&csi.NodeGetVolumeStatsRequest{VolumeId: src}, nil},
		{&csi.DeleteVolumeRequest{}, nil},
		{&reclaimspace.ControllerReclaimSpaceRequest{VolumeId: src}, []Key{VolumeID(src)}},
		{&reclaimspace.NodeReclaimSpaceRequest{VolumeId: src}, []Key{VolumeID(src)}},
	} {
		if got := KeysOf(tc.req); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("KeysOf(%T) = %v, want %v", tc.req, got, tc.want)
		}
	}
}

// Restores of one snapshot share its key; a delete of the snapshot is
// refused while one runs, and a restore while the delete runs.
func TestSharedKeys(t *testing.T) {
	var s Set
	snap := SnapshotID("0001-0001-c-0000000000000001-197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	r1, err := s.Acquire(VolumeName("pvc-1"), snap.Shared())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Acquire(VolumeName("pvc-2"), snap.Shared())
	if err != nil {
		t.Fatalf("a second restore of the snapshot: %v", err)
	}
	if _, err := s.Acquire(snap); csierr.Code(err) != codes.Aborted {
		t.Fatalf("delete during restores: %v, want Aborted", err)
	}
	r1()
	if _, err := s.Acquire(snap); csierr.Code(err) != codes.Aborted {
		t.Fatalf("delete during the last restore: %v, want Aborted", err)
	}
	r2()
	del, err := s.Acquire(snap)
	if err != nil {
		t.Fatalf("delete after the restores: %v", err)
	}
	if _, err := s.Acquire(VolumeName("pvc-3"), snap.Shared()); csierr.Code(err) != codes.Aborted {
		t.Fatalf("restore during the delete: %v, want Aborted", err)
	}
	if !s.TryAcquire(VolumeName("pvc-3")) {
		t.Fatal("a refused restore left its name held")
	}
	s.Release(VolumeName("pvc-3"))
	del()
	if len(s.held) != 0 {
		t.Fatalf("keys left held: %v", s.held)
	}
}
