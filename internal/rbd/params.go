package rbd

import (
	"fmt"
	"strings"

	"github.com/ceph/go-ceph/rbd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of the StorageClass parameters.
const (
	defaultVolumePrefix   = "csi-vol-"
	defaultSnapshotPrefix = "csi-snap-"
	defaultFeatures       = "layering"
	defaultFsType         = "ext4"
)

// volumeParams are the StorageClass parameters CreateVolume acts on.
type volumeParams struct {
	ClusterID      string
	Pool           string
	DataPool       string
	RadosNamespace string
	Features       uint64
	FeatureNames   string
	NamePrefix     string
	FsType         string
}

var featureBits = map[string]uint64{
	rbd.FeatureNameLayering:      rbd.FeatureLayering,
	rbd.FeatureNameExclusiveLock: rbd.FeatureExclusiveLock,
	rbd.FeatureNameObjectMap:     rbd.FeatureObjectMap,
	rbd.FeatureNameFastDiff:      rbd.FeatureFastDiff,
	rbd.FeatureNameDeepFlatten:   rbd.FeatureDeepFlatten,
	rbd.FeatureNameJournaling:    rbd.FeatureJournaling,
}

// featureNeeds lists the features each feature depends on.
var featureNeeds = map[string]string{
	rbd.FeatureNameObjectMap:  rbd.FeatureNameExclusiveLock,
	rbd.FeatureNameFastDiff:   rbd.FeatureNameObjectMap,
	rbd.FeatureNameJournaling: rbd.FeatureNameExclusiveLock,
}

func invalidParam(name, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "parameter %q: %s", name, fmt.Sprintf(format, args...))
}

// parseFeatures turns "layering,exclusive-lock" into feature bits, checking
// the dependencies between features.
func parseFeatures(s string) (uint64, string, error) {
	if strings.TrimSpace(s) == "" {
		s = defaultFeatures
	}
	var bits uint64
	var names []string
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" || seen[f] {
			continue
		}
		bit, ok := featureBits[f]
		if !ok {
			return 0, "", invalidParam("imageFeatures", "unknown feature %q", f)
		}
		seen[f] = true
		bits |= bit
		names = append(names, f)
	}
	for _, f := range names {
		if need, ok := featureNeeds[f]; ok && !seen[need] {
			return 0, "", invalidParam("imageFeatures", "feature %q needs %q", f, need)
		}
	}
	return bits, strings.Join(names, ","), nil
}

func parseVolumeParams(p map[string]string) (*volumeParams, error) {
	v := &volumeParams{
		ClusterID:      p["clusterID"],
		Pool:           p["pool"],
		DataPool:       p["dataPool"],
		RadosNamespace: p["radosNamespace"],
		NamePrefix:     p["volumeNamePrefix"],
		FsType:         p["csi.storage.k8s.io/fstype"],
	}
	if v.ClusterID == "" {
		return nil, invalidParam("clusterID", "is required")
	}
	if v.Pool == "" {
		return nil, invalidParam("pool", "is required")
	}
	if v.NamePrefix == "" {
		v.NamePrefix = defaultVolumePrefix
	}
	if strings.ContainsAny(v.NamePrefix, "/@ ") {
		return nil, invalidParam("volumeNamePrefix", "%q may not contain '/', '@' or spaces", v.NamePrefix)
	}
	switch v.FsType {
	case "":
		v.FsType = defaultFsType
	case "ext4", "xfs":
	default:
		return nil, invalidParam("csi.storage.k8s.io/fstype", "%q is not ext4 or xfs", v.FsType)
	}
	var err error
	if v.Features, v.FeatureNames, err = parseFeatures(p["imageFeatures"]); err != nil {
		return nil, err
	}
	if m := p["mounter"]; m != "" && m != "rbd" && m != "krbd" && m != "rbd-nbd" && m != "rbd-fuse" {
		return nil, invalidParam("mounter", "%q is not krbd, rbd-nbd or rbd-fuse", m)
	}
	return v, nil
}

// snapshotPrefix returns the snapshotNamePrefix parameter or its default.
func snapshotPrefix(p map[string]string) (string, error) {
	prefix := p["snapshotNamePrefix"]
	if prefix == "" {
		return defaultSnapshotPrefix, nil
	}
	if strings.ContainsAny(prefix, "/@ ") {
		return "", invalidParam("snapshotNamePrefix", "%q may not contain '/', '@' or spaces", prefix)
	}
	return prefix, nil
}
