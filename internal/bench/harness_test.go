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
// Adding a row set (for instance CephFS, in cephfs_bench_test.go): write a
// BenchmarkXxx that
//   - calls newRun(b, "cephfs") for the cluster, a driver on its socket
//     (run.driver), a unique run ID for names and a leak tracker,
//   - times driver calls and their floor with timeSequential (interleaved,
//     so both see the same background load) or timeConcurrent,
//   - records each result with run.addRow(row{...}), which also reports it
//     through b.ReportMetric,
//   - cleans up and calls its own scoped leftovers check before returning.
//
// TestMain prints every recorded row in one table after the benchmarks end.
package bench

import (
	"context"
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
const (
	envDriver = "CEPHCSI_BENCH_DRIVER"
	envBinary = "CEPHCSI_BINARY"
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

func TestMain(m *testing.M) {
	code := m.Run()
	printTable(os.Stdout)
	os.Exit(code)
}

func ms(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func printTable(w *os.File) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	if len(allRows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "==== cephcsi benchmark: driver calls over the CSI socket vs. raw go-ceph floor (same cluster, same run)")
	for _, n := range runNotes {
		fmt.Fprintln(w, "  "+n)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-6s %-22s %-4s %4s %9s %9s %9s %6s %8s %8s %6s %7s\n",
		"group", "op", "mode", "N", "median", "p99", "floor", "ratio", "ops/s", "floor/s", "errors", "aborted")
	for _, r := range allRows {
		ratio, rate, frate := "-", "-", "-"
		if r.FloorMedian > 0 {
			ratio = fmt.Sprintf("%.2fx", r.ratio())
		}
		if r.Rate > 0 {
			rate = fmt.Sprintf("%.1f", r.Rate)
		}
		if r.FloorRate > 0 {
			frate = fmt.Sprintf("%.1f", r.FloorRate)
		}
		fmt.Fprintf(w, "%-6s %-22s %-4s %4d %9s %9s %9s %6s %8s %8s %6d %7d\n",
			r.Group, r.Op, r.Mode, r.N, ms(r.Median), ms(r.P99), ms(r.FloorMedian), ratio, rate, frate, r.Errors, r.Retries)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "floor = the raw go-ceph calls each row is compared with:")
	seen := map[string]bool{}
	for _, r := range allRows {
		k := r.Group + " " + r.Op
		if r.Floor == "" || seen[k] {
			continue
		}
		seen[k] = true
		fmt.Fprintf(w, "  %-29s %s\n", k+":", r.Floor)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets (informational, never a failure):")
	for _, r := range allRows {
		if r.FloorMedian > 0 {
			verdict := "met"
			if r.ratio() > 2 {
				verdict = "MISSED"
			}
			fmt.Fprintf(w, "  %-6s %-22s %-4s median within 2x of floor: %s (%.2fx)\n", r.Group, r.Op, r.Mode, verdict, r.ratio())
		}
		if r.Mode != "seq" && r.Op == "CreateVolume" {
			verdict := "met"
			if r.Errors > 0 || r.Rate < 100 {
				verdict = "MISSED"
			}
			fmt.Fprintf(w, "  %-6s %-22s %-4s %d volumes, no error, >= 100 volumes/s: %s (%.1f/s, %d errors)\n",
				r.Group, r.Op, r.Mode, r.N, verdict, r.Rate, r.Errors)
		}
	}
	fmt.Fprintln(w, "  p99 is the nearest-rank percentile: with N <= 100 it is the slowest or second-slowest call.")
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
	group   string
	id      string

	mu    sync.Mutex
	uuids []string
}

// newRun starts the cluster (if needed) and a driver of kind on its socket.
func newRun(b *testing.B, kind string) *run {
	b.Helper()
	c := testutil.RequireCluster(b)
	r := &run{b: b, cluster: c, group: kind, id: uuid.NewString()[:8]}
	r.driver = startDriver(b, c, kind)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		note("load average at the start of %s: %s", b.Name(), strings.Join(strings.Fields(string(la))[:3], " "))
	}
	return r
}

// name returns a request or object name unique to this run.
func (r *run) name(kind string, i int) string { return fmt.Sprintf("bench-%s-%s-%d", r.id, kind, i) }

// track remembers a driver-made UUID for the leftovers check.
func (r *run) track(u string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.uuids = append(r.uuids, u)
}

// ours reports whether a name belongs to this run.
func (r *run) ours(s string) bool {
	if strings.Contains(s, r.id) {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range r.uuids {
		if strings.Contains(s, u) {
			return true
		}
	}
	return false
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

// timeSequential times n driver calls and n floor runs, interleaved
// (alternating which goes first) so that both see the same background load.
// A nil floor times the driver alone. Errors stop the benchmark: sequential
// rows are about latency, and an error there is a bug.
func timeSequential(b *testing.B, n int, drv, floor func(i int) error) (d, f latencies) {
	b.Helper()
	timeOne := func(fn func(int) error, i int, into *latencies, what string) {
		start := time.Now()
		if err := fn(i); err != nil {
			b.Fatalf("%s #%d: %v", what, i, err)
		}
		*into = append(*into, time.Since(start))
	}
	for i := range n {
		if floor == nil {
			timeOne(drv, i, &d, "driver")
			continue
		}
		if i%2 == 0 {
			timeOne(drv, i, &d, "driver")
			timeOne(floor, i, &f, "floor")
		} else {
			timeOne(floor, i, &f, "floor")
			timeOne(drv, i, &d, "driver")
		}
	}
	return d, f
}

// concurrentResult is what timeConcurrent measured.
type concurrentResult struct {
	lat     latencies
	wall    time.Duration
	errs    []error
	retries int
}

func (c concurrentResult) rate() float64 {
	ok := len(c.lat)
	if c.wall <= 0 || ok == 0 {
		return 0
	}
	return float64(ok) / c.wall.Seconds()
}

// timeConcurrent runs op(0..n-1) on conc workers. op returns the number of
// Aborted retries it made.
func timeConcurrent(n, conc int, op func(i int) (int, error)) concurrentResult {
	var (
		mu  sync.Mutex
		res concurrentResult
		wg  sync.WaitGroup
	)
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
	return res
}

// startDriver serves the driver on a unix socket and returns a client for
// its controller service, as chosen by CEPHCSI_BENCH_DRIVER.
func startDriver(b *testing.B, c *testutil.Cluster, kind string) csi.ControllerClient {
	b.Helper()
	switch mode := os.Getenv(envDriver); mode {
	case "", "binary":
		return startBinary(b, c, kind)
	case "inprocess":
		note("driver under test: in-process server on a real unix socket (testutil.StartDriver)")
		return testutil.StartDriver(b, c, kind, nil).Controller
	default:
		b.Fatalf("%s=%q: want binary or inprocess", envDriver, mode)
		return nil
	}
}

// startBinary runs the built cephcsi binary as a controller plugin (what
// the provisioner sidecar talks to) and stops it when the benchmark ends.
// At the end it checks that no cephx key reached the driver's log.
func startBinary(b *testing.B, c *testutil.Cluster, kind string) csi.ControllerClient {
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
	sock := filepath.Join(dir, "csi.sock")
	logPath := filepath.Join(dir, "driver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "--type="+kind, "--controllerserver", "--nodeid=bench",
		"--endpoint=unix://"+sock, "--configpath="+c.ConfigJSON, "--pluginpath="+filepath.Join(dir, "plugins"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
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
	return csi.NewControllerClient(conn)
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
