package nodeutil

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestVolumeStatsOfAPath(t *testing.T) {
	dir := t.TempDir()
	p := &Publisher{Mounter: mount.NewFakeMounter([]mount.MountPoint{{Path: dir}})}

	resp, err := VolumeStats(p.ProbePath(dir, time.Second), dir, StatfsUsage)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetUsage()) != 2 || resp.GetUsage()[0].GetTotal() <= 0 || resp.GetUsage()[1].GetTotal() <= 0 {
		t.Errorf("usage = %v", resp.GetUsage())
	}
	missing := filepath.Join(dir, "missing")
	if _, err := VolumeStats(p.ProbePath(missing, time.Second), missing, StatfsUsage); csierr.Code(err) != codes.NotFound {
		t.Errorf("missing path: %v, want NotFound", err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := VolumeStats(p.ProbePath(plain, time.Second), plain, StatfsUsage); csierr.Code(err) != codes.NotFound {
		t.Errorf("an unmounted directory: %v, want NotFound", err)
	}
}

func healthReq(volumeID, staging, publish string) *csi.NodeGetVolumeHealthRequest {
	return &csi.NodeGetVolumeHealthRequest{VolumeId: volumeID, StagingTargetPath: staging, VolumePublishPath: publish}
}

func TestCheckHealthRequest(t *testing.T) {
	none := func() (*Staged, error) { return nil, nil }
	if _, err := CheckHealth(healthReq("", "", ""), none); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "volume_id") {
		t.Errorf("no volume_id: %v", err)
	}
	if _, err := CheckHealth(healthReq("v", "rel", ""), none); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "staging_target_path") {
		t.Errorf("relative staging path: %v", err)
	}
	if _, err := CheckHealth(healthReq("v", "", "/a/../b"), none); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "volume_publish_path") {
		t.Errorf("unclean publish path: %v", err)
	}
	if _, err := CheckHealth(healthReq("v", "", ""), none); csierr.Code(err) != codes.NotFound {
		t.Errorf("a volume the node never staged: %v, want NotFound", err)
	}
	fs := func() (*Staged, error) {
		return &Staged{StagingPath: "/s", Targets: []string{"/t1", "/t2"}, Devices: []string{"/dev/loop1"}}, nil
	}
	block := func() (*Staged, error) {
		return &Staged{StagingPath: "/s", Targets: []string{"/t1"}, Block: true, Devices: []string{"/dev/nbd0"}}, nil
	}
	for _, c := range []struct {
		name            string
		req             *csi.NodeGetVolumeHealthRequest
		load            func() (*Staged, error)
		mounts, devices string
	}{
		{"filesystem, as recorded", healthReq("v", "", ""), fs, "/s /t1 /t2", "/dev/loop1"},
		{"filesystem, paths asked", healthReq("v", "/s2", "/t9"), fs, "/s2 /t9", "/dev/loop1"},
		{"block, as recorded", healthReq("v", "", ""), block, "", "/dev/nbd0 /t1"},
		{"block, publish path asked", healthReq("v", "", "/t9"), block, "", "/dev/nbd0 /t9"},
	} {
		hp, err := CheckHealth(c.req, c.load)
		if err != nil || strings.Join(hp.Mounts, " ") != c.mounts || strings.Join(hp.Devices, " ") != c.devices {
			t.Errorf("%s: %+v, %v; want mounts %q, devices %q", c.name, hp, err, c.mounts, c.devices)
		}
	}
}

func TestHealthNamesEveryProblem(t *testing.T) {
	dir := t.TempDir()
	staging, target, lost := filepath.Join(dir, "staging"), filepath.Join(dir, "target"), filepath.Join(dir, "lost")
	for _, d := range []string{staging, target, lost} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &Publisher{Mounter: mount.NewFakeMounter([]mount.MountPoint{{Path: staging}, {Path: target}})}

	resp := p.Health("v", &HealthPaths{Mounts: []string{staging, target}})
	if h := resp.GetVolumeHealth(); h.GetVolumeId() != "v" || len(h.GetHealthStatuses()) != 0 {
		t.Errorf("healthy volume: %v", h)
	}

	resp = p.Health("v", &HealthPaths{Mounts: []string{staging, lost, filepath.Join(dir, "gone")}, Devices: []string{target}})
	st := resp.GetVolumeHealth().GetHealthStatuses()
	if len(st) != 1 || st[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || st[0].GetReason() != "NotMounted" {
		t.Fatalf("statuses = %v, want one INACCESSIBLE entry, reason NotMounted", st)
	}
	for _, want := range []string{lost + " is not mounted", "gone is missing", target + " is not a block device"} {
		if !strings.Contains(st[0].GetMessage(), want) {
			t.Errorf("message %q lacks %q", st[0].GetMessage(), want)
		}
	}
}

// stuckMounter blocks mount-point checks until released, as a kernel
// client cut off from its cluster does.
type stuckMounter struct {
	*mount.FakeMounter
	release chan struct{}
	once    sync.Once
}

func (s *stuckMounter) IsLikelyNotMountPoint(string) (bool, error) {
	<-s.release
	return false, nil
}

func (s *stuckMounter) free() { s.once.Do(func() { close(s.release) }) }

func TestProbeDoesNotHangWithTheMount(t *testing.T) {
	dir := t.TempDir()
	m := &stuckMounter{FakeMounter: mount.NewFakeMounter(nil), release: make(chan struct{})}
	t.Cleanup(m.free)
	p := &Publisher{Mounter: m}

	start := time.Now()
	pr := p.ProbePath(dir, 100*time.Millisecond)
	if pr.Err == nil || !strings.Contains(pr.Err.Error(), "did not answer within") {
		t.Fatalf("hung mount: %v", pr.Err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the look took %s", took)
	}
	// A second look while the first is still blocked starts no other and
	// is reported as not answering.
	resp := p.Health("v", &HealthPaths{Mounts: []string{dir}})
	st := resp.GetVolumeHealth().GetHealthStatuses()
	if len(st) != 1 || st[0].GetReason() != "NotResponding" || !strings.Contains(st[0].GetMessage(), "has not returned") {
		t.Errorf("health while the first look hangs: %v", st)
	}

	m.free()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pr = p.ProbePath(dir, time.Second)
		if pr.Err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pr.Err != nil || !pr.Mounted || pr.Statfs == nil {
		t.Errorf("look after the mount answers again: %+v", pr)
	}
}
