//go:build integration

package rbd_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/rbdfuse"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// TestMain lets this test binary serve as the rbd-fuse mapper's FUSE
// helper: the in-process driver starts its own binary in helper mode, as
// cephcsi does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == rbdfuse.HelperCommand {
		os.Exit(rbdfuse.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// nodeEnv is a driver serving both services whose node state (the FUSE
// helpers' mounts included) lives in pluginDir.
type nodeEnv struct {
	c         *testutil.Cluster
	d         *testutil.Driver
	pluginDir string
	work      string // staging and target paths live here
	tmp       string // TMPDIR of the driver and the programs it runs
	started   time.Time
}

// startNodeEnv serves the driver in-process with its plugin path in a
// directory of the test (tweak may change more options). Whatever a failing
// test leaves mapped there is torn down before the directory goes (a FUSE
// helper's mount is unmounted, not deleted through).
func startNodeEnv(t *testing.T, tweak ...func(*config.Options)) *nodeEnv {
	t.Helper()
	e := newNodeDirs(t)
	e.d = testutil.StartDriver(t, e.c, "rbd", func(o *config.Options) {
		o.PluginPath = e.pluginDir
		for _, tw := range tweak {
			tw(o)
		}
	})
	return e
}

// newNodeDirs is a nodeEnv without its driver: the directories of the
// test, torn down as startNodeEnv says.
func newNodeDirs(t *testing.T) *nodeEnv {
	t.Helper()
	e := &nodeEnv{c: testutil.RequireCluster(t), started: time.Now()}
	e.pluginDir = shortDir(t, "csi-node")
	e.work = shortDir(t, "csi-work")
	e.tmp = privateTmp(t)
	t.Cleanup(func() { tearDownUnder(t, e.work, e.pluginDir) })
	return e
}

// kubeletPaths are the staging path of a volume and its target path in a
// pod, below e.work, as kubelet would name them.
func (e *nodeEnv) kubeletPaths(pod string) (staging, target string) {
	return filepath.Join(e.work, pod+"-staging"), filepath.Join(e.work, pod, "mount")
}

// privateTmp points TMPDIR at a directory of the test, so that whatever
// the driver and its helper programs write to temporary files can be
// searched for the key without reading other users' files in /tmp.
func privateTmp(t *testing.T) string {
	t.Helper()
	tmp := shortDir(t, "csi-tmp")
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// assertNoKeyLeft checks the test's directories, and the files created
// directly in /tmp since the test started, for the key.
func assertNoKeyLeft(t *testing.T, key string, since time.Time, dirs ...string) {
	t.Helper()
	assertNoKeyOnDisk(t, key, dirs...)
	entries, err := os.ReadDir("/tmp")
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		info, err := en.Info()
		if err != nil || !info.Mode().IsRegular() || info.ModTime().Before(since) || info.Size() > 8<<20 {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/tmp", en.Name()))
		if err == nil && bytes.Contains(data, []byte(key)) {
			t.Errorf("the cephx key is on disk in /tmp/%s", en.Name())
		}
	}
}

// shortDir makes a directory under /tmp; unix socket paths must stay short.
func shortDir(t *testing.T, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("removing %s: %v", d, err)
		}
	})
	return d
}

// tearDownUnder unmounts everything below the given directories and
// detaches loop devices whose backing file lies there, reporting each as a
// leak.
func tearDownUnder(t *testing.T, dirs ...string) {
	for _, m := range mountsUnder(t, dirs...) {
		t.Errorf("leaked mount %s (%s); unmounting", m.MountPoint, m.FsType)
	}
	for _, l := range loopsUnder(t, dirs...) {
		t.Errorf("leaked loop device %s; detaching", l)
	}
	// Deepest mounts first; loops go before their helpers' mounts.
	for i := 0; i < 3; i++ {
		mps := mountsUnder(t, dirs...)
		for j := len(mps) - 1; j >= 0; j-- {
			if mps[j].FsType != rbdfuse.FsType {
				_ = unix.Unmount(mps[j].MountPoint, unix.MNT_DETACH)
			}
		}
		for _, l := range loopsUnder(t, dirs...) {
			_ = exec.Command("losetup", "-d", l).Run()
		}
		for _, m := range mountsUnder(t, dirs...) {
			_ = unix.Unmount(m.MountPoint, unix.MNT_DETACH)
		}
	}
	// A helper closes its image (and drops its watch) on the way out.
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		left := 0
		for _, d := range dirs {
			left += len(helperProcs(t, d))
		}
		if left == 0 {
			return
		}
	}
	t.Error("FUSE helpers did not exit after unmounting")
}

func mountsUnder(t *testing.T, dirs ...string) []mount.MountInfo {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []mount.MountInfo
	for _, mi := range infos {
		for _, d := range dirs {
			if strings.HasPrefix(mi.MountPoint, d+"/") {
				out = append(out, mi)
			}
		}
	}
	return out
}

func loopsUnder(t *testing.T, dirs ...string) []string {
	t.Helper()
	var out []string
	names, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			continue
		}
		for _, d := range dirs {
			if strings.HasPrefix(strings.TrimSpace(string(data)), d+"/") {
				out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(n))))
			}
		}
	}
	return out
}

// createFuseVolume provisions a volume the node maps with the rbd-fuse
// mapper (our FUSE helper and a loop device); it is
// deleted when the test ends (after the unstage cleanups registered later).
func createFuseVolume(t *testing.T, e *nodeEnv, ctl csi.ControllerClient, size int64, fsType string) *csi.Volume {
	t.Helper()
	return createVolumeReq(t, e, ctl, fuseVolumeReq(e, "node", size, fsType, nil))
}

// fuseVolumeReq is the CreateVolume request of an rbd-fuse volume of size
// (fsType "" for the default) with content from src.
func fuseVolumeReq(e *nodeEnv, prefix string, size int64, fsType string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	p := params(e.c, "mounter", "rbd-fuse")
	if fsType != "" {
		p["csi.storage.k8s.io/fstype"] = fsType
	}
	return &csi.CreateVolumeRequest{Name: uniqueName(prefix), VolumeCapabilities: mountCap(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: p, Secrets: e.c.RBDSecrets(), VolumeContentSource: src}
}

// snapshotOf snapshots vol and deletes the snapshot when the test ends;
// registered before the restores of it, that runs after they are deleted.
func snapshotOf(t *testing.T, e *nodeEnv, vol *csi.Volume) (snapID string) {
	t.Helper()
	resp, err := e.d.Controller.CreateSnapshot(ctxT(t), &csi.CreateSnapshotRequest{SourceVolumeId: vol.GetVolumeId(),
		Name: uniqueName("snap"), Secrets: e.c.RBDSecrets(), Parameters: map[string]string{"clusterID": e.c.ClusterID}})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	snapID = resp.GetSnapshot().GetSnapshotId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := e.d.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID, Secrets: e.c.RBDSecrets()}); err != nil {
			t.Errorf("DeleteSnapshot: %v", err)
		}
	})
	return snapID
}

// restoreOf provisions an rbd-fuse volume of size from snapshot snapID; it
// is deleted when the test ends.
func restoreOf(t *testing.T, e *nodeEnv, snapID string, size int64) *csi.Volume {
	t.Helper()
	return createVolumeReq(t, e, e.d.Controller, fuseVolumeReq(e, "restore", size, "", testutil.FromSnapshot(snapID)))
}

// createVolumeReq creates a volume and deletes it when the test ends, after
// tearing down whatever a failed test left mapped (a mapped image cannot be
// deleted).
func createVolumeReq(t *testing.T, e *nodeEnv, ctl csi.ControllerClient, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	c := e.c
	resp, err := ctl.CreateVolume(ctxT(t), req)
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	vol := resp.GetVolume()
	t.Cleanup(func() {
		tearDownUnder(t, e.work, e.pluginDir)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// The watch of a killed helper lingers until the OSD times it out
		// (30 s); until then the image counts as in use.
		for {
			_, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets()})
			if err == nil {
				return
			}
			if status.Code(err) != codes.FailedPrecondition || ctx.Err() != nil {
				t.Errorf("DeleteVolume %s: %v", vol.GetVolumeId(), err)
				return
			}
			time.Sleep(time.Second)
		}
	})
	return vol
}

// stageReq builds the NodeStageVolume kubelet would send for vol.
func stageReq(c *testutil.Cluster, vol *csi.Volume, staging string, vcap *csi.VolumeCapability) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: vcap,
		VolumeContext: vol.GetVolumeContext(), Secrets: c.RBDNodeSecrets()}
}

// stage stages vol and makes sure the test unstages it in the end.
func stage(t *testing.T, node csi.NodeClient, c *testutil.Cluster, vol *csi.Volume, staging string, vcap *csi.VolumeCapability) {
	t.Helper()
	stageOnce(t, node, c, vol, staging, vcap)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
			t.Errorf("cleanup NodeUnstageVolume: %v", err)
		}
	})
}

// stageOnce stages vol; unlike stage, nothing unstages it at the end.
func stageOnce(t *testing.T, node csi.NodeClient, c *testutil.Cluster, vol *csi.Volume, staging string, vcap *csi.VolumeCapability) {
	t.Helper()
	if _, err := node.NodeStageVolume(ctxT(t), stageReq(c, vol, staging, vcap)); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

// publish publishes vol and makes sure the test unpublishes it in the end.
func publish(t *testing.T, node csi.NodeClient, vol *csi.Volume, staging, target string, vcap *csi.VolumeCapability, ro bool) {
	t.Helper()
	publishOnce(t, node, vol, staging, target, vcap, ro)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
			t.Errorf("cleanup NodeUnpublishVolume: %v", err)
		}
	})
}

// publishOnce publishes vol; unlike publish, nothing unpublishes it at the
// end.
func publishOnce(t *testing.T, node csi.NodeClient, vol *csi.Volume, staging, target string, vcap *csi.VolumeCapability, ro bool) {
	t.Helper()
	if _, err := node.NodePublishVolume(ctxT(t), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(),
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: vcap, Readonly: ro,
		VolumeContext: vol.GetVolumeContext()}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
}

// mountVolume stages vol at staging and publishes it read-write at target,
// as kubelet does for a pod; the test undoes both in the end.
func mountVolume(t *testing.T, e *nodeEnv, vol *csi.Volume, staging, target string, vcap *csi.VolumeCapability) {
	t.Helper()
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	publish(t, e.d.Node, vol, staging, target, vcap, false)
}

// unmountVolume unpublishes and unstages what mountVolume made.
func unmountVolume(t *testing.T, e *nodeEnv, vol *csi.Volume, staging, target string) {
	t.Helper()
	unpublish(t, e.d.Node, vol, target)
	unstage(t, e.d.Node, vol, staging)
}

// expandVolume grows vol to size through the controller, then asks the
// node to grow what is published at target, and returns the node's answer.
func expandVolume(t *testing.T, e *nodeEnv, vol *csi.Volume, size int64, vcap *csi.VolumeCapability,
	staging, target string) (*csi.NodeExpandVolumeResponse, error) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := e.d.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Secrets: e.c.RBDSecrets(), VolumeCapability: vcap}); err != nil {
		t.Fatalf("ControllerExpandVolume: %v", err)
	}
	return e.d.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: vcap, StagingTargetPath: staging})
}

func unpublish(t *testing.T, node csi.NodeClient, vol *csi.Volume, target string) {
	t.Helper()
	if _, err := node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
}

func unstage(t *testing.T, node csi.NodeClient, vol *csi.Volume, staging string) {
	t.Helper()
	if _, err := node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

// mountAt returns the mount at path, failing the test when there is none.
func mountAt(t *testing.T, path string) mount.MountInfo {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].MountPoint == path {
			return infos[i]
		}
	}
	t.Fatalf("nothing is mounted at %s", path)
	return mount.MountInfo{}
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range infos {
		if mi.MountPoint == path {
			return true
		}
	}
	return false
}

// blkidType is what blkid reports as the filesystem on dev.
func blkidType(t *testing.T, dev string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-s", "TYPE", "-o", "value", dev).Output()
	if err != nil {
		t.Fatalf("blkid %s: %v", dev, err)
	}
	return strings.TrimSpace(string(out))
}

// assertNoKeyOnDisk looks for the key in every regular file below dirs
// (staying on each directory's filesystem).
func assertNoKeyOnDisk(t *testing.T, key string, dirs ...string) {
	t.Helper()
	for _, root := range dirs {
		var rootStat unix.Stat_t
		if err := unix.Stat(root, &rootStat); err != nil {
			t.Fatal(err)
		}
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			var st unix.Stat_t
			if unix.Lstat(path, &st) != nil {
				return nil
			}
			if d.IsDir() {
				if st.Dev != rootStat.Dev {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() || st.Size > 8<<20 {
				return nil
			}
			data, err := os.ReadFile(path)
			if err == nil && bytes.Contains(data, []byte(key)) {
				t.Errorf("the cephx key is on disk in %s", path)
			}
			return nil
		})
	}
}

// helperProcs returns the command line and environment of every FUSE
// helper serving a mount below dir.
func helperProcs(t *testing.T, dir string) map[int]string {
	t.Helper()
	out := map[int]string{}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(data, []byte("\x00"+rbdfuse.HelperCommand+"\x00")) || !bytes.Contains(data, []byte(dir)) {
			continue
		}
		env, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "environ"))
		var pid int
		for _, ch := range filepath.Base(filepath.Dir(p)) {
			pid = pid*10 + int(ch-'0')
		}
		out[pid] = string(data) + "\x00" + string(env)
	}
	return out
}

func watchers(t *testing.T, c *testutil.Cluster, image string) int {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(c.IOContext(t, pool), image, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open %s: %v", image, err)
	}
	defer img.Close()
	w, err := img.ListWatchers()
	if err != nil {
		t.Fatal(err)
	}
	return len(w)
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(data)
}

func writeFileSync(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func statfs(t *testing.T, path string) (total, avail int64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize
}

// assertCleanNode checks that no mount and no loop device of the test is
// left, and that no FUSE helper serves its plugin directory.
func assertCleanNode(t *testing.T, e *nodeEnv) {
	t.Helper()
	if m := mountsUnder(t, e.pluginDir, e.work); len(m) > 0 {
		var names []string
		for _, mi := range m {
			names = append(names, mi.MountPoint+" ("+mi.FsType+")")
		}
		t.Errorf("mounts left: %v", names)
	}
	if l := loopsUnder(t, e.pluginDir); len(l) > 0 {
		t.Errorf("loop devices left: %v", l)
	}
	// An unmounted helper exits on its own shortly after; under load that
	// can take a moment, so give it a few seconds before calling it a leak.
	p := helperProcs(t, e.pluginDir)
	for deadline := time.Now().Add(5 * time.Second); len(p) > 0 && time.Now().Before(deadline); p = helperProcs(t, e.pluginDir) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(p) > 0 {
		t.Errorf("FUSE helpers left: %d", len(p))
	}
}

func TestNodeStagePublishWriteUnstageRestage(t *testing.T) {
	e := startNodeEnv(t)
	ctx := ctxT(t)
	vol := createFuseVolume(t, e, e.d.Controller, 64<<20, "")
	image := vol.GetVolumeContext()["imageName"]
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("")

	stage(t, e.d.Node, e.c, vol, staging, vcap)
	// Staging again is fine and keeps the same device.
	mi := mountAt(t, staging)
	if _, err := e.d.Node.NodeStageVolume(ctx, stageReq(e.c, vol, staging, vcap)); err != nil {
		t.Fatalf("second NodeStageVolume: %v", err)
	}
	if again := mountAt(t, staging); again.Source != mi.Source {
		t.Errorf("restage moved the volume from %s to %s", mi.Source, again.Source)
	}
	if !strings.HasPrefix(mi.Source, "/dev/loop") || mi.FsType != "ext4" {
		t.Fatalf("staging mount = %s %s, want an ext4 loop device", mi.Source, mi.FsType)
	}
	if got := blkidType(t, mi.Source); got != "ext4" {
		t.Errorf("blkid TYPE of %s = %q, want ext4", mi.Source, got)
	}
	if loops := loopsUnder(t, e.pluginDir); len(loops) != 1 || loops[0] != mi.Source {
		t.Errorf("loop devices backed by the plugin dir = %v, want [%s]", loops, mi.Source)
	}
	if watchers(t, e.c, image) != 1 {
		t.Errorf("image %s has %d watchers while staged, want 1 (the FUSE helper)", image, watchers(t, e.c, image))
	}
	key := e.c.RBDNodeSecrets()["userKey"]
	assertNoKeyLeft(t, key, e.started, e.pluginDir, e.work, e.tmp)
	procs := helperProcs(t, e.pluginDir)
	if len(procs) != 1 {
		t.Fatalf("FUSE helpers for the plugin dir = %d, want 1", len(procs))
	}
	for pid, cmdEnv := range procs {
		if strings.Contains(cmdEnv, key) {
			t.Errorf("helper %d has the key in its command line or environment", pid)
		}
		assertNoKeyBehindFDs(t, pid, key)
	}
	// The image's file cannot be deleted through the mount.
	fuseFile := backingFile(t, mi.Source)
	if err := os.Remove(fuseFile); err == nil {
		t.Errorf("removing %s succeeded", fuseFile)
	}
	if watchers(t, e.c, image) != 1 {
		t.Errorf("image %s is not open after the refused removal", image)
	}

	publish(t, e.d.Node, vol, staging, target, vcap, false)
	payload := []byte("written through the FUSE helper " + vol.GetVolumeId())
	writeFileSync(t, filepath.Join(target, "hello.txt"), payload)

	// Stats through the published path: bytes and inodes of an ext4 that
	// fills the 64 MiB image.
	stats, err := e.d.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats: %v", err)
	}
	total, _ := statfs(t, target)
	var sawBytes, sawInodes bool
	for _, u := range stats.GetUsage() {
		switch u.GetUnit() {
		case csi.VolumeUsage_BYTES:
			sawBytes = true
			if u.GetTotal() != total || u.GetTotal() < 50<<20 || u.GetTotal() > 64<<20 || u.GetUsed() <= 0 {
				t.Errorf("bytes usage = %+v, statfs total %d", u, total)
			}
		case csi.VolumeUsage_INODES:
			sawInodes = true
			if u.GetTotal() <= 0 || u.GetUsed() < 12 || u.GetAvailable() >= u.GetTotal() {
				t.Errorf("inode usage = %+v", u)
			}
		}
	}
	if !sawBytes || !sawInodes {
		t.Errorf("stats = %v, want bytes and inodes", stats.GetUsage())
	}

	// A published device is busy: unstage must refuse to unmap it and keep
	// what it needs for the retry.
	_, err = e.d.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "in use") {
		t.Errorf("unstage while published: %v, want FailedPrecondition (in use)", err)
	}
	if got := readFileT(t, filepath.Join(target, "hello.txt")); got != string(payload) {
		t.Errorf("file after refused unstage = %q", got)
	}

	unpublish(t, e.d.Node, vol, target)
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target after unpublish: %v, want it removed", err)
	}
	unstage(t, e.d.Node, vol, staging)
	unstage(t, e.d.Node, vol, staging) // idempotent
	assertCleanNode(t, e)
	if n := watchers(t, e.c, image); n != 0 {
		t.Errorf("image %s has %d watchers after unstage", image, n)
	}
	// The data is in the cluster, not in a cache on this node: read the
	// ext4 superblock magic (0xEF53 at byte 1080) through librbd.
	if magic := testutil.ReadImage(t, e.c.IOContext(t, pool), image, 2, 1080); !bytes.Equal(magic, []byte{0x53, 0xef}) {
		t.Errorf("ext4 magic in the image = %x", magic)
	}

	// Stage again: the filesystem is mounted, not reformatted.
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	publish(t, e.d.Node, vol, staging, target, vcap, true)
	if got := readFileT(t, filepath.Join(target, "hello.txt")); got != string(payload) {
		t.Errorf("file after restage = %q, want %q", got, payload)
	}
	if err := os.WriteFile(filepath.Join(target, "ro.txt"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read-only publish: %v, want EROFS", err)
	}
	unmountVolume(t, e, vol, staging, target)
	assertCleanNode(t, e)

	// Asked to stage the ext4 volume as xfs, the node refuses instead of
	// reformatting it, and leaves nothing mapped.
	_, err = e.d.Node.NodeStageVolume(ctx, stageReq(e.c, vol, staging, testutil.FSCap("xfs")))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "holds ext4") {
		t.Errorf("staging an ext4 volume as xfs: %v, want FailedPrecondition (holds ext4)", err)
	}
	assertCleanNode(t, e)
	if magic := testutil.ReadImage(t, e.c.IOContext(t, pool), image, 2, 1080); !bytes.Equal(magic, []byte{0x53, 0xef}) {
		t.Errorf("ext4 magic after the refused stage = %x", magic)
	}

	// A reader-only access mode maps read-only: the helper opens the image
	// read-only, and its file refuses to be opened for writing.
	roCap := testutil.FSCap("")
	roCap.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	stage(t, e.d.Node, e.c, vol, staging, roCap)
	for pid, cmdEnv := range helperProcs(t, e.pluginDir) {
		if !strings.Contains(cmdEnv, "\x00--read-only\x00") {
			t.Errorf("helper %d of a reader-only stage does not open the image read-only", pid)
		}
	}
	if f, err := os.OpenFile(backingFile(t, mountAt(t, staging).Source), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("opening the read-only helper's file for writing: %v, want EROFS", err)
		if err == nil {
			_ = f.Close()
		}
	}
	if got := blkidType(t, mountAt(t, staging).Source); got != "ext4" {
		t.Errorf("read-only device holds %q, want ext4", got)
	}
	// A writable open watches the image (one watcher above); a read-only
	// open does not.
	if n := watchers(t, e.c, image); n != 0 {
		t.Errorf("image %s staged read-only has %d watchers, want 0 (opened read-only)", image, n)
	}
	unstage(t, e.d.Node, vol, staging)
	assertCleanNode(t, e)
}

// assertLoopDetached checks that loop device dev is not (or no longer)
// backed by a file of image.
func assertLoopDetached(t *testing.T, dev, image string) {
	t.Helper()
	// The kernel may finish a detach a moment after losetup returned.
	var backing []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		backing, err = os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		if err != nil || !bytes.Contains(backing, []byte(image)) {
			return
		}
	}
	t.Errorf("%s is still attached to %s", dev, strings.TrimSpace(string(backing)))
}

// backingFile is the file behind loop device dev.
func backingFile(t *testing.T, dev string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		t.Fatalf("backing file of %s: %v", dev, err)
	}
	return strings.TrimSpace(string(data))
}

// assertNoKeyBehindFDs reads every descriptor of pid that root could
// reopen and read (regular files, memfds included) and checks that none
// yields the key, and that none is the key file handed over on fd 3.
// (Pipes, sockets and devices are not read: that would steal the
// helper's data or block.)
func assertNoKeyBehindFDs(t *testing.T, pid int, key string) {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, fd := range fds {
		p := filepath.Join(dir, fd.Name())
		target, _ := os.Readlink(p)
		if strings.Contains(target, "cephcsi-key") {
			t.Errorf("helper %d: %s is still the key file (%s)", pid, p, target)
		}
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		files = append(files, fd.Name()+"="+target)
		if bytes.Contains(data, []byte(key)) {
			t.Errorf("helper %d: %s (%s) yields the key", pid, p, target)
		}
	}
	t.Logf("helper %d: %d descriptors; the regular files among them, read: %v", pid, len(fds), files)
}

func TestNodeBlockVolumeWriteRead(t *testing.T) {
	e := startNodeEnv(t)
	ctx := ctxT(t)
	vol := createFuseVolume(t, e, e.d.Controller, 32<<20, "")
	image := vol.GetVolumeContext()["imageName"]
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.BlockCap()

	stage(t, e.d.Node, e.c, vol, staging, vcap)
	if isMounted(t, staging) {
		t.Error("a block volume mounted something at the staging path")
	}
	publish(t, e.d.Node, vol, staging, target, vcap, false)
	fi, err := os.Stat(target)
	if err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("target %s = %v, %v; want a block device", target, fi, err)
	}
	pattern := bytes.Repeat([]byte("blockdata-"+vol.GetVolumeId()[len(vol.GetVolumeId())-8:]), 1024)[:8192]
	const off = 5 << 20
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(pattern))
	if _, err := f.ReadAt(back, off); err != nil || !bytes.Equal(back, pattern) {
		t.Errorf("read back through the device: %v, equal=%v", err, bytes.Equal(back, pattern))
	}
	f.Close()

	stats, err := e.d.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats(block): %v", err)
	}
	if u := stats.GetUsage(); len(u) != 1 || u[0].GetUnit() != csi.VolumeUsage_BYTES || u[0].GetTotal() != 32<<20 {
		t.Errorf("block stats = %v, want total 32 MiB", u)
	}
	// Health reads the mapped device and the published one past the cache.
	if st := volumeHealth(t, e.d.Node, vol.GetVolumeId()); len(st) != 0 {
		t.Errorf("health of a published block volume = %v, want none", st)
	}

	// Grow the image; a block volume needs only the device to follow.
	exp, err := expandVolume(t, e, vol, 48<<20, vcap, staging, target)
	if err != nil {
		t.Fatalf("NodeExpandVolume(block): %v", err)
	}
	if exp.GetCapacityBytes() != 48<<20 {
		t.Errorf("expanded capacity = %d, want 48 MiB", exp.GetCapacityBytes())
	}
	if size := blockDevSize(t, target); size != 48<<20 {
		t.Errorf("published device size after expand = %d", size)
	}

	unmountVolume(t, e, vol, staging, target)
	assertCleanNode(t, e)
	if got := testutil.ReadImage(t, e.c.IOContext(t, pool), image, len(pattern), off); !bytes.Equal(got, pattern) {
		t.Error("the bytes written to the block device are not in the image")
	}
}

func blockDevSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(n)
}

// hasCapSysResource reports whether this process may grow ext4 online.
func hasCapSysResource(t *testing.T) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			for _, ch := range strings.TrimSpace(v) {
				caps <<= 4
				switch {
				case ch >= '0' && ch <= '9':
					caps |= uint64(ch - '0')
				case ch >= 'a' && ch <= 'f':
					caps |= uint64(ch-'a') + 10
				}
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

func TestNodeExpandXFSOnline(t *testing.T) {
	e := startNodeEnv(t)
	ctx := ctxT(t)
	// mkfs.xfs wants 300 MiB at least.
	vol := createFuseVolume(t, e, e.d.Controller, 320<<20, "xfs")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("xfs")
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	mi := mountAt(t, staging)
	if mi.FsType != "xfs" || blkidType(t, mi.Source) != "xfs" {
		t.Fatalf("staged as %s (blkid %s), want xfs", mi.FsType, blkidType(t, mi.Source))
	}
	publish(t, e.d.Node, vol, staging, target, vcap, false)
	writeFileSync(t, filepath.Join(target, "keep.txt"), []byte("xfs data"))
	before, _ := statfs(t, target)

	exp, err := expandVolume(t, e, vol, 480<<20, vcap, staging, target)
	if err != nil {
		t.Fatalf("NodeExpandVolume: %v", err)
	}
	after, _ := statfs(t, target)
	if exp.GetCapacityBytes() != 480<<20 {
		t.Errorf("NodeExpandVolume capacity = %d, want 480 MiB", exp.GetCapacityBytes())
	}
	// The filesystem grew online by (nearly) the 160 MiB the image grew.
	if after-before < 150<<20 {
		t.Errorf("xfs size %d -> %d after expand, want +160 MiB", before, after)
	}
	if got := readFileT(t, filepath.Join(target, "keep.txt")); got != "xfs data" {
		t.Errorf("file after expand = %q", got)
	}
	// Expanding again is a no-op success.
	if _, err := e.d.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 480 << 20}, VolumeCapability: vcap}); err != nil {
		t.Errorf("repeated NodeExpandVolume: %v", err)
	}
	unmountVolume(t, e, vol, staging, target)
	assertCleanNode(t, e)
}

func TestNodeExpandExt4(t *testing.T) {
	e := startNodeEnv(t)
	vol := createFuseVolume(t, e, e.d.Controller, 64<<20, "ext4")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("ext4")
	mountVolume(t, e, vol, staging, target, vcap)
	writeFileSync(t, filepath.Join(target, "keep.txt"), []byte("ext4 data"))
	before, _ := statfs(t, target)

	_, err := expandVolume(t, e, vol, 128<<20, vcap, staging, target)
	if hasCapSysResource(t) {
		if err != nil {
			t.Fatalf("NodeExpandVolume with CAP_SYS_RESOURCE: %v", err)
		}
		if after, _ := statfs(t, target); after-before < 56<<20 {
			t.Errorf("ext4 size %d -> %d after online expand", before, after)
		}
	} else {
		// The kernel refuses online ext4 growth without CAP_SYS_RESOURCE
		// (this machine's case): the error must say so.
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
			t.Fatalf("NodeExpandVolume without CAP_SYS_RESOURCE: %v, want an Internal error naming CAP_SYS_RESOURCE", err)
		}
		t.Log("online ext4 growth is impossible here (no CAP_SYS_RESOURCE); checking growth at the next stage")
	}
	// The device follows the image either way, and the next stage grows
	// the filesystem (offline) to fill it.
	if size := blockDevSize(t, mountAt(t, staging).Source); size != 128<<20 {
		t.Errorf("device size after expand = %d, want 128 MiB", size)
	}
	unmountVolume(t, e, vol, staging, target)
	mountVolume(t, e, vol, staging, target, vcap)
	after, _ := statfs(t, target)
	if after-before < 56<<20 {
		t.Errorf("ext4 size %d -> %d after expand and restage, want about +64 MiB", before, after)
	}
	if got := readFileT(t, filepath.Join(target, "keep.txt")); got != "ext4 data" {
		t.Errorf("file after growth = %q", got)
	}
	unmountVolume(t, e, vol, staging, target)
	assertCleanNode(t, e)
}

func TestNodeRestoreFromSnapshotMounts(t *testing.T) {
	e := startNodeEnv(t)
	src := createFuseVolume(t, e, e.d.Controller, 64<<20, "")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("")
	mountVolume(t, e, src, staging, target, vcap)
	content := "before the snapshot " + src.GetVolumeId()
	writeFileSync(t, filepath.Join(target, "snap.txt"), []byte(content))
	unmountVolume(t, e, src, staging, target)

	snapID := snapshotOf(t, e, src)
	// Restore into a bigger volume: the filesystem must grow to fill it.
	restored := restoreOf(t, e, snapID, 96<<20)
	// Write to the source after the snapshot: the restore must not see it.
	mountVolume(t, e, src, staging, target, vcap)
	writeFileSync(t, filepath.Join(target, "snap.txt"), []byte("after the snapshot"))
	unmountVolume(t, e, src, staging, target)

	checkRestore(t, e, restored, vcap, "snap.txt", content, 80<<20)
	assertCleanNode(t, e)
}

func TestNodeErrorsOnThisKernelAndBadInput(t *testing.T) {
	e := startNodeEnv(t)
	ctx := ctxT(t)
	vol := createFuseVolume(t, e, e.d.Controller, 16<<20, "")
	staging := filepath.Join(e.work, "staging")
	key := e.c.RBDNodeSecrets()["userKey"]
	withContext := func(kv ...string) *csi.NodeStageVolumeRequest {
		req := stageReq(e.c, vol, staging, testutil.FSCap(""))
		vc := map[string]string{}
		for k, v := range vol.GetVolumeContext() {
			vc[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(vc, kv[i])
			} else {
				vc[kv[i]] = kv[i+1]
			}
		}
		req.VolumeContext = vc
		return req
	}
	cases := []struct {
		name string
		req  *csi.NodeStageVolumeRequest
		code codes.Code
		want string
	}{
		// This kernel has neither rbd nor nbd: both mappers say so clearly.
		{"krbd", withContext("mounter", ""), codes.FailedPrecondition, "rbd module"},
		{"rbd-nbd", withContext("mounter", "rbd-nbd"), codes.FailedPrecondition, "rbd-nbd"},
		{"missing image", withContext("imageName", "csi-vol-does-not-exist"), codes.NotFound, "csi-vol-does-not-exist"},
		{"missing pool", withContext("pool", "no-such-pool"), codes.NotFound, "no-such-pool"},
		{"missing namespace", withContext("radosNamespace", "no-such-ns"), codes.NotFound, "no-such-ns"},
		{"unknown mounter", withContext("mounter", "iscsi"), codes.InvalidArgument, "volume_context.mounter"},
		{"bad mapOptions", withContext("mapOptions", "zfs:foo"), codes.InvalidArgument, "volume_context.mapOptions"},
		{"unknown cluster", withContext("clusterID", "nope"), codes.InvalidArgument, "volume_context.clusterID"},
		{"no pool", withContext("pool", ""), codes.InvalidArgument, "volume_context.pool"},
	}
	for _, tc := range cases {
		_, err := e.d.Node.NodeStageVolume(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s mentioning %q", tc.name, err, tc.code, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), key) {
			t.Errorf("%s: the error shows the key", tc.name)
		}
	}
	noSecrets := stageReq(e.c, vol, staging, testutil.FSCap(""))
	noSecrets.Secrets = nil
	if _, err := e.d.Node.NodeStageVolume(ctx, noSecrets); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "userID") {
		t.Errorf("stage without secrets: %v", err)
	}
	badFs := stageReq(e.c, vol, staging, testutil.FSCap("btrfs"))
	if _, err := e.d.Node.NodeStageVolume(ctx, badFs); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "fs_type") {
		t.Errorf("stage as btrfs: %v", err)
	}
	// Nothing of the failed attempts is left: no mounts, loops, processes
	// or node state.
	assertCleanNode(t, e)
	if states, _ := filepath.Glob(filepath.Join(e.pluginDir, "*", "rbd-node", "*.json")); len(states) > 0 {
		t.Errorf("node state left by failed stages: %v", states)
	}
	if _, err := e.d.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: staging}); status.Code(err) != codes.NotFound {
		t.Errorf("expand of an unstaged volume: %v, want NotFound", err)
	}
	if _, err := e.d.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: filepath.Join(e.work, "nope")}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of a missing path: %v, want NotFound", err)
	}
	if _, err := e.d.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		TargetPath: filepath.Join(e.work, "t"), VolumeCapability: testutil.FSCap("")}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publish of an unstaged volume: %v, want FailedPrecondition", err)
	}
}

// TestNodeWrongKeyIsPermissionDenied: the cluster refuses a wrong key, the
// helper says so before the stage returns, and the stage fails with
// PermissionDenied, leaving nothing behind. The driver's config names the
// monitor by its msgr2 address (v2:, from the cluster's ceph.conf): with
// this test cluster's bare address (127.0.0.1:<port>) librados tries msgr2
// on the v1 port, keeps hunting after the refusal and reports a timeout
// instead (DeadlineExceeded after the helper's 30 s connect timeout); with
// v1: the refusal took from 0.5 to 25 s here.
func TestNodeWrongKeyIsPermissionDenied(t *testing.T) {
	c := testutil.RequireCluster(t)
	v2 := regexp.MustCompile(`v2:[0-9.]+:[0-9]+`).FindString(readFileT(t, c.Conf))
	if v2 == "" {
		t.Fatalf("no v2: monitor address in %s", c.Conf)
	}
	var clusters []map[string]any
	if err := json.Unmarshal([]byte(readFileT(t, c.ConfigJSON)), &clusters); err != nil {
		t.Fatal(err)
	}
	for _, cl := range clusters {
		cl["monitors"] = []string{v2}
	}
	data, _ := json.Marshal(clusters)
	configJSON := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(configJSON, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e := startNodeEnv(t, func(o *config.Options) { o.ConfigPath = configJSON })
	d := e.d
	vol := createFuseVolume(t, e, d.Controller, 16<<20, "")
	staging := filepath.Join(e.work, "staging")

	req := stageReq(c, vol, staging, testutil.FSCap(""))
	req.Secrets = map[string]string{"userID": c.RBDNodeSecrets()["userID"], "userKey": wrongKey()}
	_, err := d.Node.NodeStageVolume(ctxT(t), req)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "client.csi-rbd-node") {
		t.Errorf("stage with a wrong key: %v, want PermissionDenied naming the user", err)
	}
	if err != nil && strings.Contains(err.Error(), req.Secrets["userKey"]) {
		t.Error("the error shows the key")
	}
	assertCleanNode(t, e)
	if states, _ := filepath.Glob(filepath.Join(e.pluginDir, "*", "rbd-node", "*.json")); len(states) > 0 {
		t.Errorf("node state left by the refused stage: %v", states)
	}
	// The right key stages through the same monitor address.
	stage(t, d.Node, c, vol, staging, testutil.FSCap(""))
	unstage(t, d.Node, vol, staging)
	assertCleanNode(t, e)
}

// wrongKey is a well-formed cephx key (type, creation time, 16 secret
// bytes) that no user has.
func wrongKey() string {
	raw := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0}
	for i := 0; i < 16; i++ {
		raw = append(raw, byte(0x5a+i))
	}
	return base64.StdEncoding.EncodeToString(raw)
}

// TestNodeRestartWithRealBinary stages through the built cephcsi binary,
// kills it with SIGKILL, starts it again and checks that the volume is
// still served, restages idempotently, unstages cleanly and stages again
// with its data.
func TestNodeRestartWithRealBinary(t *testing.T) {
	c := testutil.RequireCluster(t)
	started := time.Now()
	// Built here, not with testutil.BuildBinary: its binary stays in /tmp.
	bin := filepath.Join(t.TempDir(), "cephcsi")
	build := exec.Command("go", "build", "-o", bin, "./cmd/cephcsi")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cephcsi: %v\n%s", err, out)
	}
	e := newNodeDirs(t) // the plugin process inherits its TMPDIR
	pluginDir, work := e.pluginDir, e.work
	sock := filepath.Join(shortDir(t, "csi-sock"), "csi.sock")
	logPath := filepath.Join(t.TempDir(), "plugin.log")

	// The controller side runs in-process, so the volume is deleted by a
	// live driver even after the binary under test was killed.
	ctl := testutil.StartDriver(t, c, "rbd", nil).Controller

	var proc *exec.Cmd
	start := func() csi.NodeClient {
		t.Helper()
		// A killed plugin leaves its socket behind; wait for the new one.
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		proc = exec.Command(bin, "--type=rbd", "--nodeserver", "--nodeid=restart-node",
			"--endpoint=unix://"+sock, "--configpath="+c.ConfigJSON, "--pluginpath="+pluginDir, "--v=5")
		proc.Stdout, proc.Stderr = logf, logf
		if err := proc.Start(); err != nil {
			t.Fatal(err)
		}
		p := proc
		t.Cleanup(func() {
			_ = p.Process.Kill()
			_ = p.Wait()
		})
		deadline := time.Now().Add(15 * time.Second)
		for {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("plugin socket did not appear; log:\n%s", readFileT(t, logPath))
			}
			time.Sleep(20 * time.Millisecond)
		}
		conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return csi.NewNodeClient(conn)
	}

	node := start()
	vol := createFuseVolume(t, e, ctl, 64<<20, "")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("")
	// No cleanups: the node client they would use dies with its plugin.
	stageOnce(t, node, c, vol, staging, vcap)
	publishOnce(t, node, vol, staging, target, vcap, false)
	content := "survives a plugin restart " + vol.GetVolumeId()
	writeFileSync(t, filepath.Join(target, "restart.txt"), []byte(content))
	device := mountAt(t, staging).Source

	// SIGKILL: no chance to clean up. The helper runs on in its own session.
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	if len(helperProcs(t, pluginDir)) != 1 {
		t.Fatal("the FUSE helper did not survive the plugin's death")
	}
	writeFileSync(t, filepath.Join(target, "while-down.txt"), []byte("written while the plugin was down"))

	node = start()
	// kubelet re-stages after a plugin restart: same device, no remap.
	stageOnce(t, node, c, vol, staging, vcap)
	if got := mountAt(t, staging).Source; got != device {
		t.Errorf("device after restart = %s, want %s", got, device)
	}
	if loops := loopsUnder(t, pluginDir); len(loops) != 1 {
		t.Errorf("loop devices after restart and restage = %v, want exactly one", loops)
	}
	unpublish(t, node, vol, target)
	unstage(t, node, vol, staging)
	assertCleanNode(t, e)

	// Kill it again while nothing is staged, restart, and stage anew.
	_ = proc.Process.Signal(syscall.SIGKILL)
	_ = proc.Wait()
	node = start()
	stageOnce(t, node, c, vol, staging, vcap)
	publishOnce(t, node, vol, staging, target, vcap, false)
	if got := readFileT(t, filepath.Join(target, "restart.txt")); got != content {
		t.Errorf("file after restarts = %q, want %q", got, content)
	}
	if got := readFileT(t, filepath.Join(target, "while-down.txt")); got != "written while the plugin was down" {
		t.Errorf("file written while the plugin was down = %q", got)
	}
	unpublish(t, node, vol, target)
	unstage(t, node, vol, staging)
	assertCleanNode(t, e)
	key := c.RBDNodeSecrets()["userKey"]
	assertNoKeyLeft(t, key, started, pluginDir, work, e.tmp, filepath.Dir(logPath))
	if strings.Contains(readFileT(t, logPath), key) {
		t.Error("the plugin log contains the key")
	}
}

// TestNodeFuseHelperDeathIsReportedAndCleanedUp kills the FUSE helper of
// a staged volume (what a node plugin container restart does) and checks
// that NodeGetVolumeHealth sees it, that a new stage reports the stale
// mapping instead of mapping a second copy, and that unstage still cleans
// everything up.
func TestNodeFuseHelperDeathIsReportedAndCleanedUp(t *testing.T) {
	e := startNodeEnv(t)
	ctx := ctxT(t)
	vol := createFuseVolume(t, e, e.d.Controller, 32<<20, "")
	staging := filepath.Join(e.work, "staging")
	vcap := testutil.FSCap("")
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	device := mountAt(t, staging).Source
	if st := volumeHealth(t, e.d.Node, vol.GetVolumeId()); len(st) != 0 {
		t.Errorf("health of a served volume = %v, want none", st)
	}
	procs := helperProcs(t, e.pluginDir)
	if len(procs) != 1 {
		t.Fatalf("FUSE helpers = %d, want 1", len(procs))
	}
	for pid := range procs {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(helperProcs(t, e.pluginDir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// The filesystem's in-memory state still answers statfs; the device
	// read below it is what fails.
	st := volumeHealth(t, e.d.Node, vol.GetVolumeId())
	if len(st) != 1 || st[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || st[0].GetReason() != "IOError" ||
		!strings.Contains(st[0].GetMessage(), "reading "+device) {
		t.Errorf("health with a dead helper = %v, want INACCESSIBLE, IOError reading %s", st, device)
	}
	_, err := e.d.Node.NodeStageVolume(ctx, stageReq(e.c, vol, staging, vcap))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "exited") {
		t.Errorf("stage with a dead helper: %v, want FailedPrecondition about the exited helper", err)
	}
	if loops := loopsUnder(t, e.pluginDir); len(loops) != 1 {
		t.Errorf("loop devices after the refused stage = %v, want the one stale device", loops)
	}
	unstage(t, e.d.Node, vol, staging)
	assertCleanNode(t, e)
	if _, err := e.d.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol.GetVolumeId()}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unstaged volume: %v, want NotFound", err)
	}
	// Once the dead helper's mount is gone the loop device no longer names
	// a path below the plugin directory: check the device itself.
	assertLoopDetached(t, device, vol.GetVolumeContext()["imageName"])
	// The volume can be staged again, with its filesystem intact.
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	if got := blkidType(t, mountAt(t, staging).Source); got != "ext4" {
		t.Errorf("filesystem after restage = %q", got)
	}
	unstage(t, e.d.Node, vol, staging)
	assertCleanNode(t, e)
}

// volumeHealth is NodeGetVolumeHealth of a staged volume, by the node's
// record of it.
func volumeHealth(t *testing.T, node csi.NodeClient, volumeID string) []*csi.VolumeHealth_VolumeHealthEntry {
	t.Helper()
	resp, err := node.NodeGetVolumeHealth(ctxT(t), &csi.NodeGetVolumeHealthRequest{VolumeId: volumeID})
	if err != nil {
		t.Fatalf("NodeGetVolumeHealth: %v", err)
	}
	return resp.GetVolumeHealth().GetHealthStatuses()
}

// TestNodeFuseThroughput prints, and never asserts, the sequential
// throughput of 4 MiB blocks written (then fsynced) and read back with
// O_DIRECT through a published rbd-fuse block volume (loop device over the
// FUSE helper), next to the same through go-ceph's WriteAt/ReadAt on an
// image of the same size, on the same cluster in the same run. It fails
// only when the bytes read are not the bytes written.
func TestNodeFuseThroughput(t *testing.T) {
	e := startNodeEnv(t)
	const size, block = 256 << 20, 4 << 20
	vol := createFuseVolume(t, e, e.d.Controller, size, "")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.BlockCap()
	mountVolume(t, e, vol, staging, target, vcap)

	// O_DIRECT wants page-aligned buffers: mmap gives them.
	buf, err := unix.Mmap(-1, 0, block, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Munmap(buf) }()
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }

	dev, err := os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	loopWrite, loopRead := timeSequential(t, "the loop device", dev, dev.Sync, buf, size)
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	unmountVolume(t, e, vol, staging, target)

	ioctx := e.c.IOContext(t, pool)
	name := uniqueName("direct")
	if err := rbd.CreateImage(ioctx, name, size, rbd.NewRbdImageOptions()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbd.RemoveImage(ioctx, name) })
	img, err := rbd.OpenImage(ioctx, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = img.Close() }()
	directWrite, directRead := timeSequential(t, "go-ceph", img, img.Flush, buf, size)
	t.Logf("sequential 4 MiB blocks, %d MiB, one single-OSD cluster on this machine:", size>>20)
	t.Logf("  loop device over the FUSE helper (O_DIRECT): write+fsync %.0f MB/s, read %.0f MB/s", mbps(loopWrite), mbps(loopRead))
	t.Logf("  go-ceph WriteAt/ReadAt on an image:          write+flush %.0f MB/s, read %.0f MB/s", mbps(directWrite), mbps(directRead))
}

// timeSequential writes size bytes through dev in blocks of len(buf) (a
// pattern of each block's number), flushes them, reads them back and fails
// at the first block that differs; it returns how long the writes (with
// the flush) and the reads took.
func timeSequential(t *testing.T, through string, dev interface {
	io.WriterAt
	io.ReaderAt
}, flush func() error, buf []byte, size int) (write, read time.Duration) {
	t.Helper()
	fill := func(b []byte, i int) {
		for j := 0; j < len(b); j += 8 {
			copy(b[j:j+8], []byte{byte(i), byte(j >> 8), byte(j >> 16), 0x5a, 0xa5, byte(i), 0, 1})
		}
	}
	block := len(buf)
	want := make([]byte, block)
	start := time.Now()
	for i := 0; i < size/block; i++ {
		fill(buf, i)
		if _, err := dev.WriteAt(buf, int64(i*block)); err != nil {
			t.Fatal(err)
		}
	}
	if err := flush(); err != nil {
		t.Fatal(err)
	}
	write = time.Since(start)
	start = time.Now()
	for i := 0; i < size/block; i++ {
		if _, err := dev.ReadAt(buf, int64(i*block)); err != nil {
			t.Fatal(err)
		}
		if fill(want, i); !bytes.Equal(buf, want) {
			t.Fatalf("block %d read through %s differs from what was written", i, through)
		}
	}
	return write, time.Since(start)
}

// checkRestore mounts a restored volume in a pod of its own, checks that
// file holds content and that the filesystem was grown to minTotal bytes
// at least (the restore being larger than its snapshot), and unmounts it.
func checkRestore(t *testing.T, e *nodeEnv, restored *csi.Volume, vcap *csi.VolumeCapability, file, content string, minTotal int64) {
	t.Helper()
	staging, target := e.kubeletPaths("restore")
	mountVolume(t, e, restored, staging, target, vcap)
	if got := readFileT(t, filepath.Join(target, file)); got != content {
		t.Errorf("restored file = %q, want %q", got, content)
	}
	if total, _ := statfs(t, target); total < minTotal {
		t.Errorf("restored filesystem is %d bytes, want at least %d: grown to the volume of %d", total, minTotal, restored.GetCapacityBytes())
	}
	unmountVolume(t, e, restored, staging, target)
}

// A snapshot of a mounted ext4 volume (its journal needs replaying),
// restored into a bigger volume and staged while the source is still
// mounted: the restore holds the file and its filesystem fills the bigger
// volume. Here online growth is refused (no CAP_SYS_RESOURCE), so this is
// the offline path: the filesystem must be grown before it is mounted.
func TestNodeRestoreLargerFromSnapshotOfMountedVolume(t *testing.T) {
	e := startNodeEnv(t)
	src := createFuseVolume(t, e, e.d.Controller, 64<<20, "")
	staging, target := e.kubeletPaths("pod")
	vcap := testutil.FSCap("")
	mountVolume(t, e, src, staging, target, vcap)
	content := "written while mounted " + src.GetVolumeId()
	writeFileSync(t, filepath.Join(target, "live.txt"), []byte(content))

	restored := restoreOf(t, e, snapshotOf(t, e, src), 128<<20)
	// Staged while the source is still mounted.
	checkRestore(t, e, restored, vcap, "live.txt", content, 110<<20)
	unmountVolume(t, e, src, staging, target)
	assertCleanNode(t, e)
}

// A static PV: an image made with the rbd tools outside the driver, named
// by the volume handle, with no journal entry. It stages, keeps what is
// written through an unstage and a restage, and is left to its owner.
func TestNodeStagesAStaticImage(t *testing.T) {
	e := startNodeEnv(t)
	io := e.c.IOContext(t, pool)
	image := "static-" + uuid.NewString()[:8]
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionFeatures, rbd.FeatureLayering); err != nil {
		t.Fatal(err)
	}
	if err := rbd.CreateImage(io, image, 64<<20, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rbd.RemoveImage(io, image); err != nil {
			t.Errorf("removing the static image: %v", err)
		}
	})
	vol := &csi.Volume{VolumeId: image, VolumeContext: map[string]string{"staticVolume": "true", "clusterID": e.c.ClusterID,
		"pool": pool, "imageFeatures": "layering", "mounter": "rbd-fuse"}}
	staging := filepath.Join(e.work, "staging")
	vcap := testutil.FSCap("")
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	writeFileSync(t, filepath.Join(staging, "static.txt"), []byte("static volume"))
	unstage(t, e.d.Node, vol, staging)
	stage(t, e.d.Node, e.c, vol, staging, vcap)
	if got := readFileT(t, filepath.Join(staging, "static.txt")); got != "static volume" {
		t.Errorf("after a restage the file holds %q", got)
	}
	unstage(t, e.d.Node, vol, staging)
	assertCleanNode(t, e)
}
