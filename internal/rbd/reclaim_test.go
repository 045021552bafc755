package rbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"google.golang.org/grpc/codes"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestControllerReclaimSpaceSparsifiesAndReports(t *testing.T) {
	c := newCtl(t)
	v := c.volume("pvc-reclaim", 1<<30, nil)
	img := c.img(volImage(v))
	img.allocated, img.zeroed = 64<<20, 48<<20
	r := NewReclaimController(c.s)
	resp, err := r.ControllerReclaimSpace(c.ctx, &reclaimspace.ControllerReclaimSpaceRequest{VolumeId: v.GetVolumeId(), Secrets: ctlSecrets})
	if err != nil {
		t.Fatal(err)
	}
	if pre, post := resp.GetPreUsage().GetUsageBytes(), resp.GetPostUsage().GetUsageBytes(); pre != 64<<20 || post != 16<<20 {
		t.Errorf("usage %d -> %d, want %d -> %d", pre, post, 64<<20, 16<<20)
	}
	if img.allocated != 16<<20 || c.f.calls["Sparsify"] != 1 {
		t.Errorf("after reclaim: allocated %d, %d sparsify calls", img.allocated, c.f.calls["Sparsify"])
	}
	// Again: nothing more to give back, and no error.
	resp, err = r.ControllerReclaimSpace(c.ctx, &reclaimspace.ControllerReclaimSpaceRequest{VolumeId: v.GetVolumeId(), Secrets: ctlSecrets})
	if err != nil || resp.GetPreUsage().GetUsageBytes() != resp.GetPostUsage().GetUsageBytes() {
		t.Errorf("second reclaim = %v, %v", resp, err)
	}
}

func TestControllerReclaimSpaceRefusals(t *testing.T) {
	c := newCtl(t)
	r := NewReclaimController(c.s)
	v := c.volume("pvc-r", 1<<30, nil)
	missing := v.GetVolumeId()[:len(v.GetVolumeId())-12] + "000000000000"
	for name, tc := range map[string]struct {
		req  *reclaimspace.ControllerReclaimSpaceRequest
		want codes.Code
	}{
		"no volume ID":   {&reclaimspace.ControllerReclaimSpaceRequest{Secrets: ctlSecrets}, codes.InvalidArgument},
		"no secrets":     {&reclaimspace.ControllerReclaimSpaceRequest{VolumeId: v.GetVolumeId()}, codes.InvalidArgument},
		"unknown volume": {&reclaimspace.ControllerReclaimSpaceRequest{VolumeId: missing, Secrets: ctlSecrets}, codes.NotFound},
	} {
		_, err := r.ControllerReclaimSpace(c.ctx, tc.req)
		wantCode(t, name, err, tc.want)
	}
	if c.f.calls["Sparsify"] != 0 {
		t.Errorf("a refused request sparsified")
	}
	// A Ceph failure reaches the caller with its cause.
	c.f.fail("Sparsify", 1, volImage(v))
	_, err := r.ControllerReclaimSpace(c.ctx, &reclaimspace.ControllerReclaimSpaceRequest{VolumeId: v.GetVolumeId(), Secrets: ctlSecrets})
	if !csierr.IsErrno(err, syscall.EIO) {
		t.Errorf("sparsify failure = %v", err)
	}
}

// stagedFS records a filesystem stage of vol-1 as NodeStageVolume does and
// mounts it on the fake mounter.
func (u *unitNode) stagedFS(t *testing.T, rec stageRecord) string {
	t.Helper()
	staging := filepath.Join(u.dir, "staging")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	rec.StagingPath = staging
	if err := u.srv.state.Save("vol-1", &rec); err != nil {
		t.Fatal(err)
	}
	u.mounter.MountPoints = append(u.mounter.MountPoints, mount.MountPoint{Device: u.fm.device, Path: staging, Type: rec.FsType})
	return staging
}

func TestNodeReclaimSpaceTrimsTheStagedFilesystem(t *testing.T) {
	u := newUnitNode(t)
	staging := u.stagedFS(t, stageRecord{Mapper: "rbd-fuse", Pool: "rbd", Image: "csi-vol-1", Device: u.fm.device, FsType: "ext4"})
	r := NewReclaimNode(u.srv)
	var trimmed []string
	r.trim = func(p string) (uint64, error) { trimmed = append(trimmed, p); return 1 << 20, nil }
	// The sidecar's own idea of the staging path (kubelet's layout) does not
	// decide what is trimmed: the node's record does.
	_, err := r.NodeReclaimSpace(context.Background(), &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1",
		StagingTargetPath: "/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.csi.ceph.com/abc/globalmount", VolumeCapability: unitFsCap("ext4")})
	if err != nil {
		t.Fatal(err)
	}
	if len(trimmed) != 1 || trimmed[0] != staging {
		t.Errorf("trimmed %v, want [%s]", trimmed, staging)
	}
	r.trim = func(string) (uint64, error) { return 0, errors.New("FITRIM: operation not supported") }
	_, err = r.NodeReclaimSpace(context.Background(), &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1"})
	if err == nil || csierr.Code(err) != codes.Internal {
		t.Errorf("failed trim = %v, want Internal", err)
	}
}

func TestNodeReclaimSpaceRefusals(t *testing.T) {
	blockMulti := unitBlockCap()
	blockMulti.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	for name, tc := range map[string]struct {
		rec  *stageRecord // nil: not staged
		req  *reclaimspace.NodeReclaimSpaceRequest
		want codes.Code
	}{
		"no volume ID": {nil, &reclaimspace.NodeReclaimSpaceRequest{}, codes.InvalidArgument},
		"relative path": {nil, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1", StagingTargetPath: "staging"},
			codes.InvalidArgument},
		"not staged":    {nil, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1"}, codes.NotFound},
		"block by cap":  {nil, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1", VolumeCapability: unitBlockCap()}, codes.Unimplemented},
		"shared volume": {nil, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1", VolumeCapability: blockMulti}, codes.Unimplemented},
		"block staged":  {&stageRecord{Block: true}, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1"}, codes.Unimplemented},
		"read-only":     {&stageRecord{FsType: "ext4", ReadOnly: true}, &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1"}, codes.FailedPrecondition},
	} {
		u := newUnitNode(t)
		if tc.rec != nil {
			u.stagedFS(t, *tc.rec)
		}
		r := NewReclaimNode(u.srv)
		r.trim = func(string) (uint64, error) { t.Errorf("%s: trimmed", name); return 0, nil }
		_, err := r.NodeReclaimSpace(context.Background(), tc.req)
		wantCode(t, name, err, tc.want)
	}
	// Staged, but nothing mounted at the staging path (the mount is gone).
	u := newUnitNode(t)
	u.stagedFS(t, stageRecord{FsType: "ext4"})
	u.mounter.MountPoints = nil
	r := NewReclaimNode(u.srv)
	r.trim = func(string) (uint64, error) { t.Error("trimmed an unmounted path"); return 0, nil }
	_, err := r.NodeReclaimSpace(context.Background(), &reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-1"})
	wantCode(t, "unmounted", err, codes.FailedPrecondition)
}
