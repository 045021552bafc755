package driver

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/testutil/ports"

	"github.com/leanceph/cephcsi/internal/config"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestProfilingServedOnMetricsPort(t *testing.T) {
	port := ports.Free(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startHTTP(ctx, &config.Options{MetricsHost: "127.0.0.1", MetricsPort: port, MetricsPath: "/metrics", EnableProfiling: true}, nil)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	if code, body := get(t, base+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("GET /debug/pprof/: %d\n%s", code, body)
	}
	// Metrics were not asked for.
	if code, _ := get(t, base+"/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics without --enablegrpcmetrics: %d", code)
	}
	// A port in use only costs the profiles.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	startHTTP(ctx, &config.Options{MetricsHost: "127.0.0.1", MetricsPort: busy.Addr().(*net.TCPAddr).Port, EnableProfiling: true}, nil)
}

func TestMetricsAndProfilesShareThePort(t *testing.T) {
	port := ports.Free(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "cephcsi_test 1\n") })
	startHTTP(ctx, &config.Options{MetricsHost: "127.0.0.1", MetricsPort: port, MetricsPath: "/m"}, metrics)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	if code, body := get(t, base+"/m"); code != http.StatusOK || body != "cephcsi_test 1\n" {
		t.Fatalf("GET /m: %d %q", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("profiles served without --enableprofiling: %d", code)
	}
}
