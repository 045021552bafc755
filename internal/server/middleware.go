package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// CallObserver is told of every call (the metrics exporter implements it).
type CallObserver interface {
	CallStarted(fullMethod string)
	CallFinished(fullMethod string, code codes.Code, took time.Duration)
}

// observeCalls reports each call's start and end to o, with the code of the
// status the client receives.
func observeCalls(o CallObserver) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		start := time.Now()
		o.CallStarted(info.FullMethod)
		resp, err := next(ctx, req)
		o.CallFinished(info.FullMethod, status.Code(err), time.Since(start))
		return resp, err
	}
}

// withRequestID gives every call a short random ID carried by the contextual
// logger, so each log line of a call can be found with one grep.
func withRequestID(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	logger := klog.FromContext(ctx).WithValues("req", hex.EncodeToString(b[:]))
	return next(klog.NewContext(ctx, logger), req)
}

// probes are the liveness calls, polled often: logged only when they fail.
var probes = map[string]bool{"/csi.v1.Identity/Probe": true, "/identity.Identity/Probe": true}

// logCalls logs each request and its outcome with secrets stripped.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	logger := klog.FromContext(ctx).WithValues("method", info.FullMethod)
	// The bodies are built only when logged: stripping secrets walks the
	// whole message by reflection, a few percent of a CreateVolume's CPU.
	bodies := !probes[info.FullMethod] && logger.V(2).Enabled()
	if bodies {
		logger.V(2).Info("request", "body", protosanitizer.StripSecrets(req).String())
	}
	start := time.Now()
	resp, err := next(ctx, req)
	took := time.Since(start).Round(time.Microsecond)
	switch {
	case err != nil:
		logger.Info("failed", "code", status.Code(err).String(), "error", status.Convert(err).Message(), "took", took)
	case bodies:
		logger.V(2).Info("response", "body", protosanitizer.StripSecrets(resp).String(), "took", took)
	}
	return resp, err
}

// logSlowCalls returns middleware that logs one line for a call each time
// another interval passes while it runs, so that a stuck call (a hung Ceph
// command, a mount that never returns) shows in the log with its request ID
// long before the sidecar's timeout. It must run inside withRequestID.
func logSlowCalls(interval time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		done, stopped := make(chan struct{}), make(chan struct{})
		// No line once the call has returned: wait for the logger to stop.
		defer func() { close(done); <-stopped }()
		start := time.Now()
		go func() {
			defer close(stopped)
			t := time.NewTicker(interval)
			defer t.Stop()
			logger := klog.FromContext(ctx)
			for {
				select {
				case <-done:
					return
				case <-t.C:
					select {
					case <-done: // the call ended as the tick came
						return
					default:
					}
					logger.Info("call still running", "method", info.FullMethod, "running", time.Since(start).Round(time.Millisecond))
				}
			}
		}()
		return next(ctx, req)
	}
}

// toStatus is the RPC edge: the error a handler returns becomes a gRPC
// status chosen from its kind (csierr).
func toStatus(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	resp, err := next(ctx, req)
	if err != nil {
		return nil, csierr.Status(err)
	}
	return resp, nil
}

// recoverPanics turns a panic in a handler into Internal instead of killing
// the plugin (and with it every other call in flight).
func recoverPanics(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.FromContext(ctx).Error(fmt.Errorf("%v", r), "panic in handler", "method", info.FullMethod, "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "internal error in %s: %v", info.FullMethod, r)
		}
	}()
	return next(ctx, req)
}

// answerByDeadline answers when the call's context ends, even while the
// handler still runs: a Ceph call in C cannot be interrupted, and the
// sidecar that set the deadline has stopped waiting anyway. The handler
// goes on in the background until its Ceph calls return (each bounded by
// librados' timeouts) and releases what it holds as it returns, the
// operation locks included (the locks interceptor runs inside this one),
// so a retry meanwhile answers Aborted instead of racing it. A late result
// is logged; the retry finds what it made.
func answerByDeadline(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	type result struct {
		resp any
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := next(ctx, req)
		done <- result{resp, err}
	}()
	select {
	case r := <-done:
		return r.resp, r.err
	case <-ctx.Done():
	}
	// The handler may have returned as the context ended: its answer wins.
	select {
	case r := <-done:
		return r.resp, r.err
	default:
	}
	logger := klog.FromContext(ctx)
	start := time.Now()
	logger.Info("answering before the call ends; it goes on in the background and holds its locks until it does",
		"method", info.FullMethod, "reason", ctx.Err())
	go func() {
		r := <-done
		logger.Info("call ended after its answer", "method", info.FullMethod, "after", time.Since(start).Round(time.Millisecond),
			"error", errString(r.err))
	}()
	return nil, fmt.Errorf("%w: the call goes on in the background; retry later", ctx.Err())
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
