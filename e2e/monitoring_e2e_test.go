//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// serviceMonitorCRD stands in for the Prometheus Operator's CRD (not
// available offline): enough for the API server to accept and return
// ServiceMonitors, whose fields this test then checks itself.
const serviceMonitorCRD = `{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
 "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
 "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
  "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
  "versions": [{"name": "v1", "served": true, "storage": true,
   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}`

// checkMonitoring checks that the ServiceMonitor reaches every metrics
// port of the pods: it selects the Services, each Service selects the
// pods of a Deployment or DaemonSet and names ports those pods serve, and
// the ServiceMonitor's endpoints name those ports.
func checkMonitoring(t *testing.T, what string, objs []obj, dashboard []byte) {
	t.Helper()
	var monitors, services, workloads []obj
	var dashboards []string
	for _, o := range objs {
		switch o.str("kind") {
		case "ServiceMonitor":
			monitors = append(monitors, o)
		case "Service":
			services = append(services, o)
		case "Deployment", "DaemonSet":
			workloads = append(workloads, o)
		case "ConfigMap":
			if o.strMap("metadata.labels")["grafana_dashboard"] == "1" {
				dashboards = append(dashboards, o.strMap("data")["cephcsi.json"])
			}
		}
	}
	if len(monitors) == 0 || len(services) < 2 {
		t.Fatalf("%s: %d ServiceMonitors, %d Services", what, len(monitors), len(services))
	}
	if !slices.Contains(dashboards, string(dashboard)) {
		t.Errorf("%s: no ConfigMap labelled grafana_dashboard holds the dashboard", what)
	}
	matches := func(sel, labels map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	reached := map[string]bool{} // workload/port
	for _, m := range monitors {
		var endpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		}
		raw, _ := json.Marshal(m.get("spec.endpoints"))
		_ = json.Unmarshal(raw, &endpoints)
		sel := m.strMap("spec.selector.matchLabels")
		for _, svc := range services {
			if !matches(sel, svc.strMap("metadata.labels")) || svc.str("metadata.namespace") != m.str("metadata.namespace") {
				continue
			}
			var ports []struct {
				Name       string `json:"name"`
				TargetPort int    `json:"targetPort"`
			}
			raw, _ := json.Marshal(svc.get("spec.ports"))
			_ = json.Unmarshal(raw, &ports)
			for _, w := range workloads {
				if !matches(svc.strMap("spec.selector"), w.strMap("spec.template.metadata.labels")) {
					continue
				}
				var served []int
				var containers []struct {
					Ports []struct {
						ContainerPort int `json:"containerPort"`
					} `json:"ports"`
				}
				raw, _ := json.Marshal(w.get("spec.template.spec.containers"))
				_ = json.Unmarshal(raw, &containers)
				for _, c := range containers {
					for _, p := range c.Ports {
						served = append(served, p.ContainerPort)
					}
				}
				for _, p := range ports {
					if !slices.Contains(served, p.TargetPort) {
						t.Errorf("%s: Service %s port %s targets %d, which %s does not serve (%v)", what, svc.str("metadata.name"), p.Name,
							p.TargetPort, w.str("metadata.name"), served)
					}
					for _, ep := range endpoints {
						if ep.Port == p.Name && ep.Path == "/metrics" {
							reached[w.str("metadata.name")+"/"+p.Name] = true
						}
					}
				}
			}
		}
	}
	for _, w := range workloads {
		for _, port := range []string{"metrics", "http-metrics"} {
			if !reached[w.str("metadata.name")+"/"+port] {
				t.Errorf("%s: no ServiceMonitor endpoint reaches port %s of %s", what, port, w.str("metadata.name"))
			}
		}
	}
}

// The charts with serviceMonitor and dashboards on, and deploy/monitoring
// over deploy/rbd and deploy/cephfs, accepted by the API server and wired
// through to every metrics port.
func TestMonitoringManifests(t *testing.T) {
	e := theEnv
	e.mustKubectl(t, []byte(serviceMonitorCRD), "apply", "-f", "-")
	e.mustKubectl(t, nil, "wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")
	dashboard, err := os.ReadFile(filepath.Join(e.root, "deploy", "monitoring", "cephcsi-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var all []obj
	for _, kind := range []string{"rbd", "cephfs"} {
		ns := "ceph-csi-" + kind
		e.mustKubectl(t, nil, "apply", "-f", filepath.Join(e.root, "deploy", kind, "namespace.yaml"))
		all = append(all, dryRun(t, e, nil, "-k", filepath.Join(e.root, "deploy", kind))...)
		chart := filepath.Join(e.root, "charts", "ceph-csi-"+kind)
		helm(t, e, "lint", "--strict", chart, "--set", "serviceMonitor.enabled=true", "--set", "dashboards.enabled=true")
		rendered := helm(t, e, "template", "mon-"+kind, chart, "--namespace", ns, "--set", "serviceMonitor.enabled=true",
			"--set", "dashboards.enabled=true")
		checkMonitoring(t, "charts/ceph-csi-"+kind, dryRun(t, e, rendered, "-f", "-"), dashboard)
	}
	all = append(all, dryRun(t, e, nil, "-k", filepath.Join(e.root, "deploy", "monitoring"))...)
	checkMonitoring(t, "deploy/monitoring", all, dashboard)
}
