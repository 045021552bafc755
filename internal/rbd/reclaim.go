package rbd

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/nodeutil"
	"github.com/leanceph/cephcsi/internal/request"
)

// ReclaimController serves the CSI-Addons ReclaimSpaceController: the
// runs of zeros an image holds (blocks a filesystem freed and zeroed, or
// an application wrote as zeros) go back to the pool.
type ReclaimController struct {
	reclaimspace.UnimplementedReclaimSpaceControllerServer
	c *ControllerServer
}

// NewReclaimController returns the service for the controller c.
func NewReclaimController(c *ControllerServer) *ReclaimController { return &ReclaimController{c: c} }

// ControllerReclaimSpace implements reclaimspace.ReclaimSpaceControllerServer:
// sparsify the image, reporting what its objects held before and after.
func (r *ReclaimController) ControllerReclaimSpace(ctx context.Context, req *reclaimspace.ControllerReclaimSpaceRequest) (*reclaimspace.ControllerReclaimSpaceResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Field("volume_id", "is required")
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, img, err := r.c.openVolumeImage(req.GetVolumeId(), creds, false)
	if err != nil {
		return nil, err
	}
	defer ref.close()
	defer img.Close()
	spec := imageSpec(ref.p, ref.image())
	pre, err := img.Allocated()
	if err != nil {
		return nil, fmt.Errorf("measuring %s: %w", spec, err)
	}
	if err := img.Sparsify(); err != nil {
		return nil, fmt.Errorf("sparsifying %s: %w", spec, err)
	}
	post, err := img.Allocated()
	if err != nil {
		return nil, fmt.Errorf("measuring %s after sparsify: %w", spec, err)
	}
	klog.FromContext(ctx).Info("image sparsified", "image", spec, "before", pre, "after", post)
	return &reclaimspace.ControllerReclaimSpaceResponse{
		PreUsage:  &reclaimspace.StorageConsumption{UsageBytes: int64(pre)},
		PostUsage: &reclaimspace.StorageConsumption{UsageBytes: int64(post)},
	}, nil
}

// ReclaimNode serves the CSI-Addons ReclaimSpaceNode: the staged
// filesystem of a volume is trimmed, so that the blocks it no longer uses
// are discarded on the image (every mapper passes discards to librbd or
// krbd).
type ReclaimNode struct {
	reclaimspace.UnimplementedReclaimSpaceNodeServer
	n *NodeServer
	// trim is nodeutil.Trim; tests replace it.
	trim func(path string) (uint64, error)
}

// NewReclaimNode returns the service for the node n.
func NewReclaimNode(n *NodeServer) *ReclaimNode { return &ReclaimNode{n: n, trim: nodeutil.Trim} }

// NodeReclaimSpace implements reclaimspace.ReclaimSpaceNodeServer. The
// filesystem is found from what this node recorded when it staged the
// volume, not from the request's paths (the sidecar computes kubelet's
// staging path itself, and a volume_path would be a pod's bind mount).
func (r *ReclaimNode) NodeReclaimSpace(ctx context.Context, req *reclaimspace.NodeReclaimSpaceRequest) (*reclaimspace.NodeReclaimSpaceResponse, error) {
	volID := req.GetVolumeId()
	if err := nodeutil.VolumeAndPaths(volID); err != nil {
		return nil, err
	}
	for _, f := range [][2]string{{"staging_target_path", req.GetStagingTargetPath()}, {"volume_path", req.GetVolumePath()}} {
		if f[1] != "" {
			if err := nodeutil.Path(f[0], f[1]); err != nil {
				return nil, err
			}
		}
	}
	if vcap := req.GetVolumeCapability(); vcap != nil {
		if multiNode(vcap.GetAccessMode().GetMode()) {
			return nil, csierr.Errorf(csierr.ErrUnimplemented, "volume %s is shared by several nodes: no node may trim it", volID)
		}
		if vcap.GetBlock() != nil {
			return nil, blockReclaim(volID)
		}
	}
	var rec stageRecord
	staged, err := r.n.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	if !staged {
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume %s is not staged on this node", volID)
	}
	if rec.Block {
		return nil, blockReclaim(volID)
	}
	if rec.ReadOnly {
		return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s is staged read-only: its filesystem cannot be trimmed", volID)
	}
	mounted, err := r.n.publisher.IsMountPoint(rec.StagingPath)
	if err != nil {
		return nil, fmt.Errorf("checking staging path %s: %w", rec.StagingPath, err)
	}
	if !mounted {
		return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s: nothing is mounted at its staging path %s", volID, rec.StagingPath)
	}
	trimmed, err := r.trim(rec.StagingPath)
	if err != nil {
		return nil, fmt.Errorf("trimming the %s filesystem of %s at %s: %w", rec.FsType, volID, rec.StagingPath, err)
	}
	klog.FromContext(ctx).Info("filesystem trimmed", "volume", volID, "path", rec.StagingPath, "trimmed", trimmed)
	// The filesystem's own usage does not change with a trim, and what the
	// image gives back is measured on the controller: no usage here.
	return &reclaimspace.NodeReclaimSpaceResponse{}, nil
}

// blockReclaim answers a node reclaim of a raw block volume: the node
// cannot tell used blocks from free ones without a filesystem, and
// discarding the device would erase the user's data. Unimplemented lets
// the csi-addons controller go on to the controller's sparsify, which
// gives back the runs of zeros; discards the application issues on its
// device reach the image as they are made.
func blockReclaim(volID string) error {
	return csierr.Errorf(csierr.ErrUnimplemented,
		"volume %s is a raw block volume: it has no filesystem to trim (the controller's reclaim gives back its runs of zeros)", volID)
}

func multiNode(m csi.VolumeCapability_AccessMode_Mode) bool {
	switch m {
	case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		return true
	}
	return false
}
