// Package driver assembles the services for a --type and runs them.
package driver

import (
	"context"
	"fmt"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/cephfs"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csiaddons"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/metrics"
	"github.com/leanceph/cephcsi/internal/metrics/prom"
	"github.com/leanceph/cephcsi/internal/rbd"
	"github.com/leanceph/cephcsi/internal/registration"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/server"
	"github.com/leanceph/cephcsi/internal/service"
)

// connectTimeout bounds connecting to a cluster, so that an unreachable one
// fails a call instead of hanging it.
const connectTimeout = 30 * time.Second

// Run serves the driver described by opts until SIGINT or SIGTERM.
func Run(opts *config.Options) error {
	announce(opts)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if opts.PIDLimit != 0 {
		applyPIDLimit(hostCgroups, opts.PIDLimit)
	}
	switch opts.Type {
	case "liveness":
		return runLiveness(ctx, opts)
	case "controller":
		// What ceph-csi does here is not implemented (announce warned).
		<-ctx.Done()
		return nil
	}
	return Serve(ctx, opts)
}

// announce logs, once at start, a warning for each flag that asks for a
// behaviour this build does not serve, the flags given that have no effect,
// and the optional behaviours in force.
func announce(opts *config.Options) {
	for _, w := range opts.Warnings() {
		klog.Warningf("%s", w)
	}
	for _, f := range opts.NoEffect() {
		klog.InfoS("flag has no effect in this driver", "flag", "--"+f[0], "why", f[1])
	}
	if opts.Type == "cephfs" && opts.IsNodeSrv && !opts.ForceKernelClient && !cephfs.KernelQuotaSupported() {
		klog.InfoS("this kernel's CephFS client may not enforce quotas (before 4.17): volumes without a mounter parameter " +
			"are mounted with ceph-fuse; --forcecephkernelclient=true uses the kernel client anyway")
	}
	active := make([]string, 0, len(opts.Active()))
	for _, b := range opts.Active() {
		active = append(active, string(b))
	}
	klog.InfoS("optional behaviours in force", "active", active)
}

// applyPIDLimit is --pidlimit: it never stops the driver from starting.
func applyPIDLimit(c cgroupFS, limit int) {
	before, err := c.setPIDLimit(limit)
	if err != nil {
		klog.Warningf("--pidlimit=%d: the pids cgroup limit was not changed (%v); the limit the container runtime set stays in force", limit, err)
		return
	}
	want := "max"
	if limit > 0 {
		want = fmt.Sprint(limit)
	}
	klog.InfoS("pids cgroup limit set", "limit", want, "was", before)
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
	svcs, addons, err := services(deps)
	if err != nil {
		return err
	}
	lis, err := server.Listen(opts.Endpoint)
	if err != nil {
		return err
	}
	srvOpts := []server.Option{server.WithSlowCallLog(opts.LogSlowOpInterval)}
	var exp *prom.Exporter
	var metricsHandler http.Handler
	if opts.EnableGRPCMetrics {
		exp = prom.New(opts.Type, server.Version, conns.Len)
		defer metrics.Set(exp)()
		srvOpts = append(srvOpts, server.WithCallObserver(exp))
		metricsHandler = exp.Handler()
	}
	servers := []*server.Server{server.New(lis, svcs, deps.Locks, srvOpts...)}
	if opts.CSIAddonsEndpoint != "" {
		alis, err := server.Listen(opts.CSIAddonsEndpoint)
		if err != nil {
			_ = lis.Close()
			return fmt.Errorf("--csi-addons-endpoint: %w", err)
		}
		// The same operation locks: a reclaim and an unstage of one volume
		// never run together.
		servers = append(servers, server.NewFor(alis, addons.Register, deps.Locks, append(srvOpts, server.WithName("CSI-Addons"))...))
	}
	if exp != nil {
		for _, srv := range servers {
			exp.Methods(srv.Methods())
		}
	}
	httpCtx, stopHTTP := context.WithCancel(ctx)
	defer stopHTTP()
	startHTTP(httpCtx, opts, metricsHandler)
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.Serve() }()
	}
	stopAll := func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, srv := range servers {
			srv.Stop(stopCtx)
		}
	}
	// Registered with the kubelet once the CSI socket answers; deregistered
	// before the CSI server stops, so that the kubelet stops calling a
	// driver that is going away.
	var reg *registration.Server
	if opts.IsNodeSrv && opts.KubeletRegistrationPath != "" {
		reg, err = registration.Start(registration.SocketPath(registration.RegistryDir(opts.PluginPath), opts.DriverName),
			opts.DriverName, opts.KubeletRegistrationPath)
		if err != nil {
			stopAll()
			return err
		}
	}
	klog.InfoS("driver started", "name", opts.DriverName, "type", opts.Type, "version", server.Version,
		"controller", opts.IsControllerSrv, "node", opts.IsNodeSrv, "csiAddons", opts.CSIAddonsEndpoint != "")
	select {
	case err := <-errc:
		if reg != nil {
			reg.Stop()
		}
		stopAll()
		return err
	case <-ctx.Done():
		klog.InfoS("stopping")
		if reg != nil {
			reg.Stop()
		}
		stopAll()
		return nil
	}
}

// services builds the CSI services for --type, and the CSI-Addons services
// served next to them when --csi-addons-endpoint is given.
func services(deps *service.Deps) (server.Services, csiaddons.Services, error) {
	opts := deps.Options
	// Volumes may carry accessibility constraints (topologyConstrainedPools),
	// as with ceph-csi, whose controllers always say so.
	id := &server.Identity{Name: opts.DriverName, Controller: opts.IsControllerSrv, Topology: opts.IsControllerSrv}
	svcs := server.Services{Identity: id}
	addons := csiaddons.Services{Identity: &csiaddons.Identity{Name: opts.DriverName, Version: server.Version,
		Controller: opts.IsControllerSrv, Node: opts.IsNodeSrv, Fencing: opts.EnableFencing}}
	fence := &csiaddons.Fence{Deps: deps, Controller: opts.IsControllerSrv, Node: opts.IsNodeSrv}
	switch opts.Type {
	case "rbd":
		addons.Identity.ReclaimSpace = true
		fence.Secrets = [][2]string{request.UserSecret}
		if opts.IsControllerSrv {
			c := rbd.NewControllerServer(deps)
			svcs.Controller = c
			addons.ReclaimController = rbd.NewReclaimController(c)
		}
		if opts.IsNodeSrv {
			node, err := rbd.NewNodeServer(deps)
			if err != nil {
				return svcs, addons, err
			}
			svcs.Node = node
			addons.ReclaimNode = rbd.NewReclaimNode(node)
		}
	case "cephfs":
		// No reclaim for CephFS, as with ceph-csi: a CephFS file's freed
		// space returns to the pool when the file is deleted.
		fence.Secrets = [][2]string{request.AdminSecret, request.UserSecret}
		if opts.IsControllerSrv {
			svcs.Controller = cephfs.NewControllerServer(deps)
		}
		if opts.IsNodeSrv {
			node, err := cephfs.NewNodeServer(deps)
			if err != nil {
				return svcs, addons, err
			}
			svcs.Node = node
		}
	default:
		return svcs, addons, fmt.Errorf("--type=%s is not served by this build", opts.Type)
	}
	if opts.EnableFencing {
		addons.Fence = fence
	}
	return svcs, addons, nil
}
