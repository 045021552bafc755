//go:build integration

// The containers ceph-csi-operator v1.0 renders (Rook v1.18 default, v1.20's
// only path), run with exactly their argument vectors
// (/work/shared/ceph-csi-compat.md) against the local cluster. Only what
// Kubernetes fills in is given a value ($(NODE_ID), $(DRIVER_NAMESPACE)),
// and the paths a pod mounts are moved to temporary directories through the
// flags that name them: the socket directory /csi (--endpoint,
// --csi-addons-endpoint), the kubelet directory (--stagingpath, and
// --pluginpath, which the operator leaves at its default), and the
// ConfigMap at /etc/ceph-csi-config (--configpath, which ceph-csi lacks:
// ceph-csi reads that path only).
package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil/ports"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	fencepb "github.com/csi-addons/spec/lib/go/fence"
	"github.com/csi-addons/spec/lib/go/identity"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leanceph/cephcsi/internal/testutil"
)

const (
	rbdDriver    = "rook-ceph.rbd.csi.ceph.com"
	cephfsDriver = "rook-ceph.cephfs.csi.ceph.com"
	nodeID       = "node-1" // $(NODE_ID)
	driverNS     = "rook-ceph"
)

// pod is the directories a pod of the operator would mount, for one test.
type pod struct {
	sockDir    string // /csi
	kubeletDir string // /var/lib/kubelet
	configDir  string // /etc/ceph-csi-config
	workDir    string // the container's working directory (/), for csi-logs/
}

func newPod(t *testing.T, configDir string) pod {
	sock, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	return pod{sockDir: sock, kubeletDir: t.TempDir(), configDir: configDir, workDir: t.TempDir()}
}

// expand turns a container's args as the operator renders them into the
// vector to run here.
func (p pod) expand(args ...string) []string {
	r := strings.NewReplacer(
		"unix:///csi/", "unix://"+p.sockDir+"/",
		"$(NODE_ID)", nodeID,
		"$(DRIVER_NAMESPACE)", driverNS,
		"<kubeletDir>", p.kubeletDir,
	)
	out := make([]string, 0, len(args)+2)
	for _, a := range args {
		out = append(out, r.Replace(a))
	}
	// The mounts the operator gives without naming them on the command line.
	out = append(out, "--configpath="+filepath.Join(p.configDir, "config.json"),
		"--pluginpath="+filepath.Join(p.kubeletDir, "plugins"))
	return out
}

// operatorConfig writes config.json and cluster-mapping.json shaped as the
// operator writes them for one ClientProfile naming the local cluster.
func operatorConfig(t *testing.T, c *testutil.Cluster) string {
	dir := t.TempDir()
	var local []struct {
		Monitors []string `json:"monitors"`
	}
	if err := json.Unmarshal(mustRead(t, c.ConfigJSON), &local); err != nil || len(local) == 0 || len(local[0].Monitors) == 0 {
		t.Fatalf("monitors of %s: %v", c.ConfigJSON, err)
	}
	mons := local[0].Monitors
	entry := map[string]any{
		"clusterID": c.ClusterID,
		"monitors":  mons,
		"cephFS": map[string]any{"subvolumeGroup": "csi", "kernelMountOptions": "", "fuseMountOptions": "", "radosNamespace": "csi",
			"controllerPublishSecretRef": map[string]string{"name": "rook-csi-cephfs-provisioner", "namespace": driverNS}},
		"rbd": map[string]any{"radosNamespace": "", "mirrorCount": 1,
			"controllerPublishSecretRef": map[string]string{"name": "rook-csi-rbd-provisioner", "namespace": driverNS},
			"nodePublishSecretRef":       map[string]string{"name": "rook-csi-rbd-node", "namespace": driverNS}},
		"nfs":          map[string]any{},
		"nvmeof":       map[string]any{"radosNamespace": "", "controllerPublishSecretRef": map[string]string{}},
		"readAffinity": map[string]any{"enabled": true, "crushLocationLabels": []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"}},
	}
	writeJSON(t, filepath.Join(dir, "config.json"), []any{entry})
	writeJSON(t, filepath.Join(dir, "cluster-mapping.json"), []any{map[string]any{
		"clusterIdMapping": map[string]string{c.ClusterID: "rook-ceph-dr"},
		"RBDPoolIDMapping": []map[string]string{{"1": "2"}},
	}})
	return dir
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeJSON(t *testing.T, path string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// operatorEnv is the environment the operator gives the plugin containers.
var operatorEnv = []string{"POD_IP=127.0.0.1", "NODE_ID=" + nodeID, "POD_NAMESPACE=" + driverNS}

// nodeLabels are the labels of node-1 as the Kubernetes API serves them.
var nodeLabels = map[string]string{
	"kubernetes.io/hostname":        nodeID,
	"topology.kubernetes.io/zone":   "zone-a",
	"topology.kubernetes.io/region": "region-1",
}

// serveNodeAPI answers the one Kubernetes API call the plugins make, GET
// of node-1, and returns a kubeconfig for it. In a pod the plugin reaches
// the API through its service account; here $KUBERNETES_CONFIG_PATH names
// the kubeconfig, so the containers' arguments stay exactly the operator's.
func serveNodeAPI(t *testing.T) string {
	t.Helper()
	node, err := json.Marshal(map[string]any{"kind": "Node", "apiVersion": "v1",
		"metadata": map[string]any{"name": nodeID, "labels": nodeLabels}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/api/v1/nodes/"+nodeID {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(node)
	}))
	t.Cleanup(srv.Close)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q}}]
users: [{name: test, user: {}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
`, srv.URL)
	if err := os.WriteFile(kubeconfig, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// checkServes checks what kubelet and the sidecars see first: a ready
// Probe and the driver name.
func checkServes(t *testing.T, p *testutil.Process, name string) {
	t.Helper()
	ctx := ctxT(t)
	probe, err := p.Identity.Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v; log:\n%s", probe, err, p.Log())
	}
	info, err := p.Identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != name {
		t.Fatalf("GetPluginInfo = %v, %v; want %s", info, err, name)
	}
}

// checkWarnings checks that each of want is logged exactly once, and that
// nothing else is warned about (klog's W lines).
func checkWarnings(t *testing.T, p *testutil.Process, want ...string) {
	t.Helper()
	log := p.Log()
	for _, w := range want {
		if n := strings.Count(log, w); n != 1 {
			t.Errorf("warning %q logged %d times; log:\n%s", w, n, log)
		}
	}
	for _, line := range strings.Split(log, "\n") {
		if !strings.HasPrefix(line, "W") {
			continue
		}
		if !slices.ContainsFunc(want, func(w string) bool { return strings.Contains(line, w) }) {
			t.Errorf("unexpected warning: %s", line)
		}
	}
}

// The warning of this machine: --pidlimit=-1 cannot be set (the test runs
// in the root pids cgroup, which has no pids.max).
const pidWarning = "--pidlimit=-1: the pids cgroup limit was not changed"

// checkAddons checks what the csi-addons sidecar sees on
// --csi-addons-endpoint: the driver's name, a ready Probe, and exactly the
// capabilities want (as the csi-addons controller spells them in a
// CSIAddonsNode's status); then one fencing call of each side that has
// one, against the cluster.
func checkAddons(t *testing.T, c *testutil.Cluster, pd pod, name string, secrets map[string]string, want ...string) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := grpc.NewClient("unix:"+filepath.Join(pd.sockDir, "csi-addons.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ids := identity.NewIdentityClient(conn)
	id, err := ids.GetIdentity(ctx, &identity.GetIdentityRequest{})
	if err != nil || id.GetName() != name {
		t.Fatalf("CSI-Addons GetIdentity = %v, %v; want %s", id, err, name)
	}
	if p, err := ids.Probe(ctx, &identity.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("CSI-Addons Probe = %v, %v", p, err)
	}
	caps, err := ids.GetCapabilities(ctx, &identity.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, cp := range caps.GetCapabilities() {
		// "service:{type:CONTROLLER_SERVICE}" -> "service.CONTROLLER_SERVICE";
		// the text format may put spaces anywhere.
		text := strings.ReplaceAll(cp.String(), " ", "")
		got = append(got, strings.NewReplacer(":{type:", ".", "}", "").Replace(text))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("CSI-Addons capabilities = %q, want %q", got, want)
	}
	fc := fencepb.NewFenceControllerClient(conn)
	params := map[string]string{"clusterID": c.ClusterID}
	if slices.Contains(want, "network_fence.NETWORK_FENCE") {
		if _, err := fc.ListClusterFence(ctx, &fencepb.ListClusterFenceRequest{Parameters: params, Secrets: secrets}); err != nil {
			t.Errorf("ListClusterFence: %v", err)
		}
	}
	if slices.Contains(want, "network_fence.GET_CLIENTS_TO_FENCE") {
		resp, err := fc.GetFenceClients(ctx, &fencepb.GetFenceClientsRequest{Parameters: params, Secrets: secrets})
		if err != nil || len(resp.GetClients()) != 1 || len(resp.GetClients()[0].GetAddresses()) != 1 ||
			resp.GetClients()[0].GetAddresses()[0].GetCidr() != "127.0.0.1/32" {
			t.Errorf("GetFenceClients = %v, %v; want this node's 127.0.0.1/32", resp, err)
		}
	}
}

func volumeRequest(name string, params, secrets map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
		Parameters: params,
		Secrets:    secrets,
	}
}

// rbdCreateDelete provisions and deletes an RBD volume through p and checks
// the image on the cluster.
func rbdCreateDelete(t *testing.T, c *testutil.Cluster, p *testutil.Process) {
	t.Helper()
	io := c.IOContext(t, "rbd")
	createDelete(t, p, map[string]string{"clusterID": c.ClusterID, "pool": "rbd", "imageFeatures": "layering",
		"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default"}, c.RBDSecrets(),
		"imageName", "pool rbd", func() []string { names, _ := rbd.GetImageNames(io); return names })
}

// cephfsCreateDelete is rbdCreateDelete for a CephFS subvolume.
func cephfsCreateDelete(t *testing.T, c *testutil.Cluster, p *testutil.Process) {
	t.Helper()
	fsa := admin.NewFromConn(c.Admin())
	createDelete(t, p, map[string]string{"clusterID": c.ClusterID, "fsName": "myfs"}, c.CephFSSecrets(),
		"subvolumeName", "myfs/csi", func() []string { subs, _ := fsa.ListSubVolumes("myfs", "csi"); return subs })
}

// createDelete provisions a volume of the StorageClass params through p,
// checks that what the volume context names under key is among listed()
// (the images or subvolumes of where), deletes the volume and checks that
// it is gone.
func createDelete(t *testing.T, p *testutil.Process, params, secrets map[string]string, key, where string, listed func() []string) {
	t.Helper()
	ctx := ctxT(t)
	resp, err := p.Controller.CreateVolume(ctx, volumeRequest("pvc-"+uuid.NewString(), params, secrets))
	if err != nil {
		t.Fatalf("CreateVolume: %v; log:\n%s", err, p.Log())
	}
	name := resp.GetVolume().GetVolumeContext()[key]
	if names := listed(); name == "" || !slices.Contains(names, name) {
		t.Fatalf("%s %q of %s not in %s: %v", key, name, resp.GetVolume().GetVolumeId(), where, names)
	}
	if _, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(), Secrets: secrets}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	if slices.Contains(listed(), name) {
		t.Fatalf("%s %q left after DeleteVolume", key, name)
	}
}

// checkNode checks NodeGetInfo: the node ID and, for --domainlabels, the
// segments made of those labels of the node.
func checkNode(t *testing.T, p *testutil.Process, driver string, domainLabels ...string) {
	t.Helper()
	info, err := p.Node.NodeGetInfo(ctxT(t), &csi.NodeGetInfoRequest{})
	if err != nil || info.GetNodeId() != nodeID {
		t.Fatalf("NodeGetInfo = %v, %v", info, err)
	}
	want := map[string]string{}
	for _, l := range domainLabels {
		want["topology."+driver+"/"+l[strings.LastIndex(l, "/")+1:]] = nodeLabels[l]
	}
	if got := info.GetAccessibleTopology().GetSegments(); !maps.Equal(got, want) {
		t.Errorf("NodeGetInfo topology segments = %v, want %v", got, want)
	}
}

// checkLogFile checks the log-rotation flags: the log goes to
// csi-logs/<name>.log below the working directory and to stderr as well.
func checkLogFile(t *testing.T, p *testutil.Process, pd pod, name string) {
	t.Helper()
	path := filepath.Join(pd.workDir, "csi-logs", name+".log")
	wants := []string{"driver started", "serving CSI"}
	has := func(s string) bool {
		return !slices.ContainsFunc(wants, func(w string) bool { return !strings.Contains(s, w) })
	}
	if !has(p.Log()) {
		t.Errorf("stderr (--alsologtostderr) lacks %q:\n%s", wants, p.Log())
	}
	// klog flushes files every 5 seconds.
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && has(string(b)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("--log_file %s: %v; it holds:\n%s", path, err, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func logRotation(container string) []string {
	return []string{"--logtostderr=false", "--alsologtostderr=true", "--log_file=csi-logs/" + container + ".log"}
}

// controllerArgs is the argument vector of the operator's controller plugin
// container of a driver kind, extra flags last.
func controllerArgs(kind, driver string, extra ...string) []string {
	return append([]string{"--type=" + kind, "--v=5", "--endpoint=unix:///csi/csi.sock", "--nodeid=$(NODE_ID)",
		"--controllerserver=true", "--drivername=" + driver, "--pidlimit=-1"}, extra...)
}

func TestOperatorContainers(t *testing.T) {
	c := testutil.RequireCluster(t)
	bin := testutil.BuildBinary(t)
	cfg := operatorConfig(t, c)
	env := append(slices.Clone(operatorEnv), "KUBERNETES_CONFIG_PATH="+serveNodeAPI(t))
	start := func(t *testing.T, pd pod, args ...string) *testutil.Process {
		return testutil.StartArgv(t, testutil.ArgvProcess{Bin: bin, Args: pd.expand(args...), Env: env, Dir: pd.workDir})
	}

	for _, k := range []struct {
		kind, driver, container string
		createDelete            func(*testing.T, *testutil.Cluster, *testutil.Process)
		extra                   []string // flags of the second container before the CSI-Addons endpoint
		second                  string   // what the second container adds
		secrets                 func(*testutil.Cluster) map[string]string
		addons                  []string // the CSI-Addons capabilities the controller advertises
	}{
		{"rbd", rbdDriver, "csi-rbdplugin", rbdCreateDelete, nil, "with fencing", (*testutil.Cluster).RBDSecrets,
			[]string{"service.CONTROLLER_SERVICE", "reclaim_space.OFFLINE", "network_fence.NETWORK_FENCE"}},
		{"cephfs", cephfsDriver, "csi-cephfsplugin", cephfsCreateDelete, []string{"--forcecephkernelclient=true"}, "with kernel client",
			(*testutil.Cluster).CephFSSecrets, []string{"service.CONTROLLER_SERVICE", "network_fence.NETWORK_FENCE"}},
	} {
		t.Run(k.kind+" controller", func(t *testing.T) {
			pd := newPod(t, cfg)
			p := start(t, pd, controllerArgs(k.kind, k.driver, "--enable-fencing=false")...)
			checkServes(t, p, k.driver)
			k.createDelete(t, c, p)
			checkWarnings(t, p, pidWarning)
		})

		t.Run(k.kind+" controller "+k.second+", CSI-Addons and log rotation", func(t *testing.T) {
			pd := newPod(t, cfg)
			args := controllerArgs(k.kind, k.driver, "--enable-fencing=true", "--clustername=prod-east")
			args = append(append(args, k.extra...), "--csi-addons-endpoint=unix:///csi/csi-addons.sock")
			p := start(t, pd, append(args, logRotation(k.container)...)...)
			checkServes(t, p, k.driver)
			k.createDelete(t, c, p)
			checkAddons(t, c, pd, k.driver, k.secrets(c), k.addons...)
			checkLogFile(t, p, pd, k.container)
			checkWarnings(t, p, pidWarning)
		})
	}

	t.Run("rbd node", func(t *testing.T) {
		pd := newPod(t, cfg)
		p := start(t, pd, "--v=5", "--type=rbd", "--nodeserver=true", "--nodeid=$(NODE_ID)", "--drivername="+rbdDriver,
			"--enable-fencing=false", "--endpoint=unix:///csi/csi.sock", "--pidlimit=-1",
			"--stagingpath=<kubeletDir>/plugins/kubernetes.io/csi/")
		checkServes(t, p, rbdDriver)
		checkNode(t, p, rbdDriver)
		checkWarnings(t, p, pidWarning)
	})

	t.Run("rbd node with CSI-Addons, topology and log rotation", func(t *testing.T) {
		pd := newPod(t, cfg)
		args := []string{"--v=5", "--type=rbd", "--nodeserver=true", "--nodeid=$(NODE_ID)", "--drivername=" + rbdDriver,
			"--enable-fencing=true", "--endpoint=unix:///csi/csi.sock", "--pidlimit=-1",
			"--csi-addons-endpoint=unix:///csi/csi-addons.sock", "--stagingpath=<kubeletDir>/plugins/kubernetes.io/csi/",
			"--domainlabels=topology.kubernetes.io/zone,topology.kubernetes.io/region"}
		p := start(t, pd, append(args, logRotation("csi-rbdplugin")...)...)
		checkServes(t, p, rbdDriver)
		checkNode(t, p, rbdDriver, "topology.kubernetes.io/zone", "topology.kubernetes.io/region")
		checkAddons(t, c, pd, rbdDriver, c.RBDSecrets(),
			"service.NODE_SERVICE", "reclaim_space.ONLINE", "network_fence.GET_CLIENTS_TO_FENCE")
		checkLogFile(t, p, pd, "csi-rbdplugin")
		checkWarnings(t, p, pidWarning)
	})

	t.Run("cephfs node with mount options and kernel client", func(t *testing.T) {
		pd := newPod(t, cfg)
		args := []string{"--v=5", "--type=cephfs", "--nodeserver=true", "--nodeid=$(NODE_ID)", "--drivername=" + cephfsDriver,
			"--enable-fencing=false", "--endpoint=unix:///csi/csi.sock", "--pidlimit=-1", "--forcecephkernelclient=true",
			"--kernelmountoptions=ms_mode=secure,recover_session=clean", "--fusemountoptions=client_die_on_failed_remount=false",
			"--domainlabels=topology.kubernetes.io/zone"}
		p := start(t, pd, append(args, logRotation("csi-cephfsplugin")...)...)
		checkServes(t, p, cephfsDriver)
		checkNode(t, p, cephfsDriver, "topology.kubernetes.io/zone")
		checkLogFile(t, p, pd, "csi-cephfsplugin")
		if !strings.Contains(p.Log(), `"force-kernel-client"`) {
			t.Errorf("--forcecephkernelclient not among the behaviours in force; log:\n%s", p.Log())
		}
		checkWarnings(t, p, pidWarning)
	})

	t.Run("omap generator", func(t *testing.T) {
		pd := newPod(t, cfg)
		p := testutil.StartArgv(t, testutil.ArgvProcess{Bin: bin, Dir: pd.workDir,
			Env:   []string{"DRIVER_NAMESPACE=" + driverNS},
			Args:  pd.expand("--v=5", "--type=controller", "--drivernamespace=$(DRIVER_NAMESPACE)", "--drivername="+rbdDriver, "--clustername=prod-east"),
			Ready: testutil.LogContains("optional behaviours in force")})
		time.Sleep(time.Second)
		if !p.Running() {
			t.Fatalf("--type=controller exited; log:\n%s", p.Log())
		}
		checkWarnings(t, p, "--type=controller: ceph-csi's Kubernetes-side controller is not implemented")
	})

	t.Run("liveness", func(t *testing.T) {
		pd := newPod(t, cfg)
		plugin := start(t, pd, controllerArgs("rbd", rbdDriver, "--enable-fencing=false")...)
		checkServes(t, plugin, rbdDriver)
		port := ports.Free(t)
		url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
		var body string
		p := testutil.StartArgv(t, testutil.ArgvProcess{Bin: bin, Dir: pd.workDir, Env: []string{"POD_IP=127.0.0.1"},
			Args: pd.expand("--type=liveness", "--endpoint=unix:///csi/csi.sock", fmt.Sprintf("--metricsport=%d", port),
				"--metricspath=/metrics", "--polltime=60s", "--timeout=3s"),
			Ready: func(*testutil.Process) error {
				b, err := get(url)
				body = b
				if err == nil && !strings.Contains(b, "\ncsi_liveness 1\n") {
					return fmt.Errorf("metrics say %q", b)
				}
				return err
			}})
		if !strings.Contains(body, "# TYPE csi_liveness gauge") {
			t.Errorf("metrics body:\n%s", body)
		}
		checkWarnings(t, p)
	})
}

func get(url string) (string, error) {
	resp, err := http.Get(url) //nolint:gosec // a URL of the test
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}
