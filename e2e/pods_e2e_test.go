//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Pods on the test node: the kubelet stages and publishes the volumes
// through the node plugins, and the checks are made inside the pods, with
// kubectl exec, as a user would make them.

// podSpec is what a test pod mounts.
type podSpec struct {
	name, pvc string
	block     bool  // volumeDevices at blockDevice instead of a mount at /data
	fsGroup   int64 // pod securityContext.fsGroup, 0 for none
}

const blockDevice = "/dev/e2e-block"

func podManifest(ns string, p podSpec) string {
	volume := `"volumeMounts": [{"name": "data", "mountPath": "/data"}]`
	if p.block {
		volume = fmt.Sprintf(`"volumeDevices": [{"name": "data", "devicePath": %q}]`, blockDevice)
	}
	sc := ""
	if p.fsGroup != 0 {
		sc = fmt.Sprintf(`"securityContext": {"fsGroup": %d},`, p.fsGroup)
	}
	// No scheduler runs here: the pod names its node. The node has only a
	// loopback network, so pods use the host's.
	return fmt.Sprintf(`{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": %q, "namespace": %q},
 "spec": {"nodeName": %q, "hostNetwork": true, "dnsPolicy": "Default", "terminationGracePeriodSeconds": 5, %s
  "containers": [{"name": "app", "image": %q, "imagePullPolicy": "Never",
   "command": ["sh", "-c", "trap 'exit 0' TERM; echo started; while :; do sleep 1; done"],
   %s}],
  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": %q}}]}}`,
		p.name, ns, e2eNode, sc, busyboxImage, volume, p.pvc)
}

// runPod creates a pod and waits until it is Ready; it returns the time
// from the request to Ready.
func runPod(t testing.TB, e *env, ns string, p podSpec) time.Duration {
	t.Helper()
	begin := time.Now()
	e.mustKubectl(t, []byte(podManifest(ns, p)), "create", "-f", "-")
	if _, err := e.kubectl(nil, "wait", "-n", ns, "--for=condition=Ready", "--timeout=180s", "pod/"+p.name); err != nil {
		out, _ := e.kubectl(nil, "describe", "pod", "-n", ns, p.name)
		t.Fatalf("pod %s not Ready: %v\n%s\nkubelet:\n%s", p.name, err, out, e.node.kubelet.tail(20))
	}
	return time.Since(begin)
}

// inPod runs a shell script in the pod's container, with stdin when given,
// and returns its output.
func inPod(t testing.TB, e *env, ns, pod string, stdin []byte, script string) string {
	t.Helper()
	args := []string{"exec", "-n", ns, pod, "-c", "app"}
	if stdin != nil {
		args = append(args, "-i")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["kubectl"], append(append([]string{"--kubeconfig=" + e.kubeconfig}, args...), "--", "sh", "-c", script)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in pod %s: %s: %v\n%s", pod, script, err, out)
	}
	return strings.TrimSpace(string(out))
}

// upload writes data to path in the pod through kubectl exec's stdin and
// checks in the pod that all of it arrived. The exec stream was seen to end
// early now and then (busybox dd reading it directly got 48 of 256 blocks
// once); that is the transport, not the volume under test, so a short
// upload is sent again, said in the log, up to three times.
func upload(t testing.TB, e *env, ns, pod, path string, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	for try := 1; ; try++ {
		got := strings.Fields(inPod(t, e, ns, pod, data, fmt.Sprintf("cat >%s && sync && sha256sum %s", path, path)))
		if len(got) > 0 && got[0] == want {
			return
		}
		if try == 3 {
			t.Fatalf("uploading %d bytes to %s in %s: the pod holds %v, want %s", len(data), path, pod, got, want)
		}
		t.Logf("upload to %s in %s arrived short (%v); sending it again", path, pod, got)
	}
}

// randomData returns n random bytes and their SHA-256 as sha256sum prints it.
func randomData(n int) ([]byte, string) {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// podSHA256 is sha256sum of a file (or the first length bytes of a device
// from offset, when length > 0) as the pod reads it.
func podSHA256(t testing.TB, e *env, ns, pod, path string, offset, length int) string {
	t.Helper()
	script := "sha256sum " + path
	if length > 0 {
		script = fmt.Sprintf("dd if=%s bs=4096 skip=%d count=%d 2>/dev/null | sha256sum", path, offset/4096, length/4096)
	}
	out := inPod(t, e, ns, pod, nil, script)
	return strings.Fields(out)[0]
}

// podFSSize is the size of the filesystem at path (statfs blocks times
// the block size) as the pod sees it.
func podFSSize(t testing.TB, e *env, ns, pod, path string) int64 {
	t.Helper()
	f := strings.Fields(inPod(t, e, ns, pod, nil, "stat -f -c '%b %S' "+path))
	if len(f) != 2 {
		t.Fatalf("stat -f %s in %s: %v", path, pod, f)
	}
	blocks, err1 := strconv.ParseInt(f[0], 10, 64)
	bsize, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat -f %s in %s: %v", path, pod, f)
	}
	return blocks * bsize
}

func podUID(t testing.TB, e *env, ns, pod string) string {
	t.Helper()
	return e.getJSON(t, "pod", pod, "-n", ns).str("metadata.uid")
}

// deletePods deletes pods and waits until they are gone; the kubelet has
// unpublished their volumes by then.
func deletePods(t testing.TB, e *env, ns string, pods ...string) time.Duration {
	t.Helper()
	var args []string
	for _, p := range pods {
		args = append(args, "pod/"+p)
	}
	return deleteAndWait(t, e, append([]string{"-n", ns}, args...)...)
}

// cleanupPods, registered after cleanupOnFailure (so it runs first),
// deletes the pods of ns: PVCs in use by a pod are not deleted.
func cleanupPods(t *testing.T, e *env, ns string) {
	t.Cleanup(func() {
		if out, err := e.kubectl(nil, "delete", "pod", "--all", "-n", ns, "--timeout=120s"); err != nil {
			t.Logf("deleting the pods of %s: %v\n%s", ns, err, out)
		}
	})
}

// nodeLeftovers lists what the node still holds for the driver: mounts
// below the kubelet root, loop devices on files below it, FUSE daemons and
// helpers naming it, the staging directories the kubelet keeps, and the
// directories of the pods given.
func nodeLeftovers(e *env, driver string, podUIDs ...string) []string {
	n := e.node
	var left []string
	for _, mp := range n.hostMounts() {
		if mp != n.kubeletRoot && mp != n.dir {
			left = append(left, "mount "+mp)
		}
	}
	for _, dev := range n.loopDevices() {
		left = append(left, "loop device "+dev)
	}
	for pid, cmd := range n.ourProcesses() {
		if strings.Contains(cmd, "fuse") {
			left = append(left, fmt.Sprintf("process %d: %s", pid, cmd))
		}
	}
	// The node state the plugin keeps below its directory.
	_ = filepath.WalkDir(filepath.Join(n.kubeletRoot, "plugins", driver), func(p string, de os.DirEntry, err error) error {
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

// volumeMounts lists the host's mount points below the kubelet root whose
// path names the PV (publish targets) or lies in the driver's staging
// directory.
func volumeMounts(e *env, driver, pv string) []string {
	var out []string
	staging := filepath.Join(e.node.kubeletRoot, "plugins", "kubernetes.io", "csi", driver) + "/"
	for _, mp := range e.node.hostMounts() {
		if strings.Contains(mp, "/"+pv+"/") || strings.HasPrefix(mp, staging) {
			out = append(out, mp)
		}
	}
	return out
}
