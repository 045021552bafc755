package driver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/config"
)

// startProfiling serves Go's profiles under /debug/pprof/ on
// --metricshost:--metricsport until ctx ends (--enableprofiling). Failing to
// listen only warns: profiles are a debugging aid, not part of the service.
func startProfiling(ctx context.Context, opts *config.Options) {
	addr := net.JoinHostPort(opts.MetricsHost, fmt.Sprint(opts.MetricsPort))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		klog.Warningf("--enableprofiling: not serving profiles: %v", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	klog.InfoS("serving Go profiles", "address", lis.Addr().String(), "path", "/debug/pprof/")
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && err != http.ErrServerClosed {
			klog.Warningf("--enableprofiling: profile server stopped: %v", err)
		}
	}()
}
