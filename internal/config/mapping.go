package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"
)

// ClusterMappingFile is the name of the DR mapping file next to config.json
// (the `cluster-mapping.json` key of the same ConfigMap).
const ClusterMappingFile = "cluster-mapping.json"

// ClusterMapping is one entry of cluster-mapping.json: a pair of clusterIDs
// that name the same data on two sites, and the pool (RBD) and filesystem
// (CephFS) IDs that correspond between them. Each map is {from: to}; a
// lookup matches either side, because the same file is copied to both
// sites.
type ClusterMapping struct {
	// The operator writes clusterIdMapping, ceph-csi's docs clusterIDMapping;
	// encoding/json matches keys without regard to case, so both load.
	ClusterIDMapping   map[string]string   `json:"clusterIDMapping"`
	RBDPoolIDMapping   []map[string]string `json:"RBDPoolIDMapping"`
	CephFSFscIDMapping []map[string]string `json:"CephFSFscIDMapping"`
}

// MappedLocation is where a volume of another site lives on this one: the
// clusterID of config.json and the pool ID (RBD) or filesystem ID (CephFS)
// to put in its volume ID.
type MappedLocation struct {
	ClusterID  string
	LocationID int64
}

// ClusterMappings serves cluster-mapping.json, re-reading it when it
// changes. The file exists only where DR is set up, so a missing file is no
// mapping, not an error.
type ClusterMappings struct {
	mu   sync.Mutex
	file watchedFile
	list []ClusterMapping
}

// NewClusterMappings returns a reader of the cluster-mapping.json at path.
func NewClusterMappings(path string) *ClusterMappings {
	return &ClusterMappings{file: watchedFile{path: path}}
}

func (m *ClusterMappings) load() ([]ClusterMapping, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed, st, err := m.file.changed()
	if errors.Is(err, fs.ErrNotExist) {
		m.list, m.file = nil, watchedFile{path: m.file.path}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading cluster mappings: %w", err)
	}
	if !changed {
		return m.list, nil
	}
	data, err := os.ReadFile(m.file.path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster mappings: %w", err)
	}
	list, err := parseClusterMappings(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.file.path, err)
	}
	m.list = list
	m.file.loadedAt(st)
	return list, nil
}

func parseClusterMappings(data []byte) ([]ClusterMapping, error) {
	var list []ClusterMapping
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("not a JSON list of cluster mappings: %w", err)
	}
	for i, e := range list {
		for from, to := range e.ClusterIDMapping {
			if from == "" || to == "" {
				return nil, fmt.Errorf("entry %d maps an empty clusterID", i)
			}
		}
		for what, ms := range map[string][]map[string]string{"RBDPoolIDMapping": e.RBDPoolIDMapping, "CephFSFscIDMapping": e.CephFSFscIDMapping} {
			for _, m := range ms {
				for from, to := range m {
					if _, err := parseID(from); err != nil {
						return nil, fmt.Errorf("entry %d: %s: %w", i, what, err)
					}
					if _, err := parseID(to); err != nil {
						return nil, fmt.Errorf("entry %d: %s: %w", i, what, err)
					}
				}
			}
		}
	}
	return list, nil
}

func parseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 0 {
		return 0, fmt.Errorf("%q is not a pool or filesystem ID", s)
	}
	return id, nil
}

// otherSide returns the side of the pair {a: b} that id is not, or "".
func otherSide(a, b, id string) string {
	switch id {
	case a:
		return b
	case b:
		return a
	}
	return ""
}

// ClusterIDs returns the clusterIDs mapped to clusterID, entries in file
// order.
func (m *ClusterMappings) ClusterIDs(clusterID string) ([]string, error) {
	list, err := m.load()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range list {
		for a, b := range e.ClusterIDMapping {
			if o := otherSide(a, b, clusterID); o != "" {
				out = append(out, o)
			}
		}
	}
	return out, nil
}

// RBD returns where an RBD volume whose ID names clusterID and poolID may
// live on this site: each clusterID mapped to clusterID, with each pool ID
// mapped to poolID in the same entry; entries in file order.
func (m *ClusterMappings) RBD(clusterID string, poolID int64) ([]MappedLocation, error) {
	return m.locations(clusterID, poolID, func(e ClusterMapping) []map[string]string { return e.RBDPoolIDMapping })
}

// CephFS is RBD for filesystem IDs (CephFSFscIDMapping).
func (m *ClusterMappings) CephFS(clusterID string, fscID int64) ([]MappedLocation, error) {
	return m.locations(clusterID, fscID, func(e ClusterMapping) []map[string]string { return e.CephFSFscIDMapping })
}

func (m *ClusterMappings) locations(clusterID string, id int64, ids func(ClusterMapping) []map[string]string) ([]MappedLocation, error) {
	list, err := m.load()
	if err != nil {
		return nil, err
	}
	want := strconv.FormatInt(id, 10)
	var out []MappedLocation
	for _, e := range list {
		for a, b := range e.ClusterIDMapping {
			mappedCluster := otherSide(a, b, clusterID)
			if mappedCluster == "" {
				continue
			}
			for _, pairs := range ids(e) {
				for from, to := range pairs {
					if o := otherSide(from, to, want); o != "" {
						n, _ := parseID(o) // checked when the file was read
						out = append(out, MappedLocation{ClusterID: mappedCluster, LocationID: n})
					}
				}
			}
		}
	}
	return out, nil
}
