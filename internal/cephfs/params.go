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
}

// notImplemented are ceph-csi CephFS StorageClass parameters this driver
// does not implement yet; each is refused when it asks for something, with
// what the user would lose.
var notImplemented = map[string]string{
	"encrypted":       "fscrypt encryption of CephFS volumes (only RBD volumes are encrypted, with LUKS2; see docs/encryption.md)",
	"encryptionKMSID": "fscrypt encryption of CephFS volumes (only RBD volumes are encrypted, with LUKS2; see docs/encryption.md)",
	"encryptionType":  "fscrypt encryption of CephFS volumes (only RBD volumes are encrypted, with LUKS2; see docs/encryption.md)",
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
	for name, what := range notImplemented {
		if s := p[name]; s != "" {
			if b, err := strconv.ParseBool(s); err != nil || b {
				return nil, csierr.Param(name, "%q is not supported by this driver yet (%s)", s, what)
			}
		}
	}
	var err error
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
