package cephfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/fscrypt"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/metrics"
	"github.com/leanceph/cephcsi/internal/nodeutil"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
	"github.com/leanceph/cephcsi/internal/topology"
	"github.com/leanceph/cephcsi/internal/volid"
)

// NodeServer serves the CSI node service for CephFS.
type NodeServer struct {
	csi.UnimplementedNodeServer
	*service.Deps
	mounter   mount.Interface
	publisher *nodeutil.Publisher
	state     nodeutil.StateStore
}

// NewNodeServer returns the node service.
func NewNodeServer(d *service.Deps) (*NodeServer, error) {
	ex, err := keyexec.NewExec(d.Options.HelperCgroup)
	if err != nil {
		return nil, err
	}
	if d.Options.HelperCgroup != "" {
		// One node service per process: its mount helpers run through ex.
		runner = ex
	}
	m := mount.New("")
	return &NodeServer{Deps: d, mounter: m, publisher: &nodeutil.Publisher{Mounter: m},
		state: nodeutil.StateStore{Dir: filepath.Join(d.Options.PluginPath, d.Options.DriverName, "cephfs-staged")}}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (n *NodeServer) NodeGetInfo(ctx context.Context, _ *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return nodeutil.Info(ctx, n.Deps)
}

// NodeGetCapabilities implements csi.NodeServer.
func (n *NodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: request.NodeCapabilities(
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	)}, nil
}

// stagedVolume is what NodeStageVolume records about a staged volume; no
// secrets.
type stagedVolume struct {
	StagingPath string `json:"stagingPath"`
	Mounter     string `json:"mounter"`
	FsName      string `json:"fsName"`
	Root        string `json:"root"`
	// SnapshotDir is set for a snapshot-backed volume: the directory below
	// Root bind-mounted over the staging path.
	SnapshotDir string `json:"snapshotDir,omitempty"`
	nodeutil.Published
}

// stageRequest is a NodeStageVolume request decoded.
type stageRequest struct {
	spec              mountSpec
	mounter           string
	clusterID         string
	subvolumeName     string
	backingSnapshotID string
	encryption        *encryption
}

// NodeStageVolume implements csi.NodeServer: it mounts the subvolume (or,
// for a snapshot-backed volume, its snapshot) at the staging path.
func (n *NodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	volumeID, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := nodeutil.VolumeAndPaths(volumeID, [2]string{"staging_target_path", staging}); err != nil {
		return nil, err
	}
	vcap := req.GetVolumeCapability()
	if err := request.ValidateCapability("volume_capability", vcap, true); err != nil {
		return nil, err
	}
	sr, err := n.decodeStage(ctx, req)
	if err != nil {
		return nil, err
	}
	if sr.backingSnapshotID != "" && !request.ReadOnlyModes([]*csi.VolumeCapability{vcap}) {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_capability: a snapshot-backed volume supports reader-only access modes only")
	}
	mounted, err := n.publisher.IsMountPoint(staging)
	if err != nil {
		return nil, fmt.Errorf("checking %s: %w", staging, err)
	}
	if mounted {
		// A stage that stopped between the mount and the unlock is
		// finished by its retry; unlocking twice changes nothing.
		if sr.encryption != nil {
			if err := n.unlock(ctx, req, sr, staging); err != nil {
				return nil, err
			}
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, fmt.Errorf("creating staging path %s: %w", staging, err)
	}
	sr.spec.Target = staging
	began := time.Now()
	if sr.mounter == mounterFuse {
		err = mountFuse(ctx, sr.spec)
	} else {
		err = mountKernel(ctx, sr.spec)
	}
	if metrics.Node(metrics.CephFS, sr.mounter, metrics.OpMount, began, err) != nil {
		return nil, fmt.Errorf("mounting %s:%s with the %s client: %w", sr.spec.FsName, sr.spec.Root, sr.mounter, err)
	}
	rec := stagedVolume{StagingPath: staging, Mounter: sr.mounter, FsName: sr.spec.FsName, Root: sr.spec.Root}
	if sr.encryption != nil {
		if err := n.unlock(ctx, req, sr, staging); err != nil {
			n.undoStage(ctx, staging)
			return nil, err
		}
	}
	if sr.backingSnapshotID != "" {
		if rec.SnapshotDir, err = n.bindSnapshot(staging, sr.backingSnapshotID); err != nil {
			n.undoStage(ctx, staging)
			return nil, err
		}
	}
	if err := n.state.Save(volumeID, rec); err != nil {
		n.undoStage(ctx, staging)
		return nil, fmt.Errorf("recording the staged volume: %w", err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// unlock opens the fscrypt directory of the encrypted volume mounted at
// staging, creating it on the volume's first stage.
func (n *NodeServer) unlock(ctx context.Context, req *csi.NodeStageVolumeRequest, sr *stageRequest, staging string) error {
	owner := ""
	if id, err := volid.Decode(req.GetVolumeId()); err == nil {
		entry, err := n.journalEntry(id, req.GetVolumeId(), sr.spec.Creds)
		if err != nil {
			return err
		}
		owner = entry.Owner
	}
	secret, src, err := fileSecret(ctx, n.Deps, sr.encryption, req.GetSecrets(), owner, false)
	if err != nil {
		return err
	}
	defer clear(secret)
	began := time.Now()
	dir, err := fscrypt.Unlock(staging, src, secret)
	if err != nil {
		return fmt.Errorf("volume %s: %w", req.GetVolumeId(), unlockError(err))
	}
	klog.FromContext(ctx).V(2).Info("unlocked the fscrypt directory", "volume", req.GetVolumeId(), "dir", dir, "took", time.Since(began))
	return nil
}

// undoStage unmounts a stage that failed half-way; what it cannot unmount
// the next NodeStageVolume or NodeUnstageVolume retries.
func (n *NodeServer) undoStage(ctx context.Context, staging string) {
	if err := n.unmountAll(ctx, staging); err != nil {
		klog.FromContext(ctx).Error(err, "undoing a failed stage", "stagingPath", staging)
	}
}

// decodeStage reads the volume context: where the volume lives, which
// client mounts it, with which options and credentials.
func (n *NodeServer) decodeStage(ctx context.Context, req *csi.NodeStageVolumeRequest) (*stageRequest, error) {
	vc := req.GetVolumeContext()
	static := vc["staticVolume"] == "true"
	sr := &stageRequest{clusterID: vc["clusterID"], subvolumeName: vc["subvolumeName"], backingSnapshotID: vc["backingSnapshotID"]}
	if sr.clusterID == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context: clusterID is required")
	}
	cl, err := n.Clusters.Get(sr.clusterID)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context: clusterID %q: %v", sr.clusterID, err)
	}
	// Dynamically provisioned volumes mount with the admin pair when the
	// node secret has one (as ceph-csi does), pre-provisioned ones with the
	// user pair.
	pairs := [][2]string{request.AdminSecret, request.UserSecret}
	if static {
		pairs = [][2]string{request.UserSecret, request.AdminSecret}
	}
	creds, err := request.Credentials(req.GetSecrets(), pairs...)
	if err != nil {
		return nil, err
	}
	sr.spec = mountSpec{Monitors: cl.Monitors, FsName: vc["fsName"], Creds: creds}
	if static {
		sr.spec.Root = vc["rootPath"]
	} else {
		sr.spec.Root = vc["subvolumePath"]
	}
	if sr.spec.FsName == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context: fsName is required")
	}
	if err := request.ValidPoolName("volume_context.fsName", sr.spec.FsName); err != nil {
		return nil, err
	}
	// The name and the root go into the helper's options and arguments.
	if err := request.SafeValue("volume_context.fsName", sr.spec.FsName); err != nil {
		return nil, err
	}
	backing := vc["backingSnapshot"] == "true" || sr.backingSnapshotID != ""
	if backing && sr.backingSnapshotID == "" {
		// A volume made by ceph-csi keeps the snapshot ID in the journal only.
		if sr.backingSnapshotID, err = n.backingSnapshotFromJournal(req.GetVolumeId(), creds); err != nil {
			return nil, err
		}
	}
	if sr.spec.Root == "" && !static && sr.subvolumeName != "" && !backing {
		if sr.spec.Root, err = n.subvolumePath(req.GetVolumeId(), sr.spec.FsName, sr.subvolumeName, creds); err != nil {
			return nil, err
		}
	}
	if sr.spec.Root == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context: subvolumePath (or rootPath for a static volume) is required")
	}
	rootField := "volume_context.subvolumePath"
	if static {
		rootField = "volume_context.rootPath"
	}
	if err := nodeutil.Path(rootField, sr.spec.Root); err != nil {
		return nil, err
	}
	if err := request.SafeValue(rootField, sr.spec.Root); err != nil {
		return nil, err
	}
	sr.mounter = vc["mounter"]
	if validMounter(sr.mounter) != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.mounter: %q is not kernel or fuse", sr.mounter)
	}
	if sr.encryption, err = parseEncryption(vc, "volume_context."); err != nil {
		return nil, err
	}
	switch {
	case sr.encryption != nil && backing:
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context: a snapshot-backed volume cannot be encrypted")
	case sr.encryption != nil && sr.mounter == mounterFuse:
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_context.mounter: %q cannot mount an encrypted volume: fscrypt needs the kernel client", sr.mounter)
	case sr.encryption != nil:
		// fscrypt lives in the kernel client: without it the volume
		// cannot be opened here, whatever the quota support.
		if !kernelClientAvailable() {
			return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s is encrypted with fscrypt, which needs the CephFS kernel client, "+
				"and this node's kernel has no ceph module", req.GetVolumeId())
		}
		sr.mounter = mounterKernel
	case sr.mounter == "":
		sr.mounter = mounterFuse
		if kernelClientAvailable() && (n.Options.ForceKernelClient || KernelQuotaSupported()) {
			sr.mounter = mounterKernel
		}
	}
	// Options: config.json (else the command line), the StorageClass's, and
	// the capability's mount flags.
	base, scKey := cl.CephFS.KernelMountOptions, "kernelMountOptions"
	if base == "" {
		base = n.Options.KernelMountOpts
	}
	if sr.mounter == mounterFuse {
		base, scKey = cl.CephFS.FuseMountOptions, "fuseMountOptions"
		if base == "" {
			base = n.Options.FuseMountOpts
		}
	}
	// Every option is checked, wherever it comes from (config.json, the
	// flags, the StorageClass or the PersistentVolume): none may carry
	// another option, an argument or credentials (the mount flags were
	// checked with the capability).
	if err := request.SafeOptionList("config.json/--"+strings.ToLower(scKey), base); err != nil {
		return nil, err
	}
	if err := request.SafeOptionList("volume_context."+scKey, vc[scKey]); err != nil {
		return nil, err
	}
	sr.spec.Options = append(splitOptions(base), splitOptions(vc[scKey])...)
	sr.spec.Options = append(sr.spec.Options, req.GetVolumeCapability().GetMount().GetMountFlags()...)
	loc, err := n.CrushLocation(ctx, cl)
	if err != nil {
		return nil, err
	}
	switch {
	case loc == nil:
	case sr.mounter == mounterKernel:
		sr.spec.Options = append(sr.spec.Options, "read_from_replica=localize", "crush_location="+topology.KernelCrushLocation(loc))
	default:
		// Only the kernel client takes read_from_replica; ceph-fuse is given
		// no replica-read setting and reads from the primary OSDs.
		klog.FromContext(ctx).V(1).Info("read affinity applies to the CephFS kernel client only; this ceph-fuse mount reads from the primary OSDs")
	}
	return sr, nil
}

// subvolumePath asks the cluster for a subvolume's path, for volume contexts
// that lack subvolumePath.
func (n *NodeServer) subvolumePath(volumeID, fsName, subvolume string, creds cephconn.Credentials) (string, error) {
	id, err := volid.Decode(volumeID)
	if err != nil {
		return "", csierr.Errorf(csierr.ErrInvalid, "volume_context lacks subvolumePath and volume_id is not ours: %v", err)
	}
	f, err := openFS(n.Deps, id.ClusterID, fsName, 0, creds)
	if err != nil {
		return "", err
	}
	defer f.close()
	p, err := f.admin.SubVolumePath(f.fs.Name, f.group, subvolume)
	if err != nil {
		return "", fmt.Errorf("looking up the path of subvolume %s: %w", subvolume, err)
	}
	return p, nil
}

// journalEntry reads the volume's journal entry.
func (n *NodeServer) journalEntry(id volid.ID, volumeID string, creds cephconn.Credentials) (*journal.Entry, error) {
	f, err := openFS(n.Deps, id.ClusterID, "", id.LocationID, creds)
	if err != nil {
		return nil, err
	}
	defer f.close()
	entry, err := journal.Volumes(n.Options.InstanceID).Get(f.store(), id.UUID)
	if err != nil {
		return nil, fmt.Errorf("reading the journal of volume %s: %w", volumeID, err)
	}
	return entry, nil
}

// backingSnapshotFromJournal reads a snapshot-backed volume's snapshot ID
// from the volume journal.
func (n *NodeServer) backingSnapshotFromJournal(volumeID string, creds cephconn.Credentials) (string, error) {
	id, err := volid.Decode(volumeID)
	if err != nil {
		return "", csierr.Errorf(csierr.ErrInvalid, "volume_context lacks backingSnapshotID and volume_id is not ours: %v", err)
	}
	entry, err := n.journalEntry(id, volumeID, creds)
	if err != nil {
		return "", err
	}
	if entry.BackingSnapshotID == "" {
		return "", csierr.Errorf(csierr.ErrInvalid, "volume %s is not snapshot-backed", volumeID)
	}
	return entry.BackingSnapshotID, nil
}

// bindSnapshot finds the snapshot's data directory below the subvolume root
// mounted at staging and bind-mounts it, read-only, over staging.
func (n *NodeServer) bindSnapshot(staging, snapshotID string) (string, error) {
	id, err := volid.Decode(snapshotID)
	if err != nil {
		return "", csierr.Errorf(csierr.ErrInvalid, "backingSnapshotID %q: %v", snapshotID, err)
	}
	rel, err := snapshotDataDir(staging, id.UUID)
	if err != nil {
		return "", csierr.Errorf(csierr.ErrNotFound, "snapshot %s: %v", snapshotID, err)
	}
	// Two system calls, not mount(8): once the bind covers staging, the
	// source path (below staging) no longer resolves for a remount by path.
	if err := unix.Mount(filepath.Join(staging, rel), staging, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind-mounting snapshot directory %s: %w", rel, err)
	}
	if err := unix.Mount("", staging, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return "", fmt.Errorf("making the snapshot bind mount read-only: %w", err)
	}
	return rel, nil
}

// snapshotDataDir returns, relative to a subvolume root, the data directory
// inside the snapshot whose name carries snapUUID: .snap/<name>/<dir>.
func snapshotDataDir(root, snapUUID string) (string, error) {
	snaps, err := os.ReadDir(filepath.Join(root, ".snap"))
	if err != nil {
		return "", err
	}
	var name string
	for _, e := range snaps {
		if strings.Contains(e.Name(), snapUUID) {
			if name != "" {
				return "", fmt.Errorf("several snapshots match %s", snapUUID)
			}
			name = e.Name()
		}
	}
	if name == "" {
		return "", fmt.Errorf("no snapshot named after %s below %s", snapUUID, root)
	}
	entries, err := os.ReadDir(filepath.Join(root, ".snap", name))
	if err != nil {
		return "", err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("snapshot %s holds %d data directories, want 1", name, len(dirs))
	}
	return filepath.Join(".snap", name, dirs[0]), nil
}

// unmountAll removes every mount stacked on path (a snapshot bind mount over
// the CephFS mount, or the mount alone).
func (n *NodeServer) unmountAll(ctx context.Context, path string) error {
	for i := 0; i < 4; i++ {
		mounted, err := n.publisher.IsMountPoint(path)
		if err != nil {
			if mount.IsCorruptedMnt(err) {
				mounted = true // a dead ceph-fuse: unmount it all the same
			} else {
				return err
			}
		}
		if !mounted {
			return nil
		}
		began := time.Now()
		if err := metrics.Node(metrics.CephFS, "any", metrics.OpUnmount, began, n.mounter.Unmount(path)); err != nil {
			klog.FromContext(ctx).Error(err, "unmounting", "path", path)
			return err
		}
	}
	return fmt.Errorf("%s is still mounted after 4 unmounts", path)
}

// NodeUnstageVolume implements csi.NodeServer.
func (n *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	volumeID, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := nodeutil.VolumeAndPaths(volumeID, [2]string{"staging_target_path", staging}); err != nil {
		return nil, err
	}
	if err := n.unmountAll(ctx, staging); err != nil {
		return nil, fmt.Errorf("unmounting %s: %w", staging, err)
	}
	if err := n.state.Remove(volumeID); err != nil {
		return nil, fmt.Errorf("forgetting the staged volume: %w", err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume implements csi.NodeServer: a bind mount of the staging
// path into the target path.
func (n *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	volumeID, staging, target := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetTargetPath()
	if err := nodeutil.VolumeAndPaths(volumeID, [2]string{"staging_target_path", staging}, [2]string{"target_path", target}); err != nil {
		return nil, err
	}
	if err := nodeutil.TargetApart(target, staging); err != nil {
		return nil, err
	}
	vcap := req.GetVolumeCapability()
	if err := request.ValidateCapability("volume_capability", vcap, true); err != nil {
		return nil, err
	}
	staged, err := n.publisher.IsMountPoint(staging)
	if err != nil {
		return nil, fmt.Errorf("checking %s: %w", staging, err)
	}
	if !staged {
		return nil, csierr.Errorf(csierr.ErrPrecondition, "volume %s is not staged at %s", volumeID, staging)
	}
	var rec stagedVolume
	recorded, err := n.state.Load(volumeID, &rec)
	if err != nil {
		return nil, fmt.Errorf("reading the staged volume's record: %w", err)
	}
	if err := n.publisher.CheckSingleWriter(volumeID, vcap, &rec.Published, target); err != nil {
		return nil, err
	}
	readOnly := req.GetReadonly() || request.ReadOnlyModes([]*csi.VolumeCapability{vcap})
	// The target is recorded before it is made, so that unpublish (also
	// after a crash in between) knows the driver created it.
	if recorded {
		if err := n.state.AddTarget(volumeID, &rec, target); err != nil {
			return nil, err
		}
	}
	// An encrypted volume shows pods its fscrypt directory, not the
	// metadata beside it.
	source := staging
	enc, err := parseEncryption(req.GetVolumeContext(), "volume_context.")
	if err != nil {
		return nil, err
	}
	if enc != nil {
		source = filepath.Join(staging, fscrypt.Subdir)
	}
	if err := n.publisher.BindDir(source, target, readOnly, vcap.GetMount().GetMountFlags()); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (n *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	volumeID, target := req.GetVolumeId(), req.GetTargetPath()
	if err := nodeutil.VolumeAndPaths(volumeID, [2]string{"target_path", target}); err != nil {
		return nil, err
	}
	var rec stagedVolume
	if _, err := n.state.Load(volumeID, &rec); err != nil {
		return nil, fmt.Errorf("reading the staged volume's record: %w", err)
	}
	if err := n.publisher.Unpublish(target, rec.Owns(target)); err != nil {
		return nil, err
	}
	if err := n.state.ForgetTarget(volumeID, &stagedVolume{}, target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (n *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	return n.publisher.Stats(req, quotaUsage)
}

// NodeGetVolumeHealth implements csi.NodeServer: the staging mount and each
// publish target must answer; a ceph-fuse that died leaves them
// ENOTCONN.
func (n *NodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	return n.publisher.VolumeHealth(req, func() (*nodeutil.Staged, error) {
		var rec stagedVolume
		if ok, err := n.state.Load(req.GetVolumeId(), &rec); err != nil || !ok {
			return nil, err
		}
		return &nodeutil.Staged{StagingPath: rec.StagingPath, Targets: rec.Targets}, nil
	})
}
