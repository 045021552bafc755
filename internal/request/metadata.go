package request

// The metadata ceph-csi records on RBD images and CephFS subvolumes with
// --setmetadata: the Kubernetes names the provisioner and the snapshotter
// add to a request's parameters (with --extra-create-metadata), under the
// same keys, and the cluster name of --clustername.
var (
	volumeMetadataKeys = []string{
		"csi.storage.k8s.io/pvc/name",
		"csi.storage.k8s.io/pvc/namespace",
		"csi.storage.k8s.io/pv/name",
	}
	snapshotMetadataKeys = []string{
		"csi.storage.k8s.io/volumesnapshot/name",
		"csi.storage.k8s.io/volumesnapshot/namespace",
		"csi.storage.k8s.io/volumesnapshotcontent/name",
	}
)

// PVCNamespaceKey is the parameter (from --extra-create-metadata) naming
// the PVC's namespace: the owner of the volume, which some KMS
// configurations read their Secret from.
const PVCNamespaceKey = "csi.storage.k8s.io/pvc/namespace"

// ClusterNameKey is the metadata key of --clustername.
const ClusterNameKey = "csi.ceph.com/cluster/name"

// VolumeMetadata returns the metadata to record for a CreateVolume's
// parameters; empty when the request carries none.
func VolumeMetadata(params map[string]string, clusterName string) map[string]string {
	return metadata(params, volumeMetadataKeys, clusterName)
}

// SnapshotMetadata returns the metadata to record for a CreateSnapshot's
// parameters.
func SnapshotMetadata(params map[string]string, clusterName string) map[string]string {
	return metadata(params, snapshotMetadataKeys, clusterName)
}

func metadata(params map[string]string, keys []string, clusterName string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		if v := params[k]; v != "" {
			out[k] = v
		}
	}
	if clusterName != "" {
		out[ClusterNameKey] = clusterName
	}
	return out
}

// MetadataKeys lists every key VolumeMetadata and SnapshotMetadata may
// write: a clone inherits its parent's image metadata, and those of the
// parent's keys a new image does not set must go.
func MetadataKeys() []string {
	return append(append(append([]string{}, volumeMetadataKeys...), snapshotMetadataKeys...), ClusterNameKey)
}
