//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// nodePlugin runs the node plugin container of the DaemonSet in
// deploy/<kind>/csi-<kind>plugin.yaml as the kubelet's CSI plugin: inside
// the Ceph root (its own scripts/in-root, started from the host's mount
// namespace with the kubelet root as IN_ROOT_SHARED, as a Bidirectional
// hostPath is in a pod), with the DaemonSet's arguments and its hostPath
// directories mapped onto the kubelet root of the test node. The
// node-driver-registrar container is replaced by the driver's own
// --kubelet-registration-path with the value the manifest gives the
// registrar.
type nodePlugin struct {
	kind, driver string
	args         []string
	socket       string
	proc         *proc
	starts       int
}

type daemonSet struct {
	Spec struct {
		Template struct {
			Spec struct {
				Containers []container `json:"containers"`
				Volumes    []struct {
					Name     string `json:"name"`
					HostPath *struct {
						Path string `json:"path"`
					} `json:"hostPath"`
				} `json:"volumes"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

const kubeletDefaultRoot = "/var/lib/kubelet"

func startNodePlugin(t *testing.T, e *env, c *testutil.Cluster, kind, driver string) *nodePlugin {
	t.Helper()
	n := e.node
	out := e.mustKubectl(t, nil, "create", "--dry-run=client", "-o", "json", "-f",
		filepath.Join(e.root, "deploy", kind, "csi-"+kind+"plugin.yaml"))
	var ds daemonSet
	if err := json.Unmarshal(out, &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	onNode := func(p string) string {
		if p == kubeletDefaultRoot || strings.HasPrefix(p, kubeletDefaultRoot+"/") {
			return n.kubeletRoot + strings.TrimPrefix(p, kubeletDefaultRoot)
		}
		return p
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = onNode(v.HostPath.Path)
		}
	}
	// mapPaths rewrites the container paths of an argument that lie in a
	// kubelet directory mounted from the host into the node's paths.
	mapPaths := func(ct container, arg string) string {
		type m struct{ from, to string }
		var ms []m
		for _, vm := range ct.VolumeMounts {
			if hp, ok := hostPaths[vm.Name]; ok && strings.HasPrefix(hp, n.kubeletRoot) {
				ms = append(ms, m{strings.TrimRight(vm.MountPath, "/"), hp})
			}
		}
		sort.Slice(ms, func(i, j int) bool { return len(ms[i].from) > len(ms[j].from) })
		for _, x := range ms {
			for _, prefix := range []string{"=unix://", "="} {
				if i := strings.Index(arg, prefix+x.from); i >= 0 {
					rest := arg[i+len(prefix)+len(x.from):]
					if rest == "" || rest[0] == '/' {
						return arg[:i+len(prefix)] + x.to + rest
					}
				}
			}
		}
		return arg
	}
	expand := func(ct container, arg string) string {
		for _, v := range ct.Env {
			val := v.Value
			if v.ValueFrom != nil && v.ValueFrom.FieldRef != nil {
				switch v.ValueFrom.FieldRef.FieldPath {
				case "spec.nodeName":
					val = e2eNode
				case "metadata.namespace":
					val = "ceph-csi-" + kind
				}
			}
			arg = strings.ReplaceAll(arg, "$("+v.Name+")", val)
		}
		return mapPaths(ct, arg)
	}
	var driverC, registrarC *container
	for i, ct := range spec.Containers {
		switch ct.Name {
		case "csi-" + kind + "plugin":
			driverC = &spec.Containers[i]
		case "driver-registrar":
			registrarC = &spec.Containers[i]
		}
	}
	if driverC == nil || registrarC == nil {
		t.Fatalf("deploy/%s: the DaemonSet lacks the driver or the registrar", kind)
	}
	p := &nodePlugin{kind: kind, driver: driver}
	var regPath, regCSI string
	for _, a := range registrarC.Args {
		a = expand(*registrarC, a)
		if v, ok := strings.CutPrefix(a, "--kubelet-registration-path="); ok {
			regPath = onNode(v)
		}
		if v, ok := strings.CutPrefix(a, "--csi-address="); ok {
			regCSI = strings.TrimPrefix(v, "unix://")
		}
	}
	for _, a := range driverC.Args {
		a = expand(*driverC, a)
		if v, ok := strings.CutPrefix(a, "--endpoint=unix://"); ok {
			p.socket = v
		}
		p.args = append(p.args, a)
	}
	// The registrar and the driver must agree on the socket, and the
	// kubelet must find it at the path the registrar announces.
	if regPath == "" || p.socket == "" || regCSI != p.socket || regPath != p.socket {
		t.Fatalf("deploy/%s: registrar announces %q for %q, the driver listens on %q", kind, regPath, regCSI, p.socket)
	}
	p.args = append(p.args, "--kubelet-registration-path="+regPath, "--configpath="+c.ConfigJSON)
	p.start(t, e)
	t.Cleanup(func() {
		if p.proc != nil {
			p.proc.stop()
		}
	})
	return p
}

// start runs the plugin and waits until the kubelet has registered it: the
// kubelet confirmed it (NotifyRegistrationStatus) and the node's CSINode
// lists the driver.
func (p *nodePlugin) start(t testing.TB, e *env) {
	t.Helper()
	p.starts++
	name := fmt.Sprintf("%s-nodeplugin", p.kind)
	if p.starts > 1 {
		name = fmt.Sprintf("%s-nodeplugin-%d", p.kind, p.starts)
	}
	cmd := e.node.hostCmd(append([]string{"env", "IN_ROOT_SHARED=" + e.node.kubeletRoot,
		filepath.Join(e.root, "scripts", "in-root"), filepath.Join(e.root, "_output", "cephcsi")}, p.args...)...)
	begin := time.Now()
	var err error
	if p.proc, err = e.start(name, cmd.Path, cmd.Args[1:]...); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, func() string {
		if p.proc.exited() {
			t.Fatalf("%s exited (%v):\n%s", name, p.proc.err, p.proc.tail(20))
		}
		// The kubelet's answer, in the plugin's own log (a killed plugin
		// leaves its CSINode entry behind, so that alone proves nothing).
		if data, _ := os.ReadFile(p.proc.log); !strings.Contains(string(data), "registered with the kubelet") {
			return fmt.Sprintf("%s: the kubelet has not confirmed the registration; kubelet:\n%s", name, e.node.kubelet.tail(5))
		}
		if !csiNodeHas(e, p.driver) {
			return fmt.Sprintf("CSINode %s does not list %s; kubelet:\n%s", e2eNode, p.driver, e.node.kubelet.tail(5))
		}
		return ""
	})
	t.Logf("%s node plugin registered with the kubelet in %s", p.kind, ms(time.Since(begin)))
}

// kill ends the plugin without letting it clean up (SIGKILL), as a crash
// or an OOM kill would.
func (p *nodePlugin) kill() {
	if p.proc != nil && !p.proc.exited() {
		_ = p.proc.cmd.Process.Kill()
		<-p.proc.done
	}
}

func csiNodeHas(e *env, driver string) bool {
	out, err := e.kubectl(nil, "get", "csinode", e2eNode, "-o", "jsonpath={.spec.drivers[*].name}")
	return err == nil && strings.Contains(" "+string(out)+" ", " "+driver+" ")
}

// stagingDirs lists what the kubelet keeps for the driver's staged volumes
// (<root>/plugins/kubernetes.io/csi/<driver>/<hash>).
func stagingDirs(e *env, driver string) []string {
	entries, _ := os.ReadDir(filepath.Join(e.node.kubeletRoot, "plugins", "kubernetes.io", "csi", driver))
	var out []string
	for _, ent := range entries {
		out = append(out, ent.Name())
	}
	return out
}
