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

// startHTTP serves, on --metricshost:--metricsport until ctx ends, the
// Prometheus metrics at --metricspath when metrics is not nil
// (--enablegrpcmetrics) and Go's profiles under /debug/pprof/ with
// --enableprofiling. Failing to listen only warns: a port clash must not
// keep the CSI service from starting (a node without its plugin mounts
// nothing); what is lost is logged.
func startHTTP(ctx context.Context, opts *config.Options, metrics http.Handler) {
	if metrics == nil && !opts.EnableProfiling {
		return
	}
	addr := net.JoinHostPort(opts.MetricsHost, fmt.Sprint(opts.MetricsPort))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		klog.Warningf("not serving metrics or profiles on %s (--enablegrpcmetrics=%v, --enableprofiling=%v): %v",
			addr, metrics != nil, opts.EnableProfiling, err)
		return
	}
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle(opts.MetricsPath, metrics)
		klog.InfoS("serving Prometheus metrics", "address", lis.Addr().String(), "path", opts.MetricsPath)
	}
	if opts.EnableProfiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		klog.InfoS("serving Go profiles", "address", lis.Addr().String(), "path", "/debug/pprof/")
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && err != http.ErrServerClosed {
			klog.Warningf("metrics and profile server stopped: %v", err)
		}
	}()
}
