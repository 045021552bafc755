package helpercgroup

import (
	"reflect"
	"strings"
	"testing"
)

func TestHierarchies(t *testing.T) {
	got, err := hierarchies("testdata/mountinfo-container")
	if err != nil {
		t.Fatal(err)
	}
	// The container's own views (root /kubepods/...) are covered by the
	// host's /sys: each mount point once, the host's hierarchy.
	want := []hierarchy{{"/sys/fs/cgroup/cpu", false}, {"/sys/fs/cgroup/cpuset", true},
		{"/sys/fs/cgroup/unified", false}, {"/sys/fs/cgroup/name with space", false}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hierarchies:\n got %+v\nwant %+v", got, want)
	}
	// Only the container's own cgroup is mounted: no way out, said so.
	if _, err := hierarchies("testdata/mountinfo-private"); err == nil || !strings.Contains(err.Error(), "from its root") {
		t.Errorf("container-only view: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, ok := range []string{"/cephcsi-helpers", "/a/b"} {
		if err := Validate(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/", "relative", "/a/../b", "/a/", "//a"} {
		if err := Validate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := Enter("/a/../b"); err == nil {
		t.Error("Enter accepted a path with ..")
	}
}

func TestArgs(t *testing.T) {
	got := Args("/cg", "ceph-fuse", "/mnt", "-o", "x")
	want := []string{Command, "/cg", "--", "ceph-fuse", "/mnt", "-o", "x"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Args: %v, want %v", got, want)
	}
	if code := Main([]string{"/cg", "ceph-fuse"}); code != 2 {
		t.Errorf("Main without --: %d, want 2", code)
	}
}
