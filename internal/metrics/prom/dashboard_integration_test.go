//go:build integration

package prom_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil/ports"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// scrapeURL reads a metrics endpoint until it answers, and returns, per
// metric name, the label names its series carry.
func scrapeURL(t *testing.T, url string) (string, map[string][]string) {
	t.Helper()
	var body string
	for i := 0; ; i++ {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				body = string(b)
				break
			}
		}
		if i == 100 {
			t.Fatalf("%s: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	series := map[string][]string{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, _ := strings.Cut(line, "{")
		name = strings.Fields(name)[0]
		series[name] = append(series[name], "")
		for _, m := range matcher.FindAllStringSubmatch(strLitKeepQuotes(labels), -1) {
			if !slices.Contains(series[name], m[1]) {
				series[name] = append(series[name], m[1])
			}
		}
	}
	return body, series
}

// The real binary, serving RBD with --enablegrpcmetrics, does a create and
// a delete on the cluster; its endpoint then shows those calls and steps,
// and every query of the dashboard names a metric that it (or the liveness
// sidecar, csi_liveness) exports, filtered by labels those series have.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	c := testutil.RequireCluster(t)
	bin := testutil.BuildBinary(t)
	port := ports.Free(t)
	p := testutil.StartProcess(t, bin, nil, "--type=rbd", "--controllerserver", "--nodeserver", "--nodeid=metrics-node",
		"--configpath="+c.ConfigJSON, "--pluginpath="+t.TempDir(), "--enablegrpcmetrics",
		"--metricshost=127.0.0.1", fmt.Sprintf("--metricsport=%d", port))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := "metrics-" + uuid.NewString()
	resp, err := p.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()},
		Parameters: map[string]string{"clusterID": c.ClusterID, "pool": "rbd"}, Secrets: c.RBDSecrets()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(), Secrets: c.RBDSecrets()}); err != nil {
		t.Fatal(err)
	}
	if left := c.Leftovers(t, name, resp.GetVolume().GetVolumeId()[len(resp.GetVolume().GetVolumeId())-36:]); len(left) > 0 {
		t.Errorf("left on the cluster: %v", left)
	}
	body, series := scrapeURL(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	for _, want := range []string{
		`cephcsi_grpc_requests_total{driver="rbd",grpc_code="OK",grpc_method="CreateVolume",grpc_service="csi.v1.Controller"} 1`,
		`cephcsi_grpc_requests_total{driver="rbd",grpc_code="OK",grpc_method="DeleteVolume",grpc_service="csi.v1.Controller"} 1`,
		`cephcsi_grpc_requests_in_flight{driver="rbd",grpc_method="CreateVolume",grpc_service="csi.v1.Controller"} 0`,
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="ok",step="journal_reserve"} 1`,
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="ok",step="create"} 1`,
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="ok",step="remove"} 1`,
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="ok",step="journal_release"} 1`,
		`cephcsi_ceph_connect_duration_seconds_count{driver="rbd",result="ok"} 1`,
		`cephcsi_ceph_connections{driver="rbd"} 1`,
		`cephcsi_node_operations_total{driver="rbd",mechanism="krbd",operation="map",result="ok"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the driver's endpoint lacks %s", want)
		}
	}
	if strings.Contains(body, name) || strings.Contains(body, resp.GetVolume().GetVolumeId()) {
		t.Error("a request name or volume ID is in a label")
	}

	// The liveness sidecar is its own process, on its own port.
	lport := ports.Free(t)
	live := exec.Command(bin, "--type=liveness", "--endpoint=unix://"+p.Socket, "--metricshost=127.0.0.1",
		fmt.Sprintf("--metricsport=%d", lport), "--polltime=1s", "--timeout=1s")
	live.Stdout, live.Stderr = os.Stderr, os.Stderr
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = live.Process.Kill(); _ = live.Wait() }()
	_, liveSeries := scrapeURL(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", lport))
	for n, l := range liveSeries {
		series[n] = append(series[n], l...)
	}

	_, queries := loadDashboard(t)
	checked := 0
	for _, q := range queries {
		for _, n := range metricNames(q) {
			if _, ok := series[n]; !ok {
				t.Errorf("dashboard query reads %s, which the binary does not export: %s", n, q)
			}
			checked++
		}
		for n, labels := range matchedLabels(q) {
			for _, l := range labels {
				if !slices.Contains(series[n], l) {
					t.Errorf("dashboard query filters %s on label %s, which its series lack: %s", n, l, q)
				}
			}
		}
	}
	t.Logf("%d metric references in %d dashboard queries, all exported (%s)", checked, len(queries), filepath.Base(dashboardCopies[0]))
}
