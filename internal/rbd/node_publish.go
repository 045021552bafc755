package rbd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/luks"
	"github.com/leanceph/cephcsi/internal/nodeutil"
	"github.com/leanceph/cephcsi/internal/request"
)

// NodePublishVolume implements csi.NodeServer: bind-mount the staged
// filesystem, or the device itself for a block volume, at the target.
func (s *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	volID, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if err := nodeutil.VolumeAndPaths(volID, [2]string{"target_path", target}, [2]string{"staging_target_path", staging}); err != nil {
		return nil, err
	}
	if err := nodeutil.TargetApart(target, staging); err != nil {
		return nil, err
	}
	vcap := req.GetVolumeCapability()
	if err := request.ValidateCapability("volume_capability", vcap, false); err != nil {
		return nil, err
	}
	var rec stageRecord
	staged, err := s.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	if err := s.publisher.CheckSingleWriter(volID, vcap, &rec.Published, target); err != nil {
		return nil, err
	}
	// The target is recorded before it is made, so that unpublish (also
	// after a crash in between) knows the driver created it.
	if staged {
		if err := s.state.AddTarget(volID, &rec, target); err != nil {
			return nil, err
		}
	}
	if vcap.GetBlock() != nil {
		if !staged || rec.Device == "" || !rec.Block {
			return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s is not staged as a block volume on this node", volID)
		}
		dev := rec.dataDevice()
		if _, err := os.Stat(dev); err != nil {
			return nil, csierr.Errorf(csierr.ErrPrecondition, "device %s of volume %s: %v", dev, volID, err)
		}
		if err := s.publisher.BindFile(dev, target, req.GetReadonly()); err != nil {
			return nil, err
		}
	} else {
		mounted, err := s.publisher.IsMountPoint(staging)
		if err != nil {
			return nil, fmt.Errorf("checking staging path: %w", err)
		}
		if !mounted {
			return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s is not staged at %s", volID, staging)
		}
		if err := s.publisher.BindDir(staging, target, req.GetReadonly(), vcap.GetMount().GetMountFlags()); err != nil {
			return nil, err
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (s *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	volID, target := req.GetVolumeId(), req.GetTargetPath()
	if err := nodeutil.VolumeAndPaths(volID, [2]string{"target_path", target}); err != nil {
		return nil, err
	}
	var rec stageRecord
	if _, err := s.state.Load(volID, &rec); err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	if err := s.publisher.Unpublish(target, rec.Owns(target)); err != nil {
		return nil, err
	}
	if err := s.state.ForgetTarget(volID, &stageRecord{}, target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (s *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	return s.publisher.Stats(req, nodeutil.StatfsUsage)
}

// NodeGetVolumeHealth implements csi.NodeServer: the mapped device must
// read, and the staging mount (filesystem volumes) and each publish target
// must answer.
func (s *NodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	return s.publisher.VolumeHealth(req, func() (*nodeutil.Staged, error) {
		var rec stageRecord
		if ok, err := s.state.Load(req.GetVolumeId(), &rec); err != nil || !ok {
			return nil, err
		}
		st := &nodeutil.Staged{StagingPath: rec.StagingPath, Targets: rec.Targets, Block: rec.Block}
		if rec.Device != "" {
			st.Devices = append(st.Devices, rec.Device)
		}
		if rec.Crypt != "" {
			st.Devices = append(st.Devices, filepath.Join(luks.MapperDir, rec.Crypt))
		}
		return st, nil
	})
}
