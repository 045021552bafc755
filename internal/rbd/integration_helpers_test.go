//go:build integration

package rbd_test

import (
	"context"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

const pool = "rbd"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mountCap() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func params(c *testutil.Cluster, extra ...string) map[string]string {
	p := map[string]string{"clusterID": c.ClusterID, "pool": pool}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func uniqueName(prefix string) string { return prefix + "-" + uuid.NewString()[:8] }

// retryAborted repeats call while it returns Aborted, as the sidecars do.
func retryAborted[T any](t *testing.T, ctx context.Context, call func() (T, error)) (T, error) {
	t.Helper()
	return retryAbortedCounting(ctx, nil, call)
}

// retryAbortedCounting is retryAborted that counts the Aborted answers.
func retryAbortedCounting[T any](ctx context.Context, aborted *int, call func() (T, error)) (T, error) {
	for {
		v, err := call()
		if status.Code(err) != codes.Aborted {
			return v, err
		}
		if aborted != nil {
			*aborted++
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type rbdEnv struct {
	t   *testing.T
	c   *testutil.Cluster
	d   *testutil.Driver
	io  *rados.IOContext
	ctx context.Context
	// uuids collects every volume and snapshot made, for the leak check.
	uuids []string
	// aborted counts the Aborted answers create retried through.
	aborted int
}

func newRBDEnv(t *testing.T, tweak ...func(*config.Options)) *rbdEnv {
	c := testutil.RequireCluster(t)
	var tw func(*config.Options)
	if len(tweak) > 0 {
		tw = tweak[0]
	}
	return &rbdEnv{t: t, c: c, d: testutil.StartDriver(t, c, "rbd", tw), io: c.IOContext(t, pool), ctx: ctxT(t)}
}

// volReq is the CreateVolume request of a mounted RBD volume in pool rbd,
// extra parameters added (or replacing the pool).
func (e *rbdEnv) volReq(name string, size int64, src *csi.VolumeContentSource, extra ...string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: mountCap(),
		Parameters: params(e.c, extra...), Secrets: e.c.RBDSecrets(), VolumeContentSource: src}
}

// create makes the volume of volReq, retrying while it is Aborted.
func (e *rbdEnv) create(name string, size int64, src *csi.VolumeContentSource, extra ...string) *csi.Volume {
	e.t.Helper()
	req := e.volReq(name, size, src, extra...)
	resp, err := retryAbortedCounting(e.ctx, &e.aborted, func() (*csi.CreateVolumeResponse, error) {
		return e.d.Controller.CreateVolume(e.ctx, req)
	})
	if err != nil {
		e.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	e.uuids = append(e.uuids, testutil.UUIDOf(e.t, resp.GetVolume().GetVolumeId()))
	return resp.GetVolume()
}

// snapReq is the CreateSnapshot request of a snapshot class naming this
// cluster, extra parameters added.
func (e *rbdEnv) snapReq(name, sourceID string, extra ...string) *csi.CreateSnapshotRequest {
	p := map[string]string{"clusterID": e.c.ClusterID}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: sourceID, Parameters: p, Secrets: e.c.RBDSecrets()}
}

// snapshot makes the snapshot of snapReq, retrying while it is Aborted.
func (e *rbdEnv) snapshot(name, sourceID string, extra ...string) *csi.Snapshot {
	e.t.Helper()
	req := e.snapReq(name, sourceID, extra...)
	resp, err := retryAborted(e.t, e.ctx, func() (*csi.CreateSnapshotResponse, error) {
		return e.d.Controller.CreateSnapshot(e.ctx, req)
	})
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	e.uuids = append(e.uuids, testutil.UUIDOf(e.t, resp.GetSnapshot().GetSnapshotId()))
	return resp.GetSnapshot()
}

func (e *rbdEnv) deleteVolume(id string) {
	e.t.Helper()
	if _, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.c.RBDSecrets()}); err != nil {
		e.t.Fatalf("DeleteVolume: %v", err)
	}
}

func (e *rbdEnv) deleteSnapshot(id string) {
	e.t.Helper()
	if _, err := e.d.Controller.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.c.RBDSecrets()}); err != nil {
		e.t.Fatalf("DeleteSnapshot: %v", err)
	}
}

// assertClean fails when anything of this test is left on the cluster.
func (e *rbdEnv) assertClean() {
	e.t.Helper()
	if left := e.c.Leftovers(e.t, e.uuids...); len(left) > 0 {
		e.t.Errorf("leftovers: %v", left)
	}
}
