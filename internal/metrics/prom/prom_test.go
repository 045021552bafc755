package prom

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/metrics"
)

func scrape(t *testing.T, e *Exporter) string {
	t.Helper()
	rr := httptest.NewRecorder()
	e.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rr.Body)
	return string(body)
}

// What a user scrapes: every series of the fixed label sets at zero before
// anything happened, the calls counted by method and code, the hooks of
// internal/metrics landing in the exporter once it is installed.
func TestExporterSeries(t *testing.T) {
	conns := 3
	e := New(metrics.RBD, "v1.2.3", func() int { return conns })
	e.Methods([]string{"/csi.v1.Controller/CreateVolume", "/csi.v1.Identity/Probe"})
	out := scrape(t, e)
	for _, want := range []string{
		`cephcsi_grpc_requests_total{driver="rbd",grpc_code="OK",grpc_method="CreateVolume",grpc_service="csi.v1.Controller"} 0`,
		`cephcsi_grpc_requests_in_flight{driver="rbd",grpc_method="Probe",grpc_service="csi.v1.Identity"} 0`,
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="error",step="flatten_queue"} 0`,
		`cephcsi_node_operations_total{driver="rbd",mechanism="rbd-nbd",operation="map",result="ok"} 0`,
		`cephcsi_ceph_connect_duration_seconds_count{driver="rbd",result="ok"} 0`,
		`cephcsi_ceph_connections{driver="rbd"} 3`,
		`cephcsi_build_info{driver="rbd",version="v1.2.3"} 1`,
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if strings.Contains(out, `driver="cephfs"`) {
		t.Error("an RBD driver shows CephFS series")
	}

	e.CallStarted("/csi.v1.Controller/CreateVolume")
	if v := testutil.ToFloat64(e.inFlight.WithLabelValues("csi.v1.Controller", "CreateVolume")); v != 1 {
		t.Errorf("in flight %v, want 1", v)
	}
	e.CallFinished("/csi.v1.Controller/CreateVolume", codes.NotFound, 30*time.Millisecond)
	if v := testutil.ToFloat64(e.inFlight.WithLabelValues("csi.v1.Controller", "CreateVolume")); v != 0 {
		t.Errorf("in flight %v after the end, want 0", v)
	}
	if v := testutil.ToFloat64(e.calls.WithLabelValues("csi.v1.Controller", "CreateVolume", "NotFound")); v != 1 {
		t.Errorf("NotFound calls %v, want 1", v)
	}

	defer metrics.Set(e)()
	start := time.Now().Add(-2 * time.Second)
	if err := metrics.Step(metrics.RBD, metrics.StepClone, start, errors.New("x")); err == nil {
		t.Error("Step lost the error")
	}
	metrics.Connect(start, nil)
	_ = metrics.Node(metrics.RBD, "krbd", metrics.OpMap, start, nil)
	out = scrape(t, e)
	for _, want := range []string{
		`cephcsi_controller_step_duration_seconds_count{driver="rbd",result="error",step="clone"} 1`,
		`cephcsi_controller_step_duration_seconds_bucket{driver="rbd",result="error",step="clone",le="1"} 0`,
		`cephcsi_controller_step_duration_seconds_bucket{driver="rbd",result="error",step="clone",le="2.5"} 1`,
		`cephcsi_ceph_connect_duration_seconds_count{driver="rbd",result="ok"} 1`,
		`cephcsi_node_operations_total{driver="rbd",mechanism="krbd",operation="map",result="ok"} 1`,
		`cephcsi_grpc_request_duration_seconds_count{driver="rbd",grpc_method="CreateVolume",grpc_service="csi.v1.Controller"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// Without a recorder the hooks do nothing and keep the error.
func TestHooksWithoutRecorder(t *testing.T) {
	defer metrics.Set(nil)()
	err := errors.New("kept")
	if !errors.Is(metrics.Step(metrics.CephFS, metrics.StepCreate, time.Now(), err), err) ||
		!errors.Is(metrics.Node(metrics.CephFS, "fuse", metrics.OpMount, time.Now(), err), err) {
		t.Error("a hook changed the error")
	}
	metrics.Connect(time.Now(), err)
}

// Every series name a CephFS driver shows, and the number of series, is
// fixed by its methods, steps and mechanisms, whatever the calls.
func TestSeriesBounded(t *testing.T) {
	e := New(metrics.CephFS, "dev", func() int { return 0 })
	methods := []string{"/csi.v1.Node/NodeStageVolume", "/csi.v1.Controller/CreateVolume"}
	e.Methods(methods)
	count := func() int {
		n, err := testutil.GatherAndCount(e.reg, "cephcsi_grpc_requests_total", "cephcsi_controller_step_duration_seconds",
			"cephcsi_node_operations_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	for i := 0; i < 100; i++ {
		e.CallStarted(methods[i%2])
		e.CallFinished(methods[i%2], codes.OK, time.Millisecond)
		e.Step(metrics.CephFS, metrics.StepCreate, time.Millisecond, i%2 == 0)
		e.Node(metrics.CephFS, "kernel", metrics.OpMount, time.Millisecond, i%3 == 0)
	}
	if after := count(); after != before {
		t.Errorf("series grew from %d to %d with repeated calls", before, after)
	}
}

// The cost a call pays for being observed, and a hook with and without a
// recorder.
func BenchmarkCallObserved(b *testing.B) {
	e := New(metrics.RBD, "dev", func() int { return 0 })
	m := "/csi.v1.Node/NodeStageVolume"
	e.Methods([]string{m})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		e.CallStarted(m)
		e.CallFinished(m, codes.OK, time.Millisecond)
	}
}

func BenchmarkStepHook(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			if on {
				defer metrics.Set(New(metrics.RBD, "dev", func() int { return 0 }))()
			} else {
				defer metrics.Set(nil)()
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = metrics.Step(metrics.RBD, metrics.StepCreate, time.Now(), nil)
			}
		})
	}
}
