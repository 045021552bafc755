//go:build integration

package helpercgroup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as `cephcsi helper-exec`.
func TestMain(m *testing.M) {
	if os.Getenv("HELPERCGROUP_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// A program started through helper-exec runs in the cgroup in every
// hierarchy of this machine, keeps the descriptors it was given, and its
// children are there too; the cgroup is removed afterwards.
func TestEnterMovesIntoEveryHierarchy(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	cg := fmt.Sprintf("/cephcsi-helpercgroup-test-%d", os.Getpid())
	dirs, err := Ensure(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			if err := os.Remove(d); err != nil {
				t.Errorf("removing %s: %v", d, err)
			}
		}
	})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], cg, "--", "sh", "-c", `echo via-fd-3 >&3; sh -c 'cat /proc/self/cgroup'`)
	cmd.Env = append(os.Environ(), "HELPERCGROUP_TEST_MAIN=1")
	cmd.ExtraFiles = []*os.File{w}
	out, err := cmd.CombinedOutput()
	w.Close()
	if err != nil {
		t.Fatalf("helper-exec: %v\n%s", err, out)
	}
	buf := make([]byte, 64)
	n, _ := r.Read(buf)
	if got := strings.TrimSpace(string(buf[:n])); got != "via-fd-3" {
		t.Errorf("descriptor 3 in the program: %q", got)
	}
	// One line per hierarchy: "<id>:<controllers>:<path>".
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(dirs) {
		t.Errorf("%d hierarchies in /proc/self/cgroup, %d made: %q %v", len(lines), len(dirs), out, dirs)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, ":"+cg) {
			t.Errorf("the program's child is not in %s: %s", cg, l)
		}
	}
	for _, d := range dirs {
		procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil || strings.TrimSpace(string(procs)) != "" {
			t.Errorf("%s holds %q after the program exited (%v)", d, procs, err)
		}
	}
}
