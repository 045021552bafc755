//go:build kernel

package kernel

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// guest talks to the command agent of the QEMU guest (see
// scripts/kernel-guest-init.sh) over the virtio-serial port's unix socket.
// One command runs at a time.
type guest struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
	next int
}

func dialGuest(sock string) (*guest, error) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	return &guest{conn: conn, r: bufio.NewReaderSize(conn, 1<<20)}, nil
}

func (g *guest) close() { g.conn.Close() }

// run runs cmd with sh -c in the guest's chroot of the host root and returns
// its combined output and exit status. The guest kills the command after
// timeout (status 137).
func (g *guest) run(cmd string, timeout time.Duration) (string, int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.next++
	id := strconv.Itoa(g.next)
	secs := int(timeout.Seconds())
	if secs < 1 {
		secs = 1
	}
	// The reply may take a little longer than the guest's own timeout.
	if err := g.conn.SetDeadline(time.Now().Add(timeout + 15*time.Second)); err != nil {
		return "", 0, err
	}
	req := fmt.Sprintf("%s %d %s\n", id, secs, base64.StdEncoding.EncodeToString([]byte(cmd)))
	if _, err := g.conn.Write([]byte(req)); err != nil {
		return "", 0, fmt.Errorf("sending to the guest: %w", err)
	}
	var b64 strings.Builder
	for {
		line, err := g.r.ReadString('\n')
		if err != nil {
			return "", 0, fmt.Errorf("reading the guest's answer to %q: %w", short(cmd), err)
		}
		line = strings.TrimRight(line, "\n")
		if rest, ok := strings.CutPrefix(line, "__KT_RC__ "); ok {
			f := strings.Fields(rest)
			if len(f) != 2 {
				return "", 0, fmt.Errorf("bad end marker %q", line)
			}
			if f[0] != id {
				// The end of an earlier command that we gave up on.
				b64.Reset()
				continue
			}
			rc, err := strconv.Atoi(f[1])
			if err != nil {
				return "", 0, fmt.Errorf("bad end marker %q", line)
			}
			out, err := base64.StdEncoding.DecodeString(b64.String())
			if err != nil {
				return "", rc, fmt.Errorf("decoding the guest's output: %w", err)
			}
			return string(out), rc, nil
		}
		b64.WriteString(line)
	}
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// sh runs cmd in the guest and fails the test unless it exits 0.
func (g *guest) sh(t testing.TB, cmd string) string {
	t.Helper()
	out, rc, err := g.run(cmd, 2*time.Minute)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	if rc != 0 {
		t.Fatalf("guest: %q exited %d: %s", short(cmd), rc, strings.TrimSpace(out))
	}
	return out
}

// try runs cmd in the guest and returns its output and exit status.
func (g *guest) try(t testing.TB, cmd string) (string, int) {
	t.Helper()
	out, rc, err := g.run(cmd, 2*time.Minute)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	return out, rc
}

// step runs f and logs how long it took.
func step(t testing.TB, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	t.Logf("%-34s %6d ms", what, time.Since(start).Milliseconds())
}

// ctxT is a context for one gRPC call.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// quote makes s one shell word.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
