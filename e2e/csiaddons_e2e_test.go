//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// The CSI-Addons flows Rook users rely on, driven by the real csi-addons
// controller manager and sidecar (github.com/csi-addons/kubernetes-csi-addons,
// built from the module proxy): a ReclaimSpaceJob for a PVC, and a
// NetworkFence through a NetworkFenceClass, against cephcsi controller and
// node plugins serving --csi-addons-endpoint.
//
// There is no kubelet here, so the test does the kubelet's and the
// scheduler's part by hand: pods exist only as API objects (their podIP is
// set to 127.0.0.1, where the sidecars listen, as the manager connects to
// pod://<pod>.<namespace>:<port>), the sidecars and the manager get their
// service account token where a pod would have it (a private mount
// namespace per process), the volume is staged through the node plugin's
// CSI socket at kubelet's staging path, and the VolumeAttachment is marked
// attached as the external-attacher would.

const addonsNS = "e2e-csi-addons"

// addonsEnv is the running CSI-Addons side of the test.
type addonsEnv struct {
	e         *env
	dir       string
	ctrlSock  string // the controller plugin's CSI socket
	nodeSock  string // the node plugin's CSI socket
	staging   string // kubelet's staging directory (--stagingpath)
	pluginDir string
}

// startInPod runs a program as a container of a pod would: with the
// service account token and CA at /var/run/secrets/kubernetes.io/serviceaccount
// (in a mount namespace of its own, so nothing changes on this machine)
// and the API server in KUBERNETES_SERVICE_HOST/PORT.
func (e *env) startInPod(t *testing.T, name, sa, bin string, args ...string) *proc {
	t.Helper()
	tokenDir := filepath.Join(e.dir, "sa-"+name)
	if err := os.MkdirAll(tokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	token := e.mustKubectl(t, nil, "create", "token", sa, "-n", addonsNS, "--duration=4h")
	if err := os.WriteFile(filepath.Join(tokenDir, "token"), []byte(strings.TrimSpace(string(token))), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(e.pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokenDir, "ca.crt"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(strings.TrimPrefix(e.server, "https://"), ":")
	script := `set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
cp "$TOKEN_DIR/token" "$TOKEN_DIR/ca.crt" /run/secrets/kubernetes.io/serviceaccount/
exec "$@"`
	logPath := filepath.Join(e.logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", bin}, args...)...)
	cmd.Env = append(os.Environ(), "TOKEN_DIR="+tokenDir, "KUBERNETES_SERVICE_HOST="+host, "KUBERNETES_SERVICE_PORT="+port)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

// applyJSON creates or updates objects from a JSON (or YAML) document.
func (e *env) applyJSON(t *testing.T, doc string) {
	t.Helper()
	e.mustKubectl(t, []byte(doc), "apply", "-f", "-")
}

// uidOf returns an object's UID.
func (e *env) uidOf(t *testing.T, args ...string) string {
	t.Helper()
	return e.getJSON(t, args...).str("metadata.uid")
}

// fakePod makes the API object of a pod of owner (kind/name) whose
// containers run here as processes, with 127.0.0.1 as its address. Its
// scheduler is none that runs: the e2e's real scheduler would bind it to
// the kubelet node, whose kubelet would then own its status and clear the
// address the csi-addons manager dials.
func (e *env) fakePod(t *testing.T, name, ownerKind, ownerName, ownerUID string) string {
	t.Helper()
	apiVersion := "apps/v1"
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": %q, "namespace": %q,
 "labels": {"app": "csi-addons-e2e-pod"},
 "ownerReferences": [{"apiVersion": %q, "kind": %q, "name": %q, "uid": %q}]},
 "spec": {"schedulerName": "csi-addons-e2e-none", "containers": [{"name": "csi-addons", "image": "csi-addons-e2e:none"}]}}`,
		name, addonsNS, apiVersion, ownerKind, ownerName, ownerUID))
	e.mustKubectl(t, nil, "patch", "pod", name, "-n", addonsNS, "--subresource=status", "--type=merge",
		"-p", `{"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}`)
	return e.uidOf(t, "pod", name, "-n", addonsNS)
}

func waitSocket(t *testing.T, p *proc, sock string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("%s: no socket %s (%v):\n%s", p.name, sock, p.err, p.tail(20))
		}
	}
}

func csiConn(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startAddons starts the csi-addons manager, the cephcsi controller and
// node plugins with --csi-addons-endpoint and --enable-fencing, and a
// csi-addons sidecar next to each, and waits until the manager is
// connected to both sidecars (CSIAddonsNode Connected).
func startAddons(t *testing.T, e *env, c *testutil.Cluster) *addonsEnv {
	t.Helper()
	e.mustKubectl(t, nil, "create", "namespace", addonsNS)
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "namespace", addonsNS, "--wait=false") })
	e.mustKubectl(t, nil, "apply", "-f", e.tools["csi-addons-crds"])
	e.mustKubectl(t, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/csiaddonsnodes.csiaddons.openshift.io", "crd/reclaimspacejobs.csiaddons.openshift.io",
		"crd/networkfences.csiaddons.openshift.io", "crd/networkfenceclasses.csiaddons.openshift.io")
	// The csi-addons programs' own RBAC is the csi-addons project's; here
	// both service accounts are cluster-admin.
	for _, sa := range []string{"csi-addons-controller-manager", "csi-addons-sidecar"} {
		e.mustKubectl(t, nil, "create", "serviceaccount", sa, "-n", addonsNS)
		e.mustKubectl(t, nil, "create", "clusterrolebinding", "e2e-"+sa, "--clusterrole=cluster-admin",
			"--serviceaccount="+addonsNS+":"+sa)
		t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "clusterrolebinding", "e2e-"+sa) })
	}

	a := &addonsEnv{e: e, dir: filepath.Join(e.dir, "addons")}
	a.pluginDir = filepath.Join(a.dir, "kubelet", "plugins")
	a.staging = filepath.Join(a.pluginDir, "kubernetes.io", "csi") + "/"
	for _, d := range []string{filepath.Join(a.dir, "ctrl"), filepath.Join(a.dir, "node"), a.staging} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	driverBin := filepath.Join(e.root, "_output", "cephcsi")
	a.ctrlSock = filepath.Join(a.dir, "ctrl", "csi.sock")
	a.nodeSock = filepath.Join(a.dir, "node", "csi.sock")
	ctrlAddons, nodeAddons := filepath.Join(a.dir, "ctrl", "csi-addons.sock"), filepath.Join(a.dir, "node", "csi-addons.sock")
	// The operator's argument vectors (ceph-csi-compat.md) with fencing and
	// CSI-Addons on.
	ctrl, err := e.start("addons-rbd-ctrlplugin", driverBin, "--type=rbd", "--v=2", "--endpoint=unix://"+a.ctrlSock,
		"--nodeid="+e2eNode, "--controllerserver=true", "--drivername="+rbdDriver, "--enable-fencing=true",
		"--csi-addons-endpoint=unix://"+ctrlAddons, "--configpath="+c.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.stop)
	node, err := e.start("addons-rbd-nodeplugin", driverBin, "--v=2", "--type=rbd", "--nodeserver=true", "--nodeid="+e2eNode,
		"--drivername="+rbdDriver, "--enable-fencing=true", "--endpoint=unix://"+a.nodeSock,
		"--csi-addons-endpoint=unix://"+nodeAddons, "--stagingpath="+a.staging, "--configpath="+c.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.stop)
	waitSocket(t, ctrl, ctrlAddons)
	waitSocket(t, node, nodeAddons)

	// The owners of the plugin pods: a Deployment and a DaemonSet that run
	// nothing themselves.
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "csi-rbdplugin-provisioner", "namespace": %q},
 "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "csi-addons-e2e-ctrl"}},
  "template": {"metadata": {"labels": {"app": "csi-addons-e2e-ctrl"}}, "spec": {"containers": [{"name": "c", "image": "csi-addons-e2e:none"}]}}}}`, addonsNS))
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "csi-rbdplugin", "namespace": %q},
 "spec": {"selector": {"matchLabels": {"app": "csi-addons-e2e-node"}},
  "template": {"metadata": {"labels": {"app": "csi-addons-e2e-node"}},
   "spec": {"nodeSelector": {"e2e.cephcsi/none": "none"}, "containers": [{"name": "c", "image": "csi-addons-e2e:none"}]}}}}`, addonsNS))
	ctrlPod := e.fakePod(t, "csi-rbdplugin-provisioner-e2e", "Deployment", "csi-rbdplugin-provisioner",
		e.uidOf(t, "deployment", "csi-rbdplugin-provisioner", "-n", addonsNS))
	nodePod := e.fakePod(t, "csi-rbdplugin-e2e", "DaemonSet", "csi-rbdplugin", e.uidOf(t, "daemonset", "csi-rbdplugin", "-n", addonsNS))

	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			t.Fatal(err)
		}
	}
	sidecar := e.tools["csi-addons-sidecar"]
	e.startInPod(t, "addons-sidecar-ctrl", "csi-addons-sidecar", sidecar, "--csi-addons-address="+ctrlAddons,
		"--node-id="+e2eNode, fmt.Sprintf("--controller-port=%d", ports[0]), "--pod=csi-rbdplugin-provisioner-e2e",
		"--namespace="+addonsNS, "--pod-uid="+ctrlPod, "--leader-election-namespace="+addonsNS, "--v=4")
	e.startInPod(t, "addons-sidecar-node", "csi-addons-sidecar", sidecar, "--csi-addons-address="+nodeAddons,
		"--node-id="+e2eNode, fmt.Sprintf("--controller-port=%d", ports[1]), "--pod=csi-rbdplugin-e2e",
		"--namespace="+addonsNS, "--pod-uid="+nodePod, "--stagingpath="+a.staging, "--v=4")
	mgr := e.startInPod(t, "addons-manager", "csi-addons-controller-manager", e.tools["csi-addons-manager"],
		"--namespace="+addonsNS, "--leader-elect=false", "--metrics-bind-address=0",
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", ports[2]))

	// Both sidecars registered and connected, with our capabilities.
	begin := time.Now()
	want := map[string][]string{
		e2eNode + "-" + addonsNS + "-deployment-csi-rbdplugin-provisioner": {"service.CONTROLLER_SERVICE",
			"reclaim_space.OFFLINE", "network_fence.NETWORK_FENCE"},
		e2eNode + "-" + addonsNS + "-daemonset-csi-rbdplugin": {"service.NODE_SERVICE", "reclaim_space.ONLINE",
			"network_fence.GET_CLIENTS_TO_FENCE"},
	}
	eventually(t, 2*time.Minute, func() string {
		if mgr.exited() {
			t.Fatalf("the csi-addons manager exited (%v):\n%s", mgr.err, mgr.tail(30))
		}
		var missing []string
		// A list in a namespace is an empty List when there is none yet;
		// --ignore-not-found would print nothing instead of JSON.
		nodes := e.getJSON(t, "csiaddonsnodes", "-n", addonsNS).items()
		for name, caps := range want {
			var found obj
			for _, it := range nodes {
				if it.str("metadata.name") == name {
					found = it
				}
			}
			if found == nil || found.str("status.state") != "Connected" {
				missing = append(missing, name+" not connected")
				continue
			}
			got := fmt.Sprint(found.get("status.capabilities"))
			for _, cp := range caps {
				if !strings.Contains(got, cp) {
					missing = append(missing, name+" lacks "+cp+" in "+got)
				}
			}
		}
		return strings.Join(missing, "; ")
	})
	t.Logf("csi-addons: both sidecars connected to the manager in %s", ms(time.Since(begin)))
	return a
}

// poolStored is the pool's STORED bytes as `ceph df` shows them.
func poolStored(t *testing.T, io *rados.IOContext) uint64 {
	t.Helper()
	st, err := io.GetPoolStats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Num_bytes
}

func syncfs(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

func TestCSIAddons(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, rbdPool)
	a := startAddons(t, e, c)
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rbd-node", "namespace": %q},
 "stringData": {"userID": %q, "userKey": %q}}`, addonsNS, c.Var("CEPH_RBD_NODE_ID"), c.Var("CEPH_RBD_NODE_KEY")))
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rbd-provisioner", "namespace": %q},
 "stringData": {"userID": %q, "userKey": %q}}`, addonsNS, c.Var("CEPH_RBD_PROVISIONER_ID"), c.Var("CEPH_RBD_PROVISIONER_KEY")))

	t.Run("ReclaimSpaceJob", func(t *testing.T) { reclaimSpaceJob(t, e, c, io, a) })
	t.Run("NetworkFence", func(t *testing.T) { networkFence(t, e, c) })
	checkNoSecretsInLogs(t, e, c.Var("CEPH_RBD_NODE_KEY"), c.Var("CEPH_RBD_PROVISIONER_KEY"))
}

// reclaimSpaceJob: a PV of ours, staged on the node and attached; files
// written and deleted, zeros written; a ReclaimSpaceJob for its PVC
// completes, and the image and the pool hold less.
func reclaimSpaceJob(t *testing.T, e *env, c *testutil.Cluster, io *rados.IOContext, a *addonsEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ctl := csi.NewControllerClient(csiConn(t, a.ctrlSock))
	node := csi.NewNodeClient(csiConn(t, a.nodeSock))
	vcap := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	// What the external-provisioner would ask for (this test has its own
	// controller plugin, the one with --csi-addons-endpoint).
	resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-csi-addons-e2e",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20}, VolumeCapabilities: []*csi.VolumeCapability{vcap},
		Parameters: map[string]string{"clusterID": c.ClusterID, "pool": rbdPool, "mounter": "rbd-fuse", "csi.storage.k8s.io/fstype": "ext4"},
		Secrets:    c.RBDSecrets()})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	vol := resp.GetVolume()
	image := vol.GetVolumeContext()["imageName"]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets()}); err != nil {
			t.Errorf("DeleteVolume: %v", err)
		}
	})
	attrs := ""
	for k, v := range vol.GetVolumeContext() {
		attrs += fmt.Sprintf("%q: %q, ", k, v)
	}
	const pv, pvc = "pv-csi-addons-e2e", "data"
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": %q},
 "spec": {"capacity": {"storage": "256Mi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
  "volumeMode": "Filesystem", "claimRef": {"namespace": %q, "name": %q},
  "csi": {"driver": %q, "volumeHandle": %q, "fsType": "ext4", "volumeAttributes": {%s},
   "nodeStageSecretRef": {"name": "rbd-node", "namespace": %q}}}}`,
		pv, addonsNS, pvc, rbdDriver, vol.GetVolumeId(), strings.TrimSuffix(attrs, ", "), addonsNS))
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "pv", pv, "--wait=false") })
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": %q, "namespace": %q},
 "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": %q, "resources": {"requests": {"storage": "256Mi"}}}}`,
		pvc, addonsNS, pv))
	e.wait(t, time.Minute, "--for=jsonpath={.status.phase}=Bound", "pvc/"+pvc, "-n", addonsNS)

	// The kubelet's part: stage at its global mount path for the PV, and the
	// attacher's: the VolumeAttachment that tells the manager which node's
	// sidecar reclaims.
	sum := sha256.Sum256([]byte(vol.GetVolumeId()))
	staging := filepath.Join(a.staging, rbdDriver, hex.EncodeToString(sum[:]), "globalmount")
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: vcap, VolumeContext: vol.GetVolumeContext(), Secrets: c.RBDNodeSecrets()}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	})
	const va = "csi-addons-e2e-va"
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": %q},
 "spec": {"attacher": %q, "nodeName": %q, "source": {"persistentVolumeName": %q}}}`, va, rbdDriver, e2eNode, pv))
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "volumeattachment", va, "--wait=false") })
	e.mustKubectl(t, nil, "patch", "volumeattachment", va, "--subresource=status", "--type=merge", "-p", `{"status": {"attached": true}}`)

	// 64 MiB written and deleted (the filesystem frees the blocks, the image
	// keeps them), and 32 MiB of zeros kept in a file (sparsify's part).
	base := poolStored(t, io)
	data := make([]byte, 64<<20)
	_, _ = rand.Read(data)
	file := filepath.Join(staging, "data")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	syncfs(t, staging)
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "zeros"), make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	syncfs(t, staging)
	before := testutil.AllocatedBytes(t, io, image)
	// The pool's statistics come from the manager and lag by seconds.
	var full uint64
	eventually(t, 45*time.Second, func() string {
		if full = poolStored(t, io); full < base+84<<20 {
			return fmt.Sprintf("pool %s stores %d bytes after writing 96 MiB, had %d", rbdPool, full, base)
		}
		return ""
	})
	t.Logf("image %s holds %d bytes before the job; pool %s stores %d", image, before, rbdPool, full)

	begin := time.Now()
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "csiaddons.openshift.io/v1alpha1", "kind": "ReclaimSpaceJob",
 "metadata": {"name": "reclaim-data", "namespace": %q}, "spec": {"target": {"persistentVolumeClaim": %q}, "backOffLimit": 2}}`, addonsNS, pvc))
	eventually(t, 3*time.Minute, func() string {
		j := e.getJSON(t, "reclaimspacejob", "reclaim-data", "-n", addonsNS)
		if r := j.str("status.result"); r != "Succeeded" {
			return fmt.Sprintf("result %q, message %q, conditions %v", r, j.str("status.message"), j.get("status.conditions"))
		}
		return ""
	})
	job := e.getJSON(t, "reclaimspacejob", "reclaim-data", "-n", addonsNS)
	after := testutil.AllocatedBytes(t, io, image)
	t.Logf("ReclaimSpaceJob Succeeded in %s (%q), status.reclaimedSpace %q; image %d -> %d bytes",
		ms(time.Since(begin)), job.str("status.message"), job.str("status.reclaimedSpace"), before, after)
	// The manager reports max(post-pre, 0) of what the plugins answer
	// (kubernetes-csi-addons v0.13.0), which is 0 when usage drops: the
	// field is there, the amount is measured on Ceph.
	if job.get("status.reclaimedSpace") == nil {
		t.Error("status.reclaimedSpace not reported")
	}
	if after > before-64<<20 {
		t.Errorf("the image holds %d bytes after the job, want at most %d (node trim and controller sparsify)", after, before-64<<20)
	}
	// Both sides did their part, through their sidecars.
	for name, line := range map[string]string{"addons-rbd-nodeplugin": `"filesystem trimmed"`, "addons-rbd-ctrlplugin": `"image sparsified"`} {
		if b, _ := os.ReadFile(filepath.Join(e.logDir, name+".log")); !strings.Contains(string(b), line) {
			t.Errorf("%s did not log %s", name, line)
		}
	}
	var reclaimed uint64
	eventually(t, 45*time.Second, func() string {
		if reclaimed = poolStored(t, io); reclaimed > full-64<<20 {
			return fmt.Sprintf("pool stores %d bytes after the job, want at most %d", reclaimed, full-64<<20)
		}
		return ""
	})
	t.Logf("pool %s stores %d bytes after the job (was %d)", rbdPool, reclaimed, full)
	if _, err := os.Stat(filepath.Join(staging, "zeros")); err != nil {
		t.Errorf("the zeros file is gone after the job: %v", err)
	}
}

// networkFence: a NetworkFenceClass lets the manager learn the node's
// client address (GetFenceClients through the node's sidecar); a
// NetworkFence fences a CIDR (the controller's range blocklist entry) and
// unfences it again.
func networkFence(t *testing.T, e *env, c *testutil.Cluster) {
	e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "csiaddons.openshift.io/v1alpha1", "kind": "NetworkFenceClass", "metadata": {"name": "rbd-fence"},
 "spec": {"provisioner": %q, "parameters": {"clusterID": %q,
  "csiaddons.openshift.io/networkfence-secret-name": "rbd-provisioner", "csiaddons.openshift.io/networkfence-secret-namespace": %q}}}`,
		rbdDriver, c.ClusterID, addonsNS))
	t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "networkfenceclass", "rbd-fence", "--wait=false") })
	nodeCR := e2eNode + "-" + addonsNS + "-daemonset-csi-rbdplugin"
	eventually(t, 2*time.Minute, func() string {
		n := e.getJSON(t, "csiaddonsnode", nodeCR, "-n", addonsNS)
		got := fmt.Sprint(n.get("status.networkFenceClientStatus"))
		if !strings.Contains(got, "127.0.0.1/32") || !strings.Contains(got, "rbd-fence") {
			return "networkFenceClientStatus " + got
		}
		return ""
	})

	const cidr = "10.96.250.0/24"
	entry := "cidr:10.96.250.0:0/24"
	blocklisted := func() bool {
		out, err := exec.Command("ceph", "--conf", c.Conf, "--name", "client.admin", "--keyring", c.Var("CEPH_ADMIN_KEYRING"),
			"--admin-socket=", "osd", "blocklist", "ls").Output()
		if err != nil {
			t.Fatalf("ceph osd blocklist ls: %v", err)
		}
		return strings.Contains(string(out), entry)
	}
	fence := func(state string) {
		e.applyJSON(t, fmt.Sprintf(`{"apiVersion": "csiaddons.openshift.io/v1alpha1", "kind": "NetworkFence", "metadata": {"name": "lost-node"},
 "spec": {"networkFenceClassName": "rbd-fence", "fenceState": %q, "cidrs": [%q]}}`, state, cidr))
	}
	begin := time.Now()
	fence("Fenced")
	t.Cleanup(func() {
		if blocklisted() {
			fence("Unfenced")
			time.Sleep(5 * time.Second)
		}
		_, _ = e.kubectl(nil, "delete", "networkfence", "lost-node", "--wait=false")
	})
	waitFence := func(msg string) {
		eventually(t, 2*time.Minute, func() string {
			nf := e.getJSON(t, "networkfence", "lost-node")
			if nf.str("status.result") != "Succeeded" || nf.str("status.message") != msg {
				return fmt.Sprintf("result %q, message %q", nf.str("status.result"), nf.str("status.message"))
			}
			return ""
		})
	}
	waitFence("fencing operation successful")
	if !blocklisted() {
		t.Fatalf("NetworkFence Succeeded but %s is not in the OSD blocklist", entry)
	}
	t.Logf("NetworkFence fenced %s in %s", cidr, ms(time.Since(begin)))
	begin = time.Now()
	fence("Unfenced")
	waitFence("unfencing operation successful")
	if blocklisted() {
		t.Fatalf("NetworkFence unfenced but %s is still in the OSD blocklist", entry)
	}
	t.Logf("NetworkFence unfenced %s in %s", cidr, ms(time.Since(begin)))
	e.mustKubectl(t, nil, "delete", "networkfence", "lost-node", "--timeout=60s")
	if blocklisted() {
		t.Error("deleting the NetworkFence fenced again")
	}
}

// The charts' csiAddons values: off by default (TestManifests compares the
// default rendering with deploy/), on they add the csi-addons sidecar to
// both pods, the CSI-Addons socket and fencing flag to both plugins and the
// sidecar's RBAC rules, accepted by the API server; the sidecar's image is
// the version this test runs.
func TestChartsCSIAddonsSidecar(t *testing.T) {
	e := theEnv
	pins := buildEnv(t)
	for _, kind := range []string{"rbd", "cephfs"} {
		t.Run(kind, func(t *testing.T) {
			chart := filepath.Join(e.root, "charts", "ceph-csi-"+kind)
			ns := "addons-chart-" + kind
			e.mustKubectl(t, nil, "create", "namespace", ns)
			t.Cleanup(func() { _, _ = e.kubectl(nil, "delete", "namespace", ns, "--wait=false") })
			set := "csiAddons.enabled=true,csiAddons.fencing=true,csiAddons.nodepluginPort=9171,kubeletDir=/var/lib/k0s/kubelet"
			helm(t, e, "lint", "--strict", chart, "--set", set)
			objs := dryRun(t, e, helm(t, e, "template", "addons", chart, "--namespace", ns, "--set", set), "-f", "-")
			plugin := "csi-" + kind + "plugin"
			container := func(o obj, name string) (string, []string) {
				for _, c := range shapeOf(t, o).Containers {
					if c.Name == name {
						return c.Image, c.Args
					}
				}
				t.Fatalf("%s %s has no container %s", o.str("kind"), o.str("metadata.name"), name)
				return "", nil
			}
			for side, o := range map[string]obj{"controller": find(t, objs, "Deployment", "-provisioner"),
				"node": find(t, objs, "DaemonSet", "-nodeplugin")} {
				_, args := container(o, plugin)
				for _, a := range []string{"--csi-addons-endpoint=$(CSIADDONS_ENDPOINT)", "--enable-fencing=true"} {
					if !slices.Contains(args, a) {
						t.Errorf("%s %s lacks %s: %v", side, plugin, a, args)
					}
				}
				image, args := container(o, "csi-addons")
				if want := "quay.io/csiaddons/k8s-sidecar:" + pins["CSI_ADDONS_VERSION"]; image != want {
					t.Errorf("%s csi-addons runs %s, want %s (build.env CSI_ADDONS_VERSION, what the e2e runs)", side, image, want)
				}
				want := []string{"--csi-addons-address=$(CSIADDONS_ENDPOINT)", "--node-id=$(NODE_ID)", "--pod=$(POD_NAME)",
					"--namespace=$(POD_NAMESPACE)", "--pod-uid=$(POD_UID)"}
				if side == "controller" {
					want = append(want, "--controller-port=9070", "--leader-election-namespace=$(POD_NAMESPACE)")
				} else {
					want = append(want, "--controller-port=9171", "--stagingpath=/var/lib/k0s/kubelet/plugins/kubernetes.io/csi/")
				}
				for _, a := range want {
					if !slices.Contains(args, a) {
						t.Errorf("%s csi-addons lacks %s: %v", side, a, args)
					}
				}
			}
			for _, role := range []string{"-provisioner", "-nodeplugin"} {
				rules := fmt.Sprint(find(t, objs, "ClusterRole", role).get("rules"))
				for _, r := range []string{"csiaddonsnodes", "tokenreviews", "pods"} {
					if !strings.Contains(rules, r) {
						t.Errorf("ClusterRole %s lacks %s: %s", role, r, rules)
					}
				}
			}
		})
	}
}
