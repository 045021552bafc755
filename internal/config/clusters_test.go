package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// operatorConfig is config.json as ceph-csi-operator v1.0 writes it: one
// entry per ClientProfile, every block present (the operator's structs have
// no omitempty on nested structs), plus fields this driver does not know.
const operatorConfig = `[
 {"clusterID":"rook-ceph","monitors":["10.96.12.1:6789","10.96.12.2:6789","10.96.12.3:6789"],
  "cephFS":{"subvolumeGroup":"csi","kernelMountOptions":"ms_mode=secure,recover_session=clean","fuseMountOptions":"client_mds_namespace=myfs",
   "radosNamespace":"csi","controllerPublishSecretRef":{"name":"rook-csi-cephfs-provisioner","namespace":"rook-ceph"}},
  "rbd":{"radosNamespace":"","mirrorCount":2,"controllerPublishSecretRef":{"name":"rook-csi-rbd-provisioner","namespace":"rook-ceph"},
   "nodePublishSecretRef":{"name":"rook-csi-rbd-node","namespace":"rook-ceph"}},
  "nfs":{},
  "nvmeof":{"radosNamespace":"nvme","controllerPublishSecretRef":{"name":"rook-csi-nvmeof-provisioner","namespace":"rook-ceph"}},
  "readAffinity":{"enabled":true,"crushLocationLabels":["kubernetes.io/hostname","topology.kubernetes.io/zone"]},
  "replicationDestination":{"remoteClusterID":"rook-ceph-dr","rbd":{"remotePoolMapping":{"replicapool":{"poolID":"5"}}}},
  "someFutureField":{"x":1}},
 {"clusterID":"80fc4f4bacc064be641633e6ed25ba7e","monitors":["10.96.12.1:6789"],
  "cephFS":{"kernelMountOptions":"","fuseMountOptions":""},
  "rbd":{"radosNamespace":"tenant-a"},"nfs":{},"readAffinity":{}}
]`

func TestClustersOperatorConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	writeConfig(t, path, operatorConfig, time.Now())
	c := NewClusters(path)
	cl, err := c.Get("rook-ceph")
	if err != nil {
		t.Fatal(err)
	}
	if len(cl.Monitors) != 3 || cl.SubvolumeGroup() != "csi" || cl.CephFS.RadosNamespace != "csi" ||
		cl.CephFS.KernelMountOptions != "ms_mode=secure,recover_session=clean" || cl.CephFS.FuseMountOptions != "client_mds_namespace=myfs" {
		t.Errorf("cephFS block = %+v", cl.CephFS)
	}
	if cl.RBD.MirrorCount != 2 || cl.RBD.ControllerPublishSecretRef != (SecretRef{"rook-csi-rbd-provisioner", "rook-ceph"}) ||
		cl.RBD.NodePublishSecretRef.Name != "rook-csi-rbd-node" {
		t.Errorf("rbd block = %+v", cl.RBD)
	}
	if cl.NVMeoF.RadosNamespace != "nvme" || cl.CephFS.ControllerPublishSecretRef.Name != "rook-csi-cephfs-provisioner" {
		t.Errorf("nvmeof/cephFS secret refs = %+v %+v", cl.NVMeoF, cl.CephFS.ControllerPublishSecretRef)
	}
	if !cl.ReadAffinity.Enabled || !slices.Equal(cl.CrushLocationLabels([]string{"flag/label"}),
		[]string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"}) {
		t.Errorf("readAffinity = %+v", cl.ReadAffinity)
	}
	if d := cl.ReplicationDestination; d == nil || d.RemoteClusterID != "rook-ceph-dr" || d.RBD.RemotePoolMapping["replicapool"].PoolID != "5" {
		t.Errorf("replicationDestination = %+v", d)
	}

	ns, err := c.Get("80fc4f4bacc064be641633e6ed25ba7e")
	if err != nil {
		t.Fatal(err)
	}
	if ns.RBD.RadosNamespace != "tenant-a" || ns.SubvolumeGroup() != "csi" || ns.ReadAffinity.Enabled || ns.ReplicationDestination != nil {
		t.Errorf("second entry = %+v", ns)
	}
	// Without labels in config.json the flag's apply.
	if got := ns.CrushLocationLabels([]string{"flag/label"}); !slices.Equal(got, []string{"flag/label"}) {
		t.Errorf("crush location labels = %v", got)
	}
}

func TestClustersFirstEntryOfAnIDWins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	writeConfig(t, path, `[{"clusterID":"a","monitors":["m1:6789"]},{"clusterID":"a","monitors":["m2:6789"]}]`, time.Now())
	cl, err := NewClusters(path).Get("a")
	if err != nil || cl.Monitors[0] != "m1:6789" {
		t.Fatalf("Get = %+v, %v; want the first entry", cl, err)
	}
}

// operatorMapping is cluster-mapping.json as the operator writes it from
// ClientProfileMappings (clusterIdMapping, one pool pair per map).
const operatorMapping = `[
 {"clusterIdMapping":{"rook-ceph":"rook-ceph-dr"},"RBDPoolIDMapping":[{"1":"2"},{"11":"12"}]},
 {"clusterIDMapping":{"site3":"rook-ceph-dr"},"RBDPoolIDMapping":[{"5":"2"}],"CephFSFscIDMapping":[{"3":"4"}]}
]`

func TestClusterMappingsLookups(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, filepath.Join(dir, "config.json"), `[{"clusterID":"rook-ceph-dr","monitors":["m:6789"]}]`, time.Now())
	mpath := filepath.Join(dir, ClusterMappingFile)
	m := NewClusters(filepath.Join(dir, "config.json")).Mappings()

	// No file: DR is not set up, which is not an error.
	if ids, err := m.ClusterIDs("rook-ceph"); err != nil || ids != nil {
		t.Fatalf("without the file: %v, %v", ids, err)
	}

	now := time.Now()
	writeConfig(t, mpath, operatorMapping, now)
	ids, err := m.ClusterIDs("rook-ceph")
	if err != nil || !slices.Equal(ids, []string{"rook-ceph-dr"}) {
		t.Fatalf("ClusterIDs(rook-ceph) = %v, %v", ids, err)
	}
	// The file is the same on both sites: the other side maps back.
	if ids, _ := m.ClusterIDs("rook-ceph-dr"); !slices.Equal(ids, []string{"rook-ceph", "site3"}) {
		t.Errorf("ClusterIDs(rook-ceph-dr) = %v", ids)
	}
	got, err := m.RBD("rook-ceph", 11)
	if err != nil || !slices.Equal(got, []MappedLocation{{"rook-ceph-dr", 12}}) {
		t.Errorf("RBD(rook-ceph, 11) = %v, %v", got, err)
	}
	got, _ = m.RBD("rook-ceph-dr", 2)
	if !slices.Equal(got, []MappedLocation{{"rook-ceph", 1}, {"site3", 5}}) {
		t.Errorf("RBD(rook-ceph-dr, 2) = %v", got)
	}
	if got, _ := m.RBD("rook-ceph", 7); got != nil {
		t.Errorf("an unmapped pool maps to %v", got)
	}
	if got, _ := m.CephFS("site3", 3); !slices.Equal(got, []MappedLocation{{"rook-ceph-dr", 4}}) {
		t.Errorf("CephFS(site3, 3) = %v", got)
	}

	// A ConfigMap update is picked up.
	writeConfig(t, mpath, `[{"clusterIdMapping":{"rook-ceph":"elsewhere"},"RBDPoolIDMapping":[{"1":"9"}]}]`, now.Add(time.Second))
	if got, _ := m.RBD("rook-ceph", 1); !slices.Equal(got, []MappedLocation{{"elsewhere", 9}}) {
		t.Errorf("after the update: %v", got)
	}
	// And so is its removal.
	if err := os.Remove(mpath); err != nil {
		t.Fatal(err)
	}
	if got, err := m.RBD("rook-ceph", 1); got != nil || err != nil {
		t.Errorf("after removal: %v, %v", got, err)
	}
}

func TestClusterMappingsRejectsBadFiles(t *testing.T) {
	for name, body := range map[string]string{
		"not json":       `[{`,
		"not a list":     `{"clusterIdMapping":{"a":"b"}}`,
		"empty id":       `[{"clusterIdMapping":{"a":""}}]`,
		"pool not a num": `[{"clusterIdMapping":{"a":"b"},"RBDPoolIDMapping":[{"rbd":"2"}]}]`,
	} {
		path := filepath.Join(t.TempDir(), ClusterMappingFile)
		writeConfig(t, path, body, time.Now())
		if _, err := NewClusterMappings(path).ClusterIDs("a"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
