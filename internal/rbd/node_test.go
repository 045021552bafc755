package rbd

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	mount "k8s.io/mount-utils"
	testingexec "k8s.io/utils/exec/testing"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/mapper"
	"github.com/leanceph/cephcsi/internal/service"
)

const unitKey = "AQBp" + "bWFnaW5lZCBrZXkgZm9yIHRlc3RzIG9ubHk="

// fakeMapper maps every image to one device file.
type fakeMapper struct {
	mu     sync.Mutex
	device string
	mapped map[string]bool
	maps   []mapper.Spec
	unmaps []string
	busy   bool
	mapErr error
}

func (f *fakeMapper) Map(_ context.Context, s mapper.Spec) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maps = append(f.maps, s)
	if f.mapErr != nil {
		return "", f.mapErr
	}
	f.mapped[s.String()] = true
	return f.device, nil
}

func (f *fakeMapper) Find(_ context.Context, s mapper.Spec) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mapped[s.String()] {
		return f.device, nil
	}
	return "", nil
}

func (f *fakeMapper) Unmap(_ context.Context, s mapper.Spec, opts string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy {
		return mapper.ErrBusy
	}
	f.unmaps = append(f.unmaps, s.String()+" opts="+opts)
	delete(f.mapped, s.String())
	return nil
}

func (f *fakeMapper) Refresh(context.Context, mapper.Spec, string) error { return nil }

type unitNode struct {
	srv      *NodeServer
	fm       *fakeMapper
	mounter  *mount.FakeMounter
	deps     *service.Deps
	stateDir string
	dir      string
}

func newUnitNode(t *testing.T) *unitNode {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`[{"clusterID":"c1","monitors":["10.0.0.1:6789"],"rbd":{"radosNamespace":"ns-from-config"}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "dev-loop9")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deps := &service.Deps{Options: &config.Options{NodeID: "node-1", DriverName: "rbd.csi.ceph.com", PluginPath: dir},
		Clusters: config.NewClusters(cfg), Locks: &locks.Set{}}
	fm := &fakeMapper{device: dev, mapped: map[string]bool{}}
	mounter := mount.NewFakeMounter(nil)
	stateDir := filepath.Join(dir, "state")
	srv := newNodeServer(deps, map[string]mapper.Mapper{mapper.KindFuse: fm, mapper.KindKRBD: fm, mapper.KindNBD: fm},
		mounter, &testingexec.FakeExec{}, stateDir)
	return &unitNode{srv: srv, fm: fm, mounter: mounter, deps: deps, stateDir: stateDir, dir: dir}
}

func (u *unitNode) stageReq(vcap *csi.VolumeCapability, kv ...string) *csi.NodeStageVolumeRequest {
	vc := map[string]string{"clusterID": "c1", "pool": "rbd", "imageName": "csi-vol-1", "mounter": "rbd-fuse",
		"unmapOptions": "fuse:"}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(vc, kv[i])
		} else {
			vc[kv[i]] = kv[i+1]
		}
	}
	return &csi.NodeStageVolumeRequest{VolumeId: "vol-1", StagingTargetPath: filepath.Join(u.dir, "staging"),
		VolumeCapability: vcap, VolumeContext: vc, Secrets: map[string]string{"userID": "csi-rbd-node", "userKey": unitKey}}
}

func unitBlockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
}

func unitFsCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
}

func TestNodeCapabilitiesAndInfo(t *testing.T) {
	u := newUnitNode(t)
	caps, err := u.srv.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[csi.NodeServiceCapability_RPC_Type]bool{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME: true, csi.NodeServiceCapability_RPC_EXPAND_VOLUME: true,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS: true, csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER: true,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH: true}
	for _, c := range caps.GetCapabilities() {
		delete(want, c.GetRpc().GetType())
	}
	if len(want) != 0 || len(caps.GetCapabilities()) != 5 {
		t.Errorf("capabilities = %v; missing %v", caps.GetCapabilities(), want)
	}
	info, err := u.srv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil || info.GetNodeId() != "node-1" {
		t.Errorf("NodeGetInfo = %v, %v", info, err)
	}
}

func TestNodeStageRejectsBadRequests(t *testing.T) {
	u := newUnitNode(t)
	ctx := context.Background()
	noSecrets := u.stageReq(unitBlockCap())
	noSecrets.Secrets = nil
	noCap := u.stageReq(nil)
	noCap.VolumeCapability = nil
	noPath := u.stageReq(unitBlockCap())
	noPath.StagingTargetPath = ""
	multiWriterFs := u.stageReq(&csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}})
	cases := map[string]struct {
		req  *csi.NodeStageVolumeRequest
		want string
	}{
		"no staging path":  {noPath, "staging_target_path"},
		"no capability":    {noCap, "volume_capability"},
		"no secrets":       {noSecrets, "userID/userKey"},
		"no image":         {u.stageReq(unitBlockCap(), "imageName", ""), "volume_context.imageName"},
		"no cluster":       {u.stageReq(unitBlockCap(), "clusterID", ""), "volume_context.clusterID"},
		"unknown cluster":  {u.stageReq(unitBlockCap(), "clusterID", "c2"), "volume_context.clusterID"},
		"bad mounter":      {u.stageReq(unitBlockCap(), "mounter", "iscsi"), "volume_context.mounter"},
		"bad mapOptions":   {u.stageReq(unitBlockCap(), "mapOptions", "zfs:x"), "volume_context.mapOptions"},
		"bad unmapOptions": {u.stageReq(unitBlockCap(), "unmapOptions", "a:b:c"), "volume_context.unmapOptions"},
		"btrfs":            {u.stageReq(unitFsCap("btrfs")), "fs_type"},
		"multi-writer fs":  {multiWriterFs, "volume_capability: access mode"},
	}
	for name, tc := range cases {
		_, err := u.srv.NodeStageVolume(ctx, tc.req)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument naming %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), unitKey) {
			t.Errorf("%s: the error shows the key", name)
		}
	}
	if len(u.fm.maps) != 0 {
		t.Errorf("bad requests mapped images: %v", u.fm.maps)
	}
}

func TestNodeBlockStageSurvivesRestartAndKeepsNoKey(t *testing.T) {
	u := newUnitNode(t)
	ctx := context.Background()
	req := u.stageReq(unitBlockCap(), "mapOptions", "fuse:allow_root", "unmapOptions", "")
	if _, err := u.srv.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if len(u.fm.maps) != 1 {
		t.Fatalf("maps = %v", u.fm.maps)
	}
	got := u.fm.maps[0]
	if got.String() != "rbd/ns-from-config/csi-vol-1" || got.UserID != "csi-rbd-node" || got.Key != unitKey ||
		got.Options != "allow_root" || len(got.Monitors) != 1 || got.Monitors[0] != "10.0.0.1:6789" {
		t.Errorf("map spec = %s user=%s opts=%q mons=%v", got, got.UserID, got.Options, got.Monitors)
	}
	// What the node keeps on disk names the image and device, never the key.
	files, _ := filepath.Glob(filepath.Join(u.stateDir, "*.json"))
	if len(files) != 1 {
		t.Fatalf("state files = %v", files)
	}
	data, _ := os.ReadFile(files[0])
	if strings.Contains(string(data), unitKey) || !strings.Contains(string(data), `"device":"`+u.fm.device+`"`) {
		t.Errorf("state file = %s", data)
	}

	// Another stage of the same volume at another path is refused.
	other := u.stageReq(unitBlockCap())
	other.StagingTargetPath = filepath.Join(u.dir, "elsewhere")
	if _, err := u.srv.NodeStageVolume(ctx, other); csierr.Code(err) != codes.AlreadyExists {
		t.Errorf("stage at another path = %v, want AlreadyExists", err)
	}

	target := filepath.Join(u.dir, "pods", "p1", "dev")
	pub := &csi.NodePublishVolumeRequest{VolumeId: "vol-1", StagingTargetPath: req.StagingTargetPath, TargetPath: target,
		VolumeCapability: unitBlockCap(), Readonly: true}
	if _, err := u.srv.NodePublishVolume(ctx, pub); err != nil {
		t.Fatal(err)
	}
	mps, _ := u.mounter.List()
	if len(mps) != 1 || mps[0].Device != u.fm.device || mps[0].Path != target || !hasOpt(mps[0].Opts, "ro") || !hasOpt(mps[0].Opts, "bind") {
		t.Errorf("mounts after block publish = %+v", mps)
	}

	// A busy device keeps its state for the retry.
	u.fm.busy = true
	if _, err := u.srv.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "vol-1", StagingTargetPath: req.StagingTargetPath}); csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("unstage of a busy device = %v, want FailedPrecondition", err)
	}
	u.fm.busy = false
	if _, err := u.srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: target}); err != nil {
		t.Fatal(err)
	}

	// A restarted plugin (a new server on the same state) unmaps what the
	// old one mapped, with the unmap options of the stage.
	restarted := newNodeServer(u.deps, u.srv.mappers, u.mounter, &testingexec.FakeExec{}, u.stateDir)
	for i := 0; i < 2; i++ {
		if _, err := restarted.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "vol-1", StagingTargetPath: req.StagingTargetPath}); err != nil {
			t.Fatalf("unstage #%d after restart: %v", i+1, err)
		}
	}
	if len(u.fm.unmaps) != 1 || u.fm.unmaps[0] != "rbd/ns-from-config/csi-vol-1 opts=" {
		t.Errorf("unmaps = %v", u.fm.unmaps)
	}
	if files, _ := filepath.Glob(filepath.Join(u.stateDir, "*.json")); len(files) != 0 {
		t.Errorf("state left after unstage: %v", files)
	}
}

func TestNodeFailedMapLeavesNoState(t *testing.T) {
	u := newUnitNode(t)
	u.fm.mapErr = mapper.ErrUnsupported
	_, err := u.srv.NodeStageVolume(context.Background(), u.stageReq(unitBlockCap(), "mounter", ""))
	if csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("stage with an unusable mapper = %v, want FailedPrecondition", err)
	}
	if files, _ := filepath.Glob(filepath.Join(u.stateDir, "*.json")); len(files) != 0 {
		t.Errorf("state left after a failed map: %v", files)
	}
}

func TestNodeBusyVolumeIsAborted(t *testing.T) {
	u := newUnitNode(t)
	release, err := u.deps.Lock(locks.VolumeID("vol-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// The server's lock layer answers before the handler runs.
	intercept := locks.Interceptor(u.deps.Locks)
	call := func(req any, handler grpc.UnaryHandler) error {
		_, err := intercept(context.Background(), req, &grpc.UnaryServerInfo{}, handler)
		return err
	}
	stage := u.stageReq(unitBlockCap())
	if err := call(stage, func(ctx context.Context, r any) (any, error) {
		return u.srv.NodeStageVolume(ctx, r.(*csi.NodeStageVolumeRequest))
	}); csierr.Code(err) != codes.Aborted {
		t.Errorf("stage while another call holds the volume = %v, want Aborted", err)
	}
	expand := &csi.NodeExpandVolumeRequest{VolumeId: "vol-1", VolumePath: "/x"}
	if err := call(expand, func(ctx context.Context, r any) (any, error) {
		return u.srv.NodeExpandVolume(ctx, r.(*csi.NodeExpandVolumeRequest))
	}); csierr.Code(err) != codes.Aborted {
		t.Errorf("expand while another call holds the volume = %v, want Aborted", err)
	}
	if files, _ := filepath.Glob(filepath.Join(u.stateDir, "*.json")); len(files) != 0 {
		t.Errorf("a refused stage left state: %v", files)
	}
}

func TestNodeRequiredFields(t *testing.T) {
	u := newUnitNode(t)
	ctx := context.Background()
	check := func(name string, err error, field string) {
		t.Helper()
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v, want InvalidArgument naming %s", name, err, field)
		}
	}
	_, err := u.srv.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{StagingTargetPath: "/s"})
	check("unstage", err, "volume_id")
	_, err = u.srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: "/s", VolumeCapability: unitBlockCap()})
	check("publish", err, "target_path")
	_, err = u.srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v"})
	check("unpublish", err, "target_path")
	_, err = u.srv.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "v"})
	check("expand", err, "volume_path")
	_, err = u.srv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumePath: "/p"})
	check("stats", err, "volume_id")
}

func hasOpt(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

func TestNodeSingleWriterIsPublishedOnce(t *testing.T) {
	u := newUnitNode(t)
	ctx := context.Background()
	vcap := unitBlockCap()
	vcap.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	req := u.stageReq(vcap)
	if _, err := u.srv.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	publish := func(target string) error {
		_, err := u.srv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-1",
			StagingTargetPath: req.StagingTargetPath, TargetPath: target, VolumeCapability: vcap})
		return err
	}
	first, second := filepath.Join(u.dir, "pods", "a"), filepath.Join(u.dir, "pods", "b")
	if err := publish(first); err != nil {
		t.Fatal(err)
	}
	if err := publish(first); err != nil {
		t.Errorf("publishing again at the same target: %v", err)
	}
	// Restaging (as kubelet does after a plugin restart) keeps the record
	// of where the volume is published.
	if _, err := u.srv.NodeStageVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := publish(second); csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("second target of a single-writer volume: %v, want FailedPrecondition", err)
	}
	if _, err := u.srv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: first}); err != nil {
		t.Fatal(err)
	}
	if err := publish(second); err != nil {
		t.Errorf("publishing at the second target after the first is gone: %v", err)
	}
}

// --domainlabels: NodeGetInfo reports the node's topology from its labels,
// keyed by the driver name; a node lacking a domain label is refused.
func TestNodeGetInfoReportsTopology(t *testing.T) {
	u := newUnitNode(t)
	u.deps.Options.DomainLabels = []string{"topology.kubernetes.io/zone", "topology.kubernetes.io/region"}
	u.deps.Labels = func(context.Context) (map[string]string, error) {
		return map[string]string{"topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "r1"}, nil
	}
	info, err := u.srv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"topology.rbd.csi.ceph.com/zone": "zone-a", "topology.rbd.csi.ceph.com/region": "r1"}
	if info.GetNodeId() != "node-1" || !reflect.DeepEqual(info.GetAccessibleTopology().GetSegments(), want) {
		t.Errorf("NodeGetInfo = %v, want node-1 with %v", info, want)
	}
	v := newUnitNode(t)
	v.deps.Options.DomainLabels = []string{"topology.kubernetes.io/rack"}
	v.deps.Labels = u.deps.Labels
	if _, err := v.srv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{}); csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("a node without the domain label: %v, want FailedPrecondition", err)
	}
}

// Read affinity: the map request carries the node's CRUSH location from
// its labels (config.json's labels over the flag's).
func TestNodeStagePassesTheCrushLocation(t *testing.T) {
	u := newUnitNode(t)
	u.deps.Options.EnableReadAffinity = true
	u.deps.Options.CrushLocationLabels = []string{"topology.kubernetes.io/zone"}
	u.deps.Labels = func(context.Context) (map[string]string, error) {
		return map[string]string{"topology.kubernetes.io/zone": "zone-a"}, nil
	}
	if _, err := u.srv.NodeStageVolume(context.Background(), u.stageReq(unitBlockCap())); err != nil {
		t.Fatal(err)
	}
	if len(u.fm.maps) != 1 || !reflect.DeepEqual(u.fm.maps[0].CrushLocation, map[string]string{"zone": "zone-a"}) {
		t.Errorf("the mapper got %+v, want crush location zone=zone-a", u.fm.maps)
	}
}
