//go:build integration

// Package crashtest kills the real cephcsi binary at each failpoint
// between the steps of a call, restarts it, repeats the call and checks that
// it converges: the retried call succeeds with the right content and size,
// and a later delete leaves nothing on the cluster.
package crashtest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// env is one case's world: the cluster, the binary, the names it made.
type env struct {
	t     *testing.T
	c     *testutil.Cluster
	bin   string
	kind  string // rbd or cephfs
	dir   string // the plugin path, shared by every process of the case
	ctx   context.Context
	marks []string // UUIDs and request names, for the leftover check
	vols  []string // volume IDs to delete at the end
	snaps []string // snapshot IDs to delete at the end
	// name is the request name of the call under test, the same for the
	// call that dies and the one repeated after the restart.
	name string
	// staged lists volume ID and staging path pairs to unstage at the end.
	staged [][2]string
}

func (e *env) start(armed string) *testutil.Process {
	var extra []string
	if armed != "" {
		extra = append(extra, failpoint.EnvVar+"="+armed)
	}
	return testutil.StartProcess(e.t, e.bin, extra, "--type="+e.kind, "--controllerserver", "--nodeserver",
		"--nodeid=crash-node", "--configpath="+e.c.ConfigJSON, "--pluginpath="+e.dir, "--clonewait=30s")
}

func (e *env) secrets() map[string]string {
	if e.kind == "cephfs" {
		return e.c.CephFSSecrets()
	}
	return e.c.RBDSecrets()
}

func (e *env) params() map[string]string {
	if e.kind == "cephfs" {
		return map[string]string{"clusterID": e.c.ClusterID, "fsName": testutil.FSName}
	}
	return map[string]string{"clusterID": e.c.ClusterID, "pool": "rbd"}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// retried repeats call while it answers Aborted, as the sidecars do.
func retried[T any](ctx context.Context, call func() (T, error)) (T, error) {
	for {
		v, err := call()
		if status.Code(err) != codes.Aborted || ctx.Err() != nil {
			return v, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) createReq(name string, size int64, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	caps := []*csi.VolumeCapability{testutil.FSCap("ext4")}
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: caps, Parameters: e.params(), Secrets: e.secrets(), VolumeContentSource: src}
}

func (e *env) create(p *testutil.Process, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	e.marks = append(e.marks, name)
	resp, err := retried(e.ctx, func() (*csi.CreateVolumeResponse, error) {
		return p.Controller.CreateVolume(e.ctx, e.createReq(name, size, src))
	})
	if err != nil {
		return nil, err
	}
	e.track(&e.vols, resp.GetVolume().GetVolumeId())
	return resp.GetVolume(), nil
}

func (e *env) snapshot(p *testutil.Process, name, source string) (*csi.Snapshot, error) {
	e.marks = append(e.marks, name)
	resp, err := retried(e.ctx, func() (*csi.CreateSnapshotResponse, error) {
		return p.Controller.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source,
			Secrets: e.secrets(), Parameters: map[string]string{"clusterID": e.c.ClusterID}})
	})
	if err != nil {
		return nil, err
	}
	e.track(&e.snaps, resp.GetSnapshot().GetSnapshotId())
	return resp.GetSnapshot(), nil
}

func (e *env) deleteVolume(p *testutil.Process, id string) error {
	_, err := retried(e.ctx, func() (*csi.DeleteVolumeResponse, error) {
		return p.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets()})
	})
	return err
}

func (e *env) deleteSnapshot(p *testutil.Process, id string) error {
	_, err := retried(e.ctx, func() (*csi.DeleteSnapshotResponse, error) {
		return p.Controller.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.secrets()})
	})
	return err
}

// track remembers an ID (and its UUID, for the leftover check) once.
func (e *env) track(list *[]string, id string) {
	for _, have := range *list {
		if have == id {
			return
		}
	}
	*list = append(*list, id)
	if len(id) >= 36 {
		e.marks = append(e.marks, id[len(id)-36:])
	}
}

func (e *env) must(err error, what string) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// data is what the cases write into a source and expect in its copies.
var data = bytes.Repeat([]byte("converges after a crash "), 2048)

// writeSource puts data into a volume as admin: into the RBD image at 1 MiB,
// or into a file of the CephFS subvolume.
func (e *env) writeSource(v *csi.Volume) {
	e.t.Helper()
	if e.kind == "rbd" {
		img, err := rbd.OpenImage(e.c.IOContext(e.t, "rbd"), v.GetVolumeContext()["imageName"], rbd.NoSnapshot)
		e.must(err, "opening the source image")
		defer img.Close()
		_, err = img.WriteAt(data, 1<<20)
		e.must(err, "writing the source image")
		e.must(img.Flush(), "flushing the source image")
		return
	}
	m := e.fsMount()
	defer m.Release()
	f, err := m.Open(v.GetVolumeContext()["subvolumePath"]+"/data", os.O_CREATE|os.O_WRONLY, 0o644)
	e.must(err, "creating a file in the source subvolume")
	defer f.Close()
	_, err = f.Write(data)
	e.must(err, "writing the source file")
	e.must(f.Fsync(cephfs.SyncAll), "syncing the source file")
}

// readCopy reads back what writeSource wrote, from a copy.
func (e *env) readCopy(v *csi.Volume) []byte {
	e.t.Helper()
	buf := make([]byte, len(data))
	if e.kind == "rbd" {
		img, err := rbd.OpenImageReadOnly(e.c.IOContext(e.t, "rbd"), v.GetVolumeContext()["imageName"], rbd.NoSnapshot)
		e.must(err, "opening the copy")
		defer img.Close()
		_, err = img.ReadAt(buf, 1<<20)
		e.must(err, "reading the copy")
		return buf
	}
	m := e.fsMount()
	defer m.Release()
	f, err := m.Open(v.GetVolumeContext()["subvolumePath"]+"/data", os.O_RDONLY, 0)
	e.must(err, "opening the copied file")
	defer f.Close()
	n, _ := f.Read(buf)
	return buf[:n]
}

func (e *env) fsMount() *cephfs.MountInfo {
	e.t.Helper()
	m, err := cephfs.CreateFromRados(e.c.Admin())
	e.must(err, "creating a CephFS mount")
	e.must(m.SelectFilesystem(testutil.FSName), "selecting the filesystem")
	e.must(m.Mount(), "mounting CephFS")
	return m
}

// rbdImage reads an RBD image's size, parent and user snapshots as admin.
func (e *env) rbdImage(name string) (size uint64, parent string, userSnaps []string) {
	e.t.Helper()
	img, err := rbd.OpenImageReadOnly(e.c.IOContext(e.t, "rbd"), name, rbd.NoSnapshot)
	e.must(err, "opening "+name)
	defer img.Close()
	size, err = img.GetSize()
	e.must(err, "size of "+name)
	if p, err := img.GetParent(); err == nil {
		parent = p.Image.ImageName
	}
	snaps, _ := img.GetSnapshotNames()
	for _, s := range snaps {
		if ns, err := img.GetSnapNamespaceType(s.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
			userSnaps = append(userSnaps, s.Name)
		}
	}
	return size, parent, userSnaps
}

// crashCase is one way of dying at a failpoint.
type crashCase struct {
	failpoint string
	kind      string
	what      string
	// setup runs on an unarmed process and returns the state call needs.
	setup func(e *env, p *testutil.Process) any
	// call is the request that dies at the failpoint and is then repeated;
	// it returns the object made, if any, for check.
	call func(e *env, p *testutil.Process, state any) (any, error)
	// check looks at the result of the repeated call on the cluster.
	check func(e *env, state, result any)
}

const mib = 1 << 20

func newName(what string) string { return "crash-" + what + "-" + uuid.NewString()[:8] }

// source makes an 8 MiB volume holding data.
func source(e *env, p *testutil.Process) *csi.Volume {
	v, err := e.create(p, newName("src"), 8*mib, nil)
	e.must(err, "creating the source")
	e.writeSource(v)
	return v
}

// sourceAndSnapshot makes a source and a snapshot of it.
func sourceAndSnapshot(e *env, p *testutil.Process) any {
	v := source(e, p)
	s, err := e.snapshot(p, newName("snap"), v.GetVolumeId())
	e.must(err, "snapshotting the source")
	return s
}

func plainCreate(e *env, p *testutil.Process, _ any) (any, error) {
	return e.create(p, e.name, 8*mib, nil)
}

func checkPlain(e *env, _, result any) {
	v := result.(*csi.Volume)
	if e.kind == "rbd" {
		if size, parent, _ := e.rbdImage(v.GetVolumeContext()["imageName"]); size != 8*mib || parent != "" {
			e.t.Errorf("image is %d bytes with parent %q, want 8 MiB and none", size, parent)
		}
	}
	if v.GetCapacityBytes() != 8*mib {
		e.t.Errorf("capacity %d, want 8 MiB", v.GetCapacityBytes())
	}
}

func restoreTo(size int64) func(e *env, p *testutil.Process, state any) (any, error) {
	return func(e *env, p *testutil.Process, state any) (any, error) {
		return e.create(p, e.name, size, snapshotSource(state.(*csi.Snapshot).GetSnapshotId()))
	}
}

func cloneTo(size int64) func(e *env, p *testutil.Process, state any) (any, error) {
	return func(e *env, p *testutil.Process, state any) (any, error) {
		return e.create(p, e.name, size, volumeSource(state.(*csi.Volume).GetVolumeId()))
	}
}

func checkCopy(size int64) func(e *env, state, result any) {
	return func(e *env, state, result any) {
		v := result.(*csi.Volume)
		if got := e.readCopy(v); !bytes.Equal(got, data) {
			e.t.Errorf("the copy does not hold the source's bytes (%d bytes read)", len(got))
		}
		if v.GetCapacityBytes() != size {
			e.t.Errorf("capacity %d, want %d", v.GetCapacityBytes(), size)
		}
		if e.kind != "rbd" {
			return
		}
		image := v.GetVolumeContext()["imageName"]
		have, parent, _ := e.rbdImage(image)
		if int64(have) != size {
			e.t.Errorf("image %s is %d bytes, want %d", image, have, size)
		}
		if src, ok := state.(*csi.Volume); ok {
			if parent != image+"-temp" {
				e.t.Errorf("PVC clone's parent is %q, want %s-temp", parent, image)
			}
			if _, _, snaps := e.rbdImage(src.GetVolumeContext()["imageName"]); len(snaps) > 0 {
				e.t.Errorf("the source keeps snapshots %v", snaps)
			}
		}
	}
}

func snapshotCall(e *env, p *testutil.Process, state any) (any, error) {
	return e.snapshot(p, e.name, state.(*csi.Volume).GetVolumeId())
}

// checkSnapshot restores the snapshot and reads the source's bytes from it.
func checkSnapshot(e *env, state, result any) {
	p := e.start("")
	defer p.Kill()
	v, err := e.create(p, newName("check"), 8*mib, snapshotSource(result.(*csi.Snapshot).GetSnapshotId()))
	e.must(err, "restoring the snapshot")
	if got := e.readCopy(v); !bytes.Equal(got, data) {
		e.t.Error("the restored snapshot does not hold the source's bytes")
	}
	if e.kind == "rbd" {
		if _, _, snaps := e.rbdImage(state.(*csi.Volume).GetVolumeContext()["imageName"]); len(snaps) > 0 {
			e.t.Errorf("the source keeps snapshots %v", snaps)
		}
	}
}

// deleteCall deletes the volume or snapshot setup made.
func deleteCall(e *env, p *testutil.Process, state any) (any, error) {
	switch s := state.(type) {
	case *csi.Volume:
		return nil, e.deleteVolume(p, s.GetVolumeId())
	case *csi.Snapshot:
		return nil, e.deleteSnapshot(p, s.GetSnapshotId())
	}
	return nil, fmt.Errorf("nothing to delete")
}

// checkDeleted has nothing to look at: the leftover check after the case's
// cleanup proves that the delete converged.
func checkDeleted(*env, any, any) {}

func plainVolume(e *env, p *testutil.Process) any {
	v, err := e.create(p, newName("victim"), 8*mib, nil)
	e.must(err, "creating the volume")
	return v
}

func pvcClone(e *env, p *testutil.Process) any {
	v, err := e.create(p, newName("victim"), 8*mib, volumeSource(source(e, p).GetVolumeId()))
	e.must(err, "creating the PVC clone")
	return v
}

func snapshotOnly(e *env, p *testutil.Process) any {
	return sourceAndSnapshot(e, p)
}

func withSource(e *env, p *testutil.Process) any { return source(e, p) }

// stageState is a volume for the node cases and where it is staged.
type stageState struct {
	vol     *csi.Volume
	staging string
}

// fuseVolume makes a volume for the FUSE mapper this host can use.
func fuseVolume(e *env, p *testutil.Process) any {
	req := e.createReq(newName("node"), 32*mib, nil)
	req.Parameters["mounter"] = "rbd-fuse"
	e.marks = append(e.marks, req.Name)
	resp, err := p.Controller.CreateVolume(e.ctx, req)
	e.must(err, "creating the volume")
	e.track(&e.vols, resp.GetVolume().GetVolumeId())
	return &stageState{vol: resp.GetVolume(), staging: filepath.Join(e.dir, "staging")}
}

func (e *env) stageReq(st *stageState) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: st.vol.GetVolumeId(), StagingTargetPath: st.staging,
		VolumeCapability: testutil.FSCap("ext4"), VolumeContext: st.vol.GetVolumeContext(), Secrets: e.c.RBDNodeSecrets()}
}

// stagedFuseVolume makes a volume and stages it, with a file in it.
func stagedFuseVolume(e *env, p *testutil.Process) any {
	st := fuseVolume(e, p).(*stageState)
	_, err := p.Node.NodeStageVolume(e.ctx, e.stageReq(st))
	e.must(err, "staging the volume")
	e.staged = append(e.staged, [2]string{st.vol.GetVolumeId(), st.staging})
	e.must(os.WriteFile(filepath.Join(st.staging, "data"), data, 0o600), "writing into the staged volume")
	return st
}

func stageCall(e *env, p *testutil.Process, state any) (any, error) {
	st := state.(*stageState)
	e.staged = append(e.staged, [2]string{st.vol.GetVolumeId(), st.staging})
	_, err := p.Node.NodeStageVolume(e.ctx, e.stageReq(st))
	return st, err
}

func unstageCall(e *env, p *testutil.Process, state any) (any, error) {
	st := state.(*stageState)
	_, err := p.Node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: st.vol.GetVolumeId(), StagingTargetPath: st.staging})
	return st, err
}

// checkStaged writes through the staged volume, restages it after an
// unstage and finds the file again.
func checkStaged(e *env, _, result any) {
	st := result.(*stageState)
	e.must(os.WriteFile(filepath.Join(st.staging, "data"), data, 0o600), "writing into the staged volume")
	p := e.start("")
	defer p.Kill()
	_, err := p.Node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: st.vol.GetVolumeId(), StagingTargetPath: st.staging})
	e.must(err, "unstaging")
	_, err = p.Node.NodeStageVolume(e.ctx, e.stageReq(st))
	e.must(err, "restaging")
	got, err := os.ReadFile(filepath.Join(st.staging, "data"))
	if err != nil || !bytes.Equal(got, data) {
		e.t.Errorf("the file written before the unstage is not back (%v)", err)
	}
}

// checkUnstaged finds no mount, loop device or helper of the volume left.
func checkUnstaged(e *env, _, result any) {
	if left := testutil.NodeLeftovers(e.dir); len(left) > 0 {
		e.t.Errorf("after the repeated unstage: %s", strings.Join(left, "; "))
	}
}

var cases = []crashCase{
	{"journal-reserve-after-directory", "rbd", "CreateVolume", nil, plainCreate, checkPlain},
	{"create-volume-after-reserve", "rbd", "CreateVolume", nil, plainCreate, checkPlain},
	{"create-volume-after-clone", "rbd", "restore", sourceAndSnapshot, restoreTo(8 * mib), checkCopy(8 * mib)},
	{"grow-image-before-resize", "rbd", "restore larger", sourceAndSnapshot, restoreTo(16 * mib), checkCopy(16 * mib)},
	{"grow-image-before-resize", "rbd", "PVC clone larger", withSource, cloneTo(16 * mib), checkCopy(16 * mib)},
	{"clone-volume-after-temp", "rbd", "PVC clone", withSource, cloneTo(8 * mib), checkCopy(8 * mib)},
	{"create-snapshot-after-clone", "rbd", "CreateSnapshot", withSource, snapshotCall, checkSnapshot},
	{"remove-images-after-image", "rbd", "DeleteVolume of a PVC clone", pvcClone, deleteCall, checkDeleted},
	{"delete-volume-before-release", "rbd", "DeleteVolume", plainVolume, deleteCall, checkDeleted},
	{"journal-release-after-directory", "rbd", "DeleteVolume", plainVolume, deleteCall, checkDeleted},
	{"delete-snapshot-before-release", "rbd", "DeleteSnapshot", snapshotOnly, deleteCall, checkDeleted},
	{"node-stage-after-map", "rbd", "NodeStageVolume", fuseVolume, stageCall, checkStaged},
	{"node-unstage-after-unmount", "rbd", "NodeUnstageVolume", stagedFuseVolume, unstageCall, checkUnstaged},
	{"node-unstage-after-unmap", "rbd", "NodeUnstageVolume", stagedFuseVolume, unstageCall, checkUnstaged},
	{"cephfs-create-volume-after-reserve", "cephfs", "CreateVolume", nil, plainCreate, checkPlain},
	{"cephfs-clone-after-temp-snapshot", "cephfs", "PVC clone", withSource, cloneTo(8 * mib), checkCopy(8 * mib)},
	{"cephfs-clone-after-start", "cephfs", "restore", sourceAndSnapshot, restoreTo(8 * mib), checkCopy(8 * mib)},
	{"cephfs-create-snapshot-after-reserve", "cephfs", "CreateSnapshot", withSource, snapshotCall, checkSnapshot},
	{"cephfs-delete-snapshot-before-release", "cephfs", "DeleteSnapshot", snapshotOnly, deleteCall, checkDeleted},
	{"cephfs-delete-volume-before-release", "cephfs", "DeleteVolume", plainVolume, deleteCall, checkDeleted},
}

func TestEveryFailpointConverges(t *testing.T) {
	c := testutil.RequireCluster(t)
	bin := testutil.BuildBinary(t, "failpoints")
	var rows []string
	for _, tc := range cases {
		tc := tc
		row := fmt.Sprintf("%-38s %-7s %-28s", tc.failpoint, tc.kind, tc.what)
		ok := t.Run(tc.failpoint+"/"+tc.what, func(t *testing.T) {
			runCase(t, c, bin, tc)
		})
		if ok {
			rows = append(rows, row+" converged")
		} else {
			rows = append(rows, row+" FAILED (see above)")
		}
	}
	t.Logf("failpoint table:\n%-38s %-7s %-28s %s\n%s", "failpoint", "driver", "call", "result", strings.Join(rows, "\n"))
}

func runCase(t *testing.T, c *testutil.Cluster, bin string, tc crashCase) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	// Cleanups run last in, first out: the context outlives the cleanup
	// registered below.
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "crash")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, c: c, bin: bin, kind: tc.kind, dir: dir, ctx: ctx, name: newName("call")}
	setup := e.start("")
	var state any
	if tc.setup != nil {
		state = tc.setup(e, setup)
	}
	setup.Kill()
	t.Cleanup(func() { cleanup(e) })

	armed := e.start(tc.failpoint)
	if _, err := tc.call(e, armed, state); err == nil {
		t.Fatalf("the call succeeded: failpoint %s was never reached", tc.failpoint)
	}
	code, exited := armed.Exited(30 * time.Second)
	if !exited || code != failpoint.ExitCode {
		t.Fatalf("the process did not die at %s (exited=%v, code %d); log:\n%s", tc.failpoint, exited, code, armed.Log())
	}

	retry := e.start("")
	defer retry.Kill()
	result, err := tc.call(e, retry, state)
	if err != nil {
		t.Fatalf("the repeated call after the crash: %v", err)
	}
	tc.check(e, state, result)
}

// cleanup deletes every volume and snapshot of the case through a fresh,
// unarmed process and checks that nothing of it is left on the cluster.
func cleanup(e *env) {
	p := e.start("")
	defer p.Kill()
	for _, st := range e.staged {
		if _, err := p.Node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: st[0], StagingTargetPath: st[1]}); err != nil {
			e.t.Errorf("unstaging %s: %v", st[0], err)
		}
	}
	for i := len(e.snaps) - 1; i >= 0; i-- {
		if err := e.deleteSnapshot(p, e.snaps[i]); err != nil {
			e.t.Errorf("deleting snapshot %s: %v", e.snaps[i], err)
		}
	}
	for i := len(e.vols) - 1; i >= 0; i-- {
		// A process killed while it had an image open leaves a watch that
		// the OSD drops only after osd_client_watch_timeout (30 s); until
		// then the image counts as in use, and the provisioner would retry.
		deadline := time.Now().Add(90 * time.Second)
		for {
			err := e.deleteVolume(p, e.vols[i])
			if err == nil {
				break
			}
			if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
				e.t.Errorf("deleting volume %s: %v", e.vols[i], err)
				break
			}
			time.Sleep(time.Second)
		}
	}
	if left := testutil.NodeLeftovers(e.dir); len(left) > 0 {
		e.t.Errorf("left on the node: %s", strings.Join(left, "; "))
	}
	// CephFS purges deleted subvolumes in the background: give it a moment.
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := e.c.Leftovers(e.t, e.marks...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(left)
			e.t.Errorf("leaked: %s", strings.Join(left, "; "))
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestEveryFailpointHasACase fails when the code has a failpoint that the
// table does not exercise.
func TestEveryFailpointHasACase(t *testing.T) {
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.failpoint] = true
	}
	hit := regexp.MustCompile(`failpoint\.Hit\("([^"]+)"\)`)
	root := filepath.Join(testutil.RepoRoot(), "internal")
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range hit.FindAllStringSubmatch(string(src), -1) {
			if !covered[m[1]] {
				t.Errorf("failpoint %q (%s) has no case in the crash table", m[1], strings.TrimPrefix(path, root+"/"))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
