// Package server runs the driver's gRPC servers (CSI, and CSI-Addons on a
// socket of its own): the unix socket, the middleware every call passes
// through, and the CSI Identity service.
package server

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/memtrim"
)

// Services are the CSI services one process serves; nil ones are left out.
type Services struct {
	Identity   csi.IdentityServer
	Controller csi.ControllerServer
	Node       csi.NodeServer
}

// Server is a running CSI endpoint.
type Server struct {
	grpc     *grpc.Server
	listener net.Listener
	name     string
}

// Listen parses an endpoint (unix:///path or tcp://host:port) and listens on
// it, replacing a stale socket file left by a previous run.
func Listen(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "unix":
		path := u.Path
		if u.Host != "" { // unix://relative/path
			path = u.Host + u.Path
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
		return net.Listen("unix", path)
	case "tcp":
		return net.Listen("tcp", u.Host)
	default:
		return nil, fmt.Errorf("endpoint %q: scheme must be unix or tcp", endpoint)
	}
}

// Option tunes the server.
type Option func(*settings)

type settings struct {
	slowCallInterval time.Duration
	calls            CallObserver
	name             string
}

// WithSlowCallLog logs, every interval, each call still running (with its
// method and request ID); 0 turns it off.
func WithSlowCallLog(interval time.Duration) Option {
	return func(s *settings) { s.slowCallInterval = interval }
}

// WithCallObserver tells o of every call: its start, and its end with the
// gRPC code of the answer.
func WithCallObserver(o CallObserver) Option {
	return func(s *settings) { s.calls = o }
}

// WithName names the API the server speaks in its log lines ("CSI" unless
// given).
func WithName(name string) Option {
	return func(s *settings) { s.name = name }
}

// New builds a server for svcs on lis with the standard middleware: call
// metrics (when observed), request IDs, the slow-call log, logging without
// secrets, the gRPC status of every error (the RPC edge), an answer by the
// call's deadline (the handler, its panic recovery and its operation locks
// of opLocks go on in the background past it; see answerByDeadline).
func New(lis net.Listener, svcs Services, opLocks *locks.Set, opts ...Option) *Server {
	return NewFor(lis, svcs.register, opLocks, opts...)
}

// NewFor builds a server on lis for the services that register adds, with
// the same middleware as New. The CSI-Addons services run on a socket of
// their own this way, and share the CSI server's operation locks when given
// the same opLocks.
func NewFor(lis net.Listener, register func(grpc.ServiceRegistrar), opLocks *locks.Set, opts ...Option) *Server {
	set := settings{name: "CSI"}
	for _, o := range opts {
		o(&set)
	}
	var chain []grpc.UnaryServerInterceptor
	if set.calls != nil {
		// Outermost: the time includes lock waits and logging, and the
		// code is the one the client gets.
		chain = append(chain, observeCalls(set.calls))
	}
	chain = append(chain, withRequestID)
	if set.slowCallInterval > 0 {
		chain = append(chain, logSlowCalls(set.slowCallInterval))
	}
	// memtrim counts the handler's own run, which answerByDeadline may let
	// go on past the answer.
	chain = append(chain, logCalls, toStatus, answerByDeadline, recoverPanics, memtrim.Interceptor(), locks.Interceptor(opLocks))
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	register(g)
	return &Server{grpc: g, listener: lis, name: set.name}
}

func (svcs Services) register(g grpc.ServiceRegistrar) {
	if svcs.Identity != nil {
		csi.RegisterIdentityServer(g, svcs.Identity)
	}
	if svcs.Controller != nil {
		csi.RegisterControllerServer(g, svcs.Controller)
	}
	if svcs.Node != nil {
		csi.RegisterNodeServer(g, svcs.Node)
	}
}

// Methods lists the full names of the methods served ("/csi.v1.Node/
// NodeStageVolume").
func (s *Server) Methods() []string {
	var out []string
	for svc, info := range s.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			out = append(out, "/"+svc+"/"+m.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Serve blocks until the server stops.
func (s *Server) Serve() error {
	klog.InfoS("serving "+s.name, "address", s.listener.Addr().String())
	return s.grpc.Serve(s.listener)
}

// Stop ends the server, letting running calls finish.
func (s *Server) Stop(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
	}
}
