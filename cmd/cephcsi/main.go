// Command cephcsi is the Ceph CSI driver: RBD and CephFS in one binary,
// selected with --type. `cephcsi rbd-fuse-helper ...` is the FUSE helper
// that the rbd-fuse mapper starts for each image (internal/rbdfuse);
// `cephcsi inspect ...` reports (and with --gc removes) what Kubernetes and
// Ceph disagree about (internal/inspect).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/driver"
	"github.com/leanceph/cephcsi/internal/inspect"
	"github.com/leanceph/cephcsi/internal/rbdfuse"
	"github.com/leanceph/cephcsi/internal/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == rbdfuse.HelperCommand {
		os.Exit(rbdfuse.Main(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == inspect.Command {
		os.Exit(inspect.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	var opts config.Options
	opts.Register(flag.CommandLine)
	klog.InitFlags(flag.CommandLine)
	version := flag.Bool("version", false, "print the version and exit")
	flag.Usage = func() {
		out := flag.CommandLine.Output()
		fmt.Fprintf(out, "Usage: %s --type=rbd|cephfs|liveness|controller [flags]\n", filepath.Base(os.Args[0]))
		fmt.Fprintf(out, "       %s inspect --help    (orphans between Kubernetes and Ceph)\n\n", filepath.Base(os.Args[0]))
		fmt.Fprintln(out, "Every flag of ceph-csi v3.12-v3.18 is accepted. A flag whose behaviour is \"not served yet\" logs one")
		fmt.Fprintln(out, "warning at start saying what is lost; one with \"no effect\" changes nothing here. The log flags")
		fmt.Fprintln(out, "(--v, --logtostderr, --alsologtostderr, --log_file, ...) are klog's.")
		fmt.Fprintln(out)
		flag.PrintDefaults()
	}
	flag.Parse()
	if *version {
		fmt.Println(server.Version)
		return
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "cephcsi:", err)
		os.Exit(2)
	}
	// klog exits when it cannot create --log_file; a missing log directory
	// must not crash-loop the pod.
	if f := flag.Lookup("log_file"); f != nil && f.Value.String() != "" {
		if err := os.MkdirAll(filepath.Dir(f.Value.String()), 0o750); err != nil {
			fmt.Fprintf(os.Stderr, "cephcsi: --log_file=%s: %v\n", f.Value.String(), err)
			os.Exit(2)
		}
	}
	if err := driver.Run(&opts); err != nil {
		klog.ErrorS(err, "driver failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
