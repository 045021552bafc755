// Package config holds the driver's command line and the cluster list it
// reads from config.json.
package config

import (
	"flag"
	"fmt"
	"time"
)

// DefaultConfigPath is where Rook and the upstream manifests mount config.json.
const DefaultConfigPath = "/etc/ceph-csi-config/config.json"

// Options is the driver's command line. It accepts every flag Rook and the
// upstream manifests pass; the ones this driver does not use are listed by
// Unused so that main can log them once.
type Options struct {
	Type             string
	NodeID           string
	Endpoint         string
	DriverName       string
	ConfigPath       string
	InstanceID       string
	IsControllerSrv  bool
	IsNodeSrv        bool
	StagingPath      string
	PluginPath       string
	KernelMountOpts  string
	FuseMountOpts    string
	RadosNSCephFS    string
	Timeout          time.Duration
	MetricsPort      int
	MetricsPath      string
	PollTime         time.Duration
	ConnIdleTimeout  time.Duration
	HardMaxClones    uint
	SoftMaxClones    uint
	MaxSnapsOnImage  uint
	MinSnapsOnImage  uint
	SkipForceFlatten bool
	// CloneWait is how long CreateVolume waits for a CephFS clone to finish
	// before answering Aborted.
	CloneWait time.Duration
	// KubeletRegistrationPath, when set, makes the node plugin register
	// itself with the kubelet (no node-driver-registrar): the CSI socket's
	// path as the kubelet sees it.
	KubeletRegistrationPath string

	fs *flag.FlagSet
	// used lists the flags this driver acts on; the rest are accepted only.
	used map[string]bool
	// ignored lists the flags accepted only for compatibility. Flags that
	// others register on the same set (klog's) are neither.
	ignored map[string]bool
}

// Register defines all flags on fs.
func (o *Options) Register(fs *flag.FlagSet) {
	o.fs = fs
	o.used = map[string]bool{}
	use := func(name string) string { o.used[name] = true; return name }
	o.ignored = map[string]bool{}
	ignore := func(name string) string { o.ignored[name] = true; return name }

	fs.StringVar(&o.Type, use("type"), "", "driver type: rbd, cephfs, liveness (controller is accepted and idle)")
	fs.StringVar(&o.NodeID, use("nodeid"), "", "this node's ID")
	fs.StringVar(&o.Endpoint, use("endpoint"), "unix:///csi/csi.sock", "CSI endpoint (unix:///path)")
	fs.StringVar(&o.DriverName, use("drivername"), "", "CSI driver name (default rbd.csi.ceph.com or cephfs.csi.ceph.com)")
	fs.StringVar(&o.ConfigPath, use("configpath"), DefaultConfigPath, "path of config.json")
	fs.StringVar(&o.InstanceID, use("instanceid"), "default", "suffix of the journal's directory objects (csi.volumes.<instanceid>)")
	fs.BoolVar(&o.IsControllerSrv, use("controllerserver"), false, "serve the CSI controller service")
	fs.BoolVar(&o.IsNodeSrv, use("nodeserver"), false, "serve the CSI node service")
	fs.StringVar(&o.StagingPath, use("stagingpath"), "/var/lib/kubelet/plugins/kubernetes.io/csi/", "kubelet's staging path")
	fs.StringVar(&o.PluginPath, use("pluginpath"), "/var/lib/kubelet/plugins/", "kubelet's plugin path; node state is kept below it")
	fs.StringVar(&o.KernelMountOpts, use("kernelmountoptions"), "", "default CephFS kernel mount options")
	fs.StringVar(&o.FuseMountOpts, use("fusemountoptions"), "", "default ceph-fuse mount options")
	fs.StringVar(&o.RadosNSCephFS, use("radosnamespacecephfs"), "csi", "RADOS namespace of the CephFS journal")
	fs.DurationVar(&o.Timeout, use("timeout"), 3*time.Second, "probe timeout of the liveness sidecar")
	fs.IntVar(&o.MetricsPort, use("metricsport"), 8080, "port of the liveness metrics endpoint")
	fs.StringVar(&o.MetricsPath, use("metricspath"), "/metrics", "path of the liveness metrics endpoint")
	fs.DurationVar(&o.PollTime, use("polltime"), 60*time.Second, "liveness probe interval")
	fs.DurationVar(&o.ConnIdleTimeout, use("connidletimeout"), 5*time.Minute, "close Ceph connections unused for this long")
	fs.UintVar(&o.HardMaxClones, use("rbdhardmaxclonedepth"), 8, "clone depth at which creating a clone waits for a flatten")
	fs.UintVar(&o.SoftMaxClones, use("rbdsoftmaxclonedepth"), 4, "clone depth past which new clones are flattened in the background")
	fs.UintVar(&o.MaxSnapsOnImage, use("maxsnapshotsonimage"), 450, "snapshots on an image at which its clones are flattened before a new one")
	fs.UintVar(&o.MinSnapsOnImage, use("minsnapshotsonimage"), 250, "snapshots on an image past which new clones are flattened in the background")
	fs.BoolVar(&o.SkipForceFlatten, use("skipforceflatten"), false, "do not flatten when the kernel lacks deep-flatten support")
	fs.StringVar(&o.KubeletRegistrationPath, use("kubelet-registration-path"), "", "with --nodeserver: register with the kubelet through <pluginpath>/../plugins_registry, naming this path (the CSI socket as the kubelet sees it), instead of a node-driver-registrar sidecar")
	fs.DurationVar(&o.CloneWait, use("clonewait"), 0, "how long a CephFS CreateVolume from a snapshot or volume waits for the copy before answering Aborted (0: at once)")

	// Accepted for compatibility with the manifests that run ceph-csi; unused.
	for _, name := range []string{"enableprofiling", "setmetadata", "enable-read-affinity", "forcecephkernelclient", "enablegrpcmetrics"} {
		fs.Bool(ignore(name), false, "accepted for compatibility; unused")
	}
	for _, name := range []string{"csi-addons-endpoint", "clustername", "domainlabels", "crush-location-labels",
		"drivernamespace", "kubeconfig", "historgramoption", "histogramoption", "metricshost"} {
		fs.String(ignore(name), "", "accepted for compatibility; unused")
	}
	fs.Int(ignore("pidlimit"), 0, "accepted for compatibility; unused")
	fs.Duration(ignore("rbdflattenlimit"), 0, "accepted for compatibility; unused")
}

// Unused returns the flags given on the command line that this driver ignores.
func (o *Options) Unused() []string {
	var names []string
	o.fs.Visit(func(f *flag.Flag) {
		if o.ignored[f.Name] && !o.used[f.Name] {
			names = append(names, f.Name)
		}
	})
	return names
}

// Validate checks the flag combination and fills in defaults.
func (o *Options) Validate() error {
	switch o.Type {
	case "rbd":
		if o.DriverName == "" {
			o.DriverName = "rbd.csi.ceph.com"
		}
	case "cephfs":
		if o.DriverName == "" {
			o.DriverName = "cephfs.csi.ceph.com"
		}
	case "liveness", "controller":
		return nil
	case "":
		return fmt.Errorf("--type is required (rbd, cephfs, controller or liveness)")
	default:
		return fmt.Errorf("--type=%q is not one of rbd, cephfs, controller, liveness", o.Type)
	}
	if !o.IsControllerSrv && !o.IsNodeSrv {
		return fmt.Errorf("at least one of --controllerserver and --nodeserver is required")
	}
	if o.IsNodeSrv && o.NodeID == "" {
		return fmt.Errorf("--nodeid is required with --nodeserver")
	}
	if o.SoftMaxClones > o.HardMaxClones {
		return fmt.Errorf("--rbdsoftmaxclonedepth (%d) exceeds --rbdhardmaxclonedepth (%d)", o.SoftMaxClones, o.HardMaxClones)
	}
	if o.MinSnapsOnImage > o.MaxSnapsOnImage {
		return fmt.Errorf("--minsnapshotsonimage (%d) exceeds --maxsnapshotsonimage (%d)", o.MinSnapsOnImage, o.MaxSnapsOnImage)
	}
	return nil
}
