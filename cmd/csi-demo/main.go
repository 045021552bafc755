// Command csi-demo walks through the driver's CSI calls over its socket and
// prints, after each one, what it changed on the Ceph cluster. Run it with
// `make demo` (scripts/demo.sh starts the cluster and the driver).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leanceph/cephcsi/internal/demo"
)

func main() {
	var cfg demo.Config
	flag.StringVar(&cfg.RBDEndpoint, "endpoint", "", "the RBD driver's CSI endpoint, unix:///path/csi.sock")
	flag.StringVar(&cfg.ClusterDir, "cluster-dir", "_output/ceph", "directory of the local cluster")
	flag.StringVar(&cfg.ClusterScript, "cluster-script", "scripts/ceph-cluster.sh", "the cluster script (its `env` command describes the cluster)")
	flag.StringVar(&cfg.Pool, "pool", "rbd", "RBD pool for the volumes")
	flag.StringVar(&cfg.DriverLog, "driver-log", "", "the driver's log file, checked for cephx keys at the end")
	flag.DurationVar(&cfg.CallTimeout, "timeout", time.Minute, "timeout of each CSI call")
	flag.Parse()
	if cfg.RBDEndpoint == "" {
		fmt.Fprintln(os.Stderr, "csi-demo: --endpoint is required")
		os.Exit(2)
	}
	cfg.Out = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := demo.Run(ctx, cfg, demo.RBDSteps())
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "csi-demo:", err)
		os.Exit(1)
	}
}
