//go:build compat

package compat

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// result is one row of the compat table: an operation on one release.
type result struct {
	group, op string
	outcome   string // pass, FAIL or "not run"
	took      time.Duration
	detail    string // the first failure, for the report
}

var (
	resultsMu sync.Mutex
	results   []result
)

func TestMain(m *testing.M) {
	code := m.Run()
	release := os.Getenv("COMPAT_RELEASE")
	// Every test has ended: nothing else touches results now.
	if len(results) > 0 {
		fmt.Printf("\n%-8s %-26s %-8s %9s\n", "group", "operation", "result", "time")
		for _, r := range results {
			fmt.Printf("%-8s %-26s %-8s %8.2fs\n", r.group, r.op, r.outcome, r.took.Seconds())
		}
	}
	if path := os.Getenv("COMPAT_RESULTS"); path != "" {
		if err := writeResults(path, release); err != nil {
			fmt.Fprintln(os.Stderr, "compat: writing results:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// writeResults appends the rows as tab-separated release, group, operation,
// outcome, seconds and detail, for scripts/compat-test.sh's table.
func writeResults(path, release string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	for _, r := range results {
		detail := strings.Join(strings.Fields(r.detail), " ")
		if _, err := fmt.Fprintf(f, "%s\t%s\t%s\t%s\t%.2f\t%s\n", release, r.group, r.op, r.outcome, r.took.Seconds(), detail); err != nil {
			_ = f.Close()
			return err
		}
	}
	return f.Close()
}

// sequence runs the operations of one group in order; once one fails, the
// ones after it depend on state that does not exist and are recorded as
// not run.
type sequence struct {
	t      *testing.T
	c      *cluster
	group  string
	broken string
}

func newSequence(t *testing.T, c *cluster, group string) *sequence {
	return &sequence{t: t, c: c, group: group}
}

// step is one operation: a subtest whose timed part is the driver calls.
type step struct {
	*testing.T
	c     *cluster
	took  time.Duration
	first string
}

// timed runs f (the driver calls of the operation) and adds its duration.
func (s *step) timed(f func()) {
	t0 := time.Now()
	defer func() { s.took += time.Since(t0) }()
	f()
}

func (s *step) note(msg string) {
	if s.first == "" {
		s.first = s.c.redact(msg)
	}
}

// errorf records a failure and goes on.
func (s *step) errorf(format string, args ...any) {
	s.Helper()
	msg := s.c.redact(fmt.Sprintf(format, args...))
	s.note(msg)
	s.Error(msg)
}

// fatalf records a failure and ends the operation.
func (s *step) fatalf(format string, args ...any) {
	s.Helper()
	msg := s.c.redact(fmt.Sprintf(format, args...))
	s.note(msg)
	s.Fatal(msg)
}

// run runs op unless an earlier operation of the sequence failed.
func (q *sequence) run(op string, f func(s *step)) {
	q.t.Helper()
	r := result{group: q.group, op: op}
	q.t.Run(op, func(t *testing.T) {
		if q.broken != "" {
			r.outcome, r.detail = "not run", "after "+q.broken+" failed"
			t.Skipf("skipped: %s failed", q.broken)
		}
		s := &step{T: t, c: q.c}
		defer func() {
			r.took = s.took
			r.outcome = "pass"
			if t.Failed() {
				r.outcome, r.detail = "FAIL", s.first
				if r.detail == "" {
					r.detail = "see the test log"
				}
				q.broken = op
			}
		}()
		f(s)
	})
	resultsMu.Lock()
	results = append(results, r)
	resultsMu.Unlock()
}
