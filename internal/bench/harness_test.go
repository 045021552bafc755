//go:build integration

// Package bench times the driver's controller calls through its unix socket
// next to "the floor": the raw go-ceph calls (rados and rbd packages) that
// the same result needs at the least, made on the same cluster, in the same
// run, with images of the same size and the same number of journal-like omap
// writes on scratch objects.
//
// It prints a table and never fails on timing. It fails only when a run
// leaves something behind (images, trash entries, journal keys or scratch
// objects carrying its names), which is a correctness check.
//
// Next to each latency it prints the Ceph messages and OSD ops the call
// made, read from the librados perf counters of the driver process and of
// the floor's client (procstats_test.go); the scale curve (scale_test.go),
// the driver's memory and leak figures (lean_test.go) and every target of
// issue 20, marked met or not met (report_test.go), follow the table. The
// report is also written to _output/bench/results.txt, the scale plot to
// _output/bench/scale.png.
//
// Adding a row set (for instance CephFS, in cephfs_bench_test.go): write a
// BenchmarkXxx that
//   - calls newRun(b, "cephfs") for the cluster, a driver on its socket
//     (run.driver), a unique run ID for names and a leak tracker,
//   - times driver calls and their floor with run.timeSequential
//     (interleaved, so both see the same background load) or
//     run.timeConcurrent,
//   - records each result with run.addRow(seqRow(...)) or concRow, which
//     also reports it through b.ReportMetric,
//   - cleans up and calls its own scoped leftovers check before returning.
//
// TestMain prints the report after the benchmarks end.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil/ports"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// Environment knobs. CEPHCSI_BENCH_DRIVER selects what is measured:
// "binary" (default: the built _output/cephcsi, or CEPHCSI_BINARY, as a
// separate process) or "inprocess" (testutil.StartDriver, same process).
// CEPHCSI_BENCH_CEPH_ARGS adds Ceph options to the CEPH_ARGS of the driver
// process and of the benchmark's own clients (the floors), e.g.
// "--debug_objecter=10 --log_file=/tmp/objecter.$pid.log" to see which
// object each OSD op of a call goes to.
const (
	envDriver   = "CEPHCSI_BENCH_DRIVER"
	envBinary   = "CEPHCSI_BINARY"
	envCephArgs = "CEPHCSI_BENCH_CEPH_ARGS"
)

// callTimeout bounds one gRPC call including its Aborted retries.
const callTimeout = 2 * time.Minute

// row is one line of the result table.
type row struct {
	Group string // "rbd", "cephfs"
	Op    string // what the driver was asked, e.g. "CreateVolume"
	Mode  string // "seq" or "c16" (concurrency 16)
	N     int
	// Latency of the driver call as the client sees it (gRPC over the socket).
	Median, P99 time.Duration
	// FloorMedian is the median of the raw go-ceph sequence; 0 when none.
	FloorMedian time.Duration
	// Floor names the go-ceph calls the floor is made of.
	Floor string
	// Rate and FloorRate are completed operations per second of wall time
	// (concurrent rows only).
	Rate, FloorRate float64
	Errors, Retries int
	// Msgs and OSD are the Ceph messages and OSD ops of one call (the
	// median of sequential calls, the mean of concurrent ones), of the
	// driver and of the floor; -1 when not counted (procstats_test.go).
	Msgs, OSD, FloorMsgs, FloorOSD float64
	// CPU and FloorCPU are the CPU time one call cost (the mean), of the
	// driver's run and of the floor's (concurrent rows only, cpu_test.go).
	CPU, FloorCPU cpuUse
}

func (r row) ratio() float64 {
	if r.FloorMedian <= 0 {
		return 0
	}
	return float64(r.Median) / float64(r.FloorMedian)
}

var (
	rowsMu   sync.Mutex
	allRows  []row
	runNotes []string
)

func note(format string, args ...any) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	s := fmt.Sprintf(format, args...)
	for _, n := range runNotes {
		if n == s {
			return
		}
	}
	runNotes = append(runNotes, s)
}

// latencies summarises a set of durations.
type latencies []time.Duration

func (l latencies) sorted() latencies {
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func (l latencies) median() time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := l.sorted()
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// p99 is the nearest-rank 99th percentile.
func (l latencies) p99() time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := l.sorted()
	idx := int(math.Ceil(0.99*float64(len(s)))) - 1
	return s[max(idx, 0)]
}

// run is the state of one benchmark function: the cluster, the driver
// under test, a unique ID that every name it creates contains, and the
// UUIDs of the driver objects it created (for the leftovers check).
type run struct {
	b       *testing.B
	cluster *testutil.Cluster
	driver  csi.ControllerClient
	// proc is the driver process (nil in-process: then nothing is counted).
	proc  *driverProc
	group string
	id    string
	// floorAsok is the admin socket of the floor's Ceph client, "" when
	// it is not counted.
	floorAsok asoks

	mu    sync.Mutex
	uuids []string
}

// newRun starts the cluster (if needed) and a driver of kind on its socket.
func newRun(b *testing.B, kind string) *run {
	b.Helper()
	c := testutil.RequireCluster(b)
	r := &run{b: b, cluster: c, group: kind, id: uuid.NewString()[:8]}
	r.driver, r.proc = startDriver(b, c, kind)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		note("load average at the start of %s: %s", b.Name(), strings.Join(strings.Fields(string(la))[:3], " "))
	}
	if v, err := cephVersion(c); err == nil {
		note("cluster: %s", v)
	}
	return r
}

// cephVersion asks the monitor for the cluster's version.
func cephVersion(c *testutil.Cluster) (string, error) {
	out, _, err := c.Admin().MonCommand([]byte(`{"prefix": "version", "format": "json"}`))
	if err != nil {
		return "", err
	}
	var v struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return "", err
	}
	return v.Version, nil
}

// benchAsokDir holds the admin sockets of the Ceph clients of the
// benchmark process itself (the floors'; see cephArgs), set up by TestMain.
var benchAsokDir string

// connectCounted runs connect, which makes a new librados client, and
// returns the admin socket that client opened in benchAsokDir, so that the
// floor's round trips are counted as the driver's are.
func connectCounted(b *testing.B, connect func() error) (asoks, error) {
	b.Helper()
	pattern := filepath.Join(benchAsokDir, "*.asok")
	before, _ := filepath.Glob(pattern)
	if err := connect(); err != nil {
		return "", err
	}
	after, _ := filepath.Glob(pattern)
	seen := map[string]bool{}
	for _, s := range before {
		seen[s] = true
	}
	var fresh []string
	for _, s := range after {
		if !seen[s] {
			fresh = append(fresh, s)
		}
	}
	if benchAsokDir == "" || len(fresh) != 1 {
		note("floor round trips not counted: %d new admin sockets in %q after connecting", len(fresh), benchAsokDir)
		return "", nil
	}
	return asoks(fresh[0]), nil
}

// name returns a request or object name unique to this run.
func (r *run) name(kind string, i int) string { return fmt.Sprintf("bench-%s-%s-%d", r.id, kind, i) }

// track remembers a driver-made UUID for the leftovers check.
func (r *run) track(u string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.uuids = append(r.uuids, u)
}

// leftovers lists what of this run is still on the cluster: anything
// carrying its ID or a driver UUID it saw.
func (r *run) leftovers() []string {
	r.mu.Lock()
	marks := append([]string{r.id}, r.uuids...)
	r.mu.Unlock()
	return r.cluster.Leftovers(r.b, marks...)
}

// addRow records a result and reports it as benchmark metrics.
func (r *run) addRow(x row) {
	x.Group = r.group
	rowsMu.Lock()
	allRows = append(allRows, x)
	rowsMu.Unlock()
	p := strings.ToLower(x.Op + "-" + x.Mode)
	r.b.ReportMetric(float64(x.Median)/1e6, p+"-median-ms")
	r.b.ReportMetric(float64(x.P99)/1e6, p+"-p99-ms")
	if x.FloorMedian > 0 {
		r.b.ReportMetric(float64(x.FloorMedian)/1e6, p+"-floor-ms")
		r.b.ReportMetric(x.ratio(), p+"-ratio")
	}
	if x.Rate > 0 {
		r.b.ReportMetric(x.Rate, p+"-ops/s")
		r.b.ReportMetric(float64(x.Errors), p+"-errors")
	}
}

func (r *run) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// call runs a driver call, retrying while it returns Aborted as the CSI
// sidecars do. It returns the number of retries.
func call(ctx context.Context, fn func(context.Context) error) (int, error) {
	retries := 0
	for {
		err := fn(ctx)
		if status.Code(err) != codes.Aborted {
			return retries, err
		}
		retries++
		select {
		case <-ctx.Done():
			return retries, fmt.Errorf("still Aborted after %d retries: %w", retries, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// seqResult is what timeSequential measured: latencies and, where
// counted, the messages and OSD ops of each call.
type seqResult struct {
	d, f        latencies
	dMsgs, dOSD []float64
	fMsgs, fOSD []float64
}

// medianOf is the median of per-call counts; -1 when none were counted.
func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// seqRow makes the table row of a sequential measurement.
func seqRow(op string, res seqResult, floor string) row {
	return row{Op: op, Mode: "seq", N: len(res.d), Median: res.d.median(), P99: res.d.p99(), FloorMedian: res.f.median(), Floor: floor,
		Msgs: medianOf(res.dMsgs), OSD: medianOf(res.dOSD), FloorMsgs: medianOf(res.fMsgs), FloorOSD: medianOf(res.fOSD)}
}

// counters reads the driver's or the floor's Ceph counters; ok is false
// when that side is not counted.
func (r *run) counters(floor bool) (cephCounters, bool) {
	d := r.floorAsok
	if !floor {
		if r.proc == nil {
			return cephCounters{}, false
		}
		d = r.proc.asok
	}
	if d == "" {
		return cephCounters{}, false
	}
	c, err := d.read()
	if err != nil {
		r.b.Fatalf("reading Ceph perf counters: %v", err)
	}
	return c, true
}

// timeSequential times n driver calls and n floor runs, interleaved
// (alternating which goes first) so that both see the same background load.
// A nil floor times the driver alone. Counters are read outside the timed
// part. Errors stop the benchmark: sequential rows are about latency, and
// an error there is a bug.
func (r *run) timeSequential(n int, drv, floor func(i int) error) seqResult {
	b := r.b
	b.Helper()
	var res seqResult
	timeOne := func(fn func(int) error, i int, isFloor bool) {
		before, counted := r.counters(isFloor)
		start := time.Now()
		if err := fn(i); err != nil {
			what := "driver"
			if isFloor {
				what = "floor"
			}
			b.Fatalf("%s #%d: %v", what, i, err)
		}
		took := time.Since(start)
		var delta cephCounters
		if counted {
			after, _ := r.counters(isFloor)
			delta = after.minus(before)
		}
		if isFloor {
			res.f = append(res.f, took)
			if counted {
				res.fMsgs, res.fOSD = append(res.fMsgs, float64(delta.Msgs)), append(res.fOSD, float64(delta.OSDOps))
			}
		} else {
			res.d = append(res.d, took)
			if counted {
				res.dMsgs, res.dOSD = append(res.dMsgs, float64(delta.Msgs)), append(res.dOSD, float64(delta.OSDOps))
			}
		}
	}
	for i := range n {
		if floor == nil {
			timeOne(drv, i, false)
			continue
		}
		if i%2 == 0 {
			timeOne(drv, i, false)
			timeOne(floor, i, true)
		} else {
			timeOne(floor, i, true)
			timeOne(drv, i, false)
		}
	}
	return res
}

// concurrentResult is what timeConcurrent measured.
type concurrentResult struct {
	lat     latencies
	wall    time.Duration
	errs    []error
	retries int
	// msgs and osd are per call (the mean), -1 when not counted.
	msgs, osd float64
	// cpu is per call (the mean).
	cpu cpuUse
}

func (c concurrentResult) rate() float64 {
	ok := len(c.lat)
	if c.wall <= 0 || ok == 0 {
		return 0
	}
	return float64(ok) / c.wall.Seconds()
}

// timeConcurrent runs op(0..n-1) on conc workers. op returns the number of
// Aborted retries it made. The driver's (or with floor, the floor's)
// counters are read before and after the whole run.
func (r *run) timeConcurrent(n, conc int, floor bool, op func(i int) (int, error)) concurrentResult {
	var (
		mu  sync.Mutex
		res = concurrentResult{msgs: -1, osd: -1}
		wg  sync.WaitGroup
	)
	before, counted := r.counters(floor)
	cpuBefore := r.cpu(floor)
	next := make(chan int)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				retries, err := op(i)
				d := time.Since(t0)
				mu.Lock()
				res.retries += retries
				if err != nil {
					res.errs = append(res.errs, fmt.Errorf("#%d: %w", i, err))
				} else {
					res.lat = append(res.lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	res.wall = time.Since(start)
	if n > 0 {
		res.cpu = r.cpu(floor).minus(cpuBefore).per(n)
	}
	if counted && n > 0 {
		after, _ := r.counters(floor)
		d := after.minus(before)
		res.msgs, res.osd = float64(d.Msgs)/float64(n), float64(d.OSDOps)/float64(n)
	}
	return res
}

// concRow makes the table row of a concurrent driver run next to its floor.
func concRow(op, mode string, n int, drv, floor concurrentResult, floorDesc string) row {
	return row{Op: op, Mode: mode, N: n, Median: drv.lat.median(), P99: drv.lat.p99(),
		FloorMedian: floor.lat.median(), Floor: floorDesc, Rate: drv.rate(), FloorRate: floor.rate(),
		Errors: len(drv.errs), Retries: drv.retries, Msgs: drv.msgs, OSD: drv.osd, FloorMsgs: floor.msgs, FloorOSD: floor.osd,
		CPU: drv.cpu, FloorCPU: floor.cpu}
}

// driverProc is the driver process under test.
type driverProc struct {
	pid   int
	asok  asoks  // the admin sockets of its Ceph clients
	pprof string // base URL of its Go profile endpoint
	log   string // path of its log
}

// stats reads what the driver process costs and how many Ceph clients and
// connections it holds.
func (p *driverProc) stats() (procStats, cephCounters, error) {
	st, err := readProc(p.pid, p.pprof)
	if err != nil {
		return st, cephCounters{}, err
	}
	c, err := p.asok.read()
	return st, c, err
}

// startDriver serves the driver on a unix socket and returns a client for
// its controller service, as chosen by CEPHCSI_BENCH_DRIVER, and the
// process (nil in-process).
func startDriver(b *testing.B, c *testutil.Cluster, kind string) (csi.ControllerClient, *driverProc) {
	b.Helper()
	switch mode := os.Getenv(envDriver); mode {
	case "", "binary":
		return startBinary(b, c, kind)
	case "inprocess":
		note("driver under test: in-process server on a real unix socket (testutil.StartDriver); nothing counted")
		return testutil.StartDriver(b, c, kind, nil).Controller, nil
	default:
		b.Fatalf("%s=%q: want binary or inprocess", envDriver, mode)
		return nil, nil
	}
}

// startBinary runs the built cephcsi binary as a controller plugin (what
// the provisioner sidecar talks to) and stops it when the benchmark ends.
// Its Ceph clients serve admin sockets (CEPH_ARGS) and it serves Go
// profiles on a local port (--enableprofiling), for the counters and the
// lean figures. At the end it checks that no cephx key reached its log.
func startBinary(b *testing.B, c *testutil.Cluster, kind string) (csi.ControllerClient, *driverProc) {
	b.Helper()
	bin := os.Getenv(envBinary)
	if bin == "" {
		bin = filepath.Join(testutil.RepoRoot(), "_output", "cephcsi")
	}
	st, err := os.Stat(bin)
	if err != nil {
		b.Fatalf("driver binary: %v (run `make build`, or set %s=inprocess)", err, envDriver)
	}
	version, _ := exec.Command(bin, "--version").Output()
	note("driver under test: binary %s (version %s, built %s), a separate process serving the controller on a unix socket",
		bin, strings.TrimSpace(string(version)), st.ModTime().Format(time.RFC3339))

	dir, err := os.MkdirTemp("", "csibench")
	if err != nil {
		b.Fatal(err)
	}
	asokPath := filepath.Join(dir, "asok")
	if err := os.Mkdir(asokPath, 0o700); err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	logPath := filepath.Join(dir, "driver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	port := ports.Free(b)
	cmd := exec.Command(bin, "--type="+kind, "--controllerserver", "--nodeid=bench",
		"--endpoint=unix://"+sock, "--configpath="+c.ConfigJSON, "--pluginpath="+filepath.Join(dir, "plugins"),
		"--enableprofiling", "--metricshost=127.0.0.1", fmt.Sprintf("--metricsport=%d", port))
	cmd.Env = append(os.Environ(), strings.TrimSpace("CEPH_ARGS="+cephArgs(asokPath)+" "+os.Getenv(envCephArgs)))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	proc := &driverProc{pid: cmd.Process.Pid, asok: asoks(filepath.Join(asokPath, "*.asok")), pprof: fmt.Sprintf("http://127.0.0.1:%d", port), log: logPath}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				b.Errorf("driver exited with %v on SIGTERM", err)
			}
		case <-time.After(15 * time.Second):
			b.Error("driver did not stop on SIGTERM; killing it")
			_ = cmd.Process.Kill()
			<-exited //nolint:errcheck // killed: its exit status says nothing
		}
		logFile.Close()
		checkLogHasNoKeys(b, c, logPath)
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			b.Fatalf("driver exited (%v):\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatal("driver socket did not appear within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return csi.NewControllerClient(conn), proc
}

// checkLogHasNoKeys fails the benchmark when a cephx key of the cluster
// appears in the driver's log. It never prints the key.
func checkLogHasNoKeys(b *testing.B, c *testutil.Cluster, logPath string) {
	out, err := os.ReadFile(logPath)
	if err != nil {
		b.Errorf("reading the driver log: %v", err)
		return
	}
	for _, name := range []string{"CEPH_RBD_PROVISIONER_KEY", "CEPH_RBD_NODE_KEY", "CEPH_FS_PROVISIONER_KEY", "CEPH_FS_NODE_KEY"} {
		if k := c.Var(name); k != "" && strings.Contains(string(out), k) {
			b.Errorf("the driver log contains the value of %s", name)
		}
	}
}

// errSummary shortens a list of errors for a failure message.
func errSummary(errs []error) error {
	if len(errs) > 3 {
		return fmt.Errorf("%w (and %d more)", errors.Join(errs[:3]...), len(errs)-3)
	}
	return errors.Join(errs...)
}
