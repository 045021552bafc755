//go:build integration

package cephfs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/cephfs"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// TestCephFuseKeepsNoKeyBehindItsDescriptors mounts with ceph-fuse as the
// node does. ceph-fuse's daemon keeps the key file it inherited on
// descriptor 3 for as long as the mount lives; the driver empties that
// file once ceph-fuse has started, so no descriptor of the daemon yields
// the key, and the mount keeps working without it.
func TestCephFuseKeepsNoKeyBehindItsDescriptors(t *testing.T) {
	c := testutil.RequireCluster(t)
	key := c.Var("CEPH_FS_NODE_KEY")
	mnt := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cephfs.MountFuseForTest(ctx, strings.Split(c.Monitors, ","), "myfs", "/", mnt, c.Var("CEPH_FS_NODE_ID"), key); err != nil {
		t.Fatalf("ceph-fuse: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
		}
		for deadline := time.Now().Add(15 * time.Second); len(pidsServing(mnt)) > 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("ceph-fuse did not exit after the unmount")
				return
			}
		}
	})
	// ceph-fuse daemonizes: the mount can be up while the processes that
	// forked the daemon are still exiting.
	pids := pidsServing(mnt)
	for deadline := time.Now().Add(10 * time.Second); len(pids) > 1 && time.Now().Before(deadline); pids = pidsServing(mnt) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(pids) != 1 {
		t.Fatalf("ceph-fuse processes serving %s: %v, want 1", mnt, pids)
	}
	pid := pids[0]
	fds, err := os.ReadDir(filepath.Join("/proc", pid, "fd"))
	if err != nil {
		t.Fatal(err)
	}
	sawKeyFile := false
	for _, fd := range fds {
		p := filepath.Join("/proc", pid, "fd", fd.Name())
		target, _ := os.Readlink(p)
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			continue // pipes, sockets and devices are not read
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if bytes.Contains(data, []byte(key)) {
			t.Errorf("ceph-fuse %s: %s (%s) yields the key", pid, p, target)
		}
		if strings.Contains(target, "cephcsi-key") {
			sawKeyFile = true
			if len(data) != 0 {
				t.Errorf("ceph-fuse %s: the key file on %s holds %d bytes, want it emptied", pid, p, len(data))
			}
		}
	}
	if !sawKeyFile {
		// Then ceph-fuse closed it itself, which is fine; say so, since the
		// emptying would not be needed any more.
		t.Logf("ceph-fuse %s no longer holds the key file", pid)
	}
	// The client authenticated before the file was emptied and works on.
	p := filepath.Join(mnt, "keyless-"+strings.ReplaceAll(t.Name(), "/", "-"))
	if err := os.WriteFile(p, []byte("written after the key file was emptied"), 0o600); err != nil {
		t.Fatalf("writing through ceph-fuse: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "written after the key file was emptied" {
		t.Errorf("read back %q, %v", got, err)
	}
	if err := os.Remove(p); err != nil {
		t.Error(err)
	}
}
