package driver

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/config"
)

func TestProfilingServedOnMetricsPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startProfiling(ctx, &config.Options{MetricsHost: "127.0.0.1", MetricsPort: port})
	resp, err := http.Get("http://" + l.Addr().String() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine") {
		t.Fatalf("GET /debug/pprof/: %s\n%s", resp.Status, body)
	}
	// A port in use only costs the profiles.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	startProfiling(ctx, &config.Options{MetricsHost: "127.0.0.1", MetricsPort: busy.Addr().(*net.TCPAddr).Port})
}
