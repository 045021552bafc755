package driver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/config"
)

// HealthzPath is where the liveness sidecar answers the kubelet's probes.
const HealthzPath = "/healthz"

// runLiveness is the --type=liveness sidecar: it probes the driver socket
// every --polltime and serves the result as the gauge csi_liveness, and
// answers HealthzPath with a probe of its own (200 when the driver's Probe
// succeeds, 503 otherwise), for the pods' liveness and readiness probes.
func runLiveness(ctx context.Context, opts *config.Options) error {
	target := opts.Endpoint
	if strings.HasPrefix(target, "unix://") {
		target = "unix:" + strings.TrimPrefix(target, "unix://")
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("driver endpoint %q: %w", opts.Endpoint, err)
	}
	defer func() { _ = conn.Close() }() // nothing to do about a failed close at exit
	var live atomic.Int32
	check := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
		resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		if err == nil && resp.GetReady() != nil && !resp.GetReady().GetValue() {
			err = fmt.Errorf("the driver reports it is not ready")
		}
		return err
	}
	probe := func() {
		if err := check(context.Background()); err != nil {
			klog.InfoS("driver probe failed", "error", err)
			live.Store(0)
			return
		}
		live.Store(1)
	}
	go func() {
		t := time.NewTicker(opts.PollTime)
		defer t.Stop()
		for {
			probe()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc(opts.MetricsPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP csi_liveness Liveness of the CSI driver (1 when its Probe succeeds).\n# TYPE csi_liveness gauge\ncsi_liveness %d\n", live.Load())
	})
	mux.HandleFunc(HealthzPath, func(w http.ResponseWriter, r *http.Request) {
		if err := check(r.Context()); err != nil {
			klog.V(2).InfoS("health check failed", "error", err)
			http.Error(w, "driver probe failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	addr := net.JoinHostPort(opts.MetricsHost, fmt.Sprint(opts.MetricsPort))
	klog.InfoS("serving liveness metrics and health checks", "address", addr, "path", opts.MetricsPath, "health", HealthzPath)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
