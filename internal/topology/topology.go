// Package topology gives volumes and nodes CSI topology the way ceph-csi
// does, so that PVs keep their node affinity when one driver replaces the
// other: a node's segments come from its Kubernetes labels named by
// --domainlabels, keyed "topology.<driver name>/<label name>"; a
// StorageClass's topologyConstrainedPools says which pool serves which
// segments.
package topology

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Prefix is the key prefix of a driver's segments.
func Prefix(driverName string) (string, error) {
	p := "topology." + strings.ToLower(driverName)
	// A Kubernetes label prefix is a DNS subdomain of at most 63 characters
	// in this position.
	if len(p) > 63 {
		return "", fmt.Errorf("topology key prefix %q is longer than 63 characters", p)
	}
	return p, nil
}

// labelName is the part of a label key after its prefix.
func labelName(key string) string {
	if i := strings.IndexByte(key, '/'); i >= 0 {
		return key[i+1:]
	}
	return key
}

// ForNode returns a node's segments: for each domain label, its value on
// the node under "<prefix>/<label name>". Every domain label must be on the
// node, once.
func ForNode(labels map[string]string, domainLabels []string, driverName string) (map[string]string, error) {
	if len(domainLabels) == 0 {
		return nil, nil
	}
	prefix, err := Prefix(driverName)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	seen := map[string]bool{}
	var missing []string
	for _, l := range domainLabels {
		if seen[l] {
			return nil, fmt.Errorf("domain label %q is given twice", l)
		}
		seen[l] = true
		v, ok := labels[l]
		if !ok {
			missing = append(missing, l)
			continue
		}
		out[prefix+"/"+labelName(l)] = v
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the node lacks the domain labels %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// Segment is one domain a constrained pool serves.
type Segment struct {
	DomainLabel string `json:"domainLabel"`
	DomainValue string `json:"value"`
}

// ConstrainedPool is one entry of topologyConstrainedPools.
type ConstrainedPool struct {
	PoolName       string    `json:"poolName"`
	DataPoolName   string    `json:"dataPool"`
	DomainSegments []Segment `json:"domainSegments"`
}

// ParsePools reads a topologyConstrainedPools parameter ("" for none).
func ParsePools(param string) ([]ConstrainedPool, error) {
	if strings.TrimSpace(param) == "" {
		return nil, nil
	}
	var pools []ConstrainedPool
	if err := json.Unmarshal([]byte(param), &pools); err != nil {
		return nil, csierr.Param("topologyConstrainedPools", "not a JSON list of pools: %v", err)
	}
	if len(pools) == 0 {
		return nil, csierr.Param("topologyConstrainedPools", "lists no pool")
	}
	for i, p := range pools {
		if p.PoolName == "" {
			return nil, csierr.Param("topologyConstrainedPools", "entry %d has no poolName", i)
		}
		if len(p.DomainSegments) == 0 {
			return nil, csierr.Param("topologyConstrainedPools", "pool %q has no domainSegments", p.PoolName)
		}
	}
	return pools, nil
}

// Choice is the pool picked for a request and the topology of the volume.
type Choice struct {
	Pool, DataPool string
	Segments       map[string]string
}

// Select picks the first pool whose segments all match a preferred
// topology of req, else a requisite one. Without pools or requirements
// there is no choice (nil). No match is ErrExhausted: the volume cannot be
// made where it must be accessible.
func Select(pools []ConstrainedPool, req *csi.TopologyRequirement) (*Choice, error) {
	if len(pools) == 0 || req == nil {
		return nil, nil
	}
	for _, list := range [][]*csi.Topology{req.GetPreferred(), req.GetRequisite()} {
		for _, t := range list {
			if p := match(pools, t); p != nil {
				return &Choice{Pool: p.PoolName, DataPool: p.DataPoolName, Segments: t.GetSegments()}, nil
			}
		}
	}
	return nil, csierr.Errorf(csierr.ErrExhausted, "no pool of topologyConstrainedPools serves the requested topology %v", req)
}

func match(pools []ConstrainedPool, t *csi.Topology) *ConstrainedPool {
	domains := map[string]string{}
	for k, v := range t.GetSegments() {
		domains[labelName(k)] = v
	}
	for i := range pools {
		ok := true
		for _, s := range pools[i].DomainSegments {
			if v, found := domains[s.DomainLabel]; !found || v != s.DomainValue {
				ok = false
				break
			}
		}
		if ok {
			return &pools[i]
		}
	}
	return nil
}

// CrushLocation locates the node in the CRUSH map for read affinity: for
// each crush location label on the node, the bucket type is the label's
// name after its prefix and the bucket its value (as ceph-csi reads them).
// Labels missing from the node are skipped; nil when none is found.
func CrushLocation(labels map[string]string, crushLabels []string) map[string]string {
	out := map[string]string{}
	for _, l := range crushLabels {
		if v, ok := labels[l]; ok && v != "" {
			out[labelName(l)] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// KernelCrushLocation formats a location for the kernel clients' option
// crush_location=type:name|type:name, in a stable order.
func KernelCrushLocation(loc map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(loc)) {
		parts = append(parts, k+":"+loc[k])
	}
	return strings.Join(parts, "|")
}

// LibradosCrushLocation formats a location for librados' crush_location
// setting: "type=name type=name".
func LibradosCrushLocation(loc map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(loc)) {
		parts = append(parts, k+"="+loc[k])
	}
	return strings.Join(parts, " ")
}
