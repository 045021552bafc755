//go:build integration

package rbd_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

func pattern(seed byte, n int) []byte {
	return bytes.Repeat([]byte{seed, seed + 1, seed + 2, 0xff}, n/4)
}

func TestSnapshotRestoreBytesAndShape(t *testing.T) {
	e := newRBDEnv(t)
	io2 := e.c.IOContext(t, "rbd2")
	src := e.create(uniqueName("src"), 8<<20, nil)
	srcImage := src.GetVolumeContext()["imageName"]
	before, after := pattern(1, 64<<10), pattern(9, 64<<10)
	testutil.WriteImage(t, e.io, srcImage, before, 1<<20)

	snapName := uniqueName("snap")
	snap := e.snapshot(snapName, src.GetVolumeId())
	if !snap.GetReadyToUse() || snap.GetSizeBytes() != 8<<20 || snap.GetCreationTime() == nil ||
		snap.GetSourceVolumeId() != src.GetVolumeId() {
		t.Errorf("snapshot = %v", snap)
	}
	su := testutil.UUIDOf(t, snap.GetSnapshotId())
	snapImage := "csi-snap-" + su
	testutil.WriteImage(t, e.io, srcImage, after, 1<<20) // not part of the snapshot

	// The shape a Rook user sees.
	if p := testutil.ImageParent(t, e.io, snapImage); !strings.HasPrefix(p, srcImage+"@") {
		t.Errorf("parent of %s = %q, want %s@...", snapImage, p, srcImage)
	}
	if s := testutil.ImageUserSnaps(t, e.io, srcImage); len(s) != 0 {
		t.Errorf("source still has snapshots %v", s)
	}
	if s := testutil.ImageUserSnaps(t, e.io, snapImage); len(s) != 1 || s[0] != snapImage {
		t.Errorf("snapshot image snapshots = %v, want [%s]", s, snapImage)
	}
	img, _ := rbd.OpenImageReadOnly(e.io, snapImage, rbd.NoSnapshot)
	features, _ := img.GetFeatures()
	img.Close()
	if features&^rbd.FeatureOperations != rbd.FeatureLayering|rbd.FeatureDeepFlatten {
		t.Errorf("snapshot image features = %#x", features)
	}
	if got := testutil.Omap(t, e.io, "csi.snaps.default")["csi.snap."+snapName]; got != su {
		t.Errorf("csi.snaps.default[csi.snap.%s] = %q", snapName, got)
	}
	j := testutil.Omap(t, e.io, "csi.snap."+su)
	if j["csi.snapname"] != snapName || j["csi.imagename"] != snapImage || j["csi.source"] != srcImage {
		t.Errorf("csi.snap.%s = %v", su, j)
	}

	// Idempotent by name; the same name for another source is AlreadyExists.
	if again := e.snapshot(snapName, src.GetVolumeId()); again.GetSnapshotId() != snap.GetSnapshotId() {
		t.Errorf("repeated CreateSnapshot gave %s, want %s", again.GetSnapshotId(), snap.GetSnapshotId())
	}
	other := e.create(uniqueName("other"), 4<<20, nil)
	_, err := e.d.Controller.CreateSnapshot(e.ctx, e.snapReq(snapName, other.GetVolumeId()))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("same snapshot name, other source: %v, want AlreadyExists", err)
	}

	fromSnap := testutil.FromSnapshot(snap.GetSnapshotId())
	// Restore: the snapshot's bytes, not the later write.
	restored := e.create(uniqueName("restore"), 8<<20, fromSnap)
	rImage := restored.GetVolumeContext()["imageName"]
	if p := testutil.ImageParent(t, e.io, rImage); p != snapImage+"@"+snapImage {
		t.Errorf("parent of restored = %q", p)
	}
	if got := testutil.ReadImage(t, e.io, rImage, len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("restored volume does not hold the bytes written before the snapshot")
	}
	// Restore into a bigger size.
	bigger := e.create(uniqueName("restore-big"), 16<<20, fromSnap)
	if bigger.GetCapacityBytes() != 16<<20 {
		t.Errorf("bigger restore capacity = %d", bigger.GetCapacityBytes())
	}
	if size := testutil.ImageSize(t, e.io, bigger.GetVolumeContext()["imageName"]); size != 16<<20 {
		t.Errorf("bigger restore image size = %d", size)
	}
	if got := testutil.ReadImage(t, e.io, bigger.GetVolumeContext()["imageName"], len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("bigger restore lost the snapshot's bytes")
	}
	// Restore into another pool of the same cluster.
	inPool2 := e.create(uniqueName("restore-pool2"), 8<<20, fromSnap, "pool", "rbd2")
	if inPool2.GetVolumeContext()["pool"] != "rbd2" || !testutil.ImageExists(t, io2, inPool2.GetVolumeContext()["imageName"]) {
		t.Fatalf("restore into rbd2: %v", inPool2.GetVolumeContext())
	}
	if got := testutil.ReadImage(t, io2, inPool2.GetVolumeContext()["imageName"], len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("restore into rbd2 lost the snapshot's bytes")
	}
	// Smaller than the snapshot: OutOfRange, and nothing made.
	_, err = e.d.Controller.CreateVolume(e.ctx, e.volReq(uniqueName("small"), 4<<20, fromSnap))
	if status.Code(err) != codes.OutOfRange {
		t.Errorf("restore into a smaller size: %v, want OutOfRange", err)
	}

	// Deleting the source keeps the snapshot and the restores readable.
	e.deleteVolume(src.GetVolumeId())
	if got := testutil.ReadImage(t, e.io, rImage, len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("restored volume unreadable after its source was deleted")
	}
	late := e.create(uniqueName("restore-late"), 8<<20, fromSnap)
	if got := testutil.ReadImage(t, e.io, late.GetVolumeContext()["imageName"], len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("restore after the source was deleted lost the bytes")
	}
	// Deleting the snapshot keeps the restores readable too.
	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteSnapshot(snap.GetSnapshotId()) // idempotent
	if got := testutil.ReadImage(t, e.io, rImage, len(before), 1<<20); !bytes.Equal(got, before) {
		t.Error("restored volume unreadable after the snapshot was deleted")
	}
	for _, v := range []*csi.Volume{restored, bigger, inPool2, late, other} {
		e.deleteVolume(v.GetVolumeId())
	}
	e.assertClean()
}

func TestPVCCloneThroughTempImage(t *testing.T) {
	e := newRBDEnv(t)
	src := e.create(uniqueName("src"), 8<<20, nil)
	srcImage := src.GetVolumeContext()["imageName"]
	before, after := pattern(3, 32<<10), pattern(7, 32<<10)
	testutil.WriteImage(t, e.io, srcImage, before, 0)

	fromVol := testutil.FromVolume(src.GetVolumeId())
	name := uniqueName("clone")
	clone := e.create(name, 12<<20, fromVol)
	testutil.WriteImage(t, e.io, srcImage, after, 0)
	cImage := clone.GetVolumeContext()["imageName"]
	temp := cImage + "-temp"
	if p := testutil.ImageParent(t, e.io, cImage); !strings.HasPrefix(p, temp+"@") {
		t.Errorf("parent of clone = %q, want %s@...", p, temp)
	}
	if p := testutil.ImageParent(t, e.io, temp); !strings.HasPrefix(p, srcImage+"@") {
		t.Errorf("parent of temp = %q, want %s@...", p, srcImage)
	}
	if s := testutil.ImageUserSnaps(t, e.io, srcImage); len(s) != 0 {
		t.Errorf("source keeps snapshots %v", s)
	}
	if got := testutil.ReadImage(t, e.io, cImage, len(before), 0); !bytes.Equal(got, before) {
		t.Error("clone does not hold the source's bytes at clone time")
	}
	if size := testutil.ImageSize(t, e.io, cImage); size != 12<<20 {
		t.Errorf("clone size = %d, want 12 MiB", size)
	}
	// A retry returns the same clone.
	if again := e.create(name, 12<<20, fromVol); again.GetVolumeId() != clone.GetVolumeId() {
		t.Error("repeated clone request made another volume")
	}
	// Same name with no source: AlreadyExists.
	_, err := e.d.Controller.CreateVolume(e.ctx, e.volReq(name, 12<<20, nil))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name without the source: %v, want AlreadyExists", err)
	}
	// A missing source is NotFound.
	_, err = e.d.Controller.CreateVolume(e.ctx, e.volReq(uniqueName("orphan"), 0,
		testutil.FromVolume("0001-000e-test-cluster-1-0000000000000001-00000000-0000-0000-0000-000000000000")))
	if status.Code(err) != codes.NotFound {
		t.Errorf("clone of a missing volume: %v, want NotFound", err)
	}

	e.deleteVolume(src.GetVolumeId())
	if got := testutil.ReadImage(t, e.io, cImage, len(before), 0); !bytes.Equal(got, before) {
		t.Error("clone unreadable after its source was deleted")
	}
	e.deleteVolume(clone.GetVolumeId())
	e.assertClean()
}

// depthOf counts the ancestors of an image as admin.
func depthOf(t *testing.T, io *rados.IOContext, name string) int {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for depth < 64 {
		p, err := img.GetParent()
		img.Close()
		if err != nil {
			return depth
		}
		depth++
		if img, err = rbd.OpenImageByIdReadOnly(io, p.Image.ImageID, rbd.NoSnapshot); err != nil {
			t.Fatal(err)
		}
	}
	return depth
}

func TestCloneChainStaysBounded(t *testing.T) {
	t.Run("defaults", func(t *testing.T) { testCloneChain(t, nil, 8) })
	// No background flatten before the hard limit: the chain must wait for
	// the manager's flatten (Aborted, retried) and still stay within it.
	t.Run("hard limit only", func(t *testing.T) {
		aborted := testCloneChain(t, func(o *config.Options) { o.SoftMaxClones, o.HardMaxClones = 4, 4 }, 4)
		if aborted == 0 {
			t.Error("the hard clone depth limit never made a create wait")
		}
	})
}

func testCloneChain(t *testing.T, tweak func(*config.Options), hard int) (aborted int) {
	e := newRBDEnv(t, tweak)
	data := pattern(5, 16<<10)
	first := e.create(uniqueName("chain0"), 4<<20, nil)
	testutil.WriteImage(t, e.io, first.GetVolumeContext()["imageName"], data, 4096)
	chain := []*csi.Volume{first}
	for i := 1; i <= 10; i++ {
		prev := chain[len(chain)-1]
		v := e.create(uniqueName("chain"), 4<<20, testutil.FromVolume(prev.GetVolumeId()))
		chain = append(chain, v)
		image := v.GetVolumeContext()["imageName"]
		if d := depthOf(t, e.io, image); d > hard {
			t.Errorf("clone %d is %d levels deep, beyond the hard limit %d", i, d, hard)
		}
		if got := testutil.ReadImage(t, e.io, image, len(data), 4096); !bytes.Equal(got, data) {
			t.Errorf("clone %d lost the original bytes", i)
		}
	}
	// Deleting from the root keeps the rest readable; then nothing is left.
	for i, v := range chain {
		deleteWhenFlattened(e, v.GetVolumeId())
		if i+1 < len(chain) {
			last := chain[len(chain)-1].GetVolumeContext()["imageName"]
			if got := testutil.ReadImage(t, e.io, last, len(data), 4096); !bytes.Equal(got, data) {
				t.Fatalf("last clone unreadable after deleting %d ancestors", i+1)
			}
		}
	}
	e.assertClean()
	return e.aborted
}

// deleteWhenFlattened deletes a volume, waiting while a background flatten
// holds it open (FailedPrecondition: the manager is a watcher).
func deleteWhenFlattened(e *rbdEnv, id string) {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.c.RBDSecrets()})
		if err == nil {
			return
		}
		if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
			e.t.Fatalf("DeleteVolume: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestConcurrentCreateSnapshotGivesOne(t *testing.T) {
	e := newRBDEnv(t)
	src := e.create(uniqueName("src"), 4<<20, nil)
	name := uniqueName("snap")
	var mu sync.Mutex
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := retryAborted(t, e.ctx, func() (*csi.CreateSnapshotResponse, error) {
				return e.d.Controller.CreateSnapshot(e.ctx, e.snapReq(name, src.GetVolumeId()))
			})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[resp.GetSnapshot().GetSnapshotId()] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(ids) != 1 {
		t.Fatalf("concurrent CreateSnapshot gave %d snapshots", len(ids))
	}
	for id := range ids {
		e.uuids = append(e.uuids, testutil.UUIDOf(t, id))
		names, _ := rbd.GetImageNames(e.io)
		n := 0
		for _, img := range names {
			if strings.HasPrefix(img, "csi-snap-") && strings.Contains(testutil.Omap(t, e.io, "csi.snap."+testutil.UUIDOf(t, id))["csi.imagename"], img) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d snapshot images for one name", n)
		}
		e.deleteSnapshot(id)
	}
	e.deleteVolume(src.GetVolumeId())
	e.assertClean()
}

// TestConcurrentRestoresOfOneSnapshot runs restores of one snapshot at
// once, as a StatefulSet scaled from a snapshot does: they share the read
// of the snapshot image's header, and each must still get the snapshot's
// bytes and parent, and its own size check.
func TestConcurrentRestoresOfOneSnapshot(t *testing.T) {
	e := newRBDEnv(t)
	src := e.create(uniqueName("src"), 8<<20, nil)
	data := pattern(5, 64<<10)
	testutil.WriteImage(t, e.io, src.GetVolumeContext()["imageName"], data, 1<<20)
	snap := e.snapshot(uniqueName("snap"), src.GetVolumeId())
	snapImage := "csi-snap-" + testutil.UUIDOf(t, snap.GetSnapshotId())
	fromSnap := testutil.FromSnapshot(snap.GetSnapshotId())

	const n = 8
	vols := make([]*csi.Volume, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		size := int64(8 << 20)
		if i%4 == 3 {
			size = 4 << 20 // smaller than the snapshot
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.d.Controller.CreateVolume(e.ctx, e.volReq(uniqueName(fmt.Sprintf("restore-%d", i)), size, fromSnap))
			vols[i], errs[i] = resp.GetVolume(), err
		}()
	}
	wg.Wait()
	for i := range n {
		if i%4 == 3 {
			if status.Code(errs[i]) != codes.OutOfRange {
				t.Errorf("restore %d into a smaller size: %v, want OutOfRange", i, errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Errorf("restore %d: %v", i, errs[i])
			continue
		}
		e.uuids = append(e.uuids, testutil.UUIDOf(t, vols[i].GetVolumeId()))
		img := vols[i].GetVolumeContext()["imageName"]
		if p := testutil.ImageParent(t, e.io, img); p != snapImage+"@"+snapImage {
			t.Errorf("parent of restore %d = %q", i, p)
		}
		if got := testutil.ReadImage(t, e.io, img, len(data), 1<<20); !bytes.Equal(got, data) {
			t.Errorf("restore %d does not hold the snapshot's bytes", i)
		}
	}
	for _, v := range vols {
		if v != nil {
			e.deleteVolume(v.GetVolumeId())
		}
	}
	e.deleteSnapshot(snap.GetSnapshotId())
	e.deleteVolume(src.GetVolumeId())
	e.assertClean()
}

// TestSnapshotCountLimitsAtDefaults drives a source image to the default
// --minsnapshotsonimage (250) and --maxsnapshotsonimage (450) with plain
// snapshots taken as admin: below the minimum a CSI snapshot keeps its
// parent; at it the new snapshot image is flattened in the background; at
// the maximum CreateSnapshot is Aborted while the existing clones are
// flattened, and succeeds once they no longer hold snapshots on the source.
func TestSnapshotCountLimitsAtDefaults(t *testing.T) {
	var minSnaps, maxSnaps uint
	e := newRBDEnv(t, func(o *config.Options) { minSnaps, maxSnaps = o.MinSnapsOnImage, o.MaxSnapsOnImage })
	if minSnaps != 250 || maxSnaps != 450 {
		t.Fatalf("the flag defaults are %d/%d, want 250/450", minSnaps, maxSnaps)
	}
	src := e.create(uniqueName("many"), 4<<20, nil)
	srcImage := src.GetVolumeContext()["imageName"]
	data := pattern(9, 8<<10)
	testutil.WriteImage(t, e.io, srcImage, data, 0)
	img, err := rbd.OpenImage(e.io, srcImage, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var pads []string
	pad := func(total int) {
		for len(pads) < total {
			name := fmt.Sprintf("pad-%03d", len(pads))
			if _, err := img.CreateSnapshot(name); err != nil {
				t.Fatalf("snapshot %s: %v", name, err)
			}
			pads = append(pads, name)
		}
	}
	dropPads := func(keep int) {
		for len(pads) > keep {
			name := pads[len(pads)-1]
			if err := img.GetSnapshot(name).Remove(); err != nil {
				t.Fatalf("removing snapshot %s: %v", name, err)
			}
			pads = pads[:len(pads)-1]
		}
	}
	t.Cleanup(func() { dropPads(0) })
	count := func() int {
		names, err := img.GetSnapshotNames()
		if err != nil {
			t.Fatal(err)
		}
		return len(names)
	}
	flattened := func(image string) bool {
		deadline := time.Now().Add(time.Minute)
		for testutil.ImageParent(t, e.io, image) != "" {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(200 * time.Millisecond)
		}
		return true
	}
	snapImage := func(s *csi.Snapshot) string { return "csi-snap-" + testutil.UUIDOf(t, s.GetSnapshotId()) }

	start := time.Now()
	pad(249)
	t.Logf("249 snapshots taken in %v", time.Since(start))
	below := e.snapshot(uniqueName("below"), src.GetVolumeId())
	if n := count(); n != 250 {
		t.Fatalf("source carries %d snapshots, want 249 + 1 (the trashed one the snapshot image hangs from)", n)
	}
	atMin := e.snapshot(uniqueName("atmin"), src.GetVolumeId())
	if !flattened(snapImage(atMin)) {
		t.Errorf("%s, made with 250 snapshots on its source, was not flattened", snapImage(atMin))
	}
	if p := testutil.ImageParent(t, e.io, snapImage(below)); !strings.HasPrefix(p, srcImage+"@") {
		t.Errorf("%s, made below the minimum, has parent %q; want it kept on %s", snapImage(below), p, srcImage)
	}

	pad(449) // with the one still held by `below`: 450
	if n := count(); n != 450 {
		t.Fatalf("source carries %d snapshots, want 450", n)
	}
	req := e.snapReq(uniqueName("atmax"), src.GetVolumeId())
	if _, err := e.d.Controller.CreateSnapshot(e.ctx, req); status.Code(err) != codes.Aborted {
		t.Fatalf("CreateSnapshot at 450 snapshots: %v, want Aborted", err)
	}
	if !flattened(snapImage(below)) {
		t.Fatalf("%s was not flattened after the maximum was reached", snapImage(below))
	}
	// Once the clones are flattened it succeeds.
	atMax := e.snapshot(req.GetName(), src.GetVolumeId())
	for _, s := range []*csi.Snapshot{below, atMin, atMax} {
		if got := testutil.ReadImage(t, e.io, snapImage(s), len(data), 0); !bytes.Equal(got, data) {
			t.Errorf("%s does not hold the source's bytes", snapImage(s))
		}
	}
	dropPads(0)
	for _, s := range []*csi.Snapshot{below, atMin, atMax} {
		e.deleteSnapshot(s.GetSnapshotId())
	}
	img.Close()
	deleteWhenFlattened(e, src.GetVolumeId())
	e.assertClean()
}

// Ten PVC clones, each of the one before, with enough data that the
// manager's background flatten of the deep ones is still running when the
// next clone is made; then deleted oldest first without waiting. Every
// clone must stay readable with the original bytes, every delete must
// either finish (image gone) or answer a retryable error, and nothing may be
// left. (A snapshot taken while librbd flattens an image loses its parent
// when the flatten ends, and the parent could then be deleted under it.)
func TestDeleteCloneChainWhileFlattening(t *testing.T) {
	e := newRBDEnv(t)
	const size, chunk, stride = 1 << 30, 1 << 20, 32 << 20
	data := pattern(7, chunk)
	first := e.create(uniqueName("fchain0"), size, nil)
	for off := int64(0); off < size; off += stride {
		testutil.WriteImage(t, e.io, first.GetVolumeContext()["imageName"], data, off)
	}
	chain := []*csi.Volume{first}
	for i := 1; i <= 10; i++ {
		prev := chain[len(chain)-1]
		chain = append(chain, e.create(uniqueName("fchain"), size, testutil.FromVolume(prev.GetVolumeId())))
	}
	for i, v := range chain {
		start := time.Now()
		for {
			ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
			_, err := e.d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.c.RBDSecrets()})
			cancel()
			if err == nil {
				break
			}
			if c := status.Code(err); (c != codes.FailedPrecondition && c != codes.Aborted) || time.Since(start) > 3*time.Minute {
				t.Fatalf("DeleteVolume %d: %v (after %s)", i, err, time.Since(start))
			}
			time.Sleep(200 * time.Millisecond)
		}
		if testutil.ImageExists(t, e.io, v.GetVolumeContext()["imageName"]) {
			t.Fatalf("DeleteVolume %d answered OK but its image is still in the pool", i)
		}
		t.Logf("delete %d took %s", i, time.Since(start).Round(time.Millisecond))
		for _, later := range chain[i+1:] {
			image := later.GetVolumeContext()["imageName"]
			if got := testutil.ReadImage(t, e.io, image, chunk, 5*stride); !bytes.Equal(got, data) {
				t.Fatalf("after deleting %d ancestors, %s lost the original bytes", i+1, image)
			}
		}
	}
	e.assertClean()
}
