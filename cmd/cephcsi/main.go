// Command cephcsi is the Ceph CSI driver: RBD and CephFS in one binary,
// selected with --type. `cephcsi rbd-fuse-helper ...` is the FUSE helper
// that the rbd-fuse mapper starts for each image (internal/rbdfuse).
package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/driver"
	"github.com/leanceph/cephcsi/internal/rbdfuse"
	"github.com/leanceph/cephcsi/internal/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == rbdfuse.HelperCommand {
		os.Exit(rbdfuse.Main(os.Args[2:]))
	}
	var opts config.Options
	opts.Register(flag.CommandLine)
	klog.InitFlags(flag.CommandLine)
	version := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *version {
		fmt.Println(server.Version)
		return
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "cephcsi:", err)
		os.Exit(2)
	}
	if err := driver.Run(&opts); err != nil {
		klog.ErrorS(err, "driver failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
