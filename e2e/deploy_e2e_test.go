//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// deploy/ applied with kubectl as users apply it (docs/install.md): a
// kustomize overlay on deploy/rbd that sets the images, one provisioner
// replica, the cluster's config.json and what this node differs in (the
// kubelet directory, free host ports, self-registration), then the filled-in
// examples (Secret, StorageClass, VolumeSnapshotClass), one flow through
// the pods of the Deployment and the DaemonSet, and kubectl delete.

// deployRelease is the overlay's instance: its own namespace, and a name
// prefix that keeps its cluster-scoped objects (CSIDriver, ClusterRoles)
// apart from deploy/'s, which the other tests apply.
func deployRelease() *release {
	return &release{kind: "rbd", name: "deploy-rbd", ns: "e2e-deploy-rbd", driver: deployNamePrefix + rbdDriver,
		apps: "e2e-deploy-rbd-apps", sc: "e2e-deploy-rbd-sc", vsc: "e2e-deploy-rbd-snap", prefix: "deploy-"}
}

const deployNamePrefix = "e2e-"

// jsonOp is one operation of a JSON patch (RFC 6902).
type jsonOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// rewrite returns v with every string passed through str and every number
// through num.
func rewrite(v any, str func(string) string, num func(float64) float64) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, val := range x {
			out[k] = rewrite(val, str, num)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = rewrite(val, str, num)
		}
		return out
	case string:
		return str(x)
	case float64:
		return num(x)
	}
	return v
}

// patchOps is the JSON patch that turns the pod spec orig of a workload
// into spec: each changed field of the pod spec and of each container,
// then the removal of the containers in drop.
func patchOps(orig, spec map[string]any, drop []int) []jsonOp {
	const base = "/spec/template/spec"
	var ops []jsonOp
	keys := func(m map[string]any) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	for _, k := range keys(spec) {
		if k != "containers" && !reflect.DeepEqual(orig[k], spec[k]) {
			ops = append(ops, jsonOp{"add", base + "/" + k, spec[k]})
		}
	}
	oc := orig["containers"].([]any)
	for i, c := range spec["containers"].([]any) {
		if slices.Contains(drop, i) {
			continue
		}
		cm, om := c.(map[string]any), oc[i].(map[string]any)
		for _, k := range keys(cm) {
			if !reflect.DeepEqual(om[k], cm[k]) {
				ops = append(ops, jsonOp{"add", fmt.Sprintf("%s/containers/%d/%s", base, i, k), cm[k]})
			}
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(drop)))
	for _, i := range drop {
		ops = append(ops, jsonOp{Op: "remove", Path: fmt.Sprintf("%s/containers/%d", base, i)})
	}
	return ops
}

// deployOverlay writes the overlay on deploy/rbd into dir: what a user of
// this node writes (see docs/install.md for the same on a real cluster).
// The node differs from a default one in the kubelet directory, the helper
// cgroup (the run's), the host ports (other runs listen on deploy/'s) and
// the missing node-driver-registrar image: the driver registers itself at
// the path the registrar was given.
func deployOverlay(t testing.TB, e *env, c *testutil.Cluster, r *release, img deployImages, dir string) {
	t.Helper()
	n := e.node
	src := filepath.Join(e.root, "deploy", r.kind)
	// kubectl prints the objects of a kustomization one after another.
	var objs []obj
	dec := json.NewDecoder(bytes.NewReader(e.mustKubectl(t, nil, "create", "--dry-run=client", "-o", "json", "-k", src)))
	for dec.More() {
		var o obj
		if err := dec.Decode(&o); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	ports := freePorts(t, 4)
	portMap := map[float64]int{8090: ports[0], 8680: ports[1], 8092: ports[2], 8681: ports[3]}
	pairs := []string{kubeletDefaultRoot, n.kubeletRoot, rbdDriver, r.driver,
		"--helpercgroup=/cephcsi-helpers", "--helpercgroup=" + n.cgroup + "/cephcsi-helpers"}
	for from, to := range portMap {
		pairs = append(pairs, fmt.Sprintf("=%d", int(from)), fmt.Sprintf("=%d", to))
	}
	inContainer := strings.NewReplacer(pairs...)
	onHost := strings.NewReplacer(append(pairs, "/var/log/ceph", filepath.Join(n.dir, "ceph-log-"+r.name))...)
	num := func(f float64) float64 {
		if p, ok := portMap[f]; ok {
			return float64(p)
		}
		return f
	}
	var patches []any
	baseNS := ""
	for _, o := range objs {
		kind, name := o.str("kind"), o.str("metadata.name")
		if kind == "ConfigMap" && name == "ceph-csi-config" {
			baseNS = o.str("metadata.namespace")
		}
		if kind != "Deployment" && kind != "DaemonSet" {
			continue
		}
		orig := o.get("spec.template.spec").(map[string]any)
		spec := map[string]any{}
		for k, v := range orig {
			spec[k] = v
		}
		spec["volumes"] = rewrite(orig["volumes"], onHost.Replace, num)
		// The node has no pod network.
		spec["hostNetwork"] = true
		var drop []int
		var registration string
		cs := rewrite(orig["containers"], inContainer.Replace, num).([]any)
		for i, ct := range cs {
			m := ct.(map[string]any)
			if m["name"] != "driver-registrar" {
				continue
			}
			drop = append(drop, i)
			for _, a := range m["args"].([]any) {
				if v, ok := strings.CutPrefix(a.(string), "--kubelet-registration-path="); ok {
					registration = v
				}
			}
		}
		if kind == "DaemonSet" {
			if registration == "" {
				t.Fatalf("%s: no driver-registrar with --kubelet-registration-path", name)
			}
			for _, ct := range cs {
				m := ct.(map[string]any)
				if m["name"] != "csi-"+r.kind+"plugin" {
					continue
				}
				m["args"] = append(m["args"].([]any), "--kubelet-registration-path="+registration)
				m["volumeMounts"] = append(m["volumeMounts"].([]any),
					map[string]any{"name": "registration-dir", "mountPath": filepath.Join(n.kubeletRoot, "plugins_registry")})
			}
		}
		spec["containers"] = cs
		ops := patchOps(orig, spec, drop)
		file := strings.ToLower(kind) + "-patch.json"
		writeJSON(t, filepath.Join(dir, file), ops)
		patches = append(patches, map[string]any{"target": map[string]any{"kind": kind, "name": name}, "path": file})
	}
	if len(patches) != 2 {
		t.Fatalf("deploy/%s renders %d workloads, want a Deployment and a DaemonSet", r.kind, len(patches))
	}
	cfg, err := os.ReadFile(c.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, src)
	if err != nil {
		t.Fatal(err)
	}
	images := []any{map[string]any{"name": "quay.io/leanceph/cephcsi", "newName": img.cephcsi.repository, "newTag": img.cephcsi.tag}}
	for _, name := range sidecarNames {
		si := img.sidecars[name]
		images = append(images, map[string]any{"name": "registry.k8s.io/sig-storage/" + name, "newName": si.repository, "newTag": si.tag})
	}
	// JSON is YAML: kustomize reads it as the kustomization.yaml a user
	// writes.
	writeJSON(t, filepath.Join(dir, "kustomization.yaml"), map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
		"namespace": r.ns, "namePrefix": deployNamePrefix,
		"resources": []string{rel},
		"images":    images,
		"replicas":  []any{map[string]any{"name": "csi-" + r.kind + "plugin-provisioner", "count": 1}},
		// Replaces deploy/'s ConfigMap, named by its namespace there.
		"configMapGenerator": []any{map[string]any{"name": "ceph-csi-config", "namespace": baseNS, "behavior": "replace",
			"files": []string{"config.json"}}},
		"generatorOptions": map[string]any{"disableNameSuffixHash": true},
		"patches":          patches,
	})
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rollout waits for a workload of the overlay with kubectl rollout status.
func rollout(t testing.TB, e *env, r *release, what string) {
	t.Helper()
	begin := time.Now()
	if out, err := e.kubectl(nil, "rollout", "status", "-n", r.ns, what, "--timeout=4m"); err != nil {
		desc, _ := e.kubectl(nil, "describe", "pods", "-n", r.ns)
		t.Fatalf("%s: %v\n%s\n%s\nkubelet:\n%s", what, err, out, desc, e.node.kubelet.tail(30))
	}
	t.Logf("deploy timing: %s rolled out in %s", what, ms(time.Since(begin)))
}

// checkDeployPods: the overlay runs one Ready provisioner pod and one Ready
// node plugin pod, without a registrar; it logs each one's time from
// creation to Ready.
func checkDeployPods(t testing.TB, e *env, r *release) {
	t.Helper()
	count := map[string]int{}
	for _, p := range e.getJSON(t, "pods", "-n", r.ns).items() {
		name := p.str("metadata.name")
		count[p.strMap("metadata.labels")["app"]]++
		ready := ""
		conds, _ := p.get("status.conditions").([]any)
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
				ready, _ = m["lastTransitionTime"].(string)
			}
		}
		created, err1 := time.Parse(time.RFC3339, p.str("metadata.creationTimestamp"))
		at, err2 := time.Parse(time.RFC3339, ready)
		if err1 != nil || err2 != nil {
			t.Errorf("pod %s is not Ready (created %q, Ready since %q)", name, p.str("metadata.creationTimestamp"), ready)
			continue
		}
		// Both are known to the second.
		t.Logf("deploy timing: pod %s Ready %s after it was created", name, at.Sub(created))
		for _, ct := range shapeOf(t, obj{"spec": map[string]any{"template": map[string]any{"spec": p.get("spec")}}}).Containers {
			if ct.Name == "driver-registrar" {
				t.Errorf("pod %s runs a driver-registrar", name)
			}
		}
	}
	want := map[string]int{"csi-" + r.kind + "plugin-provisioner": 1, "csi-" + r.kind + "plugin": 1}
	if !reflect.DeepEqual(count, want) {
		t.Errorf("pods by app label %v, want %v", count, want)
	}
}

func TestDeployManifestsRBD(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, rbdPool)
	r := deployRelease()
	img := importDeployImages(t, e)
	prepareNode(t, e)
	overlay := filepath.Join(e.dir, r.name)
	if err := os.MkdirAll(overlay, 0o700); err != nil {
		t.Fatal(err)
	}
	deployOverlay(t, e, c, r, img, overlay)

	begin := time.Now()
	e.mustKubectl(t, nil, "create", "namespace", r.apps)
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "namespace", r.apps, "--wait=false") })
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			if out, err := e.kubectl(nil, "delete", "-k", overlay, "--ignore-not-found", "--timeout=3m"); err != nil {
				t.Logf("kubectl delete -k: %v\n%s", err, out)
			}
		}
	})
	e.mustKubectl(t, nil, "apply", "-k", overlay)
	// The examples, filled in as docs/install.md says.
	ns := "namespace: ceph-csi-rbd"
	applyExample(t, e, "deploy/rbd/secret.yaml", ns, "namespace: "+r.ns,
		"<user-id>", c.Var("CEPH_RBD_PROVISIONER_ID"), "<user-key>", c.Var("CEPH_RBD_PROVISIONER_KEY"))
	applyExample(t, e, "deploy/rbd/storageclass.yaml", "name: csi-rbd-sc", "name: "+r.sc,
		"provisioner: "+rbdDriver, "provisioner: "+r.driver, "<cluster-id>", c.ClusterID, "<pool>", rbdPool,
		"imageFeatures: layering", "imageFeatures: layering\n  mounter: rbd-fuse\n  volumeNamePrefix: "+r.prefix,
		"-namespace: ceph-csi-rbd", "-namespace: "+r.ns)
	applyExample(t, e, "deploy/rbd/snapshotclass.yaml", "name: csi-rbdplugin-snapclass", "name: "+r.vsc,
		"driver: "+rbdDriver, "driver: "+r.driver,
		"clusterID: <cluster-id>", "clusterID: "+c.ClusterID+"\n  snapshotNamePrefix: "+r.prefix+"snap-",
		"-namespace: ceph-csi-rbd", "-namespace: "+r.ns)
	cleanupOnFailure(t, e, r.apps)
	cleanupPods(t, e, r.apps)
	rollout(t, e, r, "deployment/"+deployNamePrefix+"csi-rbdplugin-provisioner")
	rollout(t, e, r, "daemonset/"+deployNamePrefix+"csi-rbdplugin")
	checkRegistered(t, e, r)
	t.Logf("deploy timing: kubectl apply -k to the driver registered and leading in %s", ms(time.Since(begin)))
	checkDeployPods(t, e, r)

	// The flow: write, snapshot, restore, read back in a second pod, delete.
	apps := r.apps
	app := &appPods{e: e, ns: apps, directIO: true, timing: "deploy"}
	ourImage := func(pvc string) volume {
		t.Helper()
		v := boundVolume(t, e, apps, pvc, r.driver)
		name := v.attrs["imageName"]
		if !strings.HasPrefix(name, r.prefix) || !testutil.ImageExists(t, io, name) {
			t.Fatalf("PVC %s: image %q (attributes %v) not in the pool", pvc, name, v.attrs)
		}
		return v
	}
	d := provision(t, e, apps, "data", r.sc, "1Gi", "ReadWriteOnce", nil)
	t.Logf("deploy timing: PVC Bound in %s", ms(d))
	data := ourImage("data")
	app.run(t, "writer", "data")
	payload, sum := randomData(4 << 20)
	upload(t, e, apps, "writer", "/data/file.bin", payload)
	d = snapshot(t, e, apps, "data-snap", r.vsc, "data")
	t.Logf("deploy timing: snapshot ready in %s", ms(d))
	sn := readySnapshot(t, e, apps, "data-snap", r.driver)
	d = provision(t, e, apps, "restored", r.sc, "1Gi", "ReadWriteOnce", fromSnapshot("data-snap"))
	t.Logf("deploy timing: restore Bound in %s", ms(d))
	restored := ourImage("restored")
	app.run(t, "reader", "restored")
	if got := podSHA256(t, e, apps, "reader", "/data/file.bin", 0, 0); got != sum {
		t.Errorf("the restore holds file.bin as %s, the writer wrote %s", got, sum)
	}

	d = deletePods(t, e, apps, "writer", "reader")
	t.Logf("deploy timing: pods deleted in %s", ms(d))
	beginDel := time.Now()
	deleteAndWait(t, e, "-n", apps, "volumesnapshot/data-snap", "pvc/restored", "pvc/data")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+data.pv, "pv/"+restored.pv)
	eventually(t, 3*time.Minute, func() string {
		if left := append(driverLeftovers(e, r.driver, app.uids...), rbdOurs(t, io, r.prefix)...); len(left) > 0 {
			return fmt.Sprintf("left: %v", left)
		}
		return ""
	})
	t.Logf("deploy timing: snapshot and PVCs deleted, nothing left on the node or in Ceph, in %s", ms(time.Since(beginDel)))
	if left := rbdLeftovers(t, io, data.id.UUID, sn.id.UUID, restored.id.UUID); len(left) > 0 {
		t.Errorf("left of the deleted volumes: %v", left)
	}

	// kubectl delete of the overlay removes every object it made.
	begin = time.Now()
	e.mustKubectl(t, nil, "delete", "-k", overlay, "--timeout=3m")
	deleted = true
	for _, what := range [][]string{{"namespace", r.ns}, {"csidriver", r.driver},
		{"clusterrole", deployNamePrefix + "rbd-csi-nodeplugin"}, {"clusterrolebinding", deployNamePrefix + "rbd-csi-provisioner-role"}} {
		if e.exists(t, what...) {
			t.Errorf("after kubectl delete -k: %s %s is still there", what[0], what[1])
		}
	}
	eventually(t, 2*time.Minute, func() string {
		if left := driverLeftovers(e, r.driver); len(left) > 0 {
			return fmt.Sprintf("left on the node after kubectl delete: %v", left)
		}
		return ""
	})
	t.Logf("deploy timing: kubectl delete -k in %s", ms(time.Since(begin)))
	checkNoSecretsInLogs(t, e, c.Var("CEPH_RBD_PROVISIONER_KEY"))
}
