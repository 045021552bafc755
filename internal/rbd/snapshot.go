package rbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/common"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// snapInfo describes the snapshot a snapshot image carries for restores.
type snapInfo struct {
	Size    uint64
	Created time.Time
}

// snapshotInfo reads the restore snapshot of a snapshot image; the snapshot
// has the image's own name.
func snapshotInfo(pc *poolConn, image string) (*snapInfo, error) {
	img, err := rbd.OpenImageReadOnly(pc.io, image, rbd.NoSnapshot)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return snapshotInfoOf(img)
}

// snapshotInfoOf is snapshotInfo of an image already open.
func snapshotInfoOf(img *rbd.Image) (*snapInfo, error) {
	image := img.GetName()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, err
	}
	for _, sn := range snaps {
		if sn.Name != image {
			continue
		}
		ts, err := img.GetSnapTimestamp(sn.Id)
		if err != nil {
			return nil, err
		}
		return &snapInfo{Size: sn.Size, Created: time.Unix(ts.Sec, ts.Nsec)}, nil
	}
	return nil, fmt.Errorf("image %s has no snapshot %s: %w", image, image, csierr.ErrNotFound)
}

// CreateSnapshot implements csi.ControllerServer.
func (s *ControllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source_volume_id is required")
	}
	prefix, err := snapshotPrefix(req.GetParameters())
	if err != nil {
		return nil, err
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	release, err := s.Lock("snapshot-name/"+name, "volume-id/"+req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	ref, err := s.findVolume(req.GetSourceVolumeId(), creds)
	if err != nil {
		return nil, notFoundVolume(req.GetSourceVolumeId(), err)
	}
	defer ref.pc.close()
	if c := req.GetParameters()["clusterID"]; c != "" && c != ref.id.ClusterID {
		return nil, invalidParam("clusterID", "%q differs from the source volume's cluster %q", c, ref.id.ClusterID)
	}

	store := ref.pc.store()
	entry, err := s.snapshots.Lookup(store, name)
	if err != nil {
		return nil, csierr.Status(err)
	}
	if entry != nil {
		if entry.Source != ref.image {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for source image %s, not %s", name, entry.Source, ref.image)
		}
		if info, err := snapshotInfo(ref.pc, entry.ImageName); err == nil {
			return s.snapshotResponse(ref, entry, info)
		} else if !csierr.IsNotFound(err) {
			return nil, csierr.Status(err)
		}
		klog.FromContext(ctx).Info("repairing a half-created snapshot", "image", entry.ImageName)
	} else if entry, err = s.snapshots.Reserve(store, name, prefix, journal.Entry{Source: ref.image}); err != nil {
		return nil, csierr.Status(err)
	}
	info, err := s.snapshotImage(ctx, ref, entry)
	if err != nil {
		if rerr := removeImage(ref.pc, entry.ImageName, false); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "cleaning up after a failed snapshot", "image", entry.ImageName)
		} else if rerr := s.snapshots.Release(store, entry); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "cleaning up the journal after a failed snapshot", "uuid", entry.UUID)
		}
		purgeTrash(ref.pc.io)
		return nil, csierr.Status(err)
	}
	return s.snapshotResponse(ref, entry, info)
}

// snapshotImage takes the snapshot: source@tmp cloned into the snapshot
// image, tmp dropped from the source, and a snapshot on the new image for
// restores.
func (s *ControllerServer) snapshotImage(ctx context.Context, ref *volumeRef, entry *journal.Entry) (*snapInfo, error) {
	snap := entry.ImageName
	src, err := rbd.OpenImage(ref.pc.io, ref.image, rbd.NoSnapshot)
	if err != nil {
		return nil, notFoundVolume(volumeIDString(ref), err)
	}
	defer src.Close()
	depth, err := s.limitDepth(ctx, ref.pc, src, 1)
	if err != nil {
		return nil, err
	}
	flattenNew, err := s.limitChildren(ctx, ref.pc, src)
	if err != nil {
		return nil, err
	}
	opts, err := cloneOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	if err := createSnapshot(src, snap); err != nil {
		return nil, err
	}
	err = cloneImage(ref.pc.io, ref.image, snap, ref.pc.io, snap, opts)
	if rerr := removeSnapshot(src, snap); err == nil {
		err = rerr
	}
	if err != nil {
		return nil, err
	}
	img, err := rbd.OpenImage(ref.pc.io, snap, rbd.NoSnapshot)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", snap, err)
	}
	defer img.Close()
	if err := createSnapshot(img, snap); err != nil {
		return nil, err
	}
	size, err := img.GetSize()
	if err != nil {
		return nil, err
	}
	id, err := img.GetId()
	if err != nil {
		return nil, err
	}
	if err := s.snapshots.SetImageID(ref.pc.store(), entry.UUID, id); err != nil {
		return nil, err
	}
	if flattenNew || depth > int(s.Options.SoftMaxClones) {
		if err := queueFlatten(ref.pc, snap); err != nil {
			return nil, err
		}
	}
	return &snapInfo{Size: size, Created: time.Now()}, nil
}

func volumeIDString(ref *volumeRef) string {
	s, _ := ref.id.Encode()
	return s
}

func (s *ControllerServer) snapshotResponse(ref *volumeRef, entry *journal.Entry, info *snapInfo) (*csi.CreateSnapshotResponse, error) {
	id, err := volid.ID{ClusterID: ref.id.ClusterID, LocationID: ref.pc.id, UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: volumeIDString(ref),
		SizeBytes:      int64(info.Size),
		CreationTime:   timestamppb.New(info.Created),
		ReadyToUse:     true,
	}}, nil
}

// DeleteSnapshot implements csi.ControllerServer.
func (s *ControllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	release, err := s.Lock("snapshot-id/" + req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	defer release()
	id, err := volid.Decode(req.GetSnapshotId())
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil // not ours: nothing to delete
	}
	pc, err := openPool(s.Deps, id.ClusterID, "", id.LocationID, creds)
	if errors.Is(err, errPoolNotFound) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, csierr.Status(err)
	}
	defer pc.close()
	entry, err := s.snapshots.Get(pc.store(), id.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		entry = &journal.Entry{UUID: id.UUID, ImageName: defaultSnapshotPrefix + id.UUID}
	} else if err != nil {
		return nil, csierr.Status(err)
	}
	if entry.RequestName != "" {
		releaseName, err := s.Lock("snapshot-name/" + entry.RequestName)
		if err != nil {
			return nil, err
		}
		defer releaseName()
	}
	// Volumes restored from the snapshot keep working: the image goes to the
	// trash until its last clone is gone.
	if err := removeImage(pc, entry.ImageName, false); err != nil {
		return nil, csierr.Status(err)
	}
	if err := s.snapshots.Release(pc.store(), entry); err != nil {
		return nil, csierr.Status(err)
	}
	purgeTrash(pc.io)
	return &csi.DeleteSnapshotResponse{}, nil
}
