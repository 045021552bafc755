package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/leanceph/cephcsi/internal/volid"
)

// ErrUnknownCluster is returned for a clusterID that config.json lacks.
var ErrUnknownCluster = errors.New("clusterID not found in config.json")

// Cluster is one entry of config.json.
type Cluster struct {
	ClusterID string   `json:"clusterID"`
	Monitors  []string `json:"monitors"`
	RBD       struct {
		RadosNamespace string `json:"radosNamespace"`
	} `json:"rbd"`
	CephFS struct {
		SubvolumeGroup     string `json:"subvolumeGroup"`
		KernelMountOptions string `json:"kernelMountOptions"`
		FuseMountOptions   string `json:"fuseMountOptions"`
		RadosNamespace     string `json:"radosNamespace"`
	} `json:"cephFS"`
}

// SubvolumeGroup returns the CephFS subvolume group, "csi" when unset.
func (c *Cluster) SubvolumeGroup() string {
	if c.CephFS.SubvolumeGroup == "" {
		return "csi"
	}
	return c.CephFS.SubvolumeGroup
}

// Clusters serves config.json, re-reading it whenever the file changes on
// disk (a ConfigMap update swaps the file under a running pod).
type Clusters struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	byID    map[string]*Cluster
}

// NewClusters returns a reader of the config.json at path. The file is read
// lazily, so the driver may start before the ConfigMap is mounted.
func NewClusters(path string) *Clusters { return &Clusters{path: path} }

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
	st, err := os.Stat(c.path)
	if err != nil {
		return fmt.Errorf("reading cluster configuration: %w", err)
	}
	if c.byID != nil && st.ModTime().Equal(c.modTime) && st.Size() == c.size {
		return nil
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		return fmt.Errorf("reading cluster configuration: %w", err)
	}
	byID, err := parseClusters(data)
	if err != nil {
		return fmt.Errorf("%s: %w", c.path, err)
	}
	c.byID, c.modTime, c.size = byID, st.ModTime(), st.Size()
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
		byID[cl.ClusterID] = cl
	}
	return byID, nil
}
