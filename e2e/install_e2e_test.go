//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// The driver installed as users install it: our image and the sidecars'
// running as pods of the charts' Deployment and DaemonSet (or of deploy/),
// on the test node, bound by the scheduler. Shared by the install tests.

// release is one installed driver.
type release struct {
	kind, name, ns string // chart kind (rbd, cephfs), helm release, namespace
	driver         string
	values         string // the values file
	apps           string // namespace of the test's pods and claims
	sc, vsc        string
	prefix         string // volumeNamePrefix of the StorageClass
}

func (r *release) chart(e *env) string { return filepath.Join(e.root, "charts", "ceph-csi-"+r.kind) }

// helmCmd runs the real helm against the local API server.
func helmCmd(t testing.TB, e *env, args ...string) []byte {
	t.Helper()
	return helm(t, e, append([]string{"--kubeconfig=" + e.kubeconfig}, args...)...)
}

// freePorts returns n ports free on the host now; the pods' containers
// use the host's network, where other runs listen too.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
}

// clusterConfig is config.json of the test cluster, as csiConfig.
func clusterConfig(t testing.TB, c *testutil.Cluster) []any {
	t.Helper()
	data, err := os.ReadFile(c.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	var cfg []any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func image(i deployImage) map[string]any {
	return map[string]any{"repository": i.repository, "tag": i.tag, "pullPolicy": "Never"}
}

// chartValues are the values a user of this node would write: the local
// cluster, our images, the node's kubelet directory, self-registration
// instead of node-driver-registrar, free host ports, the helper cgroup
// inside the run's, and the StorageClass, VolumeSnapshotClass and Secret
// from the chart.
func chartValues(t testing.TB, e *env, c *testutil.Cluster, r *release, img deployImages, cephcsi deployImage) map[string]any {
	t.Helper()
	n := e.node
	ports := freePorts(t, 4)
	prov := map[string]any{
		"replicaCount":      1,
		"enableHostNetwork": true, // the node has no pod network
		// One node and host ports: the old pod must go before the new one
		// can be scheduled (the default surge pod would wait for its ports
		// forever).
		"strategy": map[string]any{"type": "RollingUpdate",
			"rollingUpdate": map[string]any{"maxUnavailable": 1, "maxSurge": 0}},
		"httpMetrics": map[string]any{"containerPort": ports[0]},
		"metrics":     map[string]any{"containerPort": ports[1]},
		"provisioner": map[string]any{"image": image(img.sidecars["csi-provisioner"])},
		"resizer":     map[string]any{"image": image(img.sidecars["csi-resizer"])},
		"snapshotter": map[string]any{"image": image(img.sidecars["csi-snapshotter"])},
	}
	if r.kind == "rbd" {
		prov["attacher"] = map[string]any{"image": image(img.sidecars["csi-attacher"])}
	}
	v := map[string]any{
		"driverName":         r.driver,
		"kubeletDir":         n.kubeletRoot,
		"cephLogDirHostPath": filepath.Join(n.dir, "ceph-log-"+r.name),
		"csiConfig":          clusterConfig(t, c),
		"logLevel":           5,
		"nodeplugin": map[string]any{
			"registrar":    map[string]any{"enabled": false},
			"helperCgroup": n.cgroup + "/cephcsi-helpers",
			"httpMetrics":  map[string]any{"containerPort": ports[2]},
			"metrics":      map[string]any{"containerPort": ports[3]},
			"plugin":       map[string]any{"image": image(cephcsi)},
		},
		"provisioner": prov,
		"storageClass": map[string]any{"create": true, "name": r.sc, "clusterID": c.ClusterID,
			"volumeNamePrefix": r.prefix},
		"volumeSnapshotClass": map[string]any{"create": true, "name": r.vsc, "clusterID": c.ClusterID,
			"snapshotNamePrefix": r.prefix + "snap-"},
	}
	sc := v["storageClass"].(map[string]any)
	switch r.kind {
	case "rbd":
		v["secret"] = map[string]any{"create": true, "name": r.name + "-secret",
			"userID": c.Var("CEPH_RBD_PROVISIONER_ID"), "userKey": c.Var("CEPH_RBD_PROVISIONER_KEY")}
		for k, val := range map[string]any{"pool": rbdPool, "mounter": "rbd-fuse", "fstype": "xfs",
			"provisionerSecret": r.name + "-secret", "controllerExpandSecret": r.name + "-secret",
			"nodeStageSecret": r.name + "-secret"} {
			sc[k] = val
		}
		v["volumeSnapshotClass"].(map[string]any)["snapshotterSecret"] = r.name + "-secret"
		v["topology"] = map[string]any{"enabled": true, "domainLabels": []string{zoneLabel}}
	case "cephfs":
		v["secret"] = map[string]any{"create": true, "name": r.name + "-secret",
			"adminID": c.Var("CEPH_FS_PROVISIONER_ID"), "adminKey": c.Var("CEPH_FS_PROVISIONER_KEY")}
		for k, val := range map[string]any{"fsName": fsName, "mounter": "fuse",
			"provisionerSecret": r.name + "-secret", "controllerExpandSecret": r.name + "-secret",
			// The node user's secret (nodeSecret), as under Rook.
			"nodeStageSecret": r.name + "-node-secret"} {
			sc[k] = val
		}
		v["volumeSnapshotClass"].(map[string]any)["snapshotterSecret"] = r.name + "-secret"
	}
	return v
}

const zoneLabel = "topology.kubernetes.io/zone"

func writeValues(t testing.TB, e *env, r *release, v map[string]any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	r.values = filepath.Join(e.dir, r.name+"-values.yaml")
	// JSON is YAML; the file holds the cluster's keys, like a user's.
	if err := os.WriteFile(r.values, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// nodeSecret is the CephFS node user's secret a user creates next to the
// chart's (the chart makes one Secret; the node stages with another, as
// Rook's rook-csi-cephfs-node).
func nodeSecret(t testing.TB, e *env, c *testutil.Cluster, r *release) {
	t.Helper()
	e.mustKubectl(t, nil, "create", "secret", "generic", r.name+"-node-secret", "-n", r.ns,
		"--from-literal=adminID="+c.Var("CEPH_FS_NODE_ID"), "--from-literal=adminKey="+c.Var("CEPH_FS_NODE_KEY"))
}

// podReady is when each pod of a release became Ready, measured from its
// creation, as this test polled it.
type podReady struct {
	name, uid string
	ready     time.Duration
}

// releasePods lists the pods of the release's Deployment and DaemonSet.
func releasePods(t testing.TB, e *env, r *release) []obj {
	t.Helper()
	return e.getJSON(t, "pods", "-n", r.ns, "-l", "release="+r.name).items()
}

// waitReady waits until the release runs exactly one Ready pod of each of
// its components that is not in skip, and reports each pod's time from its
// creation to Ready.
func waitReady(t testing.TB, e *env, r *release, timeout time.Duration, skip ...string) []podReady {
	t.Helper()
	seen := map[string]podReady{}
	deadline := time.Now().Add(timeout)
	for {
		pods := releasePods(t, e, r)
		byComponent := map[string][]obj{}
		allReady := true
		for _, p := range pods {
			if slices.Contains(skip, p.str("metadata.uid")) {
				continue
			}
			byComponent[p.strMap("metadata.labels")["component"]] = append(byComponent[p.strMap("metadata.labels")["component"]], p)
			ready := false
			conds, _ := p.get("status.conditions").([]any)
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
					ready = true
				}
			}
			name := p.str("metadata.name")
			if !ready {
				allReady = false
				continue
			}
			if _, ok := seen[name]; !ok {
				created, err := time.Parse(time.RFC3339, p.str("metadata.creationTimestamp"))
				if err != nil {
					t.Fatal(err)
				}
				// Creation is known to the second: the time to Ready is too.
				seen[name] = podReady{name: name, uid: p.str("metadata.uid"), ready: time.Since(created).Truncate(100 * time.Millisecond)}
			}
		}
		if allReady && len(byComponent["nodeplugin"]) == 1 && len(byComponent["provisioner"]) == 1 {
			var out []podReady
			for _, ps := range byComponent {
				out = append(out, seen[ps[0].str("metadata.name")])
			}
			sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
			return out
		}
		if time.Now().After(deadline) {
			out, _ := e.kubectl(nil, "describe", "pods", "-n", r.ns)
			ev, _ := e.kubectl(nil, "get", "events", "-n", r.ns)
			t.Fatalf("%s: pods not Ready after %s:\n%s\n%s\nkubelet:\n%s", r.name, timeout, out, ev, e.node.kubelet.tail(30))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func logReady(t testing.TB, what string, pods []podReady) {
	t.Helper()
	for _, p := range pods {
		t.Logf("install timing: %s: pod %s Ready %s after it was created", what, p.name, ms(p.ready))
	}
}

// install runs helm install and waits for the pods; it returns how long
// the release took from the command to every pod Ready.
func install(t *testing.T, e *env, r *release) time.Duration {
	t.Helper()
	begin := time.Now()
	helmCmd(t, e, "install", r.name, r.chart(e), "--namespace", r.ns, "-f", r.values)
	logReady(t, "helm install "+r.name, waitReady(t, e, r, 4*time.Minute))
	d := time.Since(begin)
	t.Logf("install timing: helm install %s to every pod Ready in %s", r.name, ms(d))
	checkRegistered(t, e, r)
	return d
}

// checkRegistered: the node plugin registered itself with the kubelet (no
// registrar container), and the controller's sidecars hold their leases.
func checkRegistered(t testing.TB, e *env, r *release) {
	t.Helper()
	eventually(t, time.Minute, func() string {
		if !csiNodeHas(e, r.driver) {
			return fmt.Sprintf("CSINode %s does not list %s", e2eNode, r.driver)
		}
		return ""
	})
	for _, p := range releasePods(t, e, r) {
		for _, c := range shapeOf(t, obj{"spec": map[string]any{"template": map[string]any{"spec": p.get("spec")}}}).Containers {
			if c.Name == "driver-registrar" {
				t.Errorf("%s: pod %s runs a driver-registrar with nodeplugin.registrar.enabled=false", r.name, p.str("metadata.name"))
			}
		}
	}
	// Each leader-electing sidecar of the one replica holds its lease.
	eventually(t, 2*time.Minute, func() string {
		leases := e.getJSON(t, "leases", "-n", r.ns)
		if n := len(leases.items()); n < 3 {
			return fmt.Sprintf("%d leases in %s, want one per sidecar", n, r.ns)
		}
		for _, l := range leases.items() {
			if l.str("spec.holderIdentity") == "" {
				return "lease " + l.str("metadata.name") + " has no holder"
			}
		}
		return ""
	})
}

// appPod is a pod of the test on a PVC, bound to the node by the scheduler
// (no nodeName), that probes its volume every half second: it writes 4 KiB
// and reads them back (with O_DIRECT on RBD, so that the page cache cannot
// answer for a dead FUSE helper), and prints one line per probe, which
// probeLog reads back. The probe file is the pod's own.
func appPod(ns, name, pvc string, direct bool) string {
	flags := "conv=fsync"
	rflags := ""
	if direct {
		flags, rflags = "oflag=direct conv=fsync", "iflag=direct"
	}
	script := fmt.Sprintf(`trap 'exit 0' TERM
head -c 4096 /dev/urandom >/tmp/blk
i=0
while :; do
	i=$((i+1))
	if timeout 10 dd if=/tmp/blk of=/data/.probe-%[1]s bs=4096 count=1 %[2]s 2>/tmp/err &&
		timeout 10 dd if=/data/.probe-%[1]s bs=4096 count=1 %[3]s 2>/tmp/err | cmp -s - /tmp/blk; then
		echo "probe ok $i $(date +%%s)"
	else
		echo "probe FAIL $i $(date +%%s) $(tr '\n' ' ' </tmp/err)"
	fi
	sleep 0.5
done`, name, flags, rflags)
	cmd, _ := json.Marshal([]string{"sh", "-c", script})
	return fmt.Sprintf(`{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": %q, "namespace": %q},
 "spec": {"hostNetwork": true, "dnsPolicy": "Default", "terminationGracePeriodSeconds": 5,
  "containers": [{"name": "app", "image": %q, "imagePullPolicy": "Never", "command": %s,
   "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": %q}}]}}`,
		name, ns, busyboxImage, cmd, pvc)
}

// runAppPod creates an appPod and waits until it is Ready (scheduled,
// volume staged and published, running).
func runAppPod(t testing.TB, e *env, ns, name, pvc string, direct bool) time.Duration {
	t.Helper()
	begin := time.Now()
	e.mustKubectl(t, []byte(appPod(ns, name, pvc, direct)), "create", "-f", "-")
	if _, err := e.kubectl(nil, "wait", "-n", ns, "--for=condition=Ready", "--timeout=240s", "pod/"+name); err != nil {
		out, _ := e.kubectl(nil, "describe", "pod", "-n", ns, name)
		t.Fatalf("pod %s not Ready: %v\n%s\nkubelet:\n%s", name, err, out, e.node.kubelet.tail(20))
	}
	return time.Since(begin)
}

// probe is one line of an appPod's log.
type probe struct {
	ok   bool
	n    int
	at   int64 // unix seconds
	text string
}

func probeLog(t testing.TB, e *env, ns, pod string) []probe {
	t.Helper()
	out := e.mustKubectl(t, nil, "logs", "-n", ns, pod)
	var ps []probe
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != "probe" {
			continue
		}
		n, _ := strconv.Atoi(f[2])
		at, _ := strconv.ParseInt(f[3], 10, 64)
		ps = append(ps, probe{ok: f[1] == "ok", n: n, at: at, text: sc.Text()})
	}
	return ps
}

// checkProbes fails on any failed probe of the pods and returns how many
// succeeded in [from, to] (unix seconds).
func checkProbes(t testing.TB, e *env, ns string, from, to time.Time, pods ...string) map[string]int {
	t.Helper()
	okIn := map[string]int{}
	for _, pod := range pods {
		ps := probeLog(t, e, ns, pod)
		if len(ps) == 0 {
			t.Errorf("pod %s has not probed its volume", pod)
		}
		for _, p := range ps {
			if !p.ok {
				t.Errorf("pod %s: %s", pod, p.text)
				continue
			}
			if p.at >= from.Unix() && p.at <= to.Unix() {
				okIn[pod]++
			}
		}
	}
	return okIn
}

// helperPIDs lists the daemons serving the driver's volumes on the node (the
// rbd-fuse helpers and ceph-fuse naming its directories) by pid.
func helperPIDs(e *env, driver string) map[int]string {
	out := map[int]string{}
	for pid, cmd := range e.node.ourProcesses() {
		if strings.Contains(cmd, "/"+driver+"/") && (strings.Contains(cmd, "rbd-fuse-helper") || strings.HasPrefix(cmd, "ceph-fuse")) {
			out[pid] = cmd
		}
	}
	return out
}

// driverLeftovers lists what the node holds for the driver: mounts in its
// staging directory, its FUSE mounts and loop devices, its daemons, node
// state, staging directories and the directories of the given pods.
func driverLeftovers(e *env, driver string, podUIDs ...string) []string {
	n := e.node
	var left []string
	staging := filepath.Join(n.kubeletRoot, "plugins", "kubernetes.io", "csi", driver) + "/"
	own := filepath.Join(n.kubeletRoot, "plugins", driver) + "/"
	for _, mp := range n.hostMounts() {
		mine := strings.HasPrefix(mp, staging) || strings.HasPrefix(mp, own)
		for _, uid := range podUIDs {
			mine = mine || strings.Contains(mp, "/pods/"+uid+"/")
		}
		if mine {
			left = append(left, "mount "+mp)
		}
	}
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		if data, err := os.ReadFile(m); err == nil && strings.Contains(string(data), own) {
			left = append(left, "loop device "+filepath.Base(filepath.Dir(filepath.Dir(m))))
		}
	}
	for pid, cmd := range helperPIDs(e, driver) {
		left = append(left, fmt.Sprintf("process %d: %s", pid, cmd))
	}
	_ = filepath.WalkDir(own, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && de.Name() != "csi.sock" {
			left = append(left, "node state "+p)
		}
		return nil
	})
	for _, d := range stagingDirs(e, driver) {
		left = append(left, "staging directory "+d)
	}
	for _, uid := range podUIDs {
		if _, err := os.Stat(filepath.Join(n.kubeletRoot, "pods", uid)); err == nil {
			left = append(left, "pod directory "+uid)
		}
	}
	return left
}

// podArgs returns the arguments of a container of the release's pods of
// a component.
func podArgs(t testing.TB, e *env, r *release, component, container string) [][]string {
	t.Helper()
	var out [][]string
	for _, p := range releasePods(t, e, r) {
		if p.strMap("metadata.labels")["component"] != component || p.str("metadata.deletionTimestamp") != "" {
			continue
		}
		for _, c := range shapeOf(t, obj{"spec": map[string]any{"template": map[string]any{"spec": p.get("spec")}}}).Containers {
			if c.Name == container {
				out = append(out, c.Args)
			}
		}
	}
	return out
}

// upgrade runs helm upgrade with extra arguments, waits until every pod of
// the release has been replaced and is Ready, and returns when it started
// and ended.
func upgrade(t *testing.T, e *env, r *release, args ...string) (time.Time, time.Time) {
	t.Helper()
	var old []string
	for _, p := range releasePods(t, e, r) {
		old = append(old, p.str("metadata.uid"))
	}
	begin := time.Now()
	helmCmd(t, e, append([]string{"upgrade", r.name, r.chart(e), "--namespace", r.ns, "-f", r.values}, args...)...)
	pods := waitReady(t, e, r, 5*time.Minute, old...)
	// The replaced pods are gone, not only superseded.
	eventually(t, 3*time.Minute, func() string {
		for _, p := range releasePods(t, e, r) {
			if slices.Contains(old, p.str("metadata.uid")) {
				return "pod " + p.str("metadata.name") + " of before the upgrade is still there"
			}
		}
		return ""
	})
	end := time.Now()
	logReady(t, "helm upgrade "+r.name+" "+strings.Join(args, " "), pods)
	t.Logf("install timing: helm upgrade %s %s: every pod replaced and Ready in %s", r.name, strings.Join(args, " "), ms(end.Sub(begin)))
	return begin, end
}

// uninstall runs helm uninstall and waits until the release's pods are
// gone.
func uninstall(t testing.TB, e *env, r *release) {
	t.Helper()
	begin := time.Now()
	helmCmd(t, e, "uninstall", r.name, "--namespace", r.ns, "--wait", "--timeout=3m")
	eventually(t, 3*time.Minute, func() string {
		if ps := releasePods(t, e, r); len(ps) > 0 {
			return fmt.Sprintf("%d pods of %s left", len(ps), r.name)
		}
		return ""
	})
	t.Logf("install timing: helm uninstall %s in %s", r.name, ms(time.Since(begin)))
}

// prepareNode makes what a real node has and this one may lack: the
// /lib/modules the DaemonSets mount (the runtime would create it on the
// host, outside the run's directory, and leave it).
func prepareNode(t testing.TB, e *env) {
	t.Helper()
	if err := e.node.hostMkdir("/lib/modules"); err != nil {
		t.Fatal(err)
	}
}

// cleanupRelease, registered early, uninstalls whatever is left of the
// release once the test ends (after cleanupOnFailure has deleted the
// volumes through it).
func cleanupRelease(t *testing.T, e *env, r *release) {
	t.Cleanup(func() {
		if err := exec.Command(e.tools["helm"], "--kubeconfig="+e.kubeconfig, "status", r.name, "-n", r.ns).Run(); err != nil {
			return // not installed (any more)
		}
		if out, err := exec.Command(e.tools["helm"], "--kubeconfig="+e.kubeconfig, "uninstall", r.name, "-n", r.ns,
			"--wait", "--timeout=3m").CombinedOutput(); err != nil {
			t.Logf("helm uninstall %s: %v\n%s", r.name, err, out)
		}
	})
}

// appPods runs a test's app pods in one namespace and keeps their UIDs,
// which the leftover checks look for on the node.
type appPods struct {
	e        *env
	ns       string
	directIO bool
	timing   string // what the timing lines start with: "deploy", "helm rbd"
	uids     []string
}

func (a *appPods) run(t testing.TB, name, pvc string) {
	t.Helper()
	d := runAppPod(t, a.e, a.ns, name, pvc, a.directIO)
	t.Logf("%s timing: pod %s on %s Ready in %s", a.timing, name, pvc, ms(d))
	a.uids = append(a.uids, podUID(t, a.e, a.ns, name))
}
