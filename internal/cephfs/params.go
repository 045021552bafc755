package cephfs

import (
	"strconv"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Defaults of the StorageClass parameters.
const (
	defaultVolumePrefix   = "csi-vol-"
	defaultSnapshotPrefix = "csi-snap-"
)

// Mounters a volume may ask for.
const (
	mounterKernel = "kernel"
	mounterFuse   = "fuse"
)

// volumeParams are the StorageClass parameters CreateVolume acts on.
type volumeParams struct {
	ClusterID       string
	FsName          string
	Pool            string
	Mounter         string
	NamePrefix      string
	BackingSnapshot bool
}

func validPrefix(name, prefix string) error {
	if strings.ContainsAny(prefix, "/@ ") {
		return csierr.Param(name, "%q may not contain '/', '@' or spaces", prefix)
	}
	return nil
}

func parseVolumeParams(p map[string]string) (*volumeParams, error) {
	v := &volumeParams{
		ClusterID:  p["clusterID"],
		FsName:     p["fsName"],
		Pool:       p["pool"],
		Mounter:    p["mounter"],
		NamePrefix: p["volumeNamePrefix"],
	}
	if v.ClusterID == "" {
		return nil, csierr.Param("clusterID", "is required")
	}
	if v.FsName == "" {
		return nil, csierr.Param("fsName", "is required")
	}
	if v.NamePrefix == "" {
		v.NamePrefix = defaultVolumePrefix
	}
	if err := validPrefix("volumeNamePrefix", v.NamePrefix); err != nil {
		return nil, err
	}
	if err := validMounter(v.Mounter); err != nil {
		return nil, err
	}
	if s := p["backingSnapshot"]; s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, csierr.Param("backingSnapshot", "%q is not a boolean", s)
		}
		v.BackingSnapshot = b
	}
	return v, nil
}

func validMounter(m string) error {
	switch m {
	case "", mounterKernel, mounterFuse:
		return nil
	}
	return csierr.Param("mounter", "%q is not kernel or fuse", m)
}

// snapshotPrefix returns the snapshotNamePrefix parameter or its default.
func snapshotPrefix(p map[string]string) (string, error) {
	prefix := p["snapshotNamePrefix"]
	if prefix == "" {
		return defaultSnapshotPrefix, nil
	}
	if err := validPrefix("snapshotNamePrefix", prefix); err != nil {
		return "", err
	}
	return prefix, nil
}
