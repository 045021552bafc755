//go:build integration

package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// The report: every row, the scale curve, the lean figures and each target
// of the issue next to what was measured, marked met or not met. Timing
// never fails a run; the report only says.

// outDir is where the report and the plot are written.
func outDir() string { return filepath.Join(testutil.RepoRoot(), "_output", "bench") }

func TestMain(m *testing.M) {
	start := time.Now()
	// Every Ceph client of this process (the floors') serves an admin
	// socket here, before the first one is made (see cephArgs).
	if _, set := os.LookupEnv("CEPH_ARGS"); !set {
		if dir, err := os.MkdirTemp("", "benchasok"); err == nil {
			benchAsokDir = dir
			if err := os.Setenv("CEPH_ARGS", strings.TrimSpace(cephArgs(dir)+" "+os.Getenv(envCephArgs))); err != nil {
				// Without it the floors' clients serve no admin socket to count from.
				fmt.Fprintf(os.Stderr, "bench: setting CEPH_ARGS: %v\n", err)
			}
		}
	}
	code := m.Run()
	var buf bytes.Buffer
	printReport(&buf, time.Since(start))
	if _, err := os.Stdout.Write(buf.Bytes()); err != nil {
		fmt.Fprintf(os.Stderr, "bench: printing the report: %v\n", err)
	}
	if buf.Len() > 0 {
		if err := os.MkdirAll(outDir(), 0o755); err == nil {
			path := filepath.Join(outDir(), "results.txt")
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err == nil {
				fmt.Printf("report written to %s\n", path)
			}
		}
	}
	if benchAsokDir != "" {
		os.RemoveAll(benchAsokDir)
	}
	os.Exit(code)
}

func ms(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// count prints a per-call count: whole numbers as such, means with one
// decimal, "-" when not counted.
func count(v float64) string {
	switch {
	case v < 0:
		return "-"
	case v == float64(int64(v)):
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.1f", v)
}

// phase records how long a part of the run took, for the report.
func phase(name string, start time.Time) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	phases = append(phases, phaseTime{name, time.Since(start)})
}

type phaseTime struct {
	name string
	took time.Duration
}

var phases []phaseTime

func printReport(w io.Writer, total time.Duration) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	if len(allRows) == 0 && len(scalePoints) == 0 && lean == nil {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "==== cephcsi benchmark: driver calls over the CSI socket vs. raw go-ceph floor (same cluster, same run)")
	fmt.Fprintf(w, "  date %s, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine())
	for _, n := range runNotes {
		fmt.Fprintln(w, "  "+n)
	}
	if len(allRows) > 0 {
		printRows(w)
		printCPU(w)
	}
	if len(scalePoints) > 0 {
		printScale(w)
	}
	if lean != nil {
		printLean(w)
	}
	printTargets(w)
	if len(phases) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "phases:")
		for _, p := range phases {
			fmt.Fprintf(w, "  %-52s %s\n", p.name, p.took.Round(100*time.Millisecond))
		}
		fmt.Fprintf(w, "  %-52s %s\n", "whole run", total.Round(100*time.Millisecond))
	}
}

func printRows(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-6s %-22s %-4s %4s %9s %9s %9s %6s %5s %5s %5s %5s %8s %8s %6s %7s\n",
		"group", "op", "mode", "N", "median", "p99", "floor", "ratio", "msgs", "osd", "fmsgs", "fosd", "ops/s", "floor/s", "errors", "aborted")
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
		fmt.Fprintf(w, "%-6s %-22s %-4s %4d %9s %9s %9s %6s %5s %5s %5s %5s %8s %8s %6d %7d\n",
			r.Group, r.Op, r.Mode, r.N, ms(r.Median), ms(r.P99), ms(r.FloorMedian), ratio,
			count(r.Msgs), count(r.OSD), count(r.FloorMsgs), count(r.FloorOSD), rate, frate, r.Errors, r.Retries)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "msgs/osd: Ceph messages / OSD ops the driver's librados clients sent per call; fmsgs/fosd: the floor's.")
	fmt.Fprintln(w, "  Read from the clients' own perf counters through admin sockets (messenger msgr_send_messages,")
	fmt.Fprintln(w, "  objecter op_send), before and after each call: the median of sequential calls, the mean of")
	fmt.Fprintln(w, "  concurrent ones. msgs counts OSD ops, mon and mgr commands alike; a compound op is one.")
	fmt.Fprintln(w, "  p99 is the nearest-rank percentile: with N <= 100 it is the slowest or second-slowest call.")
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
}

// verdict is one target of the issue and what this run measured for it.
type verdict struct {
	area, want, got string
	measured, met   bool
}

// The targets of issue 20, as ratios to the floor of the same run, rates,
// the scale curve and the lean figures.
var (
	ratioTargets = []struct {
		group, op, mode string
		max             float64
	}{
		{"rbd", "CreateVolume", "seq", 1.5},
		{"rbd", "CreateSnapshot", "seq", 1.5},
		{"rbd", "Restore(CreateVolume)", "seq", 2},
		{"rbd", "PVCClone(CreateVolume)", "seq", 1.5},
		{"rbd", "DeleteVolume", "seq", 1.5},
		{"cephfs", "CreateVolume", "seq", 1.3},
		{"cephfs", "CreateSnapshot", "seq", 1.5},
		{"cephfs", "Restore(to-ready)", "seq", 1.2},
		{"cephfs", "PVCClone(to-ready)", "seq", 1.2},
	}
	rateTargets = []struct {
		group, op, mode string
		min             float64
	}{
		{"rbd", "CreateVolume", "c16", 250},
		{"rbd", "Restore(CreateVolume)", "c16", 250},
	}
)

func findRow(group, op, mode string) *row {
	for i := range allRows {
		r := &allRows[i]
		if r.Group == group && r.Op == op && r.Mode == mode {
			return r
		}
	}
	return nil
}

func verdicts() []verdict {
	var out []verdict
	for _, t := range ratioTargets {
		v := verdict{area: t.group, want: fmt.Sprintf("%s %s median <= %.1fx floor", t.op, t.mode, t.max)}
		if r := findRow(t.group, t.op, t.mode); r != nil && r.FloorMedian > 0 {
			v.measured, v.met = true, r.ratio() <= t.max
			v.got = fmt.Sprintf("%.2fx (%s vs %s)", r.ratio(), ms(r.Median), ms(r.FloorMedian))
		}
		out = append(out, v)
	}
	for _, t := range rateTargets {
		v := verdict{area: t.group, want: fmt.Sprintf("%s %s: %d calls >= %.0f/s, 0 errors", t.op, t.mode, concN, t.min)}
		if r := findRow(t.group, t.op, t.mode); r != nil {
			v.measured, v.met = true, r.Rate >= t.min && r.Errors == 0
			v.got = fmt.Sprintf("%.1f/s, %d errors (floor %.1f/s)", r.Rate, r.Errors, r.FloorRate)
			if r.FloorCPU.ok {
				v.got += fmt.Sprintf("; the floor's CPU per call caps this machine at %.0f/s", ceiling(r.FloorCPU))
			}
		}
		out = append(out, v)
	}
	out = append(out, scaleVerdicts()...)
	out = append(out, leanVerdicts()...)
	return out
}

func printTargets(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets of issue 20 (informational: timing never fails the run):")
	for _, v := range verdicts() {
		mark, got := "not measured", "-"
		if v.measured {
			mark, got = "NOT MET", v.got
			if v.met {
				mark = "met"
			}
		}
		fmt.Fprintf(w, "  %-7s %-62s %-8s %s\n", v.area, v.want, mark, got)
	}
}

// machine describes the host for the report: CPUs, memory, kernel.
func machine() string {
	var parts []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n, model := 0, ""
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "processor") {
				n++
			}
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" && model == "" {
				model = strings.TrimSpace(v)
			}
		}
		parts = append(parts, fmt.Sprintf("%d CPUs (%s)", n, model))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb uint64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			parts = append(parts, fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20)))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	return strings.Join(parts, ", ")
}
