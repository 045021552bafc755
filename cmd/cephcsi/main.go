// Command cephcsi is the Ceph CSI driver: RBD and CephFS in one binary,
// selected with --type.
package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/driver"
	"github.com/leanceph/cephcsi/internal/server"
)

func main() {
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
