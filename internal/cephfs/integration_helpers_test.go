//go:build integration

package cephfs_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
	"github.com/leanceph/cephcsi/internal/volid"
)

const (
	fsName       = "myfs"
	metadataPool = "myfs-metadata"
	dataPool     = "myfs-data0"
	group        = "csi"
	journalNS    = "csi"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func fsCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func rwo() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{fsCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}
}

func params(c *testutil.Cluster, extra ...string) map[string]string {
	p := map[string]string{"clusterID": c.ClusterID, "fsName": fsName, "mounter": "fuse"}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func uniqueName(prefix string) string { return prefix + "-" + uuid.NewString()[:8] }

func size(n int64) *csi.CapacityRange { return &csi.CapacityRange{RequiredBytes: n} }

// env is one test's view: the driver, the cluster as admin, and everything
// the test made, so that cleanup runs even when the test fails.
type env struct {
	t       *testing.T
	c       *testutil.Cluster
	d       *testutil.Driver
	fsa     *admin.FSAdmin
	meta    *rados.IOContext // metadata pool, journal namespace
	secrets map[string]string
	ctx     context.Context
	// pluginDir is the driver's --pluginpath.
	pluginDir string

	mu        sync.Mutex
	volumes   []string // volume IDs, creation order
	snapshots []string
	mounts    []string // staging and target paths to unmount
	names     []string // subvolume names (or UUIDs) this test is responsible for
	tempDirs  []string
}

func newEnv(t *testing.T, tweaks ...func(*config.Options)) *env {
	c := testutil.RequireCluster(t)
	pluginDir, err := os.MkdirTemp("", "cfs-plugin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pluginDir) })
	d := testutil.StartDriver(t, c, "cephfs", func(o *config.Options) {
		o.PluginPath = pluginDir
		for _, tweak := range tweaks {
			tweak(o)
		}
	})
	waitReady(t, d)
	meta := c.IOContext(t, metadataPool)
	meta.SetNamespace(journalNS)
	e := &env{t: t, c: c, d: d, fsa: admin.NewFromConn(c.Admin()), meta: meta, secrets: c.CephFSSecrets(), ctx: ctxT(t),
		pluginDir: pluginDir}
	// Registered after the driver started, so it runs before the driver stops.
	t.Cleanup(e.cleanup)
	return e
}

func (e *env) track(list *[]string, v string) {
	e.mu.Lock()
	*list = append(*list, v)
	e.mu.Unlock()
}

// cleanup undoes what the test left, through the driver first and then as
// admin, so that a failed test leaks neither mounts nor subvolumes.
func (e *env) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := len(e.mounts) - 1; i >= 0; i-- {
		for j := 0; j < 3 && isMounted(e.mounts[i]); j++ {
			_ = exec.Command("umount", e.mounts[i]).Run()
		}
		if isMounted(e.mounts[i]) {
			_ = exec.Command("umount", "-l", e.mounts[i]).Run()
		}
	}
	for _, d := range e.tempDirs {
		// Never remove a directory with a live mount inside: that would
		// delete the volume's files.
		if m := filepath.Join(d, "m"); isMounted(m) {
			e.t.Errorf("%s is still mounted; left in place", m)
			continue
		}
		os.RemoveAll(d)
	}
	for _, id := range e.snapshots {
		_, _ = e.d.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.secrets})
	}
	for i := len(e.volumes) - 1; i >= 0; i-- {
		_, _ = e.d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: e.volumes[i], Secrets: e.secrets})
	}
	// Whatever the driver could not remove, remove as admin.
	subs, _ := e.fsa.ListSubVolumes(fsName, group)
	for _, s := range subs {
		if !e.ours(s) {
			continue
		}
		_ = e.fsa.CancelClone(fsName, group, s)
		snaps, _ := e.fsa.ListSubVolumeSnapshots(fsName, group, s)
		for _, sn := range snaps {
			_ = e.fsa.ForceRemoveSubVolumeSnapshot(fsName, group, s, sn)
		}
		_ = e.fsa.RemoveSubVolumeWithFlags(fsName, group, s, admin.SubVolRmFlags{Force: true})
	}
	for _, o := range e.objects() {
		_ = e.meta.Delete(o)
	}
	if !e.t.Failed() {
		e.assertNoLeftovers("behind")
	}
}

func (e *env) ours(s string) bool {
	for _, n := range e.names {
		if strings.Contains(s, n) {
			return true
		}
	}
	return false
}

func (e *env) objects() []string {
	var out []string
	_ = e.meta.ListObjects(func(oid string) {
		if e.ours(oid) {
			out = append(out, oid)
		}
	})
	return out
}

// leftovers lists what carries this test's names on the cluster:
// subvolumes, snapshots, journal objects and keys, reference objects.
func (e *env) leftovers() []string { return e.c.Leftovers(e.t, e.names...) }

// createVolume creates a volume, retrying while the driver answers Aborted
// (as the provisioner does); it returns the volume and how many Aborted
// answers came first.
func (e *env) createVolume(req *csi.CreateVolumeRequest) (*csi.Volume, int) {
	e.t.Helper()
	e.track(&e.names, req.GetName())
	if req.Secrets == nil {
		req.Secrets = e.secrets
	}
	aborted := 0
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := e.d.Controller.CreateVolume(e.ctx, req)
		if status.Code(err) == codes.Aborted && time.Now().Before(deadline) {
			aborted++
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			e.t.Fatalf("CreateVolume %s: %v", req.GetName(), err)
		}
		e.adopt(resp.GetVolume().GetVolumeId())
		return resp.GetVolume(), aborted
	}
}

// volReq is the CreateVolume request of an RWO volume of the test's
// StorageClass (extra parameters added) named after prefix, which cleanup
// is made responsible for; bytes 0 asks for the default size.
func (e *env) volReq(prefix string, bytes int64, src *csi.VolumeContentSource, extra ...string) *csi.CreateVolumeRequest {
	name := uniqueName(prefix)
	e.track(&e.names, name)
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, extra...),
		VolumeContentSource: src, Secrets: e.secrets}
	if bytes != 0 {
		req.CapacityRange = size(bytes)
	}
	return req
}

// newVolume creates the volume of volReq (see createVolume).
func (e *env) newVolume(prefix string, bytes int64, src *csi.VolumeContentSource, extra ...string) *csi.Volume {
	e.t.Helper()
	vol, _ := e.createVolume(e.volReq(prefix, bytes, src, extra...))
	return vol
}

// pendingClone asks for the volume of req, a copy that Ceph takes seconds
// to make: the answer must be Aborted. It returns the UUID the journal
// reserved for the volume, which cleanup is made responsible for.
func (e *env) pendingClone(req *csi.CreateVolumeRequest) string {
	e.t.Helper()
	if _, err := e.d.Controller.CreateVolume(e.ctx, req); status.Code(err) != codes.Aborted {
		e.t.Fatalf("CreateVolume %s: %v, want Aborted while the clone copies", req.GetName(), err)
	}
	u := testutil.Omap(e.t, e.meta, "csi.volumes.default")["csi.volume."+req.GetName()]
	if u == "" {
		e.t.Fatalf("no journal entry for the pending clone %s", req.GetName())
	}
	e.track(&e.names, u)
	return u
}

// adopt makes cleanup responsible for a volume ID.
func (e *env) adopt(volumeID string) {
	for _, v := range e.volumes {
		if v == volumeID {
			return
		}
	}
	e.track(&e.volumes, volumeID)
	e.track(&e.names, uuidOfID(volumeID))
}

func uuidOfID(id string) string {
	d, err := volid.Decode(id)
	if err != nil {
		return id
	}
	return d.UUID
}

func (e *env) snapshot(name, volumeID string) *csi.Snapshot {
	e.t.Helper()
	e.track(&e.names, name)
	resp, err := e.d.Controller.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID,
		Secrets: e.secrets, Parameters: map[string]string{"clusterID": e.c.ClusterID}})
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	e.track(&e.snapshots, resp.GetSnapshot().GetSnapshotId())
	e.track(&e.names, uuidOfID(resp.GetSnapshot().GetSnapshotId()))
	return resp.GetSnapshot()
}

func (e *env) deleteVolume(id string) {
	e.t.Helper()
	if _, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
		e.t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (e *env) deleteSnapshot(id string) {
	e.t.Helper()
	if _, err := e.d.Controller.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.secrets}); err != nil {
		e.t.Fatalf("DeleteSnapshot %s: %v", id, err)
	}
}

// mountDir returns a fresh directory with a short path for staging or
// publishing.
func (e *env) mountDir(kind string) string {
	d, err := os.MkdirTemp("", "cfs-"+kind)
	if err != nil {
		e.t.Fatal(err)
	}
	e.track(&e.tempDirs, d) // removed by cleanup, once nothing is mounted in it
	p := filepath.Join(d, "m")
	e.track(&e.mounts, p)
	return p
}

// stage stages a volume with d's node service (the CephFS node secret) and
// returns the staging path.
func (e *env) stage(d *testutil.Driver, vol *csi.Volume, vcap *csi.VolumeCapability) string {
	e.t.Helper()
	staging := e.mountDir("stage")
	if _, err := d.Node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext(), Secrets: e.c.CephFSNodeSecrets()}); err != nil {
		e.t.Fatalf("NodeStageVolume %s: %v", vol.GetVolumeId(), err)
	}
	return staging
}

func (e *env) publish(d *testutil.Driver, vol *csi.Volume, staging string, vcap *csi.VolumeCapability) string {
	e.t.Helper()
	target := e.mountDir("pub")
	if _, err := d.Node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext()}); err != nil {
		e.t.Fatalf("NodePublishVolume %s: %v", vol.GetVolumeId(), err)
	}
	return target
}

func (e *env) unpublish(d *testutil.Driver, vol *csi.Volume, target string) {
	e.t.Helper()
	if _, err := d.Node.NodeUnpublishVolume(e.ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
		e.t.Fatalf("NodeUnpublishVolume: %v", err)
	}
}

func (e *env) unstage(d *testutil.Driver, vol *csi.Volume, staging string) {
	e.t.Helper()
	if _, err := d.Node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		e.t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

// mounted publishes a staged volume for the test: stage and publish.
func (e *env) mounted(vol *csi.Volume, vcap *csi.VolumeCapability) (staging, target string) {
	staging = e.stage(e.d, vol, vcap)
	return staging, e.publish(e.d, vol, staging, vcap)
}

func (e *env) release(vol *csi.Volume, staging, target string) {
	e.unpublish(e.d, vol, target)
	e.unstage(e.d, vol, staging)
}

// withMounted mounts vol RWO (mounted), runs use on its target path and
// releases it again.
func (e *env) withMounted(vol *csi.Volume, use func(target string)) {
	e.t.Helper()
	staging, target := e.mounted(vol, rwo()[0])
	use(target)
	e.release(vol, staging, target)
}

// assertNoLeftovers fails when anything of the test is still on the cluster.
func (e *env) assertNoLeftovers(when string) {
	e.t.Helper()
	if left := e.leftovers(); len(left) > 0 {
		e.t.Errorf("left %s: %v", when, left)
	}
}

func isMounted(p string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// writeFile writes data and fsyncs it.
func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := writeSynced(p, data); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
}

func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return data
}

func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes %q..., want %d bytes", what, len(got), trunc(got), len(want))
	}
}

func trunc(b []byte) []byte {
	if len(b) > 16 {
		return b[:16]
	}
	return b
}

func (e *env) subvolumeInfo(name string) *admin.SubVolumeInfo {
	e.t.Helper()
	info, err := e.fsa.SubVolumeInfo(fsName, group, name)
	if err != nil {
		e.t.Fatalf("subvolume info %s: %v", name, err)
	}
	return info
}

func (e *env) snapshotNames(sub string) []string {
	e.t.Helper()
	names, err := e.fsa.ListSubVolumeSnapshots(fsName, group, sub)
	if err != nil {
		e.t.Fatalf("snapshots of %s: %v", sub, err)
	}
	return names
}

func (e *env) subvolumeExists(name string) bool {
	subs, err := e.fsa.ListSubVolumes(fsName, group)
	if err != nil {
		e.t.Fatalf("listing subvolumes: %v", err)
	}
	for _, s := range subs {
		if s == name {
			return true
		}
	}
	return false
}

func quota(info *admin.SubVolumeInfo) int64 {
	if q, ok := info.BytesQuota.(admin.ByteCount); ok {
		return int64(q)
	}
	return -1
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// waitReady waits until the driver answers: its socket file appears a moment
// before it accepts connections.
func waitReady(t *testing.T, d *testutil.Driver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.Identity.Probe(ctx, &csi.ProbeRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("driver not ready: %v", err)
	}
}
