package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCgroups lays out a /proc/self/cgroup and a cgroup tree with pids.max
// files (path below the tree -> content).
func fakeCgroups(t *testing.T, procCgroup string, files map[string]string) cgroupFS {
	t.Helper()
	dir := t.TempDir()
	c := cgroupFS{procCgroup: filepath.Join(dir, "cgroup"), root: filepath.Join(dir, "sys")}
	if err := os.WriteFile(c.procCgroup, []byte(procCgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	for p, content := range files {
		full := filepath.Join(c.root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func read(t *testing.T, c cgroupFS, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSetPIDLimit(t *testing.T) {
	for name, tc := range map[string]struct {
		proc   string
		files  map[string]string
		limit  int
		file   string
		before string
		after  string
	}{
		"v2 host path": {"0::/kubepods.slice/pod1/cri-abc.scope\n",
			map[string]string{"kubepods.slice/pod1/cri-abc.scope/pids.max": "1024\n"}, -1,
			"kubepods.slice/pod1/cri-abc.scope/pids.max", "1024", "max"},
		"v2 cgroup namespace": {"0::/\n", map[string]string{"pids.max": "4096\n"}, 32768, "pids.max", "4096", "32768"},
		"v1 pids hierarchy": {"12:memory:/kubepods/x\n8:pids:/kubepods/besteffort/pod2/ctr\n1:name=systemd:/kubepods/x\n",
			map[string]string{"pids/kubepods/besteffort/pod2/ctr/pids.max": "2048"}, -1,
			"pids/kubepods/besteffort/pod2/ctr/pids.max", "2048", "max"},
		// Docker-style: the host path is not mounted, the container's own cgroup is.
		"v1 own cgroup mounted": {"8:pids:/docker/0123\n", map[string]string{"pids/pids.max": "512"}, -1,
			"pids/pids.max", "512", "max"},
		"v1 with v2 line": {"0::/init.scope\n8:cpu,pids:/ctr\n", map[string]string{"pids/ctr/pids.max": "100"}, 200,
			"pids/ctr/pids.max", "100", "200"},
	} {
		c := fakeCgroups(t, tc.proc, tc.files)
		before, err := c.setPIDLimit(tc.limit)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if before != tc.before || read(t, c, tc.file) != tc.after {
			t.Errorf("%s: before %q, file now %q; want %q then %q", name, before, read(t, c, tc.file), tc.before, tc.after)
		}
	}
}

func TestSetPIDLimitFailsWithoutTouchingAnything(t *testing.T) {
	// The root cgroup has no pids.max (as on a host, or this test machine).
	c := fakeCgroups(t, "8:pids:/\n0::/\n", map[string]string{"pids/tasks": ""})
	if _, err := c.setPIDLimit(-1); err == nil || !strings.Contains(err.Error(), "no pids.max") {
		t.Errorf("absent pids.max: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.root, "pids", "pids.max")); !os.IsNotExist(err) {
		t.Errorf("a pids.max was created: %v", err)
	}
	// Not writable (a directory stands in: root may write read-only files).
	c = fakeCgroups(t, "0::/\n", map[string]string{"pids.max/x": ""})
	if _, err := c.setPIDLimit(-1); err == nil {
		t.Error("unwritable pids.max: no error")
	}
	c = fakeCgroups(t, "1:cpu:/\n", nil)
	if _, err := c.setPIDLimit(-1); err == nil || !strings.Contains(err.Error(), "no pids cgroup") {
		t.Errorf("no pids controller: err = %v", err)
	}
}
