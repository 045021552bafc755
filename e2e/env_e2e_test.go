//go:build e2e

// The end-to-end test: a local Kubernetes control plane (etcd,
// kube-apiserver with TLS and RBAC, kube-controller-manager,
// snapshot-controller), the real CSI sidecars running under the service
// account and RBAC rules of deploy/, and the cephcsi binary against the
// shared test Ceph cluster. Run with `make e2e`.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// env is one run's control plane and the processes it started.
type env struct {
	root   string
	dir    string // scratch directory: certificates, etcd data, kubeconfigs
	logDir string
	tools  map[string]string
	pki    *pki

	node        *node
	server      string // https://127.0.0.1:<port>
	kubeconfig  string // cluster-admin (system:masters)
	adminCert   string
	adminKey    string
	procs       []*proc
	snapshotCRD string
}

// proc is a program the test started; its output goes to logDir/<name>.log.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's log.
func (p *proc) tail(n int) string {
	data, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// loadTools builds the missing programs (a no-op when cached) and returns
// their paths by name.
func loadTools(root string) (map[string]string, error) {
	script := filepath.Join(root, "e2e", "build-tools.sh")
	cmd := exec.Command(script)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w", script, err)
	}
	out, err := exec.Command(script, "paths").Output()
	if err != nil {
		return nil, fmt.Errorf("%s paths: %w", script, err)
	}
	tools := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			tools[k] = v
		}
	}
	for name, path := range tools {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return tools, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs a program in the background until stopAll.
func (e *env) start(name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(e.logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Ends with the test binary even if it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return p, nil
}

// stopAll stops the processes in reverse order of start.
func (e *env) stopAll() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop()
	}
	e.procs = nil
}

// httpsReady polls url with the admin client certificate until it answers
// 200 or the timeout passes; p's exit ends the wait early.
func (e *env) httpsReady(p *proc, url, cert, key string, timeout time.Duration) error {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(e.pki.CA)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited (%v):\n%s", p.name, p.err, p.tail(20))
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %s\n%s", url, timeout, last, p.tail(20))
}

// startControlPlane brings up etcd, the API server, the controller manager,
// the snapshot CRDs and the snapshot-controller.
func (e *env) startControlPlane() error {
	begin := time.Now()
	var err error
	if e.pki, err = newPKI(filepath.Join(e.dir, "pki")); err != nil {
		return err
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	etcdPort, peerPort, apiPort, kcmPort := ports[0], ports[1], ports[2], ports[3]

	// etcd, serving clients over TLS with client certificate checks.
	etcdCert, etcdKey, err := e.pki.issue("etcd", nil, "127.0.0.1", "localhost")
	if err != nil {
		return err
	}
	etcdClientCert, etcdClientKey, err := e.pki.issue("kube-apiserver-etcd-client", nil)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("https://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	etcd, err := e.start("etcd", e.tools["etcd"],
		"--name=e2e", "--data-dir="+filepath.Join(e.dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL,
		"--cert-file="+etcdCert, "--key-file="+etcdKey,
		"--trusted-ca-file="+e.pki.CA, "--client-cert-auth",
		// A test cluster: losing it on power loss costs nothing.
		"--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	if err := e.httpsReady(etcd, etcdURL+"/health", etcdClientCert, etcdClientKey, 30*time.Second); err != nil {
		return err
	}

	// kube-apiserver with RBAC, TLS, and service account token signing.
	apiCert, apiKey, err := e.pki.issue("kube-apiserver", nil, "127.0.0.1", "localhost", "10.0.0.1",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc")
	if err != nil {
		return err
	}
	if e.adminCert, e.adminKey, err = e.pki.issue("e2e-admin", []string{"system:masters"}); err != nil {
		return err
	}
	kubeletClientCert, kubeletClientKey, err := e.pki.issue("kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		return err
	}
	saPub, saKey, err := e.pki.serviceAccountKeys()
	if err != nil {
		return err
	}
	e.server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	api, err := e.start("kube-apiserver", e.tools["kube-apiserver"],
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--etcd-servers="+etcdURL, "--etcd-cafile="+e.pki.CA,
		"--etcd-certfile="+etcdClientCert, "--etcd-keyfile="+etcdClientKey,
		"--tls-cert-file="+apiCert, "--tls-private-key-file="+apiKey,
		"--client-ca-file="+e.pki.CA,
		// The Node authorizer and NodeRestriction for the kubelet, as on
		// real clusters.
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		// Reaching the kubelet (exec, logs) at its InternalIP, both sides
		// checked against the test CA.
		"--kubelet-client-certificate="+kubeletClientCert, "--kubelet-client-key="+kubeletClientKey,
		"--kubelet-certificate-authority="+e.pki.CA, "--kubelet-preferred-address-types=InternalIP",
		// As on real clusters: the node plugins run privileged.
		"--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--cert-dir="+filepath.Join(e.dir, "apiserver"),
		// The default reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--profiling=false", "--v=1")
	if err != nil {
		return err
	}
	if err := e.httpsReady(api, e.server+"/readyz", e.adminCert, e.adminKey, 90*time.Second); err != nil {
		return err
	}
	e.kubeconfig = filepath.Join(e.dir, "admin.kubeconfig")
	if err := e.writeKubeconfig(e.kubeconfig, "e2e-admin",
		fmt.Sprintf("    client-certificate: %s\n    client-key: %s\n", e.adminCert, e.adminKey)); err != nil {
		return err
	}

	// kube-controller-manager: the PV binder, the expansion controller and
	// the rest of the defaults.
	if _, err := e.start("kube-controller-manager", e.tools["kube-controller-manager"],
		"--kubeconfig="+e.kubeconfig,
		"--authentication-kubeconfig="+e.kubeconfig, "--authorization-kubeconfig="+e.kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort),
		"--leader-elect=false", "--use-service-account-credentials=false",
		"--service-account-private-key-file="+saKey, "--root-ca-file="+e.pki.CA,
		"--v=1"); err != nil {
		return err
	}

	// The snapshot API: CRDs, then the common snapshot-controller.
	if out, err := e.kubectl(nil, "apply", "-k", e.snapshotCRD); err != nil {
		return fmt.Errorf("snapshot CRDs: %v\n%s", err, out)
	}
	// Polled rather than kubectl wait, which fails at once on a CRD whose
	// status has no conditions yet ("accessor error: <nil>").
	for _, crd := range []string{"volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"} {
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, err := e.kubectl(nil, "get", "crd/"+crd+".snapshot.storage.k8s.io",
				`-o=jsonpath={.status.conditions[?(@.type=="Established")].status}`)
			if err == nil && strings.TrimSpace(string(out)) == "True" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("snapshot CRD %s not established after 60s: %v\n%s", crd, err, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if _, err := e.start("snapshot-controller", e.tools["snapshot-controller"],
		"--kubeconfig="+e.kubeconfig, "--leader-election=false", "--v=2"); err != nil {
		return err
	}
	fmt.Printf("e2e: control plane (etcd, kube-apiserver, kube-controller-manager, snapshot-controller) ready in %.1fs\n",
		time.Since(begin).Seconds())
	return nil
}

// writeKubeconfig writes a kubeconfig for the local API server; auth holds
// the user's credential lines.
func (e *env) writeKubeconfig(path, user, auth string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
%scontexts:
- name: e2e
  context:
    cluster: e2e
    user: %s
current-context: e2e
`, e.server, e.pki.CA, user, auth, user)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as the
// service account ns/name with a token from the TokenRequest API.
func (e *env) serviceAccountKubeconfig(path, ns, name string) error {
	out, err := e.kubectl(nil, "create", "token", name, "-n", ns, "--duration=4h")
	if err != nil {
		return fmt.Errorf("token for %s/%s: %v\n%s", ns, name, err, out)
	}
	return e.writeKubeconfig(path, "system:serviceaccount:"+ns+":"+name,
		"    token: "+strings.TrimSpace(string(out))+"\n")
}

// kubectl runs kubectl as cluster-admin; stdin may be nil.
func (e *env) kubectl(stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["kubectl"], append([]string{"--kubeconfig=" + e.kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return append(out, stderr.Bytes()...), fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

func (e *env) mustKubectl(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	out, err := e.kubectl(stdin, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// getJSON reads one object as a generic JSON map.
func (e *env) getJSON(t testing.TB, args ...string) obj {
	t.Helper()
	out := e.mustKubectl(t, nil, append([]string{"get", "-o", "json"}, args...)...)
	var o obj
	if err := json.Unmarshal(out, &o); err != nil {
		t.Fatalf("decode %v: %v", args, err)
	}
	return o
}

// exists says whether kubectl finds the object.
func (e *env) exists(t testing.TB, args ...string) bool {
	t.Helper()
	out, err := e.kubectl(nil, append([]string{"get", "--ignore-not-found", "-o", "name"}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return len(bytes.TrimSpace(out)) > 0
}

// wait runs `kubectl wait` (a watch, so the elapsed time it returns is
// exact to the event) and fails the test on timeout.
func (e *env) wait(t testing.TB, timeout time.Duration, args ...string) time.Duration {
	t.Helper()
	begin := time.Now()
	out, err := e.kubectl(nil, append([]string{"wait", fmt.Sprintf("--timeout=%ds", int(timeout.Seconds()))}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return time.Since(begin)
}

// obj is a Kubernetes object decoded as JSON.
type obj map[string]any

// str returns the string at a dotted path ("" when absent); a segment may
// be a map key (dots in keys are not supported).
func (o obj) str(path string) string {
	v := o.get(path)
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

func (o obj) get(path string) any {
	var cur any = map[string]any(o)
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

// strMap returns the string map at path (labels, volumeAttributes, ...).
func (o obj) strMap(path string) map[string]string {
	m, _ := o.get(path).(map[string]any)
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// items returns the objects of a List.
func (o obj) items() []obj {
	list, _ := o["items"].([]any)
	out := make([]obj, 0, len(list))
	for _, it := range list {
		if m, ok := it.(map[string]any); ok {
			out = append(out, obj(m))
		}
	}
	return out
}
