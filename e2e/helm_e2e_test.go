//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	fsadmin "github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// The charts installed with helm as users install them (docs/install.md):
// our image and the sidecars' in pods, the flows of the pod tests through
// that deployment, helm upgrade of a value rolling every pod while the
// mounted volumes keep working, helm uninstall leaving exactly the volumes
// whose PVs remain, and a new install serving them again.

// releaseOf is the test's release of a chart. The driver name differs from
// deploy/'s (rbd.csi.ceph.com), which the other tests use.
func releaseOf(kind string) *release {
	return &release{kind: kind, name: "helm-" + kind, ns: "helm-" + kind, driver: "helm." + kind + ".csi.ceph.com",
		apps: "e2e-helm-" + kind, sc: "helm-" + kind + "-sc", vsc: "helm-" + kind + "-snap", prefix: "helm-"}
}

// startRelease creates the namespaces and installs the chart with the
// test's values; cleanups are registered in the order they must run
// backwards: pods, volumes (through the driver), the release.
func startRelease(t *testing.T, e *env, c *testutil.Cluster, r *release) deployImages {
	t.Helper()
	img := importDeployImages(t, e)
	startReleaseOf(t, e, c, r, img, img.cephcsi)
	return img
}

// startReleaseOf is startRelease with the driver's image given.
func startReleaseOf(t *testing.T, e *env, c *testutil.Cluster, r *release, img deployImages, cephcsi deployImage) {
	t.Helper()
	prepareNode(t, e)
	for _, ns := range []string{r.ns, r.apps} {
		e.mustKubectl(t, nil, "create", "namespace", ns)
	}
	t.Cleanup(func() {
		_, _ = e.kubectl(nil, "delete", "namespace", r.apps, "--wait=false")
	})
	if r.kind == "cephfs" {
		nodeSecret(t, e, c, r)
	}
	writeValues(t, e, r, chartValues(t, e, c, r, img, cephcsi))
	cleanupRelease(t, e, r)
	install(t, e, r)
	cleanupOnFailure(t, e, r.apps)
	cleanupPods(t, e, r.apps)
}

// prefixed lists the names that start with prefix.
func prefixed(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// rbdOurs lists the release's images and trash entries in a pool.
func rbdOurs(t testing.TB, io *rados.IOContext, prefix string) []string {
	t.Helper()
	names, err := rbd.GetImageNames(io)
	if err != nil {
		t.Fatal(err)
	}
	out := prefixed(names, prefix)
	trash, err := rbd.GetTrashList(io)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range trash {
		if strings.HasPrefix(e.Name, prefix) {
			out = append(out, "trash "+e.Name)
		}
	}
	return out
}

// checkUpgradeKeepsVolumes: the probes of the pods saw no failure and kept
// succeeding while the pods of the release were replaced, the daemons
// serving the volumes are the same processes, and each pod reads back
// what was written.
func checkUpgradeKeepsVolumes(t *testing.T, e *env, r *release, from, to time.Time, before map[int]string, pods []string, reads func()) {
	t.Helper()
	ok := checkProbes(t, e, r.apps, from, to, pods...)
	for _, p := range pods {
		if ok[p] == 0 {
			t.Errorf("pod %s probed its volume successfully not once during the upgrade (%s)", p, ms(to.Sub(from)))
		}
	}
	t.Logf("%s: probes that succeeded during the upgrade (%s): %v", r.name, ms(to.Sub(from)), ok)
	after := helperPIDs(e, r.driver)
	for pid, cmd := range before {
		if after[pid] != cmd {
			t.Errorf("the daemon %d (%s) did not survive the upgrade", pid, cmd)
		}
	}
	t.Logf("%s: %d volume daemons served on through the upgrade", r.name, len(before))
	reads()
}

func TestHelmRBD(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, rbdPool)
	io2 := c.IOContext(t, rbdPool2)
	r := releaseOf("rbd")
	// The node's zone, before the node plugin reads it (--domainlabels).
	e.mustKubectl(t, nil, "label", "node", e2eNode, zoneLabel+"=zone-a", "--overwrite")
	t.Cleanup(func() {
		_, _ = e.kubectl(nil, "label", "node", e2eNode, zoneLabel+"-", "topology."+r.driver+"/zone-")
	})
	startRelease(t, e, c, r)
	const rwo = "ReadWriteOnce"
	ns := r.apps
	app := &appPods{e: e, ns: ns, directIO: true, timing: "helm rbd"}
	ourImage := func(pvc string, io *rados.IOContext) volume {
		t.Helper()
		v := boundVolume(t, e, ns, pvc, r.driver)
		img := v.attrs["imageName"]
		if !strings.HasPrefix(img, r.prefix) || !testutil.ImageExists(t, io, img) {
			t.Fatalf("PVC %s: image %q (attributes %v) not in the pool", pvc, img, v.attrs)
		}
		return v
	}

	// The flows of the pod tests: write, snapshot, restore larger, clone
	// live, expand online.
	d := provision(t, e, ns, "data", r.sc, "1Gi", rwo, nil)
	t.Logf("helm rbd timing: PVC Bound in %s", ms(d))
	data := ourImage("data", io)
	app.run(t, "writer", "data")
	payload, sum := randomData(4 << 20)
	upload(t, e, ns, "writer", "/data/file.bin", payload)
	if got := inPod(t, e, ns, "writer", nil, "grep ' /data ' /proc/mounts | cut -d' ' -f3"); got != "xfs" {
		t.Errorf("/data in the pod is %q, want xfs (the chart's storageClass.fstype)", got)
	}
	sizeBefore := podFSSize(t, e, ns, "writer", "/data")
	d = snapshot(t, e, ns, "data-snap", r.vsc, "data")
	t.Logf("helm rbd timing: snapshot ready in %s", ms(d))
	sn := readySnapshot(t, e, ns, "data-snap", r.driver)
	d = provision(t, e, ns, "restored", r.sc, "2Gi", rwo, fromSnapshot("data-snap"))
	t.Logf("helm rbd timing: restore Bound in %s", ms(d))
	restored := ourImage("restored", io)
	app.run(t, "reader", "restored")
	if got := podSHA256(t, e, ns, "reader", "/data/file.bin", 0, 0); got != sum {
		t.Errorf("the restore holds file.bin as %s, the writer wrote %s", got, sum)
	}
	if size := podFSSize(t, e, ns, "reader", "/data"); size < sizeBefore+gib*9/10 {
		t.Errorf("the 2Gi restore shows a %d-byte filesystem, the 1Gi source %d", size, sizeBefore)
	}
	d = provision(t, e, ns, "clone", r.sc, "1Gi", rwo, fromPVC("data"))
	t.Logf("helm rbd timing: clone of the live PVC Bound in %s", ms(d))
	clone := ourImage("clone", io)
	app.run(t, "clone-reader", "clone")
	if got := podSHA256(t, e, ns, "clone-reader", "/data/file.bin", 0, 0); got != sum {
		t.Errorf("the clone holds file.bin as %s, the writer wrote %s", got, sum)
	}
	begin := time.Now()
	patch(t, e, `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`, "pvc/data", "-n", ns)
	e.wait(t, 2*time.Minute, "-n", ns, "--for=jsonpath={.status.capacity.storage}=2Gi", "pvc/data")
	eventually(t, time.Minute, func() string {
		if after := podFSSize(t, e, ns, "writer", "/data"); after < sizeBefore+gib*9/10 {
			return fmt.Sprintf("the writer's xfs is %d bytes after the expansion, %d before", after, sizeBefore)
		}
		return ""
	})
	t.Logf("helm rbd timing: PVC expanded online and the pod sees it in %s", ms(time.Since(begin)))

	// Topology (issue 13): the node plugin reports the node's zone, the
	// provisioner (--feature-gates=Topology=true) asks for it, and a
	// WaitForFirstConsumer class places the image in the zone's pool.
	topologyFlow(t, e, r, io2, app)

	// helm upgrade of a value: every pod rolls; the mounted volumes keep
	// working through it, served by the same FUSE helpers.
	pods := []string{"writer", "reader", "clone-reader", "zoned"}
	helpers := helperPIDs(e, r.driver)
	if len(helpers) != len(pods) {
		t.Errorf("%d FUSE helpers for %d staged volumes: %v", len(helpers), len(pods), helpers)
	}
	from, to := upgrade(t, e, r, "--set", "logLevel=3")
	for _, args := range podArgs(t, e, r, "nodeplugin", "csi-rbdplugin") {
		if !slices.Contains(args, "--v=3") {
			t.Errorf("after the upgrade the node plugin runs %v, want --v=3", args)
		}
	}
	checkUpgradeKeepsVolumes(t, e, r, from, to, helpers, pods, func() {
		for pod, want := range map[string]string{"writer": sum, "reader": sum, "clone-reader": sum} {
			if got := podSHA256(t, e, ns, pod, "/data/file.bin", 0, 0); got != want {
				t.Errorf("after the upgrade %s reads file.bin as %s, want %s", pod, got, want)
			}
		}
	})

	// helm uninstall with one volume left: Ceph keeps exactly that one.
	d = deletePods(t, e, ns, pods...)
	t.Logf("helm rbd timing: %d pods deleted in %s", len(pods), ms(d))
	checkAttached(t, e, data.pv, false)
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/data-snap", "pvc/restored", "pvc/clone", "pvc/zoned")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+restored.pv, "pv/"+clone.pv)
	eventually(t, 3*time.Minute, func() string {
		if left := driverLeftovers(e, r.driver, app.uids...); len(left) > 0 {
			return fmt.Sprintf("left on the node: %v", left)
		}
		return ""
	})
	uninstall(t, e, r)
	want := []string{data.attrs["imageName"]}
	eventually(t, 2*time.Minute, func() string {
		if got := append(rbdOurs(t, io, r.prefix), rbdOurs(t, io2, r.prefix)...); !slices.Equal(got, want) {
			return fmt.Sprintf("after helm uninstall Ceph holds %v, want exactly the remaining PV's %v", got, want)
		}
		return ""
	})
	if left := rbdLeftovers(t, io, sn.id.UUID, restored.id.UUID, clone.id.UUID); len(left) > 0 {
		t.Errorf("left of the deleted volumes: %v", left)
	}

	// Installed again, the driver serves the remaining volume.
	install(t, e, r)
	app.run(t, "writer-again", "data")
	if got := podSHA256(t, e, ns, "writer-again", "/data/file.bin", 0, 0); got != sum {
		t.Errorf("after the new install file.bin reads %s, want %s", got, sum)
	}
	deletePods(t, e, ns, "writer-again")
	deleteAndWait(t, e, "-n", ns, "pvc/data")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+data.pv)
	eventually(t, 3*time.Minute, func() string {
		if left := append(driverLeftovers(e, r.driver, app.uids...), rbdOurs(t, io, r.prefix)...); len(left) > 0 {
			return fmt.Sprintf("left: %v", left)
		}
		return ""
	})
	if left := rbdLeftovers(t, io, data.id.UUID); len(left) > 0 {
		t.Errorf("left of the last volume: %v", left)
	}
	uninstall(t, e, r)
	checkNoSecretsInLogs(t, e, c.Var("CEPH_RBD_PROVISIONER_KEY"))
}

const rbdPool2 = "rbd2"

// topologyFlow: the CSINode and the Node carry the driver's zone key, a
// WaitForFirstConsumer PVC of a class whose topologyConstrainedPools send
// zone-a to rbd2 is provisioned once the scheduler has put its pod on the
// node (the scheduler sets the selected node, as on any cluster), its PV
// is pinned to zone-a, and its image is in rbd2.
func topologyFlow(t *testing.T, e *env, r *release, io2 *rados.IOContext, app *appPods) {
	t.Helper()
	key := "topology." + r.driver + "/zone"
	csinode := e.getJSON(t, "csinode", e2eNode)
	found := false
	for _, d := range csinode.get("spec.drivers").([]any) {
		m := obj(d.(map[string]any))
		if m.str("name") == r.driver {
			keys, _ := json.Marshal(m.get("topologyKeys"))
			found = string(keys) == fmt.Sprintf("[%q]", key)
			t.Logf("CSINode %s: %s topologyKeys %s", e2eNode, r.driver, keys)
		}
	}
	if !found {
		t.Errorf("CSINode %s does not give %s the topology key %s: %v", e2eNode, r.driver, key, csinode.get("spec.drivers"))
	}
	if got := e.getJSON(t, "node", e2eNode).strMap("metadata.labels")[key]; got != "zone-a" {
		t.Errorf("node label %s = %q, want zone-a (the kubelet sets it from NodeGetInfo)", key, got)
	}
	ns := r.apps
	sc := fmt.Sprintf(`{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
 "metadata": {"name": "helm-rbd-zoned"}, "provisioner": %q,
 "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete", "allowVolumeExpansion": true,
 "parameters": {"clusterID": %q, "pool": %q, "mounter": "rbd-fuse", "imageFeatures": "layering",
  "csi.storage.k8s.io/fstype": "xfs", "volumeNamePrefix": %q,
  "topologyConstrainedPools": %q,
  "csi.storage.k8s.io/provisioner-secret-name": %q, "csi.storage.k8s.io/provisioner-secret-namespace": %q,
  "csi.storage.k8s.io/controller-expand-secret-name": %q, "csi.storage.k8s.io/controller-expand-secret-namespace": %q,
  "csi.storage.k8s.io/node-stage-secret-name": %q, "csi.storage.k8s.io/node-stage-secret-namespace": %q}}`,
		r.driver, theCluster(t).ClusterID, rbdPool, r.prefix,
		`[{"poolName":"rbd2","domainSegments":[{"domainLabel":"zone","value":"zone-a"}]}]`,
		r.name+"-secret", r.ns, r.name+"-secret", r.ns, r.name+"-secret", r.ns)
	e.mustKubectl(t, []byte(sc), "apply", "-f", "-")
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "storageclass", "helm-rbd-zoned", "--ignore-not-found") })
	createPVC(t, e, ns, "zoned", "helm-rbd-zoned", "1Gi", "ReadWriteOnce", nil)
	time.Sleep(2 * time.Second)
	if phase := e.getJSON(t, "pvc", "zoned", "-n", ns).str("status.phase"); phase != "Pending" {
		t.Errorf("a WaitForFirstConsumer PVC without a pod is %s, want Pending", phase)
	}
	begin := time.Now()
	app.run(t, "zoned", "zoned")
	t.Logf("helm rbd timing: WaitForFirstConsumer PVC Bound and its pod Ready in %s", ms(time.Since(begin)))
	if sel := e.getJSON(t, "pvc", "zoned", "-n", ns).strMap("metadata.annotations")["volume.kubernetes.io/selected-node"]; sel != e2eNode {
		t.Errorf("the scheduler selected node %q for the PVC, want %s", sel, e2eNode)
	}
	v := boundVolume(t, e, ns, "zoned", r.driver)
	terms, _ := json.Marshal(v.pvObj.get("spec.nodeAffinity.required.nodeSelectorTerms"))
	if want := fmt.Sprintf(`[{"matchExpressions":[{"key":%q,"operator":"In","values":["zone-a"]}]}]`, key); string(terms) != want {
		t.Errorf("PV %s nodeAffinity %s, want %s", v.pv, terms, want)
	}
	t.Logf("PV %s nodeAffinity %s", v.pv, terms)
	if v.attrs["pool"] != rbdPool2 || !testutil.ImageExists(t, io2, v.attrs["imageName"]) {
		t.Errorf("the zoned volume's image %s is not in %s (attributes %v)", v.attrs["imageName"], rbdPool2, v.attrs)
	}
}

// theCluster is the shared test cluster (started on demand).
func theCluster(t testing.TB) *testutil.Cluster { return testutil.RequireCluster(t) }

func TestHelmCephFS(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	fsa := fsadmin.NewFromConn(c.Admin())
	r := releaseOf("cephfs")
	startRelease(t, e, c, r)
	const rwx = "ReadWriteMany"
	ns := r.apps
	app := &appPods{e: e, ns: ns, directIO: false, timing: "helm cephfs"}
	ours := func() []string { return prefixed(subvolumes(t, fsa), r.prefix) }

	// RWX in two pods; snapshot; a restore in a third; online expansion.
	d := provision(t, e, ns, "shared", r.sc, "1Gi", rwx, nil)
	t.Logf("helm cephfs timing: PVC Bound in %s", ms(d))
	shared := boundVolume(t, e, ns, "shared", r.driver)
	if !strings.HasPrefix(shared.attrs["subvolumeName"], r.prefix) {
		t.Errorf("subvolume %q lacks the StorageClass's prefix %s", shared.attrs["subvolumeName"], r.prefix)
	}
	app.run(t, "pod-a", "shared")
	app.run(t, "pod-b", "shared")
	dataA, sumA := randomData(1 << 20)
	dataB, sumB := randomData(1 << 20)
	upload(t, e, ns, "pod-a", "/data/a.bin", dataA)
	upload(t, e, ns, "pod-b", "/data/b.bin", dataB)
	if got := podSHA256(t, e, ns, "pod-b", "/data/a.bin", 0, 0); got != sumA {
		t.Errorf("pod-b reads a.bin as %s, pod-a wrote %s", got, sumA)
	}
	if got := podSHA256(t, e, ns, "pod-a", "/data/b.bin", 0, 0); got != sumB {
		t.Errorf("pod-a reads b.bin as %s, pod-b wrote %s", got, sumB)
	}
	if size := podFSSize(t, e, ns, "pod-a", "/data"); size != gib {
		t.Errorf("pod-a sees a filesystem of %d bytes, want the 1Gi quota", size)
	}
	d = snapshot(t, e, ns, "snap", r.vsc, "shared")
	t.Logf("helm cephfs timing: snapshot ready in %s", ms(d))
	sn := readySnapshot(t, e, ns, "snap", r.driver)
	inPod(t, e, ns, "pod-a", nil, "echo late >/data/late.txt && sync")
	begin := time.Now()
	createPVC(t, e, ns, "restored", r.sc, "2Gi", rwx, fromSnapshot("snap"))
	e.wait(t, 3*time.Minute, "-n", ns, "--for=jsonpath={.status.phase}=Bound", "pvc/restored")
	t.Logf("helm cephfs timing: restore Bound in %s", ms(time.Since(begin)))
	restored := boundVolume(t, e, ns, "restored", r.driver)
	app.run(t, "pod-c", "restored")
	for file, want := range map[string]string{"a.bin": sumA, "b.bin": sumB} {
		if got := podSHA256(t, e, ns, "pod-c", "/data/"+file, 0, 0); got != want {
			t.Errorf("pod-c reads the restored %s as %s, want %s", file, got, want)
		}
	}
	if got := inPod(t, e, ns, "pod-c", nil, "ls /data"); strings.Contains(got, "late.txt") {
		t.Errorf("the restore holds a file written after the snapshot: %q", got)
	}
	begin = time.Now()
	patch(t, e, `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`, "pvc/shared", "-n", ns)
	e.wait(t, 2*time.Minute, "-n", ns, "--for=jsonpath={.status.capacity.storage}=2Gi", "pvc/shared")
	eventually(t, time.Minute, func() string {
		if size := podFSSize(t, e, ns, "pod-b", "/data"); size != 2*gib {
			return fmt.Sprintf("pod-b sees %d bytes after the expansion, want 2Gi", size)
		}
		return ""
	})
	t.Logf("helm cephfs timing: PVC expanded and the pods see it in %s", ms(time.Since(begin)))

	// helm upgrade of a value: the ceph-fuse daemons outlive the pods.
	pods := []string{"pod-a", "pod-b", "pod-c"}
	helpers := helperPIDs(e, r.driver)
	if len(helpers) != 2 {
		t.Errorf("%d ceph-fuse daemons for 2 staged volumes: %v", len(helpers), helpers)
	}
	from, to := upgrade(t, e, r, "--set", "logLevel=3")
	for _, args := range podArgs(t, e, r, "nodeplugin", "csi-cephfsplugin") {
		if !slices.Contains(args, "--v=3") {
			t.Errorf("after the upgrade the node plugin runs %v, want --v=3", args)
		}
	}
	checkUpgradeKeepsVolumes(t, e, r, from, to, helpers, pods, func() {
		for pod, files := range map[string][]string{"pod-a": {"b.bin"}, "pod-b": {"a.bin"}, "pod-c": {"a.bin", "b.bin"}} {
			for _, f := range files {
				want := map[string]string{"a.bin": sumA, "b.bin": sumB}[f]
				if got := podSHA256(t, e, ns, pod, "/data/"+f, 0, 0); got != want {
					t.Errorf("after the upgrade %s reads %s as %s, want %s", pod, f, got, want)
				}
			}
		}
	})

	// helm uninstall with one volume left: Ceph keeps exactly that one.
	d = deletePods(t, e, ns, pods...)
	t.Logf("helm cephfs timing: %d pods deleted in %s", len(pods), ms(d))
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/snap", "pvc/restored")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+restored.pv)
	eventually(t, 2*time.Minute, func() string {
		if left := driverLeftovers(e, r.driver, app.uids...); len(left) > 0 {
			return fmt.Sprintf("left on the node: %v", left)
		}
		return ""
	})
	uninstall(t, e, r)
	want := []string{shared.attrs["subvolumeName"]}
	eventually(t, 2*time.Minute, func() string {
		if got := ours(); !slices.Equal(got, want) {
			return fmt.Sprintf("after helm uninstall Ceph holds subvolumes %v, want exactly the remaining PV's %v", got, want)
		}
		if snaps := subvolumeSnaps(t, fsa, want[0]); len(snaps) > 0 {
			return fmt.Sprintf("subvolume %s keeps snapshots %v", want[0], snaps)
		}
		return ""
	})
	_ = sn

	install(t, e, r)
	app.run(t, "pod-again", "shared")
	if got := podSHA256(t, e, ns, "pod-again", "/data/a.bin", 0, 0); got != sumA {
		t.Errorf("after the new install a.bin reads %s, want %s", got, sumA)
	}
	deletePods(t, e, ns, "pod-again")
	deleteAndWait(t, e, "-n", ns, "pvc/shared")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+shared.pv)
	eventually(t, 2*time.Minute, func() string {
		if left := append(driverLeftovers(e, r.driver, app.uids...), ours()...); len(left) > 0 {
			return fmt.Sprintf("left: %v", left)
		}
		return ""
	})
	uninstall(t, e, r)
	checkNoSecretsInLogs(t, e, c.Var("CEPH_FS_PROVISIONER_KEY"), c.Var("CEPH_FS_NODE_KEY"))
}
