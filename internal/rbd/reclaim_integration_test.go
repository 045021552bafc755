//go:build integration

package rbd_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// poolUsed waits until the pool's stored bytes (what `ceph df` shows as
// STORED, from the manager's statistics, which lag by seconds) satisfy
// ok, and returns them.
func poolUsed(t *testing.T, io *rados.IOContext, what string, ok func(uint64) bool) uint64 {
	t.Helper()
	var last uint64
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		st, err := io.GetPoolStats()
		if err != nil {
			t.Fatal(err)
		}
		if last = st.Num_bytes; ok(last) {
			return last
		}
	}
	t.Fatalf("%s: the pool stores %d bytes", what, last)
	return 0
}

func writeFile(t *testing.T, path string, size int, random bool) {
	t.Helper()
	data := make([]byte, size)
	if random {
		_, _ = rand.Read(data)
	}
	writeFileSync(t, path, data)
}

func syncFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// A filesystem volume on the FUSE mapper (loop device on our FUSE helper on
// librbd): files deleted, the node's reclaim trims the filesystem and the
// discards travel loop -> FUSE fallocate(PUNCH_HOLE) -> rbd discard, so the
// image and the pool hold less; zeros written into a file are given back by
// the controller's sparsify. Both through the CSI-Addons socket.
func TestReclaimSpaceGivesSpaceToThePool(t *testing.T) {
	e := startNodeEnv(t)
	c := e.c
	// A pool of its own: the shared pool's statistics move with what the
	// other tests write and delete.
	const pool = "reclaim-test"
	c.PrivateRBDPool(t, pool)
	io := c.IOContext(t, pool)
	req := fuseVolumeReq(e, "node", 256<<20, "ext4", nil)
	req.Parameters["pool"] = pool
	vol := createVolumeReq(t, e, e.d.Controller, req)
	image := vol.GetVolumeContext()["imageName"]
	staging := filepath.Join(e.work, "staging")
	stage(t, e.d.Node, c, vol, staging, testutil.FSCap("ext4"))
	node := reclaimspace.NewReclaimSpaceNodeClient(e.d.Addons)
	ctl := reclaimspace.NewReclaimSpaceControllerClient(e.d.Addons)
	// As the csi-addons sidecar sends it: kubelet's staging path, the PV's
	// node-stage secret.
	nodeReq := &reclaimspace.NodeReclaimSpaceRequest{VolumeId: vol.GetVolumeId(),
		StagingTargetPath: "/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.csi.ceph.com/0123/globalmount",
		VolumeCapability:  testutil.FSCap("ext4"), Secrets: c.RBDNodeSecrets()}

	const data = 64 << 20
	base := poolUsed(t, io, "before writing", func(uint64) bool { return true })
	baseImage := testutil.AllocatedBytes(t, io, image)
	file := filepath.Join(staging, "data")
	writeFile(t, file, data, true)
	syncFS(t, staging)
	written := testutil.AllocatedBytes(t, io, image)
	if written < baseImage+data*7/8 {
		t.Fatalf("image holds %d bytes after writing %d (had %d)", written, data, baseImage)
	}
	full := poolUsed(t, io, "after writing", func(n uint64) bool { return n >= base+data*7/8 })
	t.Logf("pool stores %d bytes, image %d after writing %d MiB", full, written, data>>20)

	// Deleting the file frees the blocks in the filesystem only.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	syncFS(t, staging)
	deleted := testutil.AllocatedBytes(t, io, image)
	if deleted < written {
		t.Fatalf("deleting the file alone gave back %d bytes: the test proves nothing", written-deleted)
	}
	begin := time.Now()
	if _, err := node.NodeReclaimSpace(ctxT(t), nodeReq); err != nil {
		t.Fatalf("NodeReclaimSpace: %v", err)
	}
	trimmed := testutil.AllocatedBytes(t, io, image)
	t.Logf("node reclaim (fstrim) took %s: image %d -> %d bytes", time.Since(begin).Round(time.Millisecond), deleted, trimmed)
	if trimmed > deleted-data*3/4 {
		t.Errorf("after fstrim the image holds %d bytes, want at most %d", trimmed, deleted-data*3/4)
	}
	afterTrim := poolUsed(t, io, "after fstrim", func(n uint64) bool { return n <= full-data*3/4 })
	t.Logf("pool stores %d bytes after fstrim (was %d)", afterTrim, full)

	// Repeated: nothing left to trim, no error.
	if _, err := node.NodeReclaimSpace(ctxT(t), nodeReq); err != nil {
		t.Fatalf("second NodeReclaimSpace: %v", err)
	}

	// Zeros written into a file are stored as written; sparsify gives them
	// back without touching the filesystem's data.
	keep := filepath.Join(staging, "keep")
	writeFile(t, keep, 1<<20, true)
	want, err := os.ReadFile(keep)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(staging, "zeros"), 32<<20, false)
	syncFS(t, staging)
	zeroed := testutil.AllocatedBytes(t, io, image)
	if zeroed < trimmed+28<<20 {
		t.Fatalf("image holds %d bytes after 32 MiB of zeros (had %d)", zeroed, trimmed)
	}
	withZeros := poolUsed(t, io, "after writing zeros", func(n uint64) bool { return n >= afterTrim+28<<20 })
	resp, err := ctl.ControllerReclaimSpace(ctxT(t), &reclaimspace.ControllerReclaimSpaceRequest{
		VolumeId: vol.GetVolumeId(), Parameters: vol.GetVolumeContext(), Secrets: c.RBDNodeSecrets()})
	if err != nil {
		t.Fatalf("ControllerReclaimSpace: %v", err)
	}
	sparse := testutil.AllocatedBytes(t, io, image)
	pre, post := resp.GetPreUsage().GetUsageBytes(), resp.GetPostUsage().GetUsageBytes()
	t.Logf("controller reclaim (sparsify): reported %d -> %d, image %d -> %d bytes", pre, post, zeroed, sparse)
	if uint64(pre) != zeroed || uint64(post) != sparse {
		t.Errorf("reported usage %d -> %d, the image went %d -> %d", pre, post, zeroed, sparse)
	}
	if sparse > zeroed-24<<20 {
		t.Errorf("after sparsify the image holds %d bytes, want at most %d", sparse, zeroed-24<<20)
	}
	afterSparsify := poolUsed(t, io, "after sparsify", func(n uint64) bool { return n <= withZeros-24<<20 })
	t.Logf("pool stores %d bytes after sparsify (was %d)", afterSparsify, withZeros)
	if got, err := os.ReadFile(keep); err != nil || string(got) != string(want) {
		t.Errorf("the file's data changed through sparsify (%v)", err)
	}
	// Repeated: the same usage before and after.
	resp, err = ctl.ControllerReclaimSpace(ctxT(t), &reclaimspace.ControllerReclaimSpaceRequest{
		VolumeId: vol.GetVolumeId(), Secrets: c.RBDNodeSecrets()})
	if err != nil || resp.GetPreUsage().GetUsageBytes() != resp.GetPostUsage().GetUsageBytes() {
		t.Errorf("second ControllerReclaimSpace = %v, %v", resp, err)
	}
	// A block volume has no filesystem: the node declines (the csi-addons
	// controller goes on to the controller's sparsify).
	blockReq := &reclaimspace.NodeReclaimSpaceRequest{VolumeId: vol.GetVolumeId(), VolumeCapability: testutil.BlockCap()}
	if _, err := node.NodeReclaimSpace(ctxT(t), blockReq); err == nil {
		t.Error("NodeReclaimSpace of a block capability succeeded")
	}
	unstage(t, e.d.Node, vol, staging)
	if _, err := node.NodeReclaimSpace(ctxT(t), nodeReq); err == nil {
		t.Error("NodeReclaimSpace of an unstaged volume succeeded")
	}
	assertCleanNode(t, e)
}
