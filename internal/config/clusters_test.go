package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeConfig(t *testing.T, path, body string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestClustersReloadOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	now := time.Now()
	writeConfig(t, path, `[{"clusterID":"rook-ceph","monitors":["10.0.0.1:6789"],"rbd":{"radosNamespace":"ns"}}]`, now)
	c := NewClusters(path)
	cl, err := c.Get("rook-ceph")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Monitors[0] != "10.0.0.1:6789" || cl.RBD.RadosNamespace != "ns" || cl.SubvolumeGroup() != "csi" {
		t.Fatalf("unexpected entry %+v", cl)
	}
	if _, err := c.Get("other"); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("unknown cluster: err = %v", err)
	}
	writeConfig(t, path, `[{"clusterID":"other","monitors":["10.0.0.2:6789"],"cephFS":{"subvolumeGroup":"g"}}]`, now.Add(time.Second))
	cl, err = c.Get("other")
	if err != nil {
		t.Fatalf("change on disk not picked up: %v", err)
	}
	if cl.SubvolumeGroup() != "g" {
		t.Fatalf("subvolume group = %q", cl.SubvolumeGroup())
	}
}

func TestClustersRejectsBadFiles(t *testing.T) {
	for name, body := range map[string]string{
		"not json":    `{`,
		"no id":       `[{"monitors":["a:1"]}]`,
		"no monitors": `[{"clusterID":"x"}]`,
		"id too long": `[{"clusterID":"0123456789012345678901234567890123456789","monitors":["a:1"]}]`,
		"not a list":  `{"clusterID":"x"}`,
	} {
		path := filepath.Join(t.TempDir(), "config.json")
		writeConfig(t, path, body, time.Now())
		if _, err := NewClusters(path).Get("x"); err == nil || errors.Is(err, ErrUnknownCluster) {
			t.Errorf("%s: err = %v, want a parse error", name, err)
		}
	}
}

func TestOptionsAcceptUpstreamFlags(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.Register(fs)
	fs.Int("v", 0, "a flag someone else registers, like klog's")
	args := []string{"--v=4", "--type=rbd", "--nodeid=n1", "--endpoint=unix:///csi/csi.sock", "--controllerserver=true",
		"--pidlimit=-1", "--csi-addons-endpoint=unix:///csi/csi-addons.sock", "--enableprofiling=false",
		"--setmetadata=true", "--clustername=c", "--domainlabels=a", "--rbdhardmaxclonedepth=6",
		"--rbdsoftmaxclonedepth=3", "--maxsnapshotsonimage=100", "--minsnapshotsonimage=50"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.DriverName != "rbd.csi.ceph.com" || o.HardMaxClones != 6 || o.MinSnapsOnImage != 50 {
		t.Fatalf("options = %+v", o)
	}
	unused := map[string]bool{}
	for _, n := range o.Unused() {
		unused[n] = true
	}
	for _, n := range []string{"pidlimit", "csi-addons-endpoint", "setmetadata", "clustername", "domainlabels"} {
		if !unused[n] {
			t.Errorf("flag %s not reported unused", n)
		}
	}
	if unused["type"] || unused["rbdhardmaxclonedepth"] || unused["v"] {
		t.Errorf("a used flag is reported unused: %v", o.Unused())
	}
}

func TestOptionsValidate(t *testing.T) {
	for name, o := range map[string]Options{
		"no type":     {},
		"bad type":    {Type: "nfs", IsControllerSrv: true},
		"no service":  {Type: "rbd"},
		"node no id":  {Type: "cephfs", IsNodeSrv: true},
		"soft > hard": {Type: "rbd", IsControllerSrv: true, SoftMaxClones: 9, HardMaxClones: 8},
		"min > max":   {Type: "rbd", IsControllerSrv: true, MinSnapsOnImage: 9, MaxSnapsOnImage: 8},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, o)
		}
	}
}
