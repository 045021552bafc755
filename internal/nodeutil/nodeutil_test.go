package nodeutil

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestStateStoreRoundTrip(t *testing.T) {
	s := StateStore{Dir: t.TempDir()}
	type rec struct{ Device, Pool string }
	var got rec
	if ok, err := s.Load("vol-1", &got); ok || err != nil {
		t.Fatalf("Load of nothing = %v, %v", ok, err)
	}
	if err := s.Save("vol-1", rec{"/dev/loop3", "rbd"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Load("vol-1", &got); !ok || err != nil || got.Device != "/dev/loop3" {
		t.Fatalf("Load = %+v, %v, %v", got, ok, err)
	}
	if err := s.Remove("vol-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("vol-1"); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if ok, _ := s.Load("vol-1", &got); ok {
		t.Fatal("record survived Remove")
	}
}

func TestBindIsIdempotentWithFakeMounter(t *testing.T) {
	fake := mount.NewFakeMounter(nil)
	p := &Publisher{Mounter: fake}
	target := t.TempDir() + "/target"
	for i := 0; i < 2; i++ {
		if err := p.BindDir("/staging", target, true, []string{"noexec"}); err != nil {
			t.Fatal(err)
		}
	}
	mps, _ := fake.List()
	if len(mps) != 1 {
		t.Fatalf("mounts = %v, want exactly one", mps)
	}
	opts := mps[0].Opts
	want := map[string]bool{"bind": true, "ro": true, "noexec": true}
	for _, o := range opts {
		delete(want, o)
	}
	if len(want) != 0 {
		t.Fatalf("mount options %v miss %v", opts, want)
	}
	if err := p.Unpublish(target, true); err != nil {
		t.Fatal(err)
	}
	if mps, _ := fake.List(); len(mps) != 0 {
		t.Fatalf("mounts after unpublish = %v", mps)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("the target the driver made is still there: %v", err)
	}
	if err := p.Unpublish(target, true); err != nil {
		t.Fatalf("second unpublish: %v", err)
	}
}

func TestUnpublishNeverRemovesWhatItDidNotMake(t *testing.T) {
	p := &Publisher{Mounter: mount.NewFakeMounter(nil)}
	dir := t.TempDir()
	file := filepath.Join(dir, "someones-file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "someones-dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{file, sub} {
		if err := p.Unpublish(target, false); err != nil {
			t.Fatalf("Unpublish(%s): %v", target, err)
		}
		if _, err := os.Stat(target); err != nil {
			t.Fatalf("%s was removed: %v", target, err)
		}
	}
	// Even one the driver made is removed only when empty.
	if err := os.WriteFile(filepath.Join(sub, "data"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Unpublish(sub, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(sub, "data")); err != nil {
		t.Fatalf("a file inside a target was removed: %v", err)
	}
}

func TestPathsMustBeAbsoluteAndClean(t *testing.T) {
	for _, ok := range []string{"/var/lib/kubelet/plugins/x/globalmount", "/a/b/"} {
		if err := Path("staging_target_path", ok); err != nil {
			t.Errorf("Path(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "rel/dir", "./x", "/a/../b", "/a//b", "/a/./b", "/a\nb"} {
		if err := Path("staging_target_path", bad); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "staging_target_path") {
			t.Errorf("Path(%q) = %v, want InvalidArgument naming the field", bad, err)
		}
	}
	if err := TargetApart("/s/x", "/s"); err == nil {
		t.Error("a target inside the staging path was accepted")
	}
	if err := TargetApart("/s", "/s/"); err == nil {
		t.Error("the staging path itself was accepted as target")
	}
	if err := TargetApart("/s2", "/s"); err != nil {
		t.Errorf("a sibling target was refused: %v", err)
	}
}

func TestRequireNamesField(t *testing.T) {
	err := Require([2]string{"volume_id", "v"}, [2]string{"staging_target_path", ""})
	if csierr.Code(err) != codes.InvalidArgument || err.Error() != "staging_target_path is required" {
		t.Fatalf("Require = %v", err)
	}
}

// testRecord is a node record as the drivers keep them.
type testRecord struct {
	Device string `json:"device"`
	Published
}

func TestTargetsRecordedAndForgotten(t *testing.T) {
	s := StateStore{Dir: t.TempDir()}
	rec := &testRecord{Device: "/dev/x"}
	if err := s.Save("vol", rec); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/a", "/b", "/a"} {
		if err := s.AddTarget("vol", rec, target); err != nil {
			t.Fatal(err)
		}
	}
	var got testRecord
	if _, err := s.Load("vol", &got); err != nil || !slices.Equal(got.Targets, []string{"/a", "/b"}) || got.Device != "/dev/x" {
		t.Fatalf("after adding /a, /b, /a: %+v, %v; want targets [/a /b] and the device kept", got, err)
	}
	if err := s.ForgetTarget("vol", &testRecord{}, "/a"); err != nil {
		t.Fatal(err)
	}
	got = testRecord{}
	if _, err := s.Load("vol", &got); err != nil || !slices.Equal(got.Targets, []string{"/b"}) || got.Device != "/dev/x" {
		t.Fatalf("after forgetting /a: %+v, %v", got, err)
	}
	// A volume without a record stays without one.
	if err := s.ForgetTarget("other", &testRecord{}, "/a"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Load("other", &testRecord{}); ok {
		t.Error("forgetting a target wrote a record for an unstaged volume")
	}
}

// A relative volume_path names no published volume: NotFound, as the spec
// and csi-sanity want; a missing or unclean one is InvalidArgument.
func TestVolumePath(t *testing.T) {
	for p, want := range map[string]codes.Code{
		"some/path":  codes.NotFound,
		"":           codes.InvalidArgument,
		"/a/../b":    codes.InvalidArgument,
		"/a/b\n":     codes.InvalidArgument,
		"/var/lib/x": codes.OK,
	} {
		if got := csierr.Code(VolumePath(p)); got != want {
			t.Errorf("VolumePath(%q) = %v, want %v", p, got, want)
		}
	}
}
