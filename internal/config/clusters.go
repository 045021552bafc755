package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/volid"
)

// ErrUnknownCluster is returned for a clusterID that config.json lacks.
var ErrUnknownCluster = errors.New("clusterID not found in config.json")

// SecretRef names a Kubernetes Secret (config.json's *SecretRef fields).
type SecretRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// RBDConfig is the `rbd` block of a config.json entry.
type RBDConfig struct {
	RadosNamespace string `json:"radosNamespace"`
	// MirrorCount is the number of rbd-mirror daemons; the operator writes
	// mirrorCount, ceph-csi reads mirrorDaemonCount. Only CSI-Addons
	// replication uses it.
	MirrorCount                int       `json:"mirrorCount"`
	MirrorDaemonCount          int       `json:"mirrorDaemonCount"`
	ControllerPublishSecretRef SecretRef `json:"controllerPublishSecretRef"`
	NodePublishSecretRef       SecretRef `json:"nodePublishSecretRef"`
	NetNamespaceFilePath       string    `json:"netNamespaceFilePath"`
}

// CephFSConfig is the `cephFS` block of a config.json entry.
type CephFSConfig struct {
	SubvolumeGroup             string    `json:"subvolumeGroup"`
	KernelMountOptions         string    `json:"kernelMountOptions"`
	FuseMountOptions           string    `json:"fuseMountOptions"`
	RadosNamespace             string    `json:"radosNamespace"`
	ControllerPublishSecretRef SecretRef `json:"controllerPublishSecretRef"`
	NetNamespaceFilePath       string    `json:"netNamespaceFilePath"`
}

// NFSConfig is the `nfs` block (the NFS driver is not served here).
type NFSConfig struct {
	NetNamespaceFilePath string `json:"netNamespaceFilePath"`
}

// NVMeoFConfig is the `nvmeof` block (the NVMe-oF driver is not served here).
type NVMeoFConfig struct {
	RadosNamespace             string    `json:"radosNamespace"`
	ControllerPublishSecretRef SecretRef `json:"controllerPublishSecretRef"`
}

// ReadAffinityConfig is the `readAffinity` block: read from the OSDs
// nearest the node, located by these node labels.
type ReadAffinityConfig struct {
	Enabled             bool     `json:"enabled"`
	CrushLocationLabels []string `json:"crushLocationLabels"`
}

// ReplicationDestination is the `replicationDestination` block: the peer
// cluster of CSI-Addons replication and its pool IDs.
type ReplicationDestination struct {
	RemoteClusterID string `json:"remoteClusterID"`
	RBD             *struct {
		// RemotePoolMapping maps a local pool name to the remote pool ID.
		RemotePoolMapping map[string]struct {
			PoolID string `json:"poolID"`
		} `json:"remotePoolMapping"`
	} `json:"rbd"`
}

// Cluster is one entry of config.json. Unknown fields are ignored.
type Cluster struct {
	ClusterID              string                  `json:"clusterID"`
	Monitors               []string                `json:"monitors"`
	RBD                    RBDConfig               `json:"rbd"`
	CephFS                 CephFSConfig            `json:"cephFS"`
	NFS                    NFSConfig               `json:"nfs"`
	NVMeoF                 NVMeoFConfig            `json:"nvmeof"`
	ReadAffinity           ReadAffinityConfig      `json:"readAffinity"`
	ReplicationDestination *ReplicationDestination `json:"replicationDestination"`
}

// SubvolumeGroup returns the CephFS subvolume group, "csi" when unset.
func (c *Cluster) SubvolumeGroup() string {
	if c.CephFS.SubvolumeGroup == "" {
		return "csi"
	}
	return c.CephFS.SubvolumeGroup
}

// CrushLocationLabels returns the node labels that locate the node for
// read affinity: config.json's when it names any, else the flag's.
func (c *Cluster) CrushLocationLabels(flagLabels []string) []string {
	if len(c.ReadAffinity.CrushLocationLabels) > 0 {
		return c.ReadAffinity.CrushLocationLabels
	}
	return flagLabels
}

// unservedSettings says what a user loses for each setting of c that this
// build does not act on.
func (c *Cluster) unservedSettings() []string {
	var out []string
	if c.ReadAffinity.Enabled && !Served(ReadAffinity) {
		out = append(out, "readAffinity.enabled: "+NotServedLoss(ReadAffinity))
	}
	for block, p := range map[string]string{"rbd": c.RBD.NetNamespaceFilePath, "cephFS": c.CephFS.NetNamespaceFilePath} {
		if p != "" {
			out = append(out, block+".netNamespaceFilePath: Ceph is reached from the plugin's own network namespace, not "+p)
		}
	}
	return out
}

// watchedFile is a file re-read whenever its modification time or size
// changes (a ConfigMap update swaps the file under a running pod).
type watchedFile struct {
	path    string
	modTime time.Time
	size    int64
	loaded  bool
}

// changed stats the file and reports whether it must be (re)read. A
// missing file is returned as the error of os.Stat.
func (w *watchedFile) changed() (bool, os.FileInfo, error) {
	st, err := os.Stat(w.path)
	if err != nil {
		return false, nil, err
	}
	return !w.loaded || !st.ModTime().Equal(w.modTime) || st.Size() != w.size, st, nil
}

func (w *watchedFile) loadedAt(st os.FileInfo) {
	w.modTime, w.size, w.loaded = st.ModTime(), st.Size(), true
}

// Clusters serves config.json, re-reading it whenever the file changes on
// disk.
type Clusters struct {
	mu   sync.Mutex
	file watchedFile
	byID map[string]*Cluster

	mappings *ClusterMappings
}

// NewClusters returns a reader of the config.json at path. The file is read
// lazily, so the driver may start before the ConfigMap is mounted. The DR
// mappings are read from cluster-mapping.json in the same directory.
func NewClusters(path string) *Clusters {
	return &Clusters{file: watchedFile{path: path},
		mappings: NewClusterMappings(filepath.Join(filepath.Dir(path), ClusterMappingFile))}
}

// Mappings returns the DR mappings of cluster-mapping.json next to
// config.json.
func (c *Clusters) Mappings() *ClusterMappings { return c.mappings }

// Get returns the entry for clusterID.
func (c *Clusters) Get(clusterID string) (*Cluster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refresh(); err != nil {
		return nil, err
	}
	cl, ok := c.byID[clusterID]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownCluster, clusterID)
	}
	copied := *cl
	return &copied, nil
}

func (c *Clusters) refresh() error {
	changed, st, err := c.file.changed()
	if err != nil {
		return fmt.Errorf("reading cluster configuration: %w", err)
	}
	if !changed {
		return nil
	}
	data, err := os.ReadFile(c.file.path)
	if err != nil {
		return fmt.Errorf("reading cluster configuration: %w", err)
	}
	byID, err := parseClusters(data)
	if err != nil {
		return fmt.Errorf("%s: %w", c.file.path, err)
	}
	// Once per version of the file: what it asks for that is not served.
	for id, cl := range byID {
		for _, w := range cl.unservedSettings() {
			klog.Warningf("config.json: cluster %q: %s", id, w)
		}
	}
	c.byID = byID
	c.file.loadedAt(st)
	return nil
}

func parseClusters(data []byte) (map[string]*Cluster, error) {
	var list []*Cluster
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("not a JSON list of clusters: %w", err)
	}
	byID := make(map[string]*Cluster, len(list))
	for i, cl := range list {
		if cl == nil || cl.ClusterID == "" {
			return nil, fmt.Errorf("entry %d has no clusterID", i)
		}
		if len(cl.ClusterID) > volid.MaxClusterIDLength {
			return nil, fmt.Errorf("clusterID %q is longer than %d bytes", cl.ClusterID, volid.MaxClusterIDLength)
		}
		if len(cl.Monitors) == 0 {
			return nil, fmt.Errorf("cluster %q has no monitors", cl.ClusterID)
		}
		if _, dup := byID[cl.ClusterID]; dup {
			// ceph-csi takes the first entry of an ID; so do we.
			klog.Warningf("config.json: clusterID %q appears more than once; entry %d is ignored", cl.ClusterID, i)
			continue
		}
		byID[cl.ClusterID] = cl
	}
	return byID, nil
}
