package rbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	utilexec "k8s.io/utils/exec"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/nodeutil"
)

// Filesystem growth: online through NodeExpandVolume, offline at stage
// time for ext4 (which needs no CAP_SYS_RESOURCE).

// NodeExpandVolume implements csi.NodeServer: after the controller grew
// the image, make the device follow and grow the filesystem online.
func (s *NodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	volID, volPath := req.GetVolumeId(), req.GetVolumePath()
	if err := nodeutil.VolumeAndPaths(volID); err != nil {
		return nil, err
	}
	if err := nodeutil.VolumePath(volPath); err != nil {
		return nil, err
	}
	var rec stageRecord
	staged, err := s.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	if !staged || rec.Device == "" {
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume %s is not staged on this node", volID)
	}
	m := s.mappers[rec.Mapper]
	if m == nil {
		return nil, fmt.Errorf("node state of %s names unknown mapper %q", volID, rec.Mapper)
	}
	if err := m.Refresh(ctx, rec.spec(), rec.Device); err != nil {
		return nil, err
	}
	size, err := s.waitDeviceSize(ctx, rec.Device, req.GetCapacityRange().GetRequiredBytes())
	if err != nil {
		return nil, err
	}
	if rec.Crypt != "" {
		// The mapping keeps its size until told; it needs no passphrase
		// for that (the volume key is in its table).
		if err := s.crypt.Resize(ctx, rec.Crypt); err != nil {
			return nil, err
		}
	}
	if rec.Block || req.GetVolumeCapability().GetBlock() != nil {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
	}
	mountPath := rec.StagingPath
	if mounted, _ := s.publisher.IsMountPoint(mountPath); !mounted {
		mountPath = volPath
	}
	if _, err := s.resizer.Resize(rec.dataDevice(), mountPath); err != nil {
		msg := err.Error()
		if rec.FsType == "ext4" && strings.Contains(msg, "Permission denied") {
			msg += " (online ext4 growth needs CAP_SYS_RESOURCE in the plugin; the filesystem grows at the next stage)"
		}
		return nil, fmt.Errorf("growing the filesystem of %s: %s", volID, msg)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// waitDeviceSize waits until dev is at least want bytes and returns its size.
func (s *NodeServer) waitDeviceSize(ctx context.Context, dev string, want int64) (int64, error) {
	deadline := time.Now().Add(s.sizeWait)
	for {
		size, err := nodeutil.BlockSize(dev)
		if err != nil {
			return 0, fmt.Errorf("size of %s: %w", dev, err)
		}
		if size >= want {
			return size, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s is %d bytes after %s, expected at least %d; did the controller expand the image? %w",
				dev, size, s.sizeWait, want, context.DeadlineExceeded)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// growExtOffline grows an unmounted ext4 filesystem that is smaller than
// its device (the image was expanded or restored larger).
func (s *NodeServer) growExtOffline(dev string) error {
	need, err := s.resizer.NeedResize(dev, "")
	if err != nil {
		klog.ErrorS(err, "cannot compare the filesystem with its device; not growing it", "device", dev)
		return nil
	}
	if !need {
		return nil
	}
	// resize2fs wants a freshly checked filesystem; 1 means "fixed".
	out, err := s.exec.Command("e2fsck", "-f", "-p", dev).CombinedOutput()
	if err != nil {
		var ee utilexec.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() > 1 {
			return fmt.Errorf("e2fsck %s before growing it: %w: %s", dev, err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := s.resizer.Resize(dev, ""); err != nil {
		return fmt.Errorf("growing the filesystem on %s: %w", dev, err)
	}
	return nil
}
