//go:build integration

package bench

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The lean figures of the RBD controller process: resident memory idle
// and at its peak during the concurrency-16 runs, and, around many
// create/delete cycles, what would grow with a leak (goroutines, open file
// descriptors, Ceph clients and their connections, resident memory).

// envCycles is the number of create/delete cycles of the leak check.
const envCycles = "CEPHCSI_BENCH_CYCLES"

// Limits of the lean targets; "beyond noise" for the leak check is a
// couple of goroutines or descriptors (a gRPC stream, an idle HTTP
// connection of the profile endpoint) and a few MiB of memory (Go and
// glibc return freed memory to the system lazily).
const (
	idleRSSMax       = 30 << 20
	peakRSSMax       = 80 << 20
	leakGoroutines   = 2
	leakFDs          = 2
	leakRSSAbs       = 4 << 20
	leakRSSRel       = 0.10
	settleBeforeRead = 2 * time.Second
)

type leanPoint struct {
	proc procStats
	ceph cephCounters
}

func (p *leanPoint) String() string {
	return fmt.Sprintf("RSS %s, %d goroutines, %d threads, %d fds, %d Ceph clients with %d connections",
		mib(p.proc.RSS), p.proc.Goroutines, p.proc.Threads, p.proc.FDs, p.ceph.Clients, p.ceph.TCPConns)
}

type leanResult struct {
	start, idle        *leanPoint // before any call; after a warm-up call
	peakRSS            uint64     // during the concurrency-16 runs
	peakSamples        int
	baseline, after    *leanPoint // of the leak check: after the warm-up cycles, after all
	warmCycles, cycles int
	cyclesTook         time.Duration
	floor              *leanFloor // BenchmarkRBDLeanFloor's
}

var lean *leanResult

func leanState() *leanResult {
	if lean == nil {
		lean = &leanResult{}
	}
	return lean
}

// leanPointNow reads the driver process after letting it settle.
func (r *run) leanPointNow() *leanPoint {
	r.b.Helper()
	if r.proc == nil {
		return nil
	}
	time.Sleep(settleBeforeRead)
	st, cc, err := r.proc.stats()
	if err != nil {
		r.b.Fatalf("reading the driver process: %v", err)
	}
	return &leanPoint{proc: st, ceph: cc}
}

// leanStart records the driver before its first call.
func (r *run) leanStart() {
	p := r.leanPointNow()
	rowsMu.Lock()
	defer rowsMu.Unlock()
	leanState().start = p
}

// leanIdle records the idle driver (after the warm-up).
func (r *run) leanIdle() {
	p := r.leanPointNow()
	rowsMu.Lock()
	defer rowsMu.Unlock()
	leanState().idle = p
}

// sampleRSS samples the driver's resident memory until the returned
// function is called, and records the peak.
func (r *run) sampleRSS() (stop func()) {
	if r.proc == nil {
		return func() {}
	}
	stopPeak := samplePeakRSS(r.proc.pid)
	return func() {
		peak, samples := stopPeak()
		rowsMu.Lock()
		defer rowsMu.Unlock()
		l := leanState()
		l.peakRSS, l.peakSamples = max(l.peakRSS, peak), l.peakSamples+samples
	}
}

// samplePeakRSS samples the resident memory of process pid every 20 ms
// until the returned function is called, which returns the peak and the
// number of samples.
func samplePeakRSS(pid int) (stop func() (peak uint64, samples int)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var peak uint64
	samples := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if st, err := readProc(pid, ""); err == nil {
					peak = max(peak, st.RSS)
					samples++
				}
			}
		}
	}()
	return func() (uint64, int) {
		close(done)
		wg.Wait()
		return peak, samples
	}
}

func cyclesWanted(b *testing.B) int {
	if v := os.Getenv(envCycles); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			b.Fatalf("%s=%q: want a number of cycles", envCycles, v)
		}
		return n
	}
	return 5000
}

// BenchmarkRBDLean: the driver before any call and idle after one, then
// CEPHCSI_BENCH_CYCLES (default 5,000) CreateVolume+DeleteVolume cycles
// on 16 clients, with the process read after the first tenth (the
// baseline, once caches and pools are warm) and at the end.
func BenchmarkRBDLean(b *testing.B) {
	r := newRBDRun(b)
	if r.proc == nil {
		b.Skip("the lean figures need the driver as a process (CEPHCSI_BENCH_DRIVER=binary)")
	}
	r.leanStart()
	r.warmUp()
	if lean == nil || lean.idle == nil {
		r.leanIdle()
	}
	n := cyclesWanted(b)
	if n == 0 {
		r.finish()
		return
	}
	warm := max(n/10, 1)
	cycle := func(i int) (int, error) {
		name := r.name("cycle", i)
		id, retries, err := r.createVolume(name, nil)
		if err != nil {
			return retries, fmt.Errorf("create %s: %w", name, err)
		}
		more, err := r.deleteVolume(id)
		if err != nil {
			return retries + more, fmt.Errorf("delete %s: %w", id, err)
		}
		return retries + more, nil
	}
	start := time.Now()
	res := r.timeConcurrent(warm, concurrency, false, cycle)
	if len(res.errs) > 0 {
		b.Fatalf("%d of %d warm-up cycles failed: %v", len(res.errs), warm, errSummary(res.errs))
	}
	baseline := r.leanPointNow()
	res = r.timeConcurrent(n-warm, concurrency, false, func(i int) (int, error) { return cycle(warm + i) })
	took := time.Since(start)
	if len(res.errs) > 0 {
		b.Fatalf("%d of %d cycles failed: %v", len(res.errs), n-warm, errSummary(res.errs))
	}
	after := r.leanPointNow()
	phase(fmt.Sprintf("rbd leak check: %d create/delete cycles at c%d", n, concurrency), start)
	rowsMu.Lock()
	l := leanState()
	l.baseline, l.after, l.warmCycles, l.cycles, l.cyclesTook = baseline, after, warm, n, took
	rowsMu.Unlock()
	r.finish()
}

func printLean(w io.Writer) {
	l := lean
	fmt.Fprintln(w)
	fmt.Fprintln(w, "lean: the RBD controller process (VmRSS of /proc/<pid>/status, goroutines from its Go profile")
	fmt.Fprintln(w, "  endpoint, /proc/<pid>/fd, Ceph clients = answering admin sockets, connections = their messengers')")
	if l.start != nil {
		fmt.Fprintf(w, "  before any call:            %s\n", l.start)
	}
	if l.idle != nil {
		fmt.Fprintf(w, "  idle after a warm-up call:  %s\n", l.idle)
	}
	if l.peakSamples > 0 {
		fmt.Fprintf(w, "  peak during the c%d runs:   RSS %s (%d samples, every 20 ms)\n", concurrency, mib(l.peakRSS), l.peakSamples)
	}
	if f := l.floor; f != nil {
		fmt.Fprintf(w, "  go-ceph floor (./leanfloor: one connection, the c%d rows' librbd calls, nothing else):\n", concurrency)
		fmt.Fprintf(w, "    idle after a warm-up create and remove: RSS %s; peak during its c%d load: RSS %s (%d samples)\n",
			mib(f.idle), concurrency, mib(f.peak), f.samples)
	}
	if l.baseline != nil && l.after != nil {
		fmt.Fprintf(w, "  leak check, %d cycles (CreateVolume+DeleteVolume at c%d) in %s:\n", l.cycles, concurrency, l.cyclesTook.Round(time.Second))
		fmt.Fprintf(w, "    after %5d cycles:        %s\n", l.warmCycles, l.baseline)
		fmt.Fprintf(w, "    after %5d cycles:        %s\n", l.cycles, l.after)
	}
}

func leanVerdicts() []verdict {
	l := lean
	idle := verdict{area: "lean", want: fmt.Sprintf("idle RSS of the RBD controller <= %s", mib(idleRSSMax))}
	peak := verdict{area: "lean", want: fmt.Sprintf("RSS during the c%d runs <= %s", concurrency, mib(peakRSSMax))}
	leak := verdict{area: "lean", want: "no growth over the create/delete cycles (goroutines, fds, Ceph clients, RSS)"}
	if l == nil {
		return []verdict{idle, peak, leak}
	}
	if l.idle != nil {
		idle.measured, idle.met, idle.got = true, l.idle.proc.RSS <= idleRSSMax, mib(l.idle.proc.RSS)
		if l.floor != nil {
			idle.got += fmt.Sprintf(" (go-ceph floor %s)", mib(l.floor.idle))
		}
	}
	if l.peakSamples > 0 {
		peak.measured, peak.met, peak.got = true, l.peakRSS <= peakRSSMax, mib(l.peakRSS)
		if l.floor != nil {
			peak.got += fmt.Sprintf(" (go-ceph floor %s)", mib(l.floor.peak))
		}
	}
	if l.baseline != nil && l.after != nil {
		b, a := l.baseline, l.after
		rssLimit := b.proc.RSS + max(uint64(leakRSSAbs), uint64(float64(b.proc.RSS)*leakRSSRel))
		leak.measured = true
		leak.met = a.proc.Goroutines <= b.proc.Goroutines+leakGoroutines && a.proc.FDs <= b.proc.FDs+leakFDs &&
			a.ceph.Clients <= b.ceph.Clients && a.ceph.TCPConns <= b.ceph.TCPConns+1 && a.proc.RSS <= rssLimit
		leak.got = fmt.Sprintf("%d cycles: goroutines %d -> %d, fds %d -> %d, Ceph clients %d -> %d (connections %d -> %d), RSS %s -> %s",
			l.cycles-l.warmCycles, b.proc.Goroutines, a.proc.Goroutines, b.proc.FDs, a.proc.FDs, b.ceph.Clients, a.ceph.Clients,
			b.ceph.TCPConns, a.ceph.TCPConns, mib(b.proc.RSS), mib(a.proc.RSS))
	}
	return []verdict{idle, peak, leak}
}
