// Package config holds the driver's command line and the cluster list it
// reads from config.json.
package config

import (
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// DefaultConfigPath is where Rook, the ceph-csi-operator and the upstream
// manifests mount config.json.
const DefaultConfigPath = "/etc/ceph-csi-config/config.json"

// Options is the driver's command line. It accepts every flag that
// ceph-csi v3.12–v3.18 define (and klog's, registered by main). Each flag is
// either acted on, or has no effect on the result (NoEffect lists those
// given), or turns on a behaviour this build does not serve yet (Warnings
// says what the user loses).
type Options struct {
	Type            string
	NodeID          string
	Endpoint        string
	DriverName      string
	DriverNamespace string
	ConfigPath      string
	// KMSConfigPath is the KMS configuration of encrypted volumes.
	KMSConfigPath   string
	InstanceID      string
	IsControllerSrv bool
	IsNodeSrv       bool
	StagingPath     string
	PluginPath      string
	Kubeconfig      string

	// CephFS node.
	KernelMountOpts   string
	FuseMountOpts     string
	RadosNSCephFS     string
	ForceKernelClient bool

	// Liveness sidecar, and the profiling endpoint.
	Timeout     time.Duration
	MetricsPort int
	MetricsPath string
	MetricsHost string
	PollTime    time.Duration

	ConnIdleTimeout time.Duration

	// RBD clone and snapshot chains.
	HardMaxClones    uint
	SoftMaxClones    uint
	MaxSnapsOnImage  uint
	MinSnapsOnImage  uint
	SkipForceFlatten bool
	// RBDTrashMaxDelay > 0 asks to keep deleted RBD images in the trash for
	// that long instead of removing them.
	RBDTrashMaxDelay time.Duration

	// CloneWait is how long CreateVolume waits for a CephFS clone to finish
	// before answering Aborted.
	CloneWait time.Duration
	// KubeletRegistrationPath, when set, makes the node plugin register
	// itself with the kubelet (no node-driver-registrar): the CSI socket's
	// path as the kubelet sees it.
	KubeletRegistrationPath string

	// SetMetadata asks the controller to record PVC, PV and snapshot names
	// (and ClusterName) as image and subvolume metadata.
	SetMetadata bool
	ClusterName string
	// DomainLabels are the node labels that make up the topology domain.
	DomainLabels []string
	// EnableReadAffinity asks for reads from the nearest OSD, located from
	// the node's CrushLocationLabels (config.json's readAffinity wins).
	EnableReadAffinity  bool
	CrushLocationLabels []string
	// CSIAddonsEndpoint is where the CSI-Addons services listen
	// (unix:///path); empty means not served.
	CSIAddonsEndpoint string
	EnableFencing     bool

	// LogSlowOpInterval > 0 logs every call still running after each
	// interval.
	LogSlowOpInterval time.Duration
	// PIDLimit is written to the process's pids cgroup at start: -1 means
	// "max", 0 leaves the limit alone.
	PIDLimit          int
	EnableProfiling   bool
	EnableGRPCMetrics bool

	fs *flag.FlagSet
	// noEffect lists the flags accepted only because manifests pass them;
	// they do not change what the driver does.
	noEffect map[string]string
}

// The flags accepted from older manifests that have no counterpart here.
var legacyFlags = []string{"historgramoption", "histogramoption", "rbdflattenlimit"}

// Register defines all flags on fs.
func (o *Options) Register(fs *flag.FlagSet) {
	o.fs = fs
	o.noEffect = map[string]string{}
	none := func(name, why string) string { o.noEffect[name] = why; return name }

	fs.StringVar(&o.Type, "type", "", "driver type: rbd, cephfs, liveness, or controller (ceph-csi's Kubernetes-side controller: not implemented, the process idles and warns)")
	fs.StringVar(&o.NodeID, "nodeid", "", "this node's ID, returned by NodeGetInfo (required with --nodeserver)")
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint, unix:///path or tcp://host:port (the driver socket --type=liveness probes)")
	fs.StringVar(&o.DriverName, "drivername", "", "CSI driver name (default rbd.csi.ceph.com or cephfs.csi.ceph.com)")
	fs.StringVar(&o.DriverNamespace, none("drivernamespace", "only ceph-csi's --type=controller uses it"), "default",
		"namespace the driver runs in; no effect here (ceph-csi's --type=controller reads Kubernetes objects there)")
	fs.StringVar(&o.ConfigPath, "configpath", DefaultConfigPath, "path of config.json; cluster-mapping.json is read from the same directory")
	fs.StringVar(&o.KMSConfigPath, "kmsconfigpath", "/etc/ceph-csi-encryption-kms-config/config.json",
		"path of the KMS configuration of encrypted volumes (ceph-csi's fixed path by default; without the file, the ConfigMap csi-kms-connection-details in $POD_NAMESPACE)")
	fs.StringVar(&o.InstanceID, "instanceid", "default", "suffix of the journal's directory objects (csi.volumes.<instanceid>)")
	fs.BoolVar(&o.IsControllerSrv, "controllerserver", false, "serve the CSI controller service")
	fs.BoolVar(&o.IsNodeSrv, "nodeserver", false, "serve the CSI node service")
	fs.StringVar(&o.StagingPath, "stagingpath", "/var/lib/kubelet/plugins/kubernetes.io/csi/",
		"kubelet's staging directory, <kubelet dir>/plugins/kubernetes.io/csi/; each request names its own staging path, "+
			"so this only sets --pluginpath when that is not given")
	fs.StringVar(&o.PluginPath, "pluginpath", "/var/lib/kubelet/plugins/",
		"kubelet's plugin directory; node state is kept in <pluginpath>/<drivername> (default: derived from --stagingpath when given)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "",
		"kubeconfig file for reading this node's labels (--domainlabels, read affinity); default: $KUBERNETES_CONFIG_PATH, else the pod's service account")

	fs.StringVar(&o.KernelMountOpts, "kernelmountoptions", "", "default CephFS kernel mount options, comma separated (config.json's cephFS.kernelMountOptions wins)")
	fs.StringVar(&o.FuseMountOpts, "fusemountoptions", "", "default ceph-fuse mount options, comma separated (config.json's cephFS.fuseMountOptions wins)")
	fs.StringVar(&o.RadosNSCephFS, "radosnamespacecephfs", "csi", "RADOS namespace of the CephFS journal (config.json's cephFS.radosNamespace wins)")
	fs.BoolVar(&o.ForceKernelClient, "forcecephkernelclient", false, "mount CephFS with the kernel client by default even on kernels without quota support (< 4.17)")

	fs.DurationVar(&o.Timeout, "timeout", 3*time.Second, "--type=liveness: timeout of each probe")
	fs.IntVar(&o.MetricsPort, "metricsport", 8080, "port of the metrics endpoint: the liveness gauge with --type=liveness, the driver's metrics "+
		"with --enablegrpcmetrics; with --enableprofiling, also the port of the profiling endpoint")
	fs.StringVar(&o.MetricsPath, "metricspath", "/metrics", "path of the metrics endpoint (--type=liveness, --enablegrpcmetrics)")
	fs.StringVar(&o.MetricsHost, "metricshost", "", "address the metrics and profiling endpoints listen on (default all)")
	fs.DurationVar(&o.PollTime, "polltime", 60*time.Second, "--type=liveness: probe interval")
	fs.DurationVar(&o.ConnIdleTimeout, "connidletimeout", 5*time.Minute, "close Ceph connections unused for this long")

	fs.UintVar(&o.HardMaxClones, "rbdhardmaxclonedepth", 8, "clone depth at which creating a clone waits for a flatten (1-14)")
	fs.UintVar(&o.SoftMaxClones, "rbdsoftmaxclonedepth", 4, "clone depth past which new clones are flattened in the background")
	fs.UintVar(&o.MaxSnapsOnImage, "maxsnapshotsonimage", 450, "snapshots on an image at which its clones are flattened before a new one (1-500)")
	fs.UintVar(&o.MinSnapsOnImage, "minsnapshotsonimage", 250, "snapshots on an image past which new clones are flattened in the background")
	fs.BoolVar(&o.SkipForceFlatten, none("skipforceflatten", "the node never flattens an image to map it"), false,
		"no effect here: the node never flattens an image before mapping it, which is what true asks for")
	fs.DurationVar(&o.RBDTrashMaxDelay, "rbdtrashmaxdelay", 0, "keep deleted RBD images in the trash this long; not served yet: a positive value warns at start")
	fs.DurationVar(&o.CloneWait, "clonewait", 0, "how long a CephFS CreateVolume from a snapshot or volume waits for the copy before answering Aborted (0: at once)")
	fs.StringVar(&o.KubeletRegistrationPath, "kubelet-registration-path", "", "with --nodeserver: register with the kubelet through <pluginpath>/../plugins_registry, naming this path (the CSI socket as the kubelet sees it), instead of a node-driver-registrar sidecar")

	fs.BoolVar(&o.SetMetadata, "setmetadata", true, "record PVC, PV and snapshot names (from the sidecars' --extra-create-metadata) as image and subvolume metadata")
	fs.StringVar(&o.ClusterName, "clustername", "", "Kubernetes cluster name recorded with --setmetadata (csi.ceph.com/cluster/name)")
	fs.Var(listValue{&o.DomainLabels}, "domainlabels", "node labels, comma separated, whose values on this node are its topology (NodeGetInfo), for topologyConstrainedPools")
	fs.BoolVar(&o.EnableReadAffinity, "enable-read-affinity", false, "read from the OSDs nearest the node, located by --crush-location-labels (krbd, rbd-nbd, the FUSE mapper and the CephFS kernel client)")
	fs.Var(listValue{&o.CrushLocationLabels}, "crush-location-labels", "node labels, comma separated, that give the node's CRUSH location for --enable-read-affinity")
	fs.StringVar(&o.CSIAddonsEndpoint, "csi-addons-endpoint", "",
		"serve the CSI-Addons API (reclaim space for RBD, network fences with --enable-fencing) on this endpoint, unix:///path or tcp://host:port")
	fs.BoolVar(&o.EnableFencing, "enable-fencing", false,
		"serve CSI-Addons network fencing on --csi-addons-endpoint: fences (OSD blocklist ranges) on the controller, the node's client address on the node")

	fs.DurationVar(&o.LogSlowOpInterval, "logslowopinterval", 30*time.Second, "log every call still running after each interval, with its method and request ID (0: never)")
	fs.IntVar(&o.PIDLimit, "pidlimit", 0, "set the pids cgroup limit of the process at start: -1 for the maximum, 0 to leave it (a failure only warns)")
	fs.BoolVar(&o.EnableProfiling, "enableprofiling", false, "serve Go profiles (/debug/pprof/) on --metricshost:--metricsport")
	fs.BoolVar(&o.EnableGRPCMetrics, "enablegrpcmetrics", false, "serve Prometheus metrics on --metricshost:--metricsport at --metricspath: "+
		"CSI calls by method and code, their latency and those in flight, controller steps, Ceph connections, node maps and mounts")

	for _, name := range legacyFlags {
		fs.String(none(name, "not a flag of ceph-csi v3.12 or later"), "", "accepted from older manifests; no effect")
	}
}

// listValue is a comma-separated flag value; blanks around items and empty
// items are dropped.
type listValue struct{ list *[]string }

func (l listValue) String() string {
	if l.list == nil {
		return ""
	}
	return strings.Join(*l.list, ",")
}

func (l listValue) Set(s string) error {
	*l.list = nil
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l.list = append(*l.list, item)
		}
	}
	return nil
}

// labelKey is a Kubernetes label key: an optional DNS prefix and a name.
var labelKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)

// NoEffect returns, for each flag given on the command line that does not
// change what this driver does, the flag and why.
func (o *Options) NoEffect() [][2]string {
	var out [][2]string
	if o.fs == nil {
		return nil
	}
	o.fs.Visit(func(f *flag.Flag) {
		if why, ok := o.noEffect[f.Name]; ok {
			out = append(out, [2]string{f.Name, why})
		}
	})
	return out
}

// given reports whether the command line set the flag name.
func (o *Options) given(name string) bool {
	found := false
	if o.fs != nil {
		o.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	}
	return found
}

// Validate checks the flag combination and fills in defaults.
func (o *Options) Validate() error {
	// The operator gives --stagingpath=<kubelet dir>/plugins/kubernetes.io/csi/
	// and never --pluginpath, and mounts only <kubelet dir>/plugins: with a
	// kubelet directory other than /var/lib/kubelet the default plugin path
	// would live and die with the container.
	if !o.given("pluginpath") && o.given("stagingpath") {
		if dir, ok := strings.CutSuffix(filepath.Clean(o.StagingPath), "/kubernetes.io/csi"); ok && dir != "" {
			o.PluginPath = dir
		}
	}
	if o.PIDLimit < -1 {
		return fmt.Errorf("--pidlimit=%d: give -1 (the maximum), 0 (leave the limit) or a positive number", o.PIDLimit)
	}
	if o.LogSlowOpInterval < 0 {
		return fmt.Errorf("--logslowopinterval=%s is negative (0 turns the log off)", o.LogSlowOpInterval)
	}
	if o.RBDTrashMaxDelay < 0 {
		return fmt.Errorf("--rbdtrashmaxdelay=%s is negative", o.RBDTrashMaxDelay)
	}
	for flagName, labels := range map[string][]string{"domainlabels": o.DomainLabels, "crush-location-labels": o.CrushLocationLabels} {
		for _, l := range labels {
			if !labelKey.MatchString(l) || len(l) > 317 {
				return fmt.Errorf("--%s: %q is not a Kubernetes label key", flagName, l)
			}
		}
	}
	if o.CSIAddonsEndpoint != "" && !strings.HasPrefix(o.CSIAddonsEndpoint, "unix://") && !strings.HasPrefix(o.CSIAddonsEndpoint, "tcp://") {
		return fmt.Errorf("--csi-addons-endpoint=%q: want unix:///path or tcp://host:port", o.CSIAddonsEndpoint)
	}
	switch o.Type {
	case "rbd":
		if o.DriverName == "" {
			o.DriverName = "rbd.csi.ceph.com"
		}
	case "cephfs":
		if o.DriverName == "" {
			o.DriverName = "cephfs.csi.ceph.com"
		}
	case "liveness":
		if o.PollTime <= 0 || o.Timeout <= 0 {
			return fmt.Errorf("--polltime and --timeout must be positive")
		}
		return o.validMetricsEndpoint()
	case "controller":
		return nil
	case "nfs", "nvmeof":
		return fmt.Errorf("--type=%s is not served by this driver (it serves rbd, cephfs, liveness and controller)", o.Type)
	case "":
		return fmt.Errorf("--type is required (rbd, cephfs, controller or liveness)")
	default:
		return fmt.Errorf("--type=%q is not one of rbd, cephfs, controller, liveness", o.Type)
	}
	if !o.IsControllerSrv && !o.IsNodeSrv {
		return fmt.Errorf("at least one of --controllerserver and --nodeserver is required")
	}
	if o.EnableGRPCMetrics || o.EnableProfiling {
		if err := o.validMetricsEndpoint(); err != nil {
			return err
		}
	}
	if o.IsNodeSrv && o.NodeID == "" {
		return fmt.Errorf("--nodeid is required with --nodeserver")
	}
	if o.HardMaxClones == 0 || o.HardMaxClones > 14 {
		return fmt.Errorf("--rbdhardmaxclonedepth=%d: must be between 1 and 14", o.HardMaxClones)
	}
	if o.SoftMaxClones > o.HardMaxClones {
		return fmt.Errorf("--rbdsoftmaxclonedepth (%d) exceeds --rbdhardmaxclonedepth (%d)", o.SoftMaxClones, o.HardMaxClones)
	}
	if o.MaxSnapsOnImage == 0 || o.MaxSnapsOnImage > 500 {
		return fmt.Errorf("--maxsnapshotsonimage=%d: must be between 1 and 500", o.MaxSnapsOnImage)
	}
	if o.MinSnapsOnImage > o.MaxSnapsOnImage {
		return fmt.Errorf("--minsnapshotsonimage (%d) exceeds --maxsnapshotsonimage (%d)", o.MinSnapsOnImage, o.MaxSnapsOnImage)
	}
	return nil
}

// validMetricsEndpoint checks --metricsport and --metricspath.
func (o *Options) validMetricsEndpoint() error {
	if o.MetricsPort <= 0 || o.MetricsPort > 65535 {
		return fmt.Errorf("--metricsport=%d is not a TCP port", o.MetricsPort)
	}
	if !strings.HasPrefix(o.MetricsPath, "/") || strings.HasPrefix(o.MetricsPath, "/debug/pprof") {
		return fmt.Errorf("--metricspath=%q: want an absolute URL path outside /debug/pprof/", o.MetricsPath)
	}
	return nil
}

// Behaviour is an optional behaviour that flags turn on.
type Behaviour string

// The optional behaviours.
const (
	Metadata          Behaviour = "metadata"              // --setmetadata, --clustername
	Topology          Behaviour = "topology"              // --domainlabels
	ReadAffinity      Behaviour = "read-affinity"         // --enable-read-affinity, --crush-location-labels, config.json readAffinity
	CSIAddons         Behaviour = "csi-addons"            // --csi-addons-endpoint
	Fencing           Behaviour = "fencing"               // --enable-fencing
	GRPCMetrics       Behaviour = "grpc-metrics"          // --enablegrpcmetrics
	TrashRetention    Behaviour = "trash-retention"       // --rbdtrashmaxdelay
	KubeController    Behaviour = "kubernetes-controller" // --type=controller
	SlowCallLog       Behaviour = "slow-call-log"         // --logslowopinterval
	PIDLimit          Behaviour = "pid-limit"             // --pidlimit
	ForceKernelClient Behaviour = "force-kernel-client"   // --forcecephkernelclient
	Profiling         Behaviour = "profiling"             // --enableprofiling
)

// notServed says, for each behaviour this build does not implement yet,
// what a user who asks for it loses. Whoever implements one removes its
// entry here.
var notServed = map[Behaviour]string{
	TrashRetention: "deleted RBD volumes are removed at once (moved to the trash only while clones depend on them), " +
		"not kept in the trash for that delay",
	KubeController: "ceph-csi's Kubernetes-side controller is not implemented: the omap journal of PVs whose RBD images were " +
		"mirrored from another cluster is not regenerated here (needed after a DR fail-over); this process only idles",
}

// Served reports whether this build implements b.
func Served(b Behaviour) bool { _, missing := notServed[b]; return !missing }

// NotServedLoss returns what a user loses asking for b, or "" when b is
// served.
func NotServedLoss(b Behaviour) string { return notServed[b] }

// request is a behaviour the command line asks for, with the flags that did.
type request struct {
	b     Behaviour
	flags string
}

func (o *Options) requests() []request {
	var r []request
	add := func(b Behaviour, flags string) { r = append(r, request{b, flags}) }
	switch o.Type {
	case "controller":
		add(KubeController, "--type=controller")
	case "rbd", "cephfs":
		if o.IsControllerSrv && o.SetMetadata {
			flags := "--setmetadata=true"
			if o.ClusterName != "" {
				flags += " --clustername=" + o.ClusterName
			}
			add(Metadata, flags)
		}
		if o.IsNodeSrv && len(o.DomainLabels) > 0 {
			add(Topology, "--domainlabels="+strings.Join(o.DomainLabels, ","))
		}
		if o.IsNodeSrv && o.EnableReadAffinity {
			add(ReadAffinity, "--enable-read-affinity=true")
		}
		if o.CSIAddonsEndpoint != "" {
			add(CSIAddons, "--csi-addons-endpoint="+o.CSIAddonsEndpoint)
		}
		if o.EnableFencing && o.CSIAddonsEndpoint != "" {
			add(Fencing, "--enable-fencing=true")
		}
		if o.EnableGRPCMetrics {
			add(GRPCMetrics, "--enablegrpcmetrics=true")
		}
		if o.Type == "rbd" && o.IsControllerSrv && o.RBDTrashMaxDelay > 0 {
			add(TrashRetention, "--rbdtrashmaxdelay="+o.RBDTrashMaxDelay.String())
		}
		if o.LogSlowOpInterval > 0 {
			add(SlowCallLog, "--logslowopinterval="+o.LogSlowOpInterval.String())
		}
		if o.Type == "cephfs" && o.IsNodeSrv && o.ForceKernelClient {
			add(ForceKernelClient, "--forcecephkernelclient=true")
		}
		if o.EnableProfiling {
			add(Profiling, "--enableprofiling=true")
		}
	}
	if o.PIDLimit != 0 {
		add(PIDLimit, fmt.Sprintf("--pidlimit=%d", o.PIDLimit))
	}
	return r
}

// Active returns the optional behaviours the command line asks for that
// this build serves, in a stable order.
func (o *Options) Active() []Behaviour {
	var out []Behaviour
	for _, r := range o.requests() {
		if Served(r.b) {
			out = append(out, r.b)
		}
	}
	slices.Sort(out)
	return out
}

// Warnings returns one line for each behaviour the command line asks for
// that this build does not serve: the flags and what the user loses.
func (o *Options) Warnings() []string {
	var out []string
	if (o.Type == "rbd" || o.Type == "cephfs") && o.EnableFencing && o.CSIAddonsEndpoint == "" {
		out = append(out, "--enable-fencing=true: no effect without --csi-addons-endpoint, "+
			"the CSI-Addons socket that network fencing is served on: nodes are not fenced through this plugin")
	}
	for _, r := range o.requests() {
		if loss := notServed[r.b]; loss != "" {
			out = append(out, r.flags+": "+loss)
		}
	}
	return out
}
