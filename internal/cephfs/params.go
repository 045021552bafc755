package cephfs

import (
	"strconv"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/volid"
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
	// Encryption is set for volumes encrypted with fscrypt.
	Encryption *encryption
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
	if err := request.ValidPoolName("fsName", v.FsName); err != nil {
		return nil, err
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
	if v.Encryption, err = parseEncryption(p, ""); err != nil {
		return nil, err
	}
	if v.Encryption != nil && v.Mounter == mounterFuse {
		return nil, csierr.Param("mounter", "%q cannot mount an encrypted volume: fscrypt needs the CephFS kernel client (mounter %q)",
			v.Mounter, mounterKernel)
	}
	if v.NamePrefix, err = request.NamePrefix(p, "volumeNamePrefix", request.DefaultVolumePrefix); err != nil {
		return nil, err
	}
	if err := validMounter(v.Mounter); err != nil {
		return nil, err
	}
	for _, name := range []string{"kernelMountOptions", "fuseMountOptions"} {
		if err := request.SafeOptionList(name, p[name]); err != nil {
			return nil, csierr.Param(name, "%v", err)
		}
	}
	if s := p["backingSnapshot"]; s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, csierr.Param("backingSnapshot", "%q is not a boolean", s)
		}
		v.BackingSnapshot = b
	}
	if v.BackingSnapshot && v.Encryption != nil {
		// The snapshot's encrypted directory would have to be unlocked
		// read-only below the snapshot, which the node does not do.
		return nil, csierr.Param("backingSnapshot", "cannot be combined with encrypted: restore the snapshot into a new volume instead")
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
	return request.NamePrefix(p, "snapshotNamePrefix", request.DefaultSnapshotPrefix)
}
