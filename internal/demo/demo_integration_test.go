//go:build integration

package demo

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/testutil"
)

func config(t *testing.T, c *testutil.Cluster, endpoint string, out *bytes.Buffer) Config {
	t.Helper()
	return Config{RBDEndpoint: endpoint, ClusterDir: c.Dir,
		ClusterScript: filepath.Join(testutil.RepoRoot(), "scripts", "ceph-cluster.sh"), Out: out}
}

func assertNoKeys(t *testing.T, c *testutil.Cluster, out string) {
	t.Helper()
	for _, k := range []string{"CEPH_RBD_PROVISIONER_KEY", "CEPH_RBD_NODE_KEY", "CEPH_FS_PROVISIONER_KEY", "CEPH_FS_NODE_KEY"} {
		if v := c.Var(k); v != "" && strings.Contains(out, v) {
			t.Errorf("the demo output contains the value of %s", k)
		}
	}
}

func TestWalkThroughLeavesNothing(t *testing.T) {
	c := testutil.RequireCluster(t)
	drv := testutil.StartDriver(t, c, "rbd", nil)
	var out bytes.Buffer
	if err := Run(context.Background(), config(t, c, "unix://"+drv.Socket, &out), RBDSteps()); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"same volume            yes",
		"2 GiB, node expansion required: true",
		"snapshots            none (+1 in the trash namespace",
		"@csi-snap-",
		"-temp@csi-vol-",
		"no image, trash entry, object or journal key of this run is left",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	assertNoKeys(t, c, s)
}

// A step that fails midway makes Run delete what the earlier steps created.
func TestFailedStepCleansUp(t *testing.T) {
	c := testutil.RequireCluster(t)
	drv := testutil.StartDriver(t, c, "rbd", nil)
	steps := RBDSteps()
	var seen *Demo
	fail := Step{"fail on purpose", func(_ context.Context, d *Demo) error {
		seen = d
		return errors.New("injected failure")
	}}
	// Identity, create, expand, snapshot, restore, clone, then the failure.
	steps = append(steps[:6:6], fail)
	var out bytes.Buffer
	err := Run(context.Background(), config(t, c, "unix://"+drv.Socket, &out), steps)
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Run = %v, want the injected failure\n%s", err, out.String())
	}
	if seen == nil || len(seen.uuids) < 4 {
		t.Fatalf("the steps before the failure did not run:\n%s", out.String())
	}
	// Run closed its connections; look with a fresh admin view.
	if err := seen.connectAdmin(); err != nil {
		t.Fatal(err)
	}
	defer seen.Admin.Shutdown()
	io, err := seen.Admin.OpenIOContext("rbd")
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	left, err := (&rbdState{io: io}).leftovers(seen)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("left after the failed run: %v\n%s", left, out.String())
	}
	if got := strings.Count(out.String(), "   cleaned up "); got != 4 {
		t.Errorf("cleaned up %d items, want 4 (volume, snapshot, restore, clone):\n%s", got, out.String())
	}
	assertNoKeys(t, c, out.String())
}
