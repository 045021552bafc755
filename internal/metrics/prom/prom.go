// Package prom exports the driver's measurements as Prometheus metrics:
// the gRPC calls it serves (through the server's call observer), and what
// internal/metrics reports (controller steps, Ceph connections, node maps
// and mounts). No label carries a volume, image or request name: every
// label takes its values from a fixed set, so the number of series is
// bounded by the driver's methods, steps and mechanisms.
package prom

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/metrics"
)

// Namespace prefixes every metric of the driver.
const Namespace = "cephcsi"

// callBuckets span a Probe (well under a millisecond) to a clone or a
// flatten wait (minutes), in seconds.
var callBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Exporter holds the registry and the metrics of one driver process.
type Exporter struct {
	reg *prometheus.Registry

	calls    *prometheus.CounterVec
	callTime *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
	steps    *prometheus.HistogramVec
	connects *prometheus.HistogramVec
	nodeOps  *prometheus.CounterVec
	nodeTime *prometheus.HistogramVec

	// methods caches the split labels and the per-method series of each
	// full method name, so that a call costs no string work.
	methods sync.Map // full method -> *method
}

type method struct {
	service, name string
	inFlight      prometheus.Gauge
	took          prometheus.Observer
	// byCode holds the counter of each gRPC code once used.
	byCode [maxCode + 1]atomic.Pointer[prometheus.Counter]
}

// maxCode is the last gRPC code (Unauthenticated).
const maxCode = codes.Unauthenticated

// counter returns the call counter of code c.
func (e *Exporter) counter(m *method, c codes.Code) prometheus.Counter {
	if c > maxCode {
		return e.calls.WithLabelValues(m.service, m.name, c.String())
	}
	if p := m.byCode[c].Load(); p != nil {
		return *p
	}
	ctr := e.calls.WithLabelValues(m.service, m.name, c.String())
	m.byCode[c].Store(&ctr)
	return ctr
}

// New returns the exporter of a driver ("rbd" or "cephfs") whose Ceph
// connection cache has conns() connections, with the Go runtime's and the
// process's own metrics.
func New(driver, version string, conns func() int) *Exporter {
	e := &Exporter{reg: prometheus.NewRegistry()}
	// The driver label on every series lets one dashboard filter RBD and
	// CephFS alike.
	own := prometheus.Labels{"driver": driver}
	e.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "grpc_requests_total", ConstLabels: own,
		Help: "CSI calls served, by service, method and gRPC status code."}, []string{"grpc_service", "grpc_method", "grpc_code"})
	e.callTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "grpc_request_duration_seconds", ConstLabels: own,
		Help: "Time from the arrival of a CSI call to its answer, operation-lock waits included.", Buckets: callBuckets},
		[]string{"grpc_service", "grpc_method"})
	e.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "grpc_requests_in_flight", ConstLabels: own,
		Help: "CSI calls being served now."}, []string{"grpc_service", "grpc_method"})
	e.steps = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "controller_step_duration_seconds",
		Help:    "Time of one step of a controller call (journal, create, clone, snapshot, flatten queued, remove), by result.",
		Buckets: callBuckets}, []string{"driver", "step", "result"})
	e.connects = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "ceph_connect_duration_seconds", ConstLabels: own,
		Help: "Time to open a new connection to a Ceph cluster (the cache missed), by result.", Buckets: callBuckets},
		[]string{"result"})
	e.nodeOps = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "node_operations_total",
		Help: "Maps, unmaps, mounts and unmounts done by the node service, by mechanism and result."},
		[]string{"driver", "mechanism", "operation", "result"})
	e.nodeTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "node_operation_duration_seconds",
		Help: "Time of one map, unmap, mount or unmount on the node.", Buckets: callBuckets},
		[]string{"driver", "mechanism", "operation"})
	cache := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "ceph_connections", ConstLabels: own,
		Help: "Connections to Ceph clusters held in the connection cache."}, func() float64 { return float64(conns()) })
	info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the labels name the driver and its version.", ConstLabels: prometheus.Labels{"driver": driver, "version": version}})
	info.Set(1)
	e.reg.MustRegister(e.calls, e.callTime, e.inFlight, e.steps, e.connects, e.nodeOps, e.nodeTime, cache, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Every series of a fixed label set shows from the start, at zero.
	for _, step := range metrics.Steps[driver] {
		for _, r := range []string{"ok", "error"} {
			e.steps.WithLabelValues(driver, step, r)
		}
	}
	for _, r := range []string{"ok", "error"} {
		e.connects.WithLabelValues(r)
	}
	for mech, ops := range metrics.NodeOps[driver] {
		for _, op := range ops {
			e.nodeTime.WithLabelValues(driver, mech, op)
			for _, r := range []string{"ok", "error"} {
				e.nodeOps.WithLabelValues(driver, mech, op, r)
			}
		}
	}
	return e
}

// Registry is the exporter's registry (for tests).
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Handler serves the metrics in the Prometheus text format.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{ErrorLog: nil})
}

// Methods makes the series of each full method name ("/csi.v1.Node/
// NodeStageVolume") exist before its first call.
func (e *Exporter) Methods(fullMethods []string) {
	for _, m := range fullMethods {
		e.counter(e.method(m), codes.OK)
	}
}

func (e *Exporter) method(full string) *method {
	if m, ok := e.methods.Load(full); ok {
		return m.(*method)
	}
	svc, name, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		svc, name = "unknown", full
	}
	m := &method{service: svc, name: name, inFlight: e.inFlight.WithLabelValues(svc, name),
		took: e.callTime.WithLabelValues(svc, name)}
	actual, _ := e.methods.LoadOrStore(full, m)
	return actual.(*method)
}

// CallStarted implements the server's call observer.
func (e *Exporter) CallStarted(fullMethod string) { e.method(fullMethod).inFlight.Inc() }

// CallFinished implements the server's call observer.
func (e *Exporter) CallFinished(fullMethod string, code codes.Code, took time.Duration) {
	m := e.method(fullMethod)
	m.inFlight.Dec()
	m.took.Observe(took.Seconds())
	e.counter(m, code).Inc()
}

func result(failed bool) string {
	if failed {
		return "error"
	}
	return "ok"
}

// Step implements metrics.Recorder.
func (e *Exporter) Step(driver, step string, took time.Duration, failed bool) {
	e.steps.WithLabelValues(driver, step, result(failed)).Observe(took.Seconds())
}

// Connect implements metrics.Recorder.
func (e *Exporter) Connect(took time.Duration, failed bool) {
	e.connects.WithLabelValues(result(failed)).Observe(took.Seconds())
}

// Node implements metrics.Recorder.
func (e *Exporter) Node(driver, mechanism, op string, took time.Duration, failed bool) {
	e.nodeOps.WithLabelValues(driver, mechanism, op, result(failed)).Inc()
	e.nodeTime.WithLabelValues(driver, mechanism, op).Observe(took.Seconds())
}
