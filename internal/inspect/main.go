package inspect

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/leanceph/cephcsi/internal/config"
)

// Command is the subcommand's name: `cephcsi inspect [flags]`.
const Command = "inspect"

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// Main runs `cephcsi inspect` and returns its exit status: 0 when
// everything could be read (and, with --gc --yes, removed), 1 when some of
// it could not (the report says what), 2 for a bad command line.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cephcsi inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	var clusters, drivers, pools, fsNames, secrets, output string
	var gc, yes bool
	fs.StringVar(&o.ConfigPath, "configpath", config.DefaultConfigPath, "config.json of the driver")
	fs.StringVar(&clusters, "clusterid", "", "clusters of config.json to inspect, comma separated (default all)")
	fs.StringVar(&drivers, "type", "rbd,cephfs", "drivers to inspect: rbd, cephfs, or both")
	fs.StringVar(&o.RBDDriverName, "rbd-drivername", "rbd.csi.ceph.com", "CSI driver name of the RBD driver (PVs and snapshot contents are matched by it)")
	fs.StringVar(&o.CephFSDriverName, "cephfs-drivername", "cephfs.csi.ceph.com", "CSI driver name of the CephFS driver")
	fs.StringVar(&o.InstanceID, "instanceid", "default", "--instanceid of the driver (journal csi.volumes.<instanceid>)")
	fs.StringVar(&pools, "pools", "", "RBD pools, comma separated (default: every pool with a journal of --instanceid, and those our PVs name)")
	fs.StringVar(&fsNames, "fsnames", "", "CephFS filesystems, comma separated (default all)")
	fs.StringVar(&o.RadosNamespaceCephFS, "radosnamespacecephfs", "csi", "RADOS namespace of the CephFS journal when config.json sets none")
	fs.StringVar(&secrets, "secrets", "", secretFlagHint)
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for reading PVs, PVCs and snapshots; without it orphans that need Kubernetes are not looked for")
	fs.StringVar(&output, "o", "table", "output: table or json")
	fs.BoolVar(&gc, "gc", false, "remove the orphans that are ours and older than --grace (a dry run without --yes)")
	fs.BoolVar(&yes, "yes", false, "with --gc: really remove")
	fs.DurationVar(&o.Grace, "grace", 24*time.Hour, "with --gc: how long an orphan must have been left alone before it is removed")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: cephcsi inspect --secrets=PATH [--kubeconfig=PATH] [--gc [--yes]] [flags]\n\n"+
			"Reports what the Ceph clusters of config.json and Kubernetes disagree about; --gc removes the orphans that\n"+
			"are this driver's. See docs/operations.md.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cephcsi inspect: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if output != "table" && output != "json" {
		fmt.Fprintf(stderr, "cephcsi inspect: -o %q: want table or json\n", output)
		return 2
	}
	if yes && !gc {
		fmt.Fprintln(stderr, "cephcsi inspect: --yes only goes with --gc")
		return 2
	}
	if o.Grace < 0 {
		fmt.Fprintln(stderr, "cephcsi inspect: --grace is negative")
		return 2
	}
	o.ClusterIDs, o.Drivers, o.Pools, o.Filesystems = splitList(clusters), splitList(drivers), splitList(pools), splitList(fsNames)
	for _, d := range o.Drivers {
		if d != "rbd" && d != "cephfs" {
			fmt.Fprintf(stderr, "cephcsi inspect: --type %q: want rbd, cephfs or both\n", d)
			return 2
		}
	}
	var err error
	if o.Secrets, err = ReadSecrets(secrets); err != nil {
		fmt.Fprintln(stderr, "cephcsi inspect:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var rep *Report
	if gc {
		rep, err = GC(ctx, &o, yes)
	} else {
		var s *session
		if rep, s, err = Inspect(ctx, &o); err == nil {
			s.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "cephcsi inspect:", err)
		return 1
	}
	if output == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout, time.Now())
	}
	if err != nil {
		fmt.Fprintln(stderr, "cephcsi inspect:", err)
		return 1
	}
	if rep.failed() {
		return 1
	}
	return 0
}

// failed reports whether something could not be read or removed.
func (r *Report) failed() bool {
	if len(r.Errors) > 0 {
		return true
	}
	for _, p := range r.Pools {
		if len(p.Errors) > 0 {
			return true
		}
	}
	for _, d := range r.Removed {
		if d.Error != "" && !r.DryRun {
			return true
		}
	}
	return false
}
