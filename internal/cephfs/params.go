package cephfs

import (
	"strconv"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/volid"
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

func parseVolumeParams(p map[string]string) (*volumeParams, error) {
	v := &volumeParams{
		ClusterID: p["clusterID"],
		FsName:    p["fsName"],
		Pool:      p["pool"],
		Mounter:   p["mounter"],
	}
	if v.ClusterID == "" {
		return nil, csierr.Param("clusterID", "is required")
	}
	if len(v.ClusterID) > volid.MaxClusterIDLength {
		return nil, csierr.Param("clusterID", "%q is longer than %d bytes", v.ClusterID, volid.MaxClusterIDLength)
	}
	if v.FsName == "" {
		return nil, csierr.Param("fsName", "is required")
	}
	// The name goes into mount options (mds_namespace=) and onto the
	// ceph-fuse command line.
	if err := request.SafeValue(`parameter "fsName"`, v.FsName); err != nil {
		return nil, err
	}
	if v.Pool != "" {
		if err := request.ValidPoolName("pool", v.Pool); err != nil {
			return nil, err
		}
	}
	var err error
	if v.NamePrefix, err = request.NamePrefix(p, "volumeNamePrefix", defaultVolumePrefix); err != nil {
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
	return request.NamePrefix(p, "snapshotNamePrefix", defaultSnapshotPrefix)
}
