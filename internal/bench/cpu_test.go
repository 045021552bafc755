//go:build integration

package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// CPU per call of the concurrent rows. The rates of those rows depend on
// how fast the machine is at the time; the CPU time each call costs the
// processes involved does much less, and the machine's CPUs divided by it
// is the rate at which they would all be busy: the ceiling this machine
// puts on that row, for the driver and for the floor.

// cpuTime is the CPU time (user and system, of all threads, the exited ones
// included) process pid has used so far, in the 10 ms ticks of
// /proc/<pid>/stat.
func cpuTime(pid int) (time.Duration, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(math.Round(st.CPUTime() * float64(time.Second))), nil
}

// cephDaemons are the process IDs of the test cluster's daemons, from the
// pid files its script writes under <dir>/run.
func cephDaemons(dir string) ([]int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "run", "*.pid"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no pid files under %s/run", dir)
	}
	return pids, nil
}

// cpuUse is CPU time by who spent it: the process under test (the driver,
// or for a floor run this benchmark process, which makes the floor's
// go-ceph calls), this benchmark process while it is the driver's gRPC
// client (zero for a floor run), and the cluster's daemons.
type cpuUse struct {
	Proc, Client, Ceph time.Duration
	ok                 bool
}

func (c cpuUse) total() time.Duration { return c.Proc + c.Client + c.Ceph }

func (c cpuUse) minus(o cpuUse) cpuUse {
	return cpuUse{Proc: c.Proc - o.Proc, Client: c.Client - o.Client, Ceph: c.Ceph - o.Ceph, ok: c.ok && o.ok}
}

func (c cpuUse) per(n int) cpuUse {
	d := time.Duration(n)
	return cpuUse{Proc: c.Proc / d, Client: c.Client / d, Ceph: c.Ceph / d, ok: c.ok}
}

// cpu reads the CPU time used so far by the driver process (floor false)
// or this process (floor true) and by the cluster's daemons. ok is false
// when there is no driver process to read or a read failed.
func (r *run) cpu(floor bool) cpuUse {
	self := os.Getpid()
	var u cpuUse
	var err error
	if floor {
		u.Proc, err = cpuTime(self)
	} else {
		if r.proc == nil {
			return u
		}
		if u.Proc, err = cpuTime(r.proc.pid); err == nil {
			u.Client, err = cpuTime(self)
		}
	}
	if err != nil {
		note("cpu per call not measured: %v", err)
		return u
	}
	pids, err := cephDaemons(r.cluster.Dir)
	if err != nil {
		note("cpu per call not measured: %v", err)
		return u
	}
	for _, pid := range pids {
		d, err := cpuTime(pid)
		if err != nil {
			note("cpu per call not measured: %v", err)
			return u
		}
		u.Ceph += d
	}
	u.ok = true
	return u
}

// ceiling is the rate at which a call costing c would keep all of the
// machine's CPUs busy.
func ceiling(c cpuUse) float64 {
	if c.total() <= 0 {
		return 0
	}
	return float64(runtime.NumCPU()) * float64(time.Second) / float64(c.total())
}

func cpuMS(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

// TestCPUTime checks that this process's CPU time grows while it spins.
func TestCPUTime(t *testing.T) {
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		after, err := cpuTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			return
		}
	}
	t.Errorf("this process's CPU time stayed at %v while it spun for 5 s", before)
}

func printCPU(w io.Writer) {
	var rows []row
	for _, r := range allRows {
		if r.CPU.ok && r.FloorCPU.ok {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "cpu per call of the concurrent rows, ms (user+system time from /proc/<pid>/stat, 10 ms ticks, over all N calls):\n")
	fmt.Fprintf(w, "%-6s %-22s %-4s %7s %7s %7s %7s  %7s %7s %7s  %9s %9s %8s %8s\n",
		"group", "op", "mode", "driver", "client", "ceph", "total", "floor", "ceph", "total", "ceiling/s", "fceiling", "ops/s", "floor/s")
	for _, r := range rows {
		fmt.Fprintf(w, "%-6s %-22s %-4s %7s %7s %7s %7s  %7s %7s %7s  %9.0f %9.0f %8.1f %8.1f\n",
			r.Group, r.Op, r.Mode, cpuMS(r.CPU.Proc), cpuMS(r.CPU.Client), cpuMS(r.CPU.Ceph), cpuMS(r.CPU.total()),
			cpuMS(r.FloorCPU.Proc), cpuMS(r.FloorCPU.Ceph), cpuMS(r.FloorCPU.total()),
			ceiling(r.CPU), ceiling(r.FloorCPU), r.Rate, r.FloorRate)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "driver: the driver process; client: this benchmark process while it makes the driver's gRPC calls;")
	fmt.Fprintln(w, "  floor: this benchmark process while it makes the floor's go-ceph calls; ceph: the test cluster's")
	fmt.Fprintf(w, "  daemons (mon, mgr, osd, mds). ceiling/s and fceiling: the machine's %d CPUs divided by the total,\n", runtime.NumCPU())
	fmt.Fprintln(w, "  the rate at which every CPU would be busy with these calls alone (driver's and floor's).")
}
