package driver

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil/ports"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/server"
)

// The kubelet's probes get 200 from /healthz while the driver's Probe
// says ready, 503 once it does not or its socket is gone, and the gauge
// stays where it was.
func TestLivenessHealthz(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, &server.Identity{Name: "test", Ready: func(context.Context) error {
		if broken.Load() {
			return errors.New("broken")
		}
		return nil
	}})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	port := ports.Free(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runLiveness(ctx, &config.Options{Endpoint: "unix://" + sock, MetricsHost: "127.0.0.1", MetricsPort: port,
			MetricsPath: "/metrics", PollTime: time.Hour, Timeout: 2 * time.Second})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("liveness: %v", err)
		}
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + HealthzPath)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("liveness does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, body := get(t, base+"/metrics"); !strings.Contains(body, "csi_liveness 1"); _, body = get(t, base+"/metrics") {
		if time.Now().After(deadline) {
			t.Fatalf("the first probe did not set the gauge: %q", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := get(t, base+HealthzPath); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("healthy driver: %d %q", code, body)
	}
	broken.Store(true)
	if code, body := get(t, base+HealthzPath); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") {
		t.Errorf("driver not ready: %d %q", code, body)
	}
	// Polled once at start (poll time one hour): the gauge still says 1.
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "csi_liveness 1") {
		t.Errorf("metrics: %q", body)
	}
	broken.Store(false)
	srv.Stop()
	if code, _ := get(t, base+HealthzPath); code != http.StatusServiceUnavailable {
		t.Errorf("driver gone: %d, want 503", code)
	}
}
