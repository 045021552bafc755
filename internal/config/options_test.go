package config

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

// parse registers Options and klog's flags on a fresh set, as main does,
// and parses args.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	var o Options
	fs := flag.NewFlagSet("cephcsi", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.Register(fs)
	klog.InitFlags(fs)
	t.Cleanup(func() {
		for k, v := range map[string]string{"v": "0", "logtostderr": "true", "alsologtostderr": "false", "log_file": "", "log_dir": "",
			"one_output": "false", "stderrthreshold": "2"} {
			_ = fs.Set(k, v)
		}
	})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return &o, o.Validate()
}

// The flags of the compat list (ceph-csi v3.12–v3.18 and klog), each with a
// value a manifest could give.
var compatFlags = []string{
	"--type=rbd", "--endpoint=unix:///csi/csi.sock", "--csi-addons-endpoint=unix:///csi/csi-addons.sock",
	"--drivername=rook-ceph.rbd.csi.ceph.com", "--drivernamespace=rook-ceph", "--nodeid=node-1",
	"--pluginpath=/var/lib/kubelet/plugins", "--stagingpath=/var/lib/kubelet/plugins/kubernetes.io/csi/",
	"--clustername=prod-east", "--setmetadata=true", "--instanceid=default", "--pidlimit=-1",
	"--controllerserver=true", "--nodeserver=true", "--domainlabels=topology.kubernetes.io/zone,topology.kubernetes.io/region",
	"--enable-read-affinity=true", "--crush-location-labels=kubernetes.io/hostname, topology.kubernetes.io/zone",
	"--forcecephkernelclient=true", "--kernelmountoptions=ms_mode=secure", "--radosnamespacecephfs=csi",
	"--fusemountoptions=debug", "--metricsport=9090", "--metricspath=/metrics", "--polltime=60s", "--timeout=3s",
	"--logslowopinterval=2m", "--rbdhardmaxclonedepth=8", "--rbdsoftmaxclonedepth=4", "--maxsnapshotsonimage=450",
	"--minsnapshotsonimage=250", "--skipforceflatten=false", "--enableprofiling=false", "--enable-fencing=true",
	"--rbdtrashmaxdelay=1h", "--kubeconfig=/etc/kubeconfig", "--enablegrpcmetrics=false",
	"--v=5", "--logtostderr=false", "--alsologtostderr=true", "--log_file=csi-logs/csi-rbdplugin.log",
	"--log_dir=/tmp", "--log_file_max_size=1800", "--one_output=true", "--skip_headers=false",
	"--stderrthreshold=2", "--vmodule=", "--add_dir_header=false",
}

func TestOptionsParseEveryCompatFlag(t *testing.T) {
	o, err := parse(t, compatFlags...)
	if err != nil {
		t.Fatal(err)
	}
	if !o.SetMetadata || o.ClusterName != "prod-east" || o.DriverNamespace != "rook-ceph" || o.Kubeconfig != "/etc/kubeconfig" {
		t.Errorf("metadata/namespace/kubeconfig: %+v", o)
	}
	if !slices.Equal(o.DomainLabels, []string{"topology.kubernetes.io/zone", "topology.kubernetes.io/region"}) ||
		!slices.Equal(o.CrushLocationLabels, []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"}) || !o.EnableReadAffinity {
		t.Errorf("labels: domain %q crush %q", o.DomainLabels, o.CrushLocationLabels)
	}
	if o.CSIAddonsEndpoint != "unix:///csi/csi-addons.sock" || !o.EnableFencing || o.EnableGRPCMetrics || o.EnableProfiling {
		t.Errorf("addons/fencing/metrics: %+v", o)
	}
	if o.LogSlowOpInterval != 2*time.Minute || o.PIDLimit != -1 || o.RBDTrashMaxDelay != time.Hour || !o.ForceKernelClient {
		t.Errorf("interval %s pidlimit %d trash %s force %v", o.LogSlowOpInterval, o.PIDLimit, o.RBDTrashMaxDelay, o.ForceKernelClient)
	}
	if o.MetricsPort != 9090 || o.MetricsPath != "/metrics" || o.PollTime != time.Minute || o.Timeout != 3*time.Second {
		t.Errorf("liveness: %+v", o)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := parse(t, "--type=rbd", "--controllerserver=true")
	if err != nil {
		t.Fatal(err)
	}
	// ceph-csi v3.15+ defaults: metadata on, slow calls logged every 30s.
	if !o.SetMetadata || o.LogSlowOpInterval != 30*time.Second || o.PIDLimit != 0 || o.CSIAddonsEndpoint != "" ||
		o.EnableFencing || o.DomainLabels != nil || o.DriverName != "rbd.csi.ceph.com" {
		t.Errorf("defaults: %+v", o)
	}
}

func contains(lines []string, subs ...string) bool {
	for _, l := range lines {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			return true
		}
	}
	return false
}

// The operator's controller plugin for RBD with fencing and CSI-Addons on:
// both served, so no warning, and both in force.
func TestAddonsAndFencingServed(t *testing.T) {
	o, err := parse(t, "--type=rbd", "--v=5", "--endpoint=unix:///csi/csi.sock", "--nodeid=node-1", "--controllerserver=true",
		"--drivername=rook-ceph.rbd.csi.ceph.com", "--pidlimit=-1", "--enable-fencing=true", "--clustername=prod",
		"--csi-addons-endpoint=unix:///csi/csi-addons.sock")
	if err != nil {
		t.Fatal(err)
	}
	if w := o.Warnings(); len(w) != 0 {
		t.Errorf("want no warnings, got:\n%s", strings.Join(w, "\n"))
	}
	a := o.Active()
	for _, b := range []Behaviour{SlowCallLog, PIDLimit, Metadata, CSIAddons, Fencing} {
		if !slices.Contains(a, b) {
			t.Errorf("active = %v, lacks %s", a, b)
		}
	}
}

// Fencing is served on the CSI-Addons socket: without one it does nothing,
// and says so.
func TestFencingWithoutAddonsEndpointWarns(t *testing.T) {
	o, err := parse(t, "--type=cephfs", "--nodeserver=true", "--nodeid=n", "--enable-fencing=true")
	if err != nil {
		t.Fatal(err)
	}
	w := o.Warnings()
	if len(w) != 1 || !contains(w, "--enable-fencing=true: no effect without --csi-addons-endpoint") {
		t.Errorf("warnings:\n%s", strings.Join(w, "\n"))
	}
	if slices.Contains(o.Active(), Fencing) {
		t.Errorf("fencing active without an endpoint: %v", o.Active())
	}
}

func TestWarningsOnlyForWhatThisProcessWouldDo(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want []string // substrings of the warnings, one per warning
	}{
		"rbd controller, fencing off, no metadata": {
			[]string{"--type=rbd", "--controllerserver=true", "--enable-fencing=false", "--setmetadata=false"}, nil},
		"rbd node with topology and read affinity": {
			[]string{"--type=rbd", "--nodeserver=true", "--nodeid=n", "--domainlabels=topology.kubernetes.io/zone",
				"--enable-read-affinity=true", "--enable-fencing=false"},
			nil},
		// Topology and read affinity are node settings; metadata a controller one.
		"cephfs controller with node settings": {
			[]string{"--type=cephfs", "--controllerserver=true", "--domainlabels=a", "--enable-read-affinity=true"}, nil},
		"rbd controller keeping trash": {
			[]string{"--type=rbd", "--controllerserver=true", "--setmetadata=false", "--rbdtrashmaxdelay=24h"},
			[]string{"--rbdtrashmaxdelay=24h0m0s: deleted RBD volumes are removed at once"}},
		"omap generator": {
			[]string{"--v=5", "--type=controller", "--drivernamespace=rook-ceph", "--drivername=rook-ceph.rbd.csi.ceph.com"},
			[]string{"--type=controller: ceph-csi's Kubernetes-side controller is not implemented"}},
		"liveness": {
			[]string{"--type=liveness", "--endpoint=unix:///csi/csi.sock", "--metricsport=9080", "--metricspath=/metrics",
				"--polltime=60s", "--timeout=3s"}, nil},
		"grpc metrics": {
			[]string{"--type=cephfs", "--nodeserver=true", "--nodeid=n", "--enablegrpcmetrics=true", "--metricsport=8093"}, nil},
	} {
		o, err := parse(t, tc.args...)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		w := o.Warnings()
		if len(w) != len(tc.want) {
			t.Errorf("%s: warnings:\n%s\nwant %d", name, strings.Join(w, "\n"), len(tc.want))
			continue
		}
		for _, s := range tc.want {
			if !contains(w, s) {
				t.Errorf("%s: no warning with %q in:\n%s", name, s, strings.Join(w, "\n"))
			}
		}
	}
}

// --enablegrpcmetrics is served: listed among the behaviours in force, with
// no warning, and only when asked for.
func TestGRPCMetricsServed(t *testing.T) {
	o, err := parse(t, "--type=rbd", "--controllerserver=true", "--enablegrpcmetrics=true", "--metricsport=8090")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(o.Active(), GRPCMetrics) || len(o.Warnings()) != 0 {
		t.Errorf("active %v, warnings %q", o.Active(), o.Warnings())
	}
	if o, err = parse(t, "--type=rbd", "--controllerserver=true"); err != nil || slices.Contains(o.Active(), GRPCMetrics) {
		t.Errorf("metrics active without the flag: %v (%v)", o.Active(), err)
	}
}

func TestNoEffectFlags(t *testing.T) {
	o, err := parse(t, "--type=rbd", "--nodeserver=true", "--nodeid=n", "--skipforceflatten=true",
		"--kubeconfig=/k", "--histogramoption=0.5,2,6", "--pluginpath=/p")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range o.NoEffect() {
		names = append(names, f[0])
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"histogramoption", "skipforceflatten"}) {
		t.Errorf("no-effect flags = %v", names)
	}
}

// --help is what an operator reads: a flag whose behaviour is not served
// says so, and a flag without effect says that.
func TestHelpTellsTheTruth(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("cephcsi", flag.ContinueOnError)
	o.Register(fs)
	unserved := map[string]Behaviour{"setmetadata": Metadata, "domainlabels": Topology, "enable-read-affinity": ReadAffinity,
		"csi-addons-endpoint": CSIAddons, "enable-fencing": Fencing, "enablegrpcmetrics": GRPCMetrics, "rbdtrashmaxdelay": TrashRetention}
	fs.VisitAll(func(f *flag.Flag) {
		u := f.Usage
		if strings.Contains(u, "accepted for compatibility; unused") || u == "" {
			t.Errorf("--%s: usage %q", f.Name, u)
		}
		if _, ok := o.noEffect[f.Name]; ok != strings.Contains(u, "no effect") {
			t.Errorf("--%s: listed without effect = %v, usage %q", f.Name, ok, u)
		}
		if b, ok := unserved[f.Name]; ok && Served(b) == strings.Contains(u, "not served") {
			t.Errorf("--%s: served = %v, usage %q", f.Name, Served(b), u)
		}
	})
}

func TestOptionsValidate(t *testing.T) {
	for name, args := range map[string][]string{
		"no type":          {},
		"bad type":         {"--type=block", "--controllerserver"},
		"nfs":              {"--type=nfs", "--controllerserver"},
		"no service":       {"--type=rbd"},
		"node no id":       {"--type=cephfs", "--nodeserver"},
		"soft > hard":      {"--type=rbd", "--controllerserver", "--rbdsoftmaxclonedepth=9", "--rbdhardmaxclonedepth=8"},
		"hard too deep":    {"--type=rbd", "--controllerserver", "--rbdhardmaxclonedepth=15"},
		"min > max":        {"--type=rbd", "--controllerserver", "--minsnapshotsonimage=9", "--maxsnapshotsonimage=8"},
		"max snaps > 500":  {"--type=rbd", "--controllerserver", "--maxsnapshotsonimage=501"},
		"pidlimit -2":      {"--type=rbd", "--controllerserver", "--pidlimit=-2"},
		"negative slow op": {"--type=rbd", "--controllerserver", "--logslowopinterval=-1s"},
		"bad domain label": {"--type=rbd", "--nodeserver", "--nodeid=n", "--domainlabels=zone a"},
		"bad crush label":  {"--type=rbd", "--nodeserver", "--nodeid=n", "--crush-location-labels=a=b"},
		"bad addons url":   {"--type=rbd", "--controllerserver", "--csi-addons-endpoint=/csi/csi-addons.sock"},
		"liveness no port": {"--type=liveness", "--metricsport=0"},
		"metrics no port":  {"--type=rbd", "--controllerserver", "--enablegrpcmetrics", "--metricsport=0"},
		"metrics on pprof": {"--type=rbd", "--controllerserver", "--enablegrpcmetrics", "--metricspath=/debug/pprof/m"},
		"metrics relative": {"--type=cephfs", "--nodeserver", "--nodeid=n", "--enablegrpcmetrics", "--metricspath=metrics"},
	} {
		if _, err := parse(t, args...); err == nil {
			t.Errorf("%s: %v accepted", name, args)
		}
	}
	_, err := parse(t, "--type=nvmeof", "--controllerserver")
	if err == nil || !strings.Contains(err.Error(), "not served by this driver") {
		t.Errorf("nvmeof: err = %v", err)
	}
}

// The operator passes --stagingpath but not --pluginpath; node state must
// follow a non-default kubelet directory onto the host.
func TestPluginPathFollowsStagingPath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--stagingpath=/var/lib/k0s/kubelet/plugins/kubernetes.io/csi/"}, "/var/lib/k0s/kubelet/plugins"},
		{[]string{"--stagingpath=/var/snap/microk8s/common/var/lib/kubelet/plugins/kubernetes.io/csi"}, "/var/snap/microk8s/common/var/lib/kubelet/plugins"},
		{[]string{"--stagingpath=/k/plugins/kubernetes.io/csi/", "--pluginpath=/elsewhere"}, "/elsewhere"},
		{[]string{"--stagingpath=/odd/staging"}, "/var/lib/kubelet/plugins/"},
		{nil, "/var/lib/kubelet/plugins/"},
	} {
		o, err := parse(t, append([]string{"--type=cephfs", "--nodeserver", "--nodeid=n"}, tc.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if o.PluginPath != tc.want {
			t.Errorf("%v: plugin path %q, want %q", tc.args, o.PluginPath, tc.want)
		}
	}
}
