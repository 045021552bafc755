package locks

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"google.golang.org/grpc"
)

// KeysOf returns the keys a request names: what it creates (by name) or
// works on (by ID), and the source a new volume or snapshot is made from,
// so that nothing deletes a source while it is being copied. A snapshot a
// volume is restored from is only read: restores of one snapshot share
// its key. A source volume is snapshotted for a clone (an RBD PVC clone
// takes a temporary snapshot on it), which one call at a time does.
func KeysOf(req any) []Key {
	var keys []Key
	add := func(k func(string) Key, v string) {
		if v != "" {
			keys = append(keys, k(v))
		}
	}
	switch r := req.(type) {
	case *csi.CreateVolumeRequest:
		add(VolumeName, r.GetName())
		add(func(id string) Key { return SnapshotID(id).Shared() }, r.GetVolumeContentSource().GetSnapshot().GetSnapshotId())
		add(VolumeID, r.GetVolumeContentSource().GetVolume().GetVolumeId())
	case *csi.DeleteVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.ControllerExpandVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.CreateSnapshotRequest:
		add(SnapshotName, r.GetName())
		add(VolumeID, r.GetSourceVolumeId())
	case *csi.DeleteSnapshotRequest:
		add(SnapshotID, r.GetSnapshotId())
	case *csi.NodeStageVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.NodeUnstageVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.NodePublishVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.NodeUnpublishVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	case *csi.NodeExpandVolumeRequest:
		add(VolumeID, r.GetVolumeId())
	// CSI-Addons: reclaiming space must not race a delete, unstage or
	// expansion of the same volume.
	case *reclaimspace.ControllerReclaimSpaceRequest:
		add(VolumeID, r.GetVolumeId())
	case *reclaimspace.NodeReclaimSpaceRequest:
		add(VolumeID, r.GetVolumeId())
	}
	return keys
}

// Interceptor takes the keys of each request in s for the duration of the
// call; a call whose key is held answers Aborted at once.
func Interceptor(s *Set) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		keys := KeysOf(req)
		if len(keys) == 0 {
			return next(ctx, req)
		}
		release, err := s.Acquire(keys...)
		if err != nil {
			return nil, err
		}
		defer release()
		return next(ctx, req)
	}
}
