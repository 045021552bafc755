//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// errNotServed says the driver binary does not serve a --type yet.
var errNotServed = errors.New("driver type not served by this build")

// controllerPod runs, as local processes, the containers of the controller
// Deployment in deploy/<kind>/: the cephcsi container, its liveness
// sidecar, and the CSI sidecars with the arguments written there. The
// sidecars authenticate as the Deployment's service account, so the RBAC
// rules of deploy/ are what they get.
type controllerPod struct {
	kind      string
	namespace string
	driver    *proc
	liveness  *proc
	sidecars  []*proc
	metrics   string // liveness URL
	// driverMetrics is the driver's own metrics URL (--enablegrpcmetrics).
	driverMetrics string
}

type container struct {
	Name string   `json:"name"`
	Args []string `json:"args"`
	Env  []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `json:"fieldPath"`
			} `json:"fieldRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type deployment struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Template struct {
			Spec struct {
				ServiceAccountName string      `json:"serviceAccountName"`
				Containers         []container `json:"containers"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

const e2eNode = "e2e-node"

// readDeployment decodes deploy/<kind>/<file> through kubectl.
func readDeployment(t testing.TB, e *env, kind, file string) deployment {
	t.Helper()
	out := e.mustKubectl(t, nil, "create", "--dry-run=client", "-o", "json", "-f", filepath.Join(e.root, "deploy", kind, file))
	var d deployment
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// startControllerPod applies the driver's namespace, CSIDriver, RBAC and
// ConfigMaps from deploy/<kind>, then starts the controller pod's
// containers: the driver first (the sidecars give up when its socket stays
// absent), then the sidecars.
func startControllerPod(t *testing.T, e *env, c *testutil.Cluster, kind string, extraDriverArgs ...string) (*controllerPod, error) {
	t.Helper()
	for _, f := range []string{"namespace.yaml", "csidriver.yaml", "csi-provisioner-rbac.yaml",
		"csi-nodeplugin-rbac.yaml", "csi-config-map.yaml"} {
		e.mustKubectl(t, nil, "apply", "-f", filepath.Join(e.root, "deploy", kind, f))
	}
	dep := readDeployment(t, e, kind, "csi-"+kind+"plugin-provisioner.yaml")
	ns := dep.Metadata.Namespace
	pod := &controllerPod{kind: kind, namespace: ns}
	sockDir := filepath.Join(e.dir, kind)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// What the kubelet would do: expand $(VAR) from the container's env and
	// give /csi (an emptyDir shared by the containers) a real directory.
	expand := func(c container, arg string) string {
		for _, v := range c.Env {
			val := v.Value
			if v.ValueFrom != nil && v.ValueFrom.FieldRef != nil {
				switch v.ValueFrom.FieldRef.FieldPath {
				case "spec.nodeName":
					val = e2eNode
				case "metadata.namespace":
					val = ns
				}
			}
			arg = strings.ReplaceAll(arg, "$("+v.Name+")", val)
		}
		return strings.ReplaceAll(arg, "unix:///csi/", "unix://"+sockDir+"/")
	}
	args := func(c container) []string {
		out := make([]string, len(c.Args))
		for i, a := range c.Args {
			out[i] = expand(c, a)
		}
		return out
	}
	driverBin := filepath.Join(e.root, "_output", "cephcsi")
	var driverC, livenessC *container
	var sidecarCs []container
	for i, ct := range dep.Spec.Template.Spec.Containers {
		switch {
		case ct.Name == "csi-"+kind+"plugin":
			driverC = &dep.Spec.Template.Spec.Containers[i]
		case ct.Name == "liveness-prometheus":
			livenessC = &dep.Spec.Template.Spec.Containers[i]
		default:
			if _, ok := e.tools[ct.Name]; !ok {
				t.Fatalf("deploy/%s: container %s is neither the driver nor a sidecar we build", kind, ct.Name)
			}
			sidecarCs = append(sidecarCs, ct)
		}
	}
	if driverC == nil || livenessC == nil {
		t.Fatalf("deploy/%s: the Deployment lacks the driver or its liveness container", kind)
	}

	// The driver. The manifest mounts config.json at its default path; here
	// it comes from the test cluster.
	dargs := append(append(args(*driverC), "--configpath="+c.ConfigJSON), extraDriverArgs...)
	// The driver's metrics on a free port too: the host's may be taken.
	mport, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range dargs {
		if strings.HasPrefix(a, "--metricsport=") {
			dargs[i] = fmt.Sprintf("--metricsport=%d", mport)
			pod.driverMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
		}
	}
	var socket string
	for _, a := range dargs {
		if strings.HasPrefix(a, "--endpoint=unix://") {
			socket = strings.TrimPrefix(a, "--endpoint=unix://")
		}
	}
	if socket == "" {
		t.Fatalf("deploy/%s: the driver has no unix --endpoint", kind)
	}
	drv, err := e.start(kind+"-cephcsi", driverBin, dargs...)
	if err != nil {
		t.Fatal(err)
	}
	pod.driver = drv
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if drv.exited() {
			log := drv.tail(5)
			if strings.Contains(log, "not served by this build") || strings.Contains(log, "is not one of") {
				return nil, fmt.Errorf("%w: %s", errNotServed, log)
			}
			t.Fatalf("driver exited (%v):\n%s", drv.err, log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver socket %s did not appear:\n%s", socket, drv.tail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The liveness sidecar on a free port.
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	largs := args(*livenessC)
	for i, a := range largs {
		if strings.HasPrefix(a, "--metricsport=") {
			largs[i] = fmt.Sprintf("--metricsport=%d", port)
		}
	}
	if pod.liveness, err = e.start(kind+"-liveness", driverBin, largs...); err != nil {
		t.Fatal(err)
	}
	pod.metrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", port)

	// The sidecars, each with its own kubeconfig of the service account.
	sa := dep.Spec.Template.Spec.ServiceAccountName
	for _, sc := range sidecarCs {
		kc := filepath.Join(sockDir, sc.Name+".kubeconfig")
		if err := e.serviceAccountKubeconfig(kc, ns, sa); err != nil {
			t.Fatal(err)
		}
		sargs := append(args(sc), "--kubeconfig="+kc, "--leader-election-namespace="+ns)
		p, err := e.start(kind+"-"+sc.Name, e.tools[sc.Name], sargs...)
		if err != nil {
			t.Fatal(err)
		}
		pod.sidecars = append(pod.sidecars, p)
	}
	t.Cleanup(pod.stop)
	return pod, nil
}

func (p *controllerPod) stop() {
	for _, s := range p.sidecars {
		s.stop()
	}
	if p.liveness != nil {
		p.liveness.stop()
	}
	if p.driver != nil {
		p.driver.stop()
	}
}

// checkRunning fails the test when a container of the pod has exited.
func (p *controllerPod) checkRunning(t testing.TB) {
	t.Helper()
	for _, pr := range append([]*proc{p.driver, p.liveness}, p.sidecars...) {
		if pr.exited() {
			t.Fatalf("%s exited (%v):\n%s", pr.name, pr.err, pr.tail(30))
		}
	}
}

// waitLeaders waits until every sidecar holds its leader election lease:
// proof that it runs, reached the driver, and may use leases in its
// namespace under our Role.
func (p *controllerPod) waitLeaders(t testing.TB, e *env) time.Duration {
	t.Helper()
	begin := time.Now()
	for {
		p.checkRunning(t)
		leases := e.getJSON(t, "leases", "-n", p.namespace)
		held := 0
		for _, l := range leases.items() {
			if l.str("spec.holderIdentity") != "" {
				held++
			}
		}
		if held >= len(p.sidecars) {
			return time.Since(begin)
		}
		if time.Since(begin) > 90*time.Second {
			var logs []string
			for _, s := range p.sidecars {
				logs = append(logs, s.name+":\n"+s.tail(15))
			}
			t.Fatalf("%d of %d sidecars hold a lease after 90s:\n%s", held, len(p.sidecars), strings.Join(logs, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkLiveness reads the liveness sidecar's gauge.
func (p *controllerPod) checkLiveness(t testing.TB) {
	t.Helper()
	var body string
	for i := 0; i < 50; i++ {
		resp, err := http.Get(p.metrics)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, "\ncsi_liveness 1") {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("liveness sidecar at %s does not report csi_liveness 1:\n%s\n%s", p.metrics, body, p.liveness.tail(10))
}

var forbidden = regexp.MustCompile(`(?i)forbidden|cannot (get|list|watch|create|update|patch|delete) resource`)

// checkRBAC fails on any RBAC denial a sidecar logged: a rule missing from
// deploy/.
func (p *controllerPod) checkRBAC(t testing.TB) {
	t.Helper()
	for _, s := range p.sidecars {
		data, err := os.ReadFile(s.log)
		if err != nil {
			t.Fatal(err)
		}
		var denied []string
		for _, line := range strings.Split(string(data), "\n") {
			if forbidden.MatchString(line) {
				denied = append(denied, line)
			}
		}
		if len(denied) > 0 {
			if len(denied) > 10 {
				denied = denied[:10]
			}
			t.Errorf("%s was denied by RBAC (deploy/%s is missing a rule):\n%s", s.name, p.kind, strings.Join(denied, "\n"))
		}
	}
}

// checkNoSecretsInLogs fails when one of secrets (Ceph keys, passphrases,
// DEKs, KMS credentials) appears in the log of any process of the run
// (driver, sidecars, control plane).
func checkNoSecretsInLogs(t testing.TB, e *env, secrets ...string) {
	t.Helper()
	entries, err := os.ReadDir(e.logDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		data, err := os.ReadFile(filepath.Join(e.logDir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range secrets {
			if s != "" && strings.Contains(string(data), s) {
				t.Errorf("secret %d of those checked appears in %s", i+1, ent.Name())
			}
		}
	}
}
