package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/mapper"
	"github.com/leanceph/cephcsi/internal/nodeutil"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
)

// Default mkfs options when the StorageClass sets none: no discard pass
// over a fresh (thin) image and lazy initialisation keep mkfs fast.
var defaultMkfsOptions = map[string][]string{
	"ext4": {"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"},
	"xfs":  {"-K"},
}

// NodeServer serves the CSI node service for RBD.
type NodeServer struct {
	csi.UnimplementedNodeServer
	*service.Deps
	mappers   map[string]mapper.Mapper
	mounter   *mount.SafeFormatAndMount
	resizer   *mount.ResizeFs
	exec      utilexec.Interface
	publisher *nodeutil.Publisher
	state     nodeutil.StateStore
	// sizeWait bounds waiting for a device to show a grown image's size.
	sizeWait time.Duration
}

// toolTimeout bounds mkfs, fsck, blkid and resize runs.
const toolTimeout = 5 * time.Minute

// NewNodeServer returns the node service. Its state lives below
// <pluginpath>/<drivername>.
func NewNodeServer(d *service.Deps) (*NodeServer, error) {
	base := filepath.Join(d.Options.PluginPath, d.Options.DriverName)
	runner := keyexec.Exec{}
	// The directory keeps the mapper kind's name, so that mappings made by
	// earlier versions are found.
	fuse, err := mapper.NewFuse(filepath.Join(base, "rbd-fuse"), runner, runner)
	if err != nil {
		return nil, fmt.Errorf("rbd-fuse mapper: %w", err)
	}
	mappers := map[string]mapper.Mapper{
		mapper.KindKRBD: mapper.NewKRBD(runner),
		mapper.KindNBD:  mapper.NewNBD(runner),
		mapper.KindFuse: fuse,
	}
	ex := timeoutExec{Interface: utilexec.New(), timeout: toolTimeout}
	return newNodeServer(d, mappers, mount.NewWithoutSystemd(""), ex, filepath.Join(base, "rbd-node")), nil
}

func newNodeServer(d *service.Deps, mappers map[string]mapper.Mapper, m mount.Interface, ex utilexec.Interface, stateDir string) *NodeServer {
	return &NodeServer{
		Deps:      d,
		mappers:   mappers,
		mounter:   &mount.SafeFormatAndMount{Interface: m, Exec: ex},
		resizer:   mount.NewResizeFs(ex),
		exec:      ex,
		publisher: &nodeutil.Publisher{Mounter: m},
		state:     nodeutil.StateStore{Dir: stateDir},
		sizeWait:  30 * time.Second,
	}
}

// stageRecord is what the node remembers of a staged volume, so that
// unstage, publish and expand work after a plugin restart. It never holds
// the key.
type stageRecord struct {
	Mapper       string `json:"mapper"`
	ClusterID    string `json:"clusterID"`
	Pool         string `json:"pool"`
	Namespace    string `json:"radosNamespace,omitempty"`
	Image        string `json:"imageName"`
	Device       string `json:"device,omitempty"`
	StagingPath  string `json:"stagingPath"`
	Block        bool   `json:"block,omitempty"`
	FsType       string `json:"fsType,omitempty"`
	ReadOnly     bool   `json:"readOnly,omitempty"`
	UnmapOptions string `json:"unmapOptions,omitempty"`
	nodeutil.Published
}

func (r *stageRecord) spec() mapper.Spec {
	return mapper.Spec{Pool: r.Pool, Namespace: r.Namespace, Image: r.Image, ReadOnly: r.ReadOnly}
}

// NodeGetCapabilities implements csi.NodeServer.
func (s *NodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (s *NodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: s.Options.NodeID}, nil
}

// stageRequest is a validated NodeStageVolume.
type stageRequest struct {
	rec        stageRecord
	spec       mapper.Spec
	mountFlags []string
	mkfsOpts   []string
}

func (s *NodeServer) parseStage(req *csi.NodeStageVolumeRequest) (*stageRequest, error) {
	if err := nodeutil.Require([2]string{"volume_id", req.GetVolumeId()}); err != nil {
		return nil, err
	}
	if err := nodeutil.Path("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	vcap := req.GetVolumeCapability()
	if err := request.ValidateCapability("volume_capability", vcap, false); err != nil {
		return nil, err
	}
	vc := req.GetVolumeContext()
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
	block := vcap.GetBlock() != nil
	readOnly := request.ReadOnly(vcap.GetAccessMode().GetMode())
	sr := &stageRequest{
		rec: stageRecord{Mapper: kind, ClusterID: cl.ClusterID, Pool: vc["pool"], Namespace: ns, Image: vc["imageName"],
			StagingPath: req.GetStagingTargetPath(), Block: block, ReadOnly: readOnly, UnmapOptions: unmapOpts},
		spec: mapper.Spec{Monitors: cl.Monitors, Pool: vc["pool"], Namespace: ns, Image: vc["imageName"],
			UserID: creds.ID, Key: creds.Key, Options: mapOpts, ReadOnly: readOnly},
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
	sr, err := s.parseStage(req)
	if err != nil {
		return nil, err
	}
	volID := req.GetVolumeId()
	logger := klog.FromContext(ctx).WithValues("volume", volID, "image", sr.spec.String())

	var old stageRecord
	staged, err := s.state.Load(volID, &old)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %v", volID, err)
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
		sr.rec.Mapper, sr.rec.UnmapOptions, sr.rec.Targets = old.Mapper, old.UnmapOptions, old.Targets
	}
	m := s.mappers[sr.rec.Mapper]
	if m == nil {
		return nil, fmt.Errorf("no mapper %q on this node", sr.rec.Mapper)
	}
	// Record the intent first: a crash between mapping and saving must not
	// leave a mapping that unstage cannot find.
	if err := s.state.Save(volID, &sr.rec); err != nil {
		return nil, fmt.Errorf("saving node state of %s: %v", volID, err)
	}
	dev, err := m.Map(ctx, sr.spec)
	if err != nil {
		if !staged {
			_ = s.state.Remove(volID)
		}
		return nil, fmt.Errorf("mapping %s with %s: %w", sr.spec, sr.rec.Mapper, err)
	}
	failpoint.Hit("node-stage-after-map")
	sr.rec.Device = dev
	if err := s.state.Save(volID, &sr.rec); err != nil {
		return nil, fmt.Errorf("saving node state of %s: %v", volID, err)
	}
	logger.V(2).Info("image mapped", "device", dev, "mapper", sr.rec.Mapper)
	if sr.rec.Block {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	mounted, err := s.publisher.IsMountPoint(sr.rec.StagingPath)
	if err != nil {
		return nil, fmt.Errorf("checking staging path: %v", err)
	}
	if mounted {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := s.mountStaged(ctx, sr); err != nil {
		// Leave nothing behind: the next attempt maps afresh.
		if uerr := m.Unmap(ctx, sr.rec.spec(), sr.rec.UnmapOptions); uerr != nil {
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
		return fmt.Errorf("creating staging path: %v", err)
	}
	existing, err := s.mounter.GetDiskFormat(rec.Device)
	if err != nil {
		return fmt.Errorf("probing %s: %v", rec.Device, err)
	}
	switch {
	case existing == "" && rec.ReadOnly:
		return csierr.Errorf(csierr.ErrPrecondition, "image %s has no filesystem and is staged read-only", sr.spec)
	case existing != "" && existing != rec.FsType:
		return csierr.Errorf(csierr.ErrPrecondition, "image %s holds %s, not the requested %s; it is not reformatted", sr.spec, existing, rec.FsType)
	}
	if existing == "ext4" && !rec.ReadOnly {
		// Offline growth needs no CAP_SYS_RESOURCE, unlike online growth.
		if err := s.growExtOffline(rec.Device); err != nil {
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
	if err := s.mounter.FormatAndMountSensitiveWithFormatOptions(rec.Device, rec.StagingPath, rec.FsType, opts, nil, sr.mkfsOpts); err != nil {
		return fmt.Errorf("mounting %s (%s) at %s: %v", rec.Device, sr.spec, rec.StagingPath, err)
	}
	if existing == "xfs" && !rec.ReadOnly {
		if need, err := s.resizer.NeedResize(rec.Device, rec.StagingPath); err == nil && need {
			if _, err := s.resizer.Resize(rec.Device, rec.StagingPath); err != nil {
				klog.FromContext(ctx).Error(err, "growing xfs to the device size", "device", rec.Device)
			}
		}
	}
	return nil
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
			return fmt.Errorf("e2fsck %s before growing it: %v: %s", dev, err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := s.resizer.Resize(dev, ""); err != nil {
		return fmt.Errorf("growing the filesystem on %s: %v", dev, err)
	}
	return nil
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// and unmap the image.
func (s *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	volID, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := nodeutil.Require([2]string{"volume_id", volID}); err != nil {
		return nil, err
	}
	if err := nodeutil.Path("staging_target_path", staging); err != nil {
		return nil, err
	}
	var rec stageRecord
	staged, err := s.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %v", volID, err)
	}
	mounted, err := s.publisher.IsMountPoint(staging)
	if err != nil && !mount.IsCorruptedMnt(err) {
		return nil, fmt.Errorf("checking staging path: %v", err)
	}
	if mounted || mount.IsCorruptedMnt(err) {
		if err := s.mounter.Unmount(staging); err != nil {
			if strings.Contains(err.Error(), "busy") {
				return nil, csierr.Errorf(csierr.ErrPrecondition, "staging path %s is still in use: %v", staging, err)
			}
			return nil, fmt.Errorf("unmounting %s: %v", staging, err)
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
	if err := m.Unmap(ctx, rec.spec(), rec.UnmapOptions); err != nil {
		return nil, fmt.Errorf("unmapping %s: %w", rec.spec(), err)
	}
	failpoint.Hit("node-unstage-after-unmap")
	if err := s.state.Remove(volID); err != nil {
		return nil, fmt.Errorf("removing node state of %s: %v", volID, err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume implements csi.NodeServer: bind-mount the staged
// filesystem, or the device itself for a block volume, at the target.
func (s *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	volID, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if err := nodeutil.Require([2]string{"volume_id", volID}); err != nil {
		return nil, err
	}
	if err := nodeutil.Paths([2]string{"target_path", target}, [2]string{"staging_target_path", staging}); err != nil {
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
		return nil, fmt.Errorf("reading node state of %s: %v", volID, err)
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
		if _, err := os.Stat(rec.Device); err != nil {
			return nil, csierr.Errorf(csierr.ErrPrecondition, "device %s of volume %s: %v", rec.Device, volID, err)
		}
		if err := s.publisher.BindFile(rec.Device, target, req.GetReadonly()); err != nil {
			return nil, err
		}
	} else {
		mounted, err := s.publisher.IsMountPoint(staging)
		if err != nil {
			return nil, fmt.Errorf("checking staging path: %v", err)
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
	if err := nodeutil.Require([2]string{"volume_id", volID}); err != nil {
		return nil, err
	}
	if err := nodeutil.Path("target_path", target); err != nil {
		return nil, err
	}
	var rec stageRecord
	if _, err := s.state.Load(volID, &rec); err != nil {
		return nil, fmt.Errorf("reading node state of %s: %v", volID, err)
	}
	if err := s.publisher.Unpublish(target, rec.Owns(target)); err != nil {
		return nil, err
	}
	if err := s.state.ForgetTarget(volID, &stageRecord{}, target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeExpandVolume implements csi.NodeServer: after the controller grew
// the image, make the device follow and grow the filesystem online.
func (s *NodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	volID, volPath := req.GetVolumeId(), req.GetVolumePath()
	if err := nodeutil.Require([2]string{"volume_id", volID}); err != nil {
		return nil, err
	}
	if err := nodeutil.Path("volume_path", volPath); err != nil {
		return nil, err
	}
	var rec stageRecord
	staged, err := s.state.Load(volID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading node state of %s: %v", volID, err)
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
	if rec.Block || req.GetVolumeCapability().GetBlock() != nil {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
	}
	mountPath := rec.StagingPath
	if mounted, _ := s.publisher.IsMountPoint(mountPath); !mounted {
		mountPath = volPath
	}
	if _, err := s.resizer.Resize(rec.Device, mountPath); err != nil {
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
			return 0, fmt.Errorf("size of %s: %v", dev, err)
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

// NodeGetVolumeStats implements csi.NodeServer.
func (s *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	path := req.GetVolumePath()
	if err := nodeutil.Require([2]string{"volume_id", req.GetVolumeId()}); err != nil {
		return nil, err
	}
	if err := nodeutil.Path("volume_path", path); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume_path %s does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("volume_path %s: %v", path, err)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		size, err := nodeutil.BlockSize(path)
		if err != nil {
			return nil, fmt.Errorf("size of %s: %v", path, err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	mounted, err := s.publisher.IsMountPoint(path)
	if err != nil {
		return nil, fmt.Errorf("checking %s: %v", path, err)
	}
	if !mounted {
		return nil, csierr.Errorf(csierr.ErrNotFound, "volume_path %s is not a mounted volume", path)
	}
	return nodeutil.FilesystemStats(path)
}

// timeoutExec bounds every command that mount-utils runs (blkid, mkfs,
// fsck, resize2fs, xfs_growfs), which it starts without a deadline.
type timeoutExec struct {
	utilexec.Interface
	timeout time.Duration
}

// Command implements utilexec.Interface.
func (e timeoutExec) Command(cmd string, args ...string) utilexec.Cmd {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(e.timeout, cancel)
	return e.Interface.CommandContext(ctx, cmd, args...)
}
