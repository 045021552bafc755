//go:build integration

package cephfs_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestHealthSeesADeadClient checks NodeGetVolumeHealth on a staged and
// published volume: healthy while ceph-fuse serves it, inaccessible
// (ENOTCONN) once ceph-fuse is killed, as a node plugin container restart
// does to it; and that unpublish and unstage still clean up after that.
func TestHealthSeesADeadClient(t *testing.T) {
	e := newEnv(t)
	vcap := rwo()[0]
	vol := e.newVolume("health", 8<<20, nil)
	other := e.newVolume("never-staged", 8<<20, nil)
	staging, target := e.mounted(vol, vcap)
	writeFile(t, target+"/x", []byte("x"))

	health := func(req *csi.NodeGetVolumeHealthRequest) []*csi.VolumeHealth_VolumeHealthEntry {
		t.Helper()
		resp, err := e.d.Node.NodeGetVolumeHealth(e.ctx, req)
		if err != nil {
			t.Fatalf("NodeGetVolumeHealth: %v", err)
		}
		if id := resp.GetVolumeHealth().GetVolumeId(); id != req.GetVolumeId() {
			t.Errorf("health of volume %q, asked for %q", id, req.GetVolumeId())
		}
		return resp.GetVolumeHealth().GetHealthStatuses()
	}
	byRecord := &csi.NodeGetVolumeHealthRequest{VolumeId: vol.GetVolumeId()}
	byPaths := &csi.NodeGetVolumeHealthRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumePublishPath: target}
	for _, req := range []*csi.NodeGetVolumeHealthRequest{byRecord, byPaths} {
		if st := health(req); len(st) != 0 {
			t.Errorf("health of a served volume = %v, want none", st)
		}
	}
	if _, err := e.d.Node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: other.GetVolumeId()}); status.Code(err) != codes.NotFound {
		t.Errorf("health of a volume never staged here: %v, want NotFound", err)
	}

	pids := pidsServing(staging)
	if len(pids) == 0 {
		t.Fatal("found no ceph-fuse process serving the staging path")
	}
	for _, p := range pids {
		pid, _ := strconv.Atoi(p)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	var st []*csi.VolumeHealth_VolumeHealthEntry
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st = health(byRecord); len(st) > 0 {
			break
		}
	}
	if len(st) != 1 || st[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE ||
		!strings.Contains(st[0].GetMessage(), staging) || !strings.Contains(st[0].GetMessage(), target) ||
		!strings.Contains(st[0].GetMessage(), syscall.ENOTCONN.Error()) {
		t.Errorf("health after ceph-fuse died = %v, want INACCESSIBLE naming both paths and %q", st, syscall.ENOTCONN.Error())
	}
	start := time.Now()
	if _, err := e.d.Node.NodeGetVolumeStats(e.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target}); err == nil {
		t.Error("stats of a volume whose client died succeeded")
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("stats of a dead mount took %s", took)
	}

	e.release(vol, staging, target)
	// The MDS keeps the killed client's session, and the caps it held on the
	// volume, until the session times out; evict it as an operator would,
	// so that the volume can be deleted now.
	evictSessionsOf(t, e.c.Dir, staging)
	for _, p := range []string{staging, target} {
		if isMounted(p) {
			t.Errorf("%s still mounted after unpublish and unstage", p)
		}
	}
	if _, err := e.d.Node.NodeGetVolumeHealth(e.ctx, byRecord); status.Code(err) != codes.NotFound {
		t.Errorf("health after unstage: %v, want NotFound", err)
	}
	e.deleteVolume(vol.GetVolumeId())
	e.deleteVolume(other.GetVolumeId())
}

// evictSessionsOf evicts, through the MDS's admin socket, the client
// sessions that mounted mountpoint.
func evictSessionsOf(t *testing.T, clusterDir, mountpoint string) {
	t.Helper()
	asok := filepath.Join(clusterDir, "run", "mds.a.asok")
	out, err := exec.Command("ceph", "--admin-daemon", asok, "session", "ls").Output()
	if err != nil {
		t.Fatalf("session ls: %v", err)
	}
	var sessions []struct {
		ID       int64          `json:"id"`
		Metadata map[string]any `json:"client_metadata"`
	}
	if err := json.Unmarshal(out, &sessions); err != nil {
		t.Fatalf("session ls: %v", err)
	}
	n := 0
	for _, s := range sessions {
		if s.Metadata["mount_point"] != mountpoint {
			continue
		}
		n++
		if out, err := exec.Command("ceph", "--admin-daemon", asok, "client", "evict", fmt.Sprintf("id=%d", s.ID)).CombinedOutput(); err != nil {
			t.Fatalf("client evict id=%d: %v: %s", s.ID, err, out)
		}
	}
	if n == 0 {
		t.Errorf("the MDS has no session that mounted %s", mountpoint)
	}
}
