package rbd

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/luks"
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
	crypt     luks.Crypt
	// sizeWait bounds waiting for a device to show a grown image's size.
	sizeWait time.Duration
}

// toolTimeout bounds mkfs, fsck, blkid and resize runs.
const toolTimeout = 5 * time.Minute

// NewNodeServer returns the node service. Its state lives below
// <pluginpath>/<drivername>.
func NewNodeServer(d *service.Deps) (*NodeServer, error) {
	base := filepath.Join(d.Options.PluginPath, d.Options.DriverName)
	runner, err := keyexec.NewExec(d.Options.HelperCgroup)
	if err != nil {
		return nil, err
	}
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
		crypt:     luks.Crypt{Runner: keyexec.Exec{}},
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
	// Crypt is the LUKS mapping of an encrypted volume (under /dev/mapper).
	Crypt string `json:"crypt,omitempty"`
	nodeutil.Published
}

func (r *stageRecord) spec() mapper.Spec {
	return mapper.Spec{Pool: r.Pool, Namespace: r.Namespace, Image: r.Image, ReadOnly: r.ReadOnly}
}

// NodeGetCapabilities implements csi.NodeServer.
func (s *NodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: request.NodeCapabilities(
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	)}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (s *NodeServer) NodeGetInfo(ctx context.Context, _ *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return nodeutil.Info(ctx, s.Deps)
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
	return e.CommandContext(ctx, cmd, args...)
}
