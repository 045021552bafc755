//go:build integration

package hostiletest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// untilSettled repeats call while it answers Aborted (another call holds
// the name or volume), as the sidecars do.
func untilSettled[T any](ctx context.Context, call func() (T, error)) (T, error) {
	for {
		v, err := call()
		if status.Code(err) != codes.Aborted || ctx.Err() != nil {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// 200 concurrent CreateVolume requests over 50 names make exactly 50
// images, and every request of a name gets the same volume.
func TestConcurrentCreatesMakeOneVolumePerName(t *testing.T) {
	c := testutil.RequireCluster(t)
	d := testutil.StartDriver(t, c, "rbd", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := uuid.NewString()[:8]
	names := make([]string, 50)
	for i := range names {
		names[i] = fmt.Sprintf("race-%s-%02d", run, i)
	}
	var mu sync.Mutex
	ids := map[string]map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		name := names[i%len(names)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := rbdVolReq(c, name, nil)
			req.CapacityRange.RequiredBytes = 4 << 20
			resp, err := untilSettled(ctx, func() (*csi.CreateVolumeResponse, error) { return d.Controller.CreateVolume(ctx, req) })
			if err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				return
			}
			mu.Lock()
			if ids[name] == nil {
				ids[name] = map[string]bool{}
			}
			ids[name][resp.GetVolume().GetVolumeId()] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var marks []string
	for _, name := range names {
		if len(ids[name]) != 1 {
			t.Errorf("name %s got %d different volumes", name, len(ids[name]))
		}
		for id := range ids[name] {
			marks = append(marks, testutil.UUIDOf(t, id))
		}
	}
	images, _ := rbd.GetImageNames(c.IOContext(t, "rbd"))
	made := 0
	for _, img := range images {
		for _, m := range marks {
			if strings.HasSuffix(img, m) {
				made++
			}
		}
	}
	if made != 50 {
		t.Errorf("%d images for 50 names", made)
	}
	for _, name := range names {
		for id := range ids[name] {
			if _, err := d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: c.RBDSecrets()}); err != nil {
				t.Errorf("deleting %s: %v", name, err)
			}
		}
	}
	if left := c.Leftovers(t, append(marks, "race-"+run)...); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// Deletes, snapshots and PVC clones of one volume race each other. Each
// call either succeeds or refuses; afterwards every snapshot and clone that
// was answered OK is complete (a clone reads the volume's bytes), nothing
// half-made is on the cluster, and deleting what was made leaves nothing.
func TestConcurrentDeleteSnapshotCloneOfOneVolume(t *testing.T) {
	c := testutil.RequireCluster(t)
	d := testutil.StartDriver(t, c, "rbd", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	io := c.IOContext(t, "rbd")
	run := uuid.NewString()[:8]
	for round := 0; round < 3; round++ {
		src := mustCreate(t, ctx, d, rbdVolReq(c, fmt.Sprintf("rsrc-%s-%d", run, round), nil))
		content := []byte(fmt.Sprintf("round %d of %s", round, run))
		testutil.WriteImage(t, io, src.GetVolumeContext()["imageName"], content, 0)

		var wg sync.WaitGroup
		var mu sync.Mutex
		var snaps []*csi.Snapshot
		var clones []*csi.Volume
		for i := 0; i < 4; i++ {
			wg.Add(2)
			go func(i int) {
				defer wg.Done()
				resp, err := d.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("rsnap-%s-%d-%d", run, round, i),
					SourceVolumeId: src.GetVolumeId(), Secrets: c.RBDSecrets()})
				keepAnswer(t, &mu, &snaps, resp.GetSnapshot(), err, "CreateSnapshot")
			}(i)
			go func(i int) {
				defer wg.Done()
				resp, err := d.Controller.CreateVolume(ctx, rbdVolReq(c, fmt.Sprintf("rclone-%s-%d-%d", run, round, i),
					testutil.FromVolume(src.GetVolumeId())))
				keepAnswer(t, &mu, &clones, resp.GetVolume(), err, "CreateVolume clone")
			}(i)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(round*30) * time.Millisecond)
			if _, err := d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId(), Secrets: c.RBDSecrets()}); err != nil && !refusal(err) {
				t.Errorf("DeleteVolume: %v", err)
			}
		}()
		wg.Wait()
		// Whatever was answered OK is whole.
		for _, v := range clones {
			img, err := rbd.OpenImageReadOnly(io, v.GetVolumeContext()["imageName"], rbd.NoSnapshot)
			if err != nil {
				t.Errorf("clone %s answered OK but cannot be opened: %v", v.GetVolumeContext()["imageName"], err)
				continue
			}
			buf := make([]byte, len(content))
			_, _ = img.ReadAt(buf, 0)
			img.Close()
			if string(buf) != string(content) {
				t.Errorf("clone %s does not hold the source's bytes", v.GetVolumeContext()["imageName"])
			}
		}
		for _, s := range snaps {
			req := rbdVolReq(c, "rrestore-"+uuid.NewString()[:8], testutil.FromSnapshot(s.GetSnapshotId()))
			v, err := untilSettled(ctx, func() (*csi.CreateVolumeResponse, error) { return d.Controller.CreateVolume(ctx, req) })
			if err != nil {
				t.Errorf("restoring snapshot answered OK: %v", err)
				continue
			}
			clones = append(clones, v.GetVolume())
		}
		// Clean up everything; nothing of the round may remain.
		deleteVolume := func(what string, v *csi.Volume) {
			if _, err := untilSettled(ctx, func() (*csi.DeleteVolumeResponse, error) {
				return d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: c.RBDSecrets()})
			}); err != nil {
				t.Errorf("deleting %s: %v", what, err)
			}
		}
		marks := []string{run + "-" + fmt.Sprint(round), testutil.UUIDOf(t, src.GetVolumeId())}
		for _, v := range clones {
			deleteVolume("a clone", v)
			marks = append(marks, testutil.UUIDOf(t, v.GetVolumeId()))
		}
		for _, s := range snaps {
			if _, err := untilSettled(ctx, func() (*csi.DeleteSnapshotResponse, error) {
				return d.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId(), Secrets: c.RBDSecrets()})
			}); err != nil {
				t.Errorf("deleting a snapshot: %v", err)
			}
			marks = append(marks, testutil.UUIDOf(t, s.GetSnapshotId()))
		}
		deleteVolume("the source", src)
		if left := c.Leftovers(t, marks...); len(left) > 0 {
			t.Errorf("round %d left behind: %v", round, left)
		}
	}
}

// keepAnswer adds what a racing call answered to *list when it succeeded;
// an error that is no refusal fails the test.
func keepAnswer[T any](t *testing.T, mu *sync.Mutex, list *[]T, v T, err error, what string) {
	if err == nil {
		mu.Lock()
		*list = append(*list, v)
		mu.Unlock()
	} else if !refusal(err) {
		t.Errorf("%s: %v", what, err)
	}
}

// refusal reports the answers a racing call may legitimately get: another
// call holds the volume (Aborted), the source was deleted first
// (NotFound), or the source is in use by a clone being made
// (FailedPrecondition).
func refusal(err error) bool {
	switch status.Code(err) {
	case codes.Aborted, codes.NotFound, codes.FailedPrecondition:
		return true
	}
	return false
}
