//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The manifests of deploy/ and the charts of charts/, checked against the
// local API server: every object they hold is accepted by a server-side dry
// run, the charts render what their values say, and the charts' defaults
// equal deploy/ (which the flows run for real).

var sidecarPins = map[string]string{
	"csi-provisioner": "CSI_PROVISIONER_VERSION",
	"csi-snapshotter": "CSI_SNAPSHOTTER_VERSION",
	"csi-resizer":     "CSI_RESIZER_VERSION",
	"csi-attacher":    "CSI_ATTACHER_VERSION",
}

// decodeList decodes kubectl's JSON output: one object or a List.
func decodeList(t testing.TB, out []byte) []obj {
	t.Helper()
	var o obj
	if err := json.Unmarshal(out, &o); err != nil {
		t.Fatalf("decode: %v\n%s", err, out)
	}
	if o.str("kind") == "List" {
		return o.items()
	}
	return []obj{o}
}

// dryRun applies manifests with --dry-run=server and returns the objects as
// the server would store them.
func dryRun(t testing.TB, e *env, manifests []byte, args ...string) []obj {
	t.Helper()
	out := e.mustKubectl(t, manifests, append([]string{"apply", "--dry-run=server", "-o", "json"}, args...)...)
	return decodeList(t, out)
}

func find(t testing.TB, objs []obj, kind, nameSuffix string) obj {
	t.Helper()
	for _, o := range objs {
		if o.str("kind") == kind && strings.HasSuffix(o.str("metadata.name"), nameSuffix) {
			return o
		}
	}
	t.Fatalf("no %s named *%s", kind, nameSuffix)
	return nil
}

func helm(t testing.TB, e *env, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(e.tools["helm"], args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

type podShape struct {
	Containers []struct {
		Name  string   `json:"name"`
		Image string   `json:"image"`
		Args  []string `json:"args"`
	} `json:"containers"`
	Volumes any `json:"volumes"`
}

func shapeOf(t testing.TB, o obj) podShape {
	t.Helper()
	raw, err := json.Marshal(o.get("spec.template.spec"))
	if err != nil {
		t.Fatal(err)
	}
	var s podShape
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestManifests(t *testing.T) {
	e := theEnv
	pins := buildEnv(t)
	for _, kind := range []string{"rbd", "cephfs"} {
		t.Run(kind, func(t *testing.T) {
			dir := filepath.Join(e.root, "deploy", kind)
			ns := "ceph-csi-" + kind
			e.mustKubectl(t, nil, "apply", "-f", filepath.Join(dir, "namespace.yaml"))

			// deploy/: the kustomization and the examples, server-side.
			deployed := dryRun(t, e, nil, "-k", dir)
			examples := dryRun(t, e, nil, "-f", filepath.Join(dir, "secret.yaml"),
				"-f", filepath.Join(dir, "storageclass.yaml"), "-f", filepath.Join(dir, "snapshotclass.yaml"))
			t.Logf("deploy/%s: %d objects and %d examples accepted by the API server (dry run)", kind, len(deployed), len(examples))
			driverName := find(t, deployed, "CSIDriver", "csi.ceph.com").str("metadata.name")
			if want := kind + ".csi.ceph.com"; driverName != want {
				t.Errorf("deploy/%s: CSIDriver %q, want %q", kind, driverName, want)
			}
			for _, o := range examples {
				if p := o.str("provisioner") + o.str("driver"); o.str("kind") != "Secret" && p != driverName {
					t.Errorf("deploy/%s: %s %s names driver %q", kind, o.str("kind"), o.str("metadata.name"), p)
				}
			}
			for _, o := range deployed {
				if o.str("kind") != "Deployment" && o.str("kind") != "DaemonSet" {
					continue
				}
				for _, c := range shapeOf(t, o).Containers {
					name, tag, _ := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":")
					if pin, ok := sidecarPins[name]; ok && tag != pins[pin] {
						t.Errorf("deploy/%s: %s runs %s, build.env pins %s=%s (the version the e2e test runs)",
							kind, c.Name, c.Image, pin, pins[pin])
					}
				}
			}

			// charts/: lint, default and non-default renderings, server-side.
			chart := filepath.Join(e.root, "charts", "ceph-csi-"+kind)
			values := filepath.Join(e.root, "e2e", "testdata", kind+"-values.yaml")
			helm(t, e, "lint", "--strict", chart)
			helm(t, e, "lint", "--strict", chart, "-f", values)
			rendered := helm(t, e, "template", "ceph-csi-"+kind, chart, "--namespace", ns)
			defaults := dryRun(t, e, rendered, "-f", "-")
			t.Logf("charts/ceph-csi-%s: %d objects with default values accepted (dry run)", kind, len(defaults))
			compareChartWithDeploy(t, kind, defaults, deployed)

			e.mustKubectl(t, nil, "create", "namespace", "rook-"+kind)
			rendered = helm(t, e, "template", "rook", chart, "--namespace", "rook-"+kind, "-f", values)
			custom := dryRun(t, e, rendered, "-f", "-")
			t.Logf("charts/ceph-csi-%s: %d objects with non-default values accepted (dry run)", kind, len(custom))
			checkCustomRendering(t, kind, custom)
		})
	}
}

// compareChartWithDeploy checks that the chart's defaults run the same
// containers with the same arguments, volumes and RBAC rules as deploy/.
func compareChartWithDeploy(t *testing.T, kind string, chart, deployed []obj) {
	t.Helper()
	pairs := []struct{ what, chartKind, chartName, deployName string }{
		{"controller", "Deployment", "-provisioner", "csi-" + kind + "plugin-provisioner"},
		{"node plugin", "DaemonSet", "-nodeplugin", "csi-" + kind + "plugin"},
	}
	for _, p := range pairs {
		c, d := shapeOf(t, find(t, chart, p.chartKind, p.chartName)), shapeOf(t, find(t, deployed, p.chartKind, p.deployName))
		if !reflect.DeepEqual(c.Containers, d.Containers) {
			t.Errorf("%s: chart containers differ from deploy/%s:\nchart:  %+v\ndeploy: %+v", p.what, kind, c.Containers, d.Containers)
		}
		if !reflect.DeepEqual(c.Volumes, d.Volumes) {
			t.Errorf("%s: chart volumes differ from deploy/%s", p.what, kind)
		}
	}
	rules := func(o obj) string { b, _ := json.Marshal(o.get("rules")); return string(b) }
	if a, b := rules(find(t, chart, "ClusterRole", "-provisioner")), rules(find(t, deployed, "ClusterRole", "-external-provisioner-runner")); a != b {
		t.Errorf("provisioner ClusterRole rules differ:\nchart:  %s\ndeploy: %s", a, b)
	}
	if a, b := rules(find(t, chart, "ClusterRole", "-nodeplugin")), rules(find(t, deployed, "ClusterRole", "-csi-nodeplugin")); a != b {
		t.Errorf("nodeplugin ClusterRole rules differ:\nchart:  %s\ndeploy: %s", a, b)
	}
	if a, b := rules(find(t, chart, "Role", "-provisioner")), rules(find(t, deployed, "Role", "-external-provisioner-cfg")); a != b {
		t.Errorf("leader election Role rules differ:\nchart:  %s\ndeploy: %s", a, b)
	}
	// The KMS ConfigMap, read by both node plugins (LUKS2 on RBD, fscrypt
	// on CephFS).
	if a, b := rules(find(t, chart, "Role", "-nodeplugin")), rules(find(t, deployed, "Role", "-csi-nodeplugin-cfg")); a != b {
		t.Errorf("nodeplugin Role rules differ:\nchart:  %s\ndeploy: %s", a, b)
	}
	cs, ds := find(t, chart, "CSIDriver", "csi.ceph.com"), find(t, deployed, "CSIDriver", "csi.ceph.com")
	if !reflect.DeepEqual(cs.get("spec"), ds.get("spec")) || cs.str("metadata.name") != ds.str("metadata.name") {
		t.Errorf("CSIDriver differs: chart %v %v, deploy %v %v", cs.str("metadata.name"), cs.get("spec"), ds.str("metadata.name"), ds.get("spec"))
	}
	for _, k := range []string{"StorageClass", "VolumeSnapshotClass", "Secret"} {
		for _, o := range chart {
			if o.str("kind") == k {
				t.Errorf("default values create a %s (%s); they should not", k, o.str("metadata.name"))
			}
		}
	}
}

// checkCustomRendering checks that the values of e2e/testdata/<kind>-values.yaml
// reach the objects.
func checkCustomRendering(t *testing.T, kind string, objs []obj) {
	t.Helper()
	driver := "rook-ceph." + kind + ".csi.ceph.com"
	kubelet := "/var/lib/k0s/kubelet"
	if got := find(t, objs, "CSIDriver", "csi.ceph.com").str("metadata.name"); got != driver {
		t.Errorf("CSIDriver %q, want %q", got, driver)
	}
	for _, o := range objs {
		if o.strMap("metadata.labels")["team"] != "storage" {
			t.Errorf("%s %s lacks the commonLabels", o.str("kind"), o.str("metadata.name"))
		}
	}

	dep := find(t, objs, "Deployment", "-provisioner")
	ds := find(t, objs, "DaemonSet", "-nodeplugin")
	args := func(o obj, container string) []string {
		for _, c := range shapeOf(t, o).Containers {
			if c.Name == container {
				return c.Args
			}
		}
		return nil
	}
	names := func(o obj) []string {
		var n []string
		for _, c := range shapeOf(t, o).Containers {
			n = append(n, c.Name)
		}
		return n
	}
	plugin := "csi-" + kind + "plugin"
	want := map[string][]string{
		"controller " + plugin:  {"--drivername=" + driver},
		"node " + plugin:        {"--drivername=" + driver, "--pluginpath=" + kubelet + "/plugins", "--stagingpath=" + kubelet + "/plugins/kubernetes.io/csi/"},
		"node driver-registrar": {"--kubelet-registration-path=" + kubelet + "/plugins/" + driver + "/csi.sock"},
	}
	sc := find(t, objs, "StorageClass", "")
	vsc := find(t, objs, "VolumeSnapshotClass", "")
	secret := find(t, objs, "Secret", "")
	switch kind {
	case "rbd":
		cfg := find(t, objs, "ConfigMap", "ceph-csi-config").strMap("data")["config.json"]
		var clusters []map[string]any
		if err := json.Unmarshal([]byte(cfg), &clusters); err != nil || len(clusters) != 1 || clusters[0]["clusterID"] != "rook-ceph" {
			t.Errorf("config.json %q does not hold csiConfig (%v)", cfg, err)
		}
		if r := dep.str("spec.replicas"); r != "1" {
			t.Errorf("replicas %s, want 1", r)
		}
		if slices.Contains(names(dep), "csi-attacher") {
			t.Error("attacher runs although provisioner.attacher.enabled is false")
		}
		want["controller "+plugin] = append(want["controller "+plugin], "--v=3", "--rbdhardmaxclonedepth=6",
			"--rbdsoftmaxclonedepth=3", "--skipforceflatten=true", "--clustername=k8s-b", "--instanceid=cluster-b")
		want["controller csi-provisioner"] = []string{"--worker-threads=20", "--timeout=60s", "--v=2"}
		want["node liveness-prometheus"] = []string{"--metricsport=9681"}
		want["node "+plugin] = append(want["node "+plugin], "--enablegrpcmetrics=true", "--metricsport=9692")
		for k, v := range map[string]string{"clusterID": "rook-ceph", "pool": "replicapool", "dataPool": "ec-data",
			"imageFeatures": "layering,exclusive-lock,object-map,fast-diff", "mounter": "rbd-nbd",
			"volumeNamePrefix": "b-vol-", "csi.storage.k8s.io/fstype": "xfs",
			"csi.storage.k8s.io/provisioner-secret-namespace": "rook-rbd"} {
			if got := sc.strMap("parameters")[k]; got != v {
				t.Errorf("StorageClass parameter %s = %q, want %q", k, got, v)
			}
		}
		if sc.str("reclaimPolicy") != "Retain" || sc.str("provisioner") != driver {
			t.Errorf("StorageClass: reclaimPolicy %s, provisioner %s", sc.str("reclaimPolicy"), sc.str("provisioner"))
		}
		if vsc.strMap("parameters")["snapshotNamePrefix"] != "b-snap-" || vsc.str("deletionPolicy") != "Retain" {
			t.Errorf("VolumeSnapshotClass %v", vsc)
		}
		if _, ok := secret.strMap("data")["userKey"]; !ok {
			t.Errorf("Secret lacks userKey")
		}
	case "cephfs":
		// Rook's ConfigMap: not rendered, mounted with its key as config.json.
		for _, o := range objs {
			if o.str("kind") == "ConfigMap" && strings.Contains(o.str("metadata.name"), "csi-config") {
				t.Errorf("externallyManagedConfigmap renders ConfigMap %s", o.str("metadata.name"))
			}
		}
		for _, o := range []obj{dep, ds} {
			vols, _ := json.Marshal(shapeOf(t, o).Volumes)
			if !strings.Contains(string(vols), `"configMap":{"defaultMode":420,"items":[{"key":"csi-cluster-config-json","path":"config.json"}],"name":"rook-ceph-csi-config"}`) {
				t.Errorf("%s does not mount rook-ceph-csi-config/csi-cluster-config-json as config.json: %s", o.str("kind"), vols)
			}
		}
		if r := dep.str("spec.replicas"); r != "2" {
			t.Errorf("replicas %s, want 2", r)
		}
		if slices.Contains(names(dep), "csi-resizer") {
			t.Error("resizer runs although provisioner.resizer.enabled is false")
		}
		want["node "+plugin] = append(want["node "+plugin], "--forcecephkernelclient=true",
			"--kernelmountoptions=ms_mode=secure", "--fusemountoptions=debug", "--radosnamespacecephfs=csi-b")
		want["controller "+plugin] = append(want["controller "+plugin], "--radosnamespacecephfs=csi-b")
		if got := args(dep, plugin); slices.Contains(got, "--enablegrpcmetrics=true") {
			t.Errorf("provisioner.metrics.enabled=false, and the controller still serves metrics: %v", got)
		}
		for k, v := range map[string]string{"clusterID": "rook-ceph", "fsName": "myfs", "pool": "myfs-data0",
			"mounter": "fuse", "volumeNamePrefix": "b-vol-"} {
			if got := sc.strMap("parameters")[k]; got != v {
				t.Errorf("StorageClass parameter %s = %q, want %q", k, got, v)
			}
		}
		data := secret.strMap("data")
		for _, k := range []string{"adminID", "adminKey", "userID", "userKey"} {
			if _, ok := data[k]; !ok {
				t.Errorf("Secret lacks %s", k)
			}
		}
	}
	for where, wantArgs := range want {
		side, container, _ := strings.Cut(where, " ")
		o := dep
		if side == "node" {
			o = ds
		}
		got := args(o, container)
		for _, a := range wantArgs {
			if !slices.Contains(got, a) {
				t.Errorf("%s container %s lacks %s (has %v)", side, container, a, got)
			}
		}
	}
	vols, _ := json.Marshal(shapeOf(t, ds).Volumes)
	if strings.Contains(string(vols), "/var/lib/kubelet") || !strings.Contains(string(vols), kubelet+"/plugins/"+driver) {
		t.Errorf("node plugin volumes ignore kubeletDir: %s", vols)
	}
	wantImage := map[string]string{"rbd": "registry.example.com/cephcsi:v9.9.9", "cephfs": "quay.io/leanceph/cephcsi:latest"}[kind]
	for _, c := range shapeOf(t, ds).Containers {
		if (c.Name == plugin || c.Name == "liveness-prometheus") && c.Image != wantImage {
			t.Errorf("node container %s runs %s, want %s (nodeplugin.plugin.image)", c.Name, c.Image, wantImage)
		}
	}
}
