//go:build integration

package cephfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// appendUntilFull appends 1 MiB chunks (each synced) up to max bytes and
// returns how much was written and the error that stopped it.
func appendUntilFull(p string, max int) (int, error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{0xab}, 1<<20)
	written := 0
	for written < max {
		n, err := f.Write(chunk)
		written += n
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// TestQuotaEnforcedAndGrowsWithExpand writes past the requested size through
// a ceph-fuse mount (refused), expands, and writes again (accepted).
func TestQuotaEnforcedAndGrowsWithExpand(t *testing.T) {
	e := newEnv(t)
	vol := e.newVolume("quota", 8<<20, nil)
	staging, target := e.mounted(vol, rwo()[0])

	stats := func(p string) (bytesTotal, bytesUsed int64) {
		t.Helper()
		resp, err := e.d.Node.NodeGetVolumeStats(e.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: p})
		if err != nil {
			t.Fatalf("NodeGetVolumeStats: %v", err)
		}
		for _, u := range resp.GetUsage() {
			if u.GetUnit() == csi.VolumeUsage_BYTES {
				bytesTotal, bytesUsed = u.GetTotal(), u.GetUsed()
			}
		}
		return bytesTotal, bytesUsed
	}
	if total, _ := stats(target); total != 8<<20 {
		t.Errorf("stats total = %d, want the 8 MiB quota", total)
	}

	written, err := appendUntilFull(target+"/fill", 16<<20)
	if err == nil {
		t.Fatalf("wrote %d bytes into an 8 MiB volume without an error", written)
	}
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write past the quota failed with %v, want EDQUOT or ENOSPC", err)
	}
	if written > 10<<20 {
		t.Errorf("%d bytes written before the quota stopped writes", written)
	}
	t.Logf("quota stopped writes after %d MiB: %v", written>>20, err)

	resp, err := e.d.Controller.ControllerExpandVolume(e.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: size(32 << 20), Secrets: e.secrets})
	if err != nil || resp.GetNodeExpansionRequired() {
		t.Fatalf("expand = %v, %v", resp, err)
	}
	// The client learns the new quota from the MDS shortly after.
	deadline := time.Now().Add(20 * time.Second)
	for {
		err = writeSynced(target+"/more", bytes.Repeat([]byte{1}, 8<<20))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("writing 8 MiB more after expanding to 32 MiB: %v", err)
	}
	if total, _ := stats(target); total != 32<<20 {
		t.Errorf("stats total after expand = %d, want 32 MiB", total)
	}
	// Used bytes follow the recursive statistics, which lag a little.
	deadline = time.Now().Add(20 * time.Second)
	var used int64
	for ; time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, used = stats(staging); used >= 14<<20 {
			break
		}
	}
	if used < 14<<20 || used > 32<<20 {
		t.Errorf("stats used = %d, want the ~16 MiB written", used)
	}
	e.release(vol, staging, target)
	e.deleteVolume(vol.GetVolumeId())
}

// TestRWXVolumeSharedBetweenNodes publishes one volume twice on one node and
// once on a second node (a second driver, its own ceph-fuse client): every
// target sees the others' writes.
func TestRWXVolumeSharedBetweenNodes(t *testing.T) {
	e := newEnv(t)
	rwx := fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	vol, _ := e.createVolume(&csi.CreateVolumeRequest{Name: uniqueName("rwx"), CapacityRange: size(16 << 20),
		VolumeCapabilities: []*csi.VolumeCapability{rwx}, Parameters: params(e.c)})
	node2 := testutil.StartDriver(t, e.c, "cephfs", nil)
	waitReady(t, node2)

	staging1 := e.stage(e.d, vol, rwx)
	a := e.publish(e.d, vol, staging1, rwx)
	b := e.publish(e.d, vol, staging1, rwx)
	staging2 := e.stage(node2, vol, rwx)
	c := e.publish(node2, vol, staging2, rwx)

	targets := []string{a, b, c}
	for i, from := range targets {
		name := fmt.Sprintf("from-%d", i)
		data := []byte(fmt.Sprintf("written through target %d", i))
		writeFile(t, filepath.Join(from, name), data)
		for j, to := range targets {
			got, err := os.ReadFile(filepath.Join(to, name))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("target %d reads %q, %v from target %d's write", j, got, err, i)
			}
		}
	}
	// An append on the second node is seen on the first.
	f, err := os.OpenFile(filepath.Join(c, "from-0"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(" and appended on node 2"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readFile(t, filepath.Join(a, "from-0")); string(got) != "written through target 0 and appended on node 2" {
		t.Errorf("node 1 reads %q after node 2 appended", got)
	}

	e.unpublish(node2, vol, c)
	e.unstage(node2, vol, staging2)
	e.unpublish(e.d, vol, b)
	// Target a still works after b is gone.
	mustEqual(t, "target a after unpublishing b", readFile(t, filepath.Join(a, "from-1")), []byte("written through target 1"))
	e.unpublish(e.d, vol, a)
	e.unstage(e.d, vol, staging1)
	e.deleteVolume(vol.GetVolumeId())
}

// TestNodeCallsAreIdempotentAndKeepNoKey repeats every node call, checks the
// refusals, and looks for the cephx key in files and process arguments.
func TestNodeCallsAreIdempotentAndKeepNoKey(t *testing.T) {
	e := newEnv(t)
	vcap := rwo()[0]
	vol := e.newVolume("idem", 8<<20, nil)
	stageReq := func(staging string) *csi.NodeStageVolumeRequest {
		return &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: vcap,
			VolumeContext: vol.GetVolumeContext(), Secrets: e.c.CephFSNodeSecrets()}
	}
	target := e.mountDir("pub")
	pubReq := func(staging string) *csi.NodePublishVolumeRequest {
		return &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: target,
			VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext()}
	}
	unstaged := e.mountDir("stage")
	if _, err := e.d.Node.NodePublishVolume(e.ctx, pubReq(unstaged)); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publish before stage: %v, want FailedPrecondition", err)
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	bad := stageReq(unstaged)
	bad.VolumeCapability = block
	if _, err := e.d.Node.NodeStageVolume(e.ctx, bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("block stage: %v, want InvalidArgument", err)
	}
	bad = stageReq(unstaged)
	bad.Secrets = map[string]string{}
	if _, err := e.d.Node.NodeStageVolume(e.ctx, bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stage without secrets: %v, want InvalidArgument", err)
	}
	bad = stageReq(unstaged)
	bad.Secrets = map[string]string{"userID": e.c.Var("CEPH_FS_NODE_ID"), "userKey": "AQBt" + "aGlzIGlzIG5vdCBhIGtleSBhdCBhbGwhIQ=="}
	_, err := e.d.Node.NodeStageVolume(e.ctx, bad)
	if status.Code(err) != codes.Internal || isMounted(unstaged) {
		t.Errorf("stage with a wrong key: %v (mounted %v), want Internal and no mount", err, isMounted(unstaged))
	}
	if strings.Contains(status.Convert(err).Message(), bad.Secrets["userKey"]) {
		t.Error("the error message carries the key")
	}

	staging := unstaged
	for i := 0; i < 2; i++ {
		if _, err := e.d.Node.NodeStageVolume(e.ctx, stageReq(staging)); err != nil {
			t.Fatalf("stage #%d: %v", i+1, err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := e.d.Node.NodePublishVolume(e.ctx, pubReq(staging)); err != nil {
			t.Fatalf("publish #%d: %v", i+1, err)
		}
	}
	if n := mountCount(staging); n != 1 {
		t.Errorf("%d mounts at the staging path after two stages, want 1", n)
	}
	writeFile(t, target+"/x", []byte("x"))

	// The key is in no file the driver wrote (its plugin directory, the
	// directories around the mounts), and in no argument or environment of
	// the processes serving the mount.
	key := e.c.CephFSNodeSecrets()["userKey"]
	if _, err := os.Stat(filepath.Join(e.pluginDir, "cephfs.csi.ceph.com", "cephfs-staged")); err != nil {
		t.Errorf("no node state kept under --pluginpath: %v", err)
	}
	for _, dir := range []string{e.pluginDir, filepath.Dir(staging), filepath.Dir(target)} {
		if p := fileContaining(dir, key, staging); p != "" {
			t.Errorf("the cephx key is in %s", p)
		}
	}
	if p := processCarrying(staging, key); p != "" {
		t.Errorf("the cephx key is visible in %s", p)
	}
	if !processServes(staging) {
		t.Error("found no ceph-fuse process serving the staging path")
	}

	resp, err := e.d.Node.NodeGetVolumeStats(e.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	var inodes *csi.VolumeUsage
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_INODES {
			inodes = u
		}
	}
	if inodes == nil || inodes.GetUsed() < 1 || inodes.GetUsed() > 10 {
		t.Errorf("inode usage = %v, want the few inodes in use", inodes)
	}
	if _, err := e.d.Node.NodeGetVolumeStats(e.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(),
		VolumePath: target + "-missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of a missing path: %v, want NotFound", err)
	}

	for i := 0; i < 2; i++ {
		e.unpublish(e.d, vol, target)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target path left after unpublish: %v", err)
	}
	for i := 0; i < 2; i++ {
		e.unstage(e.d, vol, staging)
	}
	if isMounted(staging) {
		t.Error("staging path still mounted after unstage")
	}
	e.deleteVolume(vol.GetVolumeId())
}

func mountCount(p string) int {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == p {
			n++
		}
	}
	return n
}

// fileContaining walks dir (not into skip, a live CephFS mount) and returns a
// file whose content contains s.
func fileContaining(dir, s, skip string) string {
	found := ""
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" {
			return nil
		}
		if d.IsDir() && (p == skip || isMounted(p)) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 1<<20 {
			return nil
		}
		if data, err := os.ReadFile(p); err == nil && bytes.Contains(data, []byte(s)) {
			found = p
		}
		return nil
	})
	return found
}

// processCarrying returns the /proc file of a process serving mountpoint
// whose command line or environment contains s.
func processCarrying(mountpoint, s string) string {
	for _, pid := range pidsServing(mountpoint) {
		for _, f := range []string{"cmdline", "environ"} {
			path := filepath.Join("/proc", pid, f)
			if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, []byte(s)) {
				return path
			}
		}
	}
	return ""
}

func processServes(mountpoint string) bool { return len(pidsServing(mountpoint)) > 0 }

// pidsServing lists the processes whose command line names mountpoint.
func pidsServing(mountpoint string) []string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		data, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && bytes.Contains(data, []byte(mountpoint+"\x00")) {
			out = append(out, p.Name())
		}
	}
	return out
}

// A SINGLE_NODE_SINGLE_WRITER volume is published at one target at a time;
// once that target is unpublished another may take it.
func TestSingleWriterPublishedOnce(t *testing.T) {
	e := newEnv(t)
	vcap := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}}
	vol, _ := e.createVolume(&csi.CreateVolumeRequest{Name: uniqueName("single"), CapacityRange: size(8 << 20),
		VolumeCapabilities: []*csi.VolumeCapability{vcap}, Parameters: params(e.c)})
	staging := e.mountDir("stage")
	if _, err := e.d.Node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(),
		StagingTargetPath: staging, VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext(),
		Secrets: e.c.CephFSNodeSecrets()}); err != nil {
		t.Fatal(err)
	}
	publish := func(target string) error {
		_, err := e.d.Node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(),
			StagingTargetPath: staging, TargetPath: target, VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext()})
		return err
	}
	first, second := e.mountDir("first"), e.mountDir("second")
	if err := publish(first); err != nil {
		t.Fatal(err)
	}
	if err := publish(first); err != nil {
		t.Errorf("publishing again at the same target: %v", err)
	}
	if err := publish(second); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second target while the first is published: %v, want FailedPrecondition", err)
	}
	if isMounted(second) {
		t.Error("the refused target was mounted")
	}
	e.unpublish(e.d, vol, first)
	if err := publish(second); err != nil {
		t.Errorf("second target after the first was unpublished: %v", err)
	}
	e.unpublish(e.d, vol, second)
	e.unstage(e.d, vol, staging)
	e.deleteVolume(vol.GetVolumeId())
}

// A static PV: a directory made outside the driver (no subvolume, no
// journal entry), named by rootPath. It mounts, and what is written there
// is in that directory.
func TestNodeMountsAStaticDirectory(t *testing.T) {
	e := newEnv(t)
	dir := "/static-" + uuid.NewString()[:8]
	m, err := cephfs.CreateFromRados(e.c.Admin())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if err := m.SelectFilesystem(fsName); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatal(err)
	}
	if err := m.MakeDir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.Unlink(dir + "/static.txt")
		if err := m.RemoveDir(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	vol := &csi.Volume{VolumeId: "static-pv-" + uuid.NewString()[:8], VolumeContext: map[string]string{"staticVolume": "true",
		"clusterID": e.c.ClusterID, "fsName": fsName, "rootPath": dir, "mounter": "fuse"}}
	vcap := fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	staging := e.stage(e.d, vol, vcap)
	writeFile(t, filepath.Join(staging, "static.txt"), []byte("static directory"))
	e.unstage(e.d, vol, staging)
	f, err := m.Open(dir+"/static.txt", os.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("the file written through the static PV is not in %s: %v", dir, err)
	}
	buf := make([]byte, 64)
	n, _ := f.Read(buf)
	f.Close()
	if string(buf[:n]) != "static directory" {
		t.Errorf("%s/static.txt holds %q", dir, buf[:n])
	}
}
