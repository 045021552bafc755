package rbd

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/luks"
	"github.com/leanceph/cephcsi/internal/mapper"
	"github.com/leanceph/cephcsi/internal/metrics"
	"github.com/leanceph/cephcsi/internal/nodeutil"
	"github.com/leanceph/cephcsi/internal/request"
)

// stageRequest is a validated NodeStageVolume.
type stageRequest struct {
	rec        stageRecord
	spec       mapper.Spec
	mountFlags []string
	mkfsOpts   []string
	// crypt is set for an encrypted volume.
	crypt *cryptVolume
}

func (s *NodeServer) parseStage(ctx context.Context, req *csi.NodeStageVolumeRequest) (*stageRequest, error) {
	if err := nodeutil.VolumeAndPaths(req.GetVolumeId(), [2]string{"staging_target_path", req.GetStagingTargetPath()}); err != nil {
		return nil, err
	}
	vcap := req.GetVolumeCapability()
	if err := request.ValidateCapability("volume_capability", vcap, false); err != nil {
		return nil, err
	}
	vc := req.GetVolumeContext()
	if vc["staticVolume"] == "true" && vc["imageName"] == "" {
		// A static PV (an image made outside the driver) names its image by
		// the volume handle, as with ceph-csi.
		vc = maps.Clone(vc)
		vc["imageName"] = req.GetVolumeId()
	}
	if err := nodeutil.Require([2]string{"volume_context.clusterID", vc["clusterID"]},
		[2]string{"volume_context.pool", vc["pool"]}, [2]string{"volume_context.imageName", vc["imageName"]}); err != nil {
		return nil, err
	}
	for _, f := range []string{"pool", "radosNamespace", "imageName"} {
		if v := vc[f]; v != "" {
			if err := request.ValidPoolName("volume_context."+f, v); err != nil {
				return nil, err
			}
		}
	}
	kind, err := mapper.KindOf(vc["mounter"])
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.mounter: %v", err)
	}
	mapOpts, err := mapper.OptionsFor(vc["mapOptions"], kind)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.mapOptions: %v", err)
	}
	unmapOpts, err := mapper.OptionsFor(vc["unmapOptions"], kind)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.unmapOptions: %v", err)
	}
	// The mappers put these into a sysfs request or a command line, where a
	// smuggled option could name another user or key. Every mapper's part
	// is checked, not only the one used now: the volume may be staged with
	// another mapper on another node.
	for _, field := range []string{"mapOptions", "unmapOptions"} {
		for _, k := range []string{mapper.KindKRBD, mapper.KindNBD, mapper.KindFuse} {
			opts, _ := mapper.OptionsFor(vc[field], k)
			if err := request.SafeOptionList("volume_context."+field, opts); err != nil {
				return nil, err
			}
		}
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	cl, err := s.Clusters.Get(vc["clusterID"])
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.clusterID %q: %v", vc["clusterID"], err)
	}
	ns := vc["radosNamespace"]
	if ns == "" {
		ns = cl.RBD.RadosNamespace
	}
	loc, err := s.CrushLocation(ctx, cl)
	if err != nil {
		return nil, err
	}
	enc, err := parseEncryption(vc, "volume_context.")
	if err != nil {
		return nil, err
	}
	block := vcap.GetBlock() != nil
	readOnly := request.ReadOnly(vcap.GetAccessMode().GetMode())
	sr := &stageRequest{
		rec: stageRecord{Mapper: kind, ClusterID: cl.ClusterID, Pool: vc["pool"], Namespace: ns, Image: vc["imageName"],
			StagingPath: req.GetStagingTargetPath(), Block: block, ReadOnly: readOnly, UnmapOptions: unmapOpts},
		spec: mapper.Spec{Monitors: cl.Monitors, Pool: vc["pool"], Namespace: ns, Image: vc["imageName"],
			UserID: creds.ID, Key: creds.Key, Options: mapOpts, ReadOnly: readOnly, CrushLocation: loc},
	}
	if enc != nil {
		sr.crypt = &cryptVolume{volumeID: req.GetVolumeId(), clusterID: cl.ClusterID, pool: vc["pool"], namespace: ns,
			image: vc["imageName"], readOnly: readOnly, creds: creds, secrets: req.GetSecrets(), enc: enc}
	}
	if block {
		return sr, nil
	}
	fsType := vcap.GetMount().GetFsType()
	if fsType == "" {
		fsType = vc["csi.storage.k8s.io/fstype"]
	}
	if fsType == "" {
		fsType = defaultFsType
	}
	if fsType != "ext4" && fsType != "xfs" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_capability.mount.fs_type %q is not ext4 or xfs", fsType)
	}
	sr.rec.FsType = fsType
	sr.mountFlags = vcap.GetMount().GetMountFlags()
	if sr.mkfsOpts, err = parseMkfsOptions(fsType, vc["mkfsOptions"]); err != nil {
		return nil, err
	}
	if len(sr.mkfsOpts) == 0 {
		sr.mkfsOpts = defaultMkfsOptions[fsType]
	}
	return sr, nil
}

// NodeStageVolume implements csi.NodeServer: map the image, then (for a
// filesystem volume) format it if it has no filesystem and mount it at the
// staging path.
func (s *NodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	sr, err := s.parseStage(ctx, req)
	if err != nil {
		return nil, err
	}
	volID := req.GetVolumeId()
	logger := klog.FromContext(ctx).WithValues("volume", volID, "image", sr.spec.String())

	var old stageRecord
	staged, err := s.state.Load(volID, &old)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	if staged {
		if old.StagingPath != sr.rec.StagingPath {
			return nil, csierr.Errorf(csierr.ErrExists, "volume %s is already staged at %s", volID, old.StagingPath)
		}
		if old.Block != sr.rec.Block || old.Pool != sr.rec.Pool || old.Namespace != sr.rec.Namespace || old.Image != sr.rec.Image {
			return nil, csierr.Errorf(csierr.ErrExists, "volume %s is already staged with another capability or image", volID)
		}
		// Keep the mapper that holds the image now (a new one applies after
		// unstage) and what is published.
		sr.rec.Mapper, sr.rec.UnmapOptions, sr.rec.Targets, sr.rec.Crypt = old.Mapper, old.UnmapOptions, old.Targets, old.Crypt
	}
	m := s.mappers[sr.rec.Mapper]
	if m == nil {
		return nil, fmt.Errorf("no mapper %q on this node", sr.rec.Mapper)
	}
	// Record the intent first: a crash between mapping and saving must not
	// leave a mapping that unstage cannot find.
	if err := s.state.Save(volID, &sr.rec); err != nil {
		return nil, fmt.Errorf("saving node state of %s: %w", volID, err)
	}
	began := time.Now()
	dev, err := m.Map(ctx, sr.spec)
	if metrics.Node(metrics.RBD, sr.rec.Mapper, metrics.OpMap, began, err) != nil {
		if !staged {
			_ = s.state.Remove(volID)
		}
		return nil, fmt.Errorf("mapping %s with %s: %w", sr.spec, sr.rec.Mapper, err)
	}
	failpoint.Hit("node-stage-after-map")
	sr.rec.Device = dev
	if err := s.state.Save(volID, &sr.rec); err != nil {
		return nil, fmt.Errorf("saving node state of %s: %w", volID, err)
	}
	logger.V(2).Info("image mapped", "device", dev, "mapper", sr.rec.Mapper)
	if sr.crypt != nil {
		if err := s.stageEncrypted(ctx, sr, m, staged); err != nil {
			return nil, err
		}
	}
	if sr.rec.Block {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	mounted, err := s.publisher.IsMountPoint(sr.rec.StagingPath)
	if err != nil {
		return nil, fmt.Errorf("checking staging path: %w", err)
	}
	if mounted {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := s.mountStaged(ctx, sr); err != nil {
		// Leave nothing behind: the next attempt maps afresh.
		began := time.Now()
		if cerr := s.closeCrypt(ctx, &sr.rec); cerr != nil {
			logger.Error(cerr, "closing the LUKS mapping after a failed stage")
		} else if uerr := metrics.Node(metrics.RBD, sr.rec.Mapper, metrics.OpUnmap, began, m.Unmap(ctx, sr.rec.spec(), sr.rec.UnmapOptions)); uerr != nil {
			logger.Error(uerr, "unmapping after a failed stage")
		} else {
			_ = s.state.Remove(volID)
		}
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// mountStaged formats the device when it has no filesystem, grows an
// existing filesystem to the device, and mounts it at the staging path.
func (s *NodeServer) mountStaged(ctx context.Context, sr *stageRequest) error {
	rec := &sr.rec
	if err := os.MkdirAll(rec.StagingPath, 0o750); err != nil {
		return fmt.Errorf("creating staging path: %w", err)
	}
	dev := rec.dataDevice()
	existing, err := s.mounter.GetDiskFormat(dev)
	if err != nil {
		return fmt.Errorf("probing %s: %w", dev, err)
	}
	switch {
	case existing == "" && rec.ReadOnly:
		return csierr.Errorf(csierr.ErrPrecondition, "image %s has no filesystem and is staged read-only", sr.spec)
	case existing != "" && existing != rec.FsType:
		return csierr.Errorf(csierr.ErrPrecondition, "image %s holds %s, not the requested %s; it is not reformatted", sr.spec, existing, rec.FsType)
	}
	if existing == "ext4" && !rec.ReadOnly {
		// Offline growth needs no CAP_SYS_RESOURCE, unlike online growth.
		if err := s.growExtOffline(dev); err != nil {
			return err
		}
	}
	opts := append([]string{}, sr.mountFlags...)
	if rec.ReadOnly {
		opts = append(opts, "ro")
	}
	if rec.FsType == "xfs" {
		// Clones and restored snapshots share the source's XFS UUID.
		opts = append(opts, "nouuid")
	}
	began := time.Now()
	err = s.mounter.FormatAndMountSensitiveWithFormatOptions(dev, rec.StagingPath, rec.FsType, opts, nil, sr.mkfsOpts)
	if metrics.Node(metrics.RBD, "fs", metrics.OpMount, began, err) != nil {
		return fmt.Errorf("mounting %s (%s) at %s: %w", dev, sr.spec, rec.StagingPath, err)
	}
	if existing == "xfs" && !rec.ReadOnly {
		if need, err := s.resizer.NeedResize(dev, rec.StagingPath); err == nil && need {
			if _, err := s.resizer.Resize(dev, rec.StagingPath); err != nil {
				klog.FromContext(ctx).Error(err, "growing xfs to the device size", "device", dev)
			}
		}
	}
	return nil
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// and unmap the image.
func (s *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	volID, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := nodeutil.VolumeAndPaths(volID, [2]string{"staging_target_path", staging}); err != nil {
		return nil, err
	}
	var rec stageRecord
	staged, err := s.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %w", volID, err)
	}
	mounted, err := s.publisher.IsMountPoint(staging)
	if err != nil && !mount.IsCorruptedMnt(err) {
		return nil, fmt.Errorf("checking staging path: %w", err)
	}
	if mounted || mount.IsCorruptedMnt(err) {
		began := time.Now()
		if err := metrics.Node(metrics.RBD, "fs", metrics.OpUnmount, began, s.mounter.Unmount(staging)); err != nil {
			if strings.Contains(err.Error(), "busy") {
				return nil, csierr.Errorf(csierr.ErrPrecondition, "staging path %s is still in use: %v", staging, err)
			}
			return nil, fmt.Errorf("unmounting %s: %w", staging, err)
		}
	}
	if !staged {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	m := s.mappers[rec.Mapper]
	if m == nil {
		return nil, fmt.Errorf("node state of %s names unknown mapper %q", volID, rec.Mapper)
	}
	failpoint.Hit("node-unstage-after-unmount")
	if err := s.closeCrypt(ctx, &rec); err != nil {
		return nil, err
	}
	began := time.Now()
	if err := metrics.Node(metrics.RBD, rec.Mapper, metrics.OpUnmap, began, m.Unmap(ctx, rec.spec(), rec.UnmapOptions)); err != nil {
		return nil, fmt.Errorf("unmapping %s: %w", rec.spec(), err)
	}
	failpoint.Hit("node-unstage-after-unmap")
	if err := s.state.Remove(volID); err != nil {
		return nil, fmt.Errorf("removing node state of %s: %w", volID, err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// stageEncrypted opens the LUKS mapping of an encrypted volume on its
// mapped device. The mapping's name is recorded first, so that an unstage
// after a crash closes it; a failure unmaps what this call mapped.
func (s *NodeServer) stageEncrypted(ctx context.Context, sr *stageRequest, m mapper.Mapper, staged bool) error {
	sr.rec.Crypt = luks.MapperName(sr.crypt.volumeID)
	if err := s.state.Save(sr.crypt.volumeID, &sr.rec); err != nil {
		return fmt.Errorf("saving node state of %s: %w", sr.crypt.volumeID, err)
	}
	if _, err := s.openEncrypted(ctx, sr.crypt, sr.rec.Device); err != nil {
		if !staged {
			if uerr := m.Unmap(ctx, sr.rec.spec(), sr.rec.UnmapOptions); uerr != nil {
				klog.FromContext(ctx).Error(uerr, "unmapping after a failed LUKS open", "volume", sr.crypt.volumeID)
			} else {
				_ = s.state.Remove(sr.crypt.volumeID)
			}
		}
		return err
	}
	return nil
}

// closeCrypt closes the LUKS mapping of a staged volume, if it has one.
func (s *NodeServer) closeCrypt(ctx context.Context, rec *stageRecord) error {
	if rec.Crypt == "" {
		return nil
	}
	if err := s.crypt.Close(ctx, rec.Crypt); err != nil {
		if strings.Contains(err.Error(), "busy") || strings.Contains(err.Error(), "in use") {
			return csierr.Errorf(csierr.ErrPrecondition, "LUKS mapping %s is still in use: %v", rec.Crypt, err)
		}
		return err
	}
	return nil
}
