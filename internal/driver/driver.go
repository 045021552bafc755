// Package driver assembles the services for a --type and runs them.
package driver

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/cephfs"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/rbd"
	"github.com/leanceph/cephcsi/internal/registration"
	"github.com/leanceph/cephcsi/internal/server"
	"github.com/leanceph/cephcsi/internal/service"
)

// connectTimeout bounds connecting to a cluster, so that an unreachable one
// fails a call instead of hanging it.
const connectTimeout = 30 * time.Second

// Run serves the driver described by opts until SIGINT or SIGTERM.
func Run(opts *config.Options) error {
	for _, f := range opts.Unused() {
		klog.InfoS("flag accepted for compatibility and ignored", "flag", f)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch opts.Type {
	case "liveness":
		return runLiveness(ctx, opts)
	case "controller":
		// ceph-csi's Kubernetes-side controller has nothing to do here.
		klog.InfoS("--type=controller has no work in this driver; idling")
		<-ctx.Done()
		return nil
	}
	return Serve(ctx, opts)
}

// Serve runs the CSI services for opts until ctx ends.
func Serve(ctx context.Context, opts *config.Options) error {
	conns := cephconn.NewPool(opts.ConnIdleTimeout, connectTimeout)
	defer conns.Close()
	deps := &service.Deps{
		Options:  opts,
		Clusters: config.NewClusters(opts.ConfigPath),
		Conns:    conns,
		Locks:    &locks.Set{},
	}
	svcs, err := services(deps)
	if err != nil {
		return err
	}
	lis, err := server.Listen(opts.Endpoint)
	if err != nil {
		return err
	}
	srv := server.New(lis, svcs, deps.Locks)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	// Registered with the kubelet once the CSI socket answers; deregistered
	// before the CSI server stops, so that the kubelet stops calling a
	// driver that is going away.
	var reg *registration.Server
	if opts.IsNodeSrv && opts.KubeletRegistrationPath != "" {
		reg, err = registration.Start(registration.SocketPath(registration.RegistryDir(opts.PluginPath), opts.DriverName),
			opts.DriverName, opts.KubeletRegistrationPath)
		if err != nil {
			srv.Stop(context.Background())
			return err
		}
	}
	klog.InfoS("driver started", "name", opts.DriverName, "type", opts.Type, "version", server.Version,
		"controller", opts.IsControllerSrv, "node", opts.IsNodeSrv)
	select {
	case err := <-errc:
		if reg != nil {
			reg.Stop()
		}
		return err
	case <-ctx.Done():
		klog.InfoS("stopping")
		if reg != nil {
			reg.Stop()
		}
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Stop(stopCtx)
		return nil
	}
}

func services(deps *service.Deps) (server.Services, error) {
	opts := deps.Options
	id := &server.Identity{Name: opts.DriverName, Controller: opts.IsControllerSrv}
	svcs := server.Services{Identity: id}
	switch opts.Type {
	case "rbd":
		if opts.IsControllerSrv {
			svcs.Controller = rbd.NewControllerServer(deps)
		}
		if opts.IsNodeSrv {
			node, err := rbd.NewNodeServer(deps)
			if err != nil {
				return svcs, err
			}
			svcs.Node = node
		}
	case "cephfs":
		if opts.IsControllerSrv {
			svcs.Controller = cephfs.NewControllerServer(deps)
		}
		if opts.IsNodeSrv {
			node, err := cephfs.NewNodeServer(deps)
			if err != nil {
				return svcs, err
			}
			svcs.Node = node
		}
	default:
		return svcs, fmt.Errorf("--type=%s is not served by this build", opts.Type)
	}
	return svcs, nil
}
