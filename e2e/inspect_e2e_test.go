//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/inspect"
	"github.com/leanceph/cephcsi/internal/testutil"
	"github.com/leanceph/cephcsi/internal/volid"
)

// runInspect runs `cephcsi inspect -o json` as an operator would, with the
// admin kubeconfig and the provisioner Secret mounted as a directory.
func runInspect(t *testing.T, e *env, c *testutil.Cluster, secrets, instance string, args ...string) *inspect.Report {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.root, "_output", "cephcsi"), append([]string{"inspect", "-o", "json", "--type=rbd",
		"--configpath=" + c.ConfigJSON, "--secrets=" + secrets, "--kubeconfig=" + e.kubeconfig, "--instanceid=" + instance,
		"--pools=" + rbdPool}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("cephcsi inspect %v: %v\n%s", args, err, errb.String())
	}
	if strings.Contains(out.String()+errb.String(), c.Var("CEPH_RBD_PROVISIONER_KEY")) {
		t.Fatal("the provisioner key is in inspect's output")
	}
	var rep inspect.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("inspect output: %v\n%s", err, out.String())
	}
	return &rep
}

// ourOrphans lists the orphans as "kind name collect", leaving out the
// images of other tests in the shared pool that no journal of this
// instance knows (not ours, never collected).
func ourOrphans(rep *inspect.Report) []string {
	var out []string
	for _, o := range rep.Orphans {
		if o.Kind == inspect.ImageWithoutJournal && !o.Collect {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s %v", o.Kind, o.Name, o.Collect))
	}
	sort.Strings(out)
	return out
}

// counter reads one series of a metrics endpoint.
func counter(t testing.TB, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Errorf("%s lacks %s", url, series)
	return 0
}

// TestInspect makes each kind of orphan Kubernetes and Ceph can disagree
// about by hand, as an operator's mistakes would (a Retained PV deleted, a
// Retained VolumeSnapshotContent deleted, a PV typed in for a volume that
// does not exist), and checks that `cephcsi inspect` finds exactly those,
// `--gc --yes` removes exactly the two that are ours, and a second gc
// removes nothing. The Ceph-only orphans (crashes, lost journal entries)
// are in internal/inspect's integration test.
func TestInspect(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	instance := "e2e-inspect-" + uuid.NewString()[:8]
	pod, err := startControllerPod(t, e, c, "rbd", "--instanceid="+instance)
	if err != nil {
		t.Fatal(err)
	}
	pod.waitLeaders(t, e)
	ns := "e2e-inspect"
	e.mustKubectl(t, nil, "create", "namespace", ns)
	applyExample(t, e, "deploy/rbd/secret.yaml", "<user-id>", c.Var("CEPH_RBD_PROVISIONER_ID"), "<user-key>", c.Var("CEPH_RBD_PROVISIONER_KEY"))
	applyExample(t, e, "deploy/rbd/storageclass.yaml", "<cluster-id>", c.ClusterID, "<pool>", rbdPool,
		"name: csi-rbd-sc", "name: inspect-retain", "reclaimPolicy: Delete", "reclaimPolicy: Retain")
	applyExample(t, e, "deploy/rbd/snapshotclass.yaml", "<cluster-id>", c.ClusterID,
		"name: csi-rbdplugin-snapclass", "name: inspect-retain", "deletionPolicy: Delete", "deletionPolicy: Retain")
	cleanupOnFailure(t, e, ns)

	secrets := t.TempDir()
	for k, v := range c.RBDSecrets() {
		if err := os.WriteFile(filepath.Join(secrets, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// A volume that stays, and one whose PV is deleted by hand after its
	// claim (Retain: the image stays).
	provision(t, e, ns, "kept", "inspect-retain", "1Gi", "ReadWriteOnce", nil)
	kept := boundVolume(t, e, ns, "kept", rbdDriver)
	provision(t, e, ns, "dropped", "inspect-retain", "1Gi", "ReadWriteOnce", nil)
	dropped := boundVolume(t, e, ns, "dropped", rbdDriver)
	droppedUID := e.getJSON(t, "pvc", "dropped", "-n", ns).str("metadata.uid")
	deleteAndWait(t, e, "-n", ns, "pvc/dropped")
	e.wait(t, time.Minute, "--for=jsonpath={.status.phase}=Released", "pv/"+dropped.pv)
	deleteAndWait(t, e, "pv/"+dropped.pv)

	// A snapshot whose Retained content is deleted by hand after it.
	snapshot(t, e, ns, "snap", "inspect-retain", "kept")
	sn := readySnapshot(t, e, ns, "snap", rbdDriver)
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/snap")
	deleteAndWait(t, e, "volumesnapshotcontent/"+sn.content)

	// A PV for a volume that never was.
	poolID, err := c.Admin().GetPoolByName(rbdPool)
	if err != nil {
		t.Fatal(err)
	}
	ghost, _ := volid.ID{ClusterID: c.ClusterID, LocationID: poolID, UUID: uuid.NewString()}.Encode()
	pv := fmt.Sprintf(`{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "inspect-ghost"},
 "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
  "csi": {"driver": %q, "volumeHandle": %q}}}`, rbdDriver, ghost)
	e.mustKubectl(t, []byte(pv), "create", "-f", "-")
	defer func() { _, _ = e.kubectl(nil, "delete", "pv", "inspect-ghost", "--ignore-not-found") }()

	// The driver's metrics saw the calls of the flow.
	if n := counter(t, pod.driverMetrics, `cephcsi_grpc_requests_total{driver="rbd",grpc_code="OK",grpc_method="CreateVolume",grpc_service="csi.v1.Controller"}`); n < 2 {
		t.Errorf("CreateVolume calls counted: %v, want at least 2", n)
	}
	if n := counter(t, pod.driverMetrics, `cephcsi_controller_step_duration_seconds_count{driver="rbd",result="ok",step="snapshot"}`); n < 1 {
		t.Errorf("snapshot steps counted: %v", n)
	}

	rep := runInspect(t, e, c, secrets, instance, "--grace=0s")
	want := []string{
		"pv-without-volume pv/inspect-ghost false",
		"snapshot-without-content snapshot snapshot-" + sn.uid + " true",
		"volume-without-pv volume pvc-" + droppedUID + " true",
	}
	if got := ourOrphans(rep); !slices.Equal(got, want) {
		t.Errorf("orphans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	joined := false
	for _, p := range rep.Pools {
		for _, en := range p.Entries {
			if en.Handle == kept.handle {
				joined = en.PV == kept.pv && en.Claim == ns+"/kept" && en.Exists
			}
		}
	}
	if !joined {
		t.Errorf("the kept volume is not joined to pv/%s and pvc %s/kept: %+v", kept.pv, ns, rep.Pools)
	}
	table, _ := exec.Command(filepath.Join(e.root, "_output", "cephcsi"), "inspect", "--type=rbd", "--configpath="+c.ConfigJSON,
		"--secrets="+secrets, "--kubeconfig="+e.kubeconfig, "--instanceid="+instance, "--pools="+rbdPool, "--grace=0s").Output()
	t.Logf("cephcsi inspect:\n%s", table)

	gc := runInspect(t, e, c, secrets, instance, "--gc", "--yes", "--grace=0s")
	var removed []string
	for _, r := range gc.Removed {
		if r.Error != "" {
			t.Errorf("gc of %s %s: %s", r.Kind, r.Name, r.Error)
		}
		removed = append(removed, r.Kind+" "+r.Name)
	}
	sort.Strings(removed)
	if wantRemoved := []string{"snapshot-without-content snapshot snapshot-" + sn.uid, "volume-without-pv volume pvc-" + droppedUID}; !slices.Equal(removed, wantRemoved) {
		t.Errorf("gc removed %v, want %v", removed, wantRemoved)
	}
	if got := ourOrphans(gc); !slices.Equal(got, want[:1]) {
		t.Errorf("after gc, orphans %v", got)
	}
	io := c.IOContext(t, rbdPool)
	if testutil.ImageExists(t, io, dropped.attrs["imageName"]) || testutil.ImageExists(t, io, "csi-snap-"+sn.id.UUID) {
		t.Error("gc left the image of the dropped PV or of the snapshot")
	}
	if !testutil.ImageExists(t, io, kept.attrs["imageName"]) {
		t.Error("gc removed the image of a bound PV")
	}
	again := runInspect(t, e, c, secrets, instance, "--gc", "--yes", "--grace=0s")
	if len(again.Removed) != 0 {
		t.Errorf("second gc removed %+v", again.Removed)
	}

	// Clean up: the kept volume through the driver.
	patch(t, e, `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`, "pv/"+kept.pv)
	deleteAndWait(t, e, "-n", ns, "pvc/kept")
	e.wait(t, 2*time.Minute, "--for=delete", "pv/"+kept.pv)
	final := runInspect(t, e, c, secrets, instance)
	for _, p := range final.Pools {
		if len(p.Entries) > 0 {
			t.Errorf("journal entries left in %s: %+v", p.Location, p.Entries)
		}
	}
}
