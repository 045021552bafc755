package rbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/metrics"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/volid"
)

// restoreSnapshotOf returns the snapshot a snapshot image carries for
// restores, read from the open image.
func restoreSnapshotOf(img image) (*snapshotInfo, error) {
	snaps, err := img.Snapshots()
	if err != nil {
		return nil, err
	}
	return restoreSnapshotIn(snaps, img.Name())
}

// restoreSnapshotIn finds, among the snapshots of the snapshot image
// named image, the one restores clone from: it has the image's own name.
// A snapshot in the trash namespace never does (librbd renames it to a
// UUID), so it is skipped.
func restoreSnapshotIn(snaps []snapshotInfo, image string) (*snapshotInfo, error) {
	for i := range snaps {
		if s := &snaps[i]; s.Name == image && !s.Trash {
			return s, nil
		}
	}
	return nil, csierr.Errorf(csierr.ErrNotFound, "image %s has no snapshot %s", image, image)
}

// CreateSnapshot implements csi.ControllerServer.
func (s *ControllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, csierr.Field("name", "is required")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, csierr.Field("source_volume_id", "is required")
	}
	prefix, err := snapshotPrefix(req.GetParameters())
	if err != nil {
		return nil, err
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, err := s.findVolume(req.GetSourceVolumeId(), creds)
	if err == nil && ref.entry == nil {
		ref.close()
		err = journal.ErrNotFound
	}
	if err != nil {
		return nil, notFoundVolume(req.GetSourceVolumeId(), err)
	}
	defer ref.close()
	if c := req.GetParameters()["clusterID"]; c != "" && c != ref.id.ClusterID {
		return nil, csierr.Param("clusterID", "%q differs from the source volume's cluster %q", c, ref.id.ClusterID)
	}
	digest := request.Digest(req.GetParameters(), "snapshot", req.GetSourceVolumeId())

	began := time.Now()
	entry, fresh, err := s.snapshots.Claim(ref.p.Journal(), name, prefix, journal.Entry{Source: ref.image(), Request: digest,
		KMSID: ref.entry.KMSID, EncryptionType: ref.entry.EncryptionType, Owner: ref.entry.Owner})
	if metrics.Step(metrics.RBD, metrics.JournalStep(fresh), began, err) != nil {
		return nil, err
	}
	if !fresh {
		if entry.Source != ref.image() || (entry.Request != "" && entry.Request != digest) {
			return nil, csierr.Errorf(csierr.ErrExists, "snapshot %q exists for source image %s with its own parameters, not for %s as asked",
				name, entry.Source, ref.image())
		}
		img, err := ref.p.OpenImage(entry.ImageName, true)
		if err == nil {
			var info *snapshotInfo
			if info, err = restoreSnapshotOf(img); err == nil {
				err = s.finishSnapshot(ref, entry, img)
				img.Close()
				if err == nil {
					err = s.sealSnapshotOf(ctx, ref, entry, req.GetSecrets())
				}
				if err == nil {
					err = s.recordMetadata(ref.p, entry, request.SnapshotMetadata(req.GetParameters(), s.Options.ClusterName), true)
				}
				if err != nil {
					return nil, err
				}
				return s.snapshotResponse(ref, entry, info, time.Time{})
			}
			img.Close()
		}
		if !csierr.IsNotFound(err) {
			return nil, err
		}
		klog.FromContext(ctx).Info("repairing a half-created snapshot", "image", entry.ImageName)
	}
	began = time.Now()
	info, err := s.snapshotImage(ctx, ref, entry, request.SnapshotMetadata(req.GetParameters(), s.Options.ClusterName))
	_ = metrics.Step(metrics.RBD, metrics.StepSnapshot, began, err)
	if err == nil {
		err = s.sealSnapshotOf(ctx, ref, entry, req.GetSecrets())
	}
	if err != nil {
		if !errors.Is(err, csierr.ErrInProgress) {
			s.undoCreate(ctx, ref.target, s.snapshots, entry)
		}
		return nil, err
	}
	return s.snapshotResponse(ref, entry, info, time.Now())
}

// sealSnapshotOf gives the snapshot image of entry the source volume's
// DEK when the volume is encrypted (see sealSnapshot).
func (s *ControllerServer) sealSnapshotOf(ctx context.Context, ref *volumeRef, entry *journal.Entry, secrets map[string]string) error {
	id, err := volid.ID{ClusterID: ref.id.ClusterID, LocationID: ref.p.ID(), UUID: entry.UUID}.Encode()
	if err != nil {
		return err
	}
	return s.sealSnapshot(ctx, ref, entry, id, secrets)
}

// finishSnapshot does the last steps of a snapshot an earlier call made,
// which may have stopped before them: the image ID is recorded and the
// flatten queued that the limits ask for, judged on the chain and the
// source as they are now.
func (s *ControllerServer) finishSnapshot(ref *volumeRef, entry *journal.Entry, img image) error {
	if entry.ImageID == "" {
		id, err := img.ID()
		if err != nil {
			return err
		}
		if err := s.snapshots.SetImageID(ref.p.Journal(), entry.UUID, id); err != nil {
			return err
		}
		entry.ImageID = id
	}
	depth, err := cloneDepth(ref.c, img)
	if err != nil || depth == 0 {
		return err // flat: nothing to queue
	}
	flatten := depth > int(s.Options.SoftMaxClones)
	if !flatten {
		src, err := ref.p.OpenImage(ref.image(), true)
		if csierr.IsNotFound(err) {
			return nil // no source left to count snapshots on
		}
		if err != nil {
			return fmt.Errorf("opening %s: %w", imageSpec(ref.p, ref.image()), err)
		}
		snaps, err := src.Snapshots()
		src.Close()
		if err != nil {
			return fmt.Errorf("listing the snapshots of %s: %w", imageSpec(ref.p, ref.image()), err)
		}
		// The count includes the one this snapshot's image holds.
		flatten = uint(len(snaps)) > s.Options.MinSnapsOnImage
	}
	if flatten {
		return queueFlatten(ref.p, img.Name())
	}
	return nil
}

// snapshotImage takes the snapshot: the source's content cloned into the
// snapshot image (through a temporary snapshot on the source), and a
// snapshot on the new image for restores. The image ID and the metadata
// kv (which replaces what the clone inherited) are written at once, to two
// objects. The answer is read from the new snapshot (size and creation
// time, as a retry reads them), which the open image has cached.
func (s *ControllerServer) snapshotImage(ctx context.Context, ref *volumeRef, entry *journal.Entry, kv map[string]string) (*snapshotInfo, error) {
	snap := entry.ImageName
	src, err := ref.p.OpenImage(ref.image(), false)
	if err != nil {
		return nil, notFoundVolume(volumeIDString(ref), err)
	}
	defer src.Close()
	if err := refuseWhileFlattening(ref.p, src); err != nil {
		return nil, err
	}
	depth, err := cloneDepth(ref.c, src)
	if err == nil {
		depth, err = s.limitDepth(ctx, ref.target, src.Name(), depth, 1)
	}
	if err != nil {
		return nil, err
	}
	flattenNew, err := s.limitChildren(ctx, ref.target, src)
	if err != nil {
		return nil, err
	}
	if err := cloneThroughSnapshot(ref.p, src, snap, ref.p, snap, intermediateOptions); err != nil {
		return nil, err
	}
	failpoint.Hit("create-snapshot-after-clone")
	img, err := ref.p.OpenImage(snap, false)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", imageSpec(ref.p, snap), err)
	}
	defer img.Close()
	if err := img.CreateSnapshot(snap); err != nil {
		return nil, fmt.Errorf("creating snapshot %s@%s: %w", imageSpec(ref.p, snap), snap, err)
	}
	info, err := restoreSnapshotOf(img)
	if err != nil {
		return nil, err
	}
	id, err := img.ID()
	if err != nil {
		return nil, err
	}
	entry.ImageID = id
	if err := both(func() error { return s.snapshots.SetImageID(ref.p.Journal(), entry.UUID, id) },
		func() error { return s.recordMetadata(ref.p, entry, kv, true) }); err != nil {
		return nil, err
	}
	if flattenNew || depth > int(s.Options.SoftMaxClones) {
		if err := queueFlatten(ref.p, snap); err != nil {
			return nil, err
		}
	}
	return info, nil
}

func volumeIDString(ref *volumeRef) string {
	s, _ := ref.id.Encode()
	return s
}

// snapshotResponse answers for a snapshot; created overrides the time the
// snapshot carries when it has none of its own.
func (s *ControllerServer) snapshotResponse(ref *volumeRef, entry *journal.Entry, info *snapshotInfo, created time.Time) (*csi.CreateSnapshotResponse, error) {
	id, err := volid.ID{ClusterID: ref.id.ClusterID, LocationID: ref.p.ID(), UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, err
	}
	when := info.Created
	if when.IsZero() {
		when = created
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: volumeIDString(ref),
		SizeBytes:      int64(info.Size),
		CreationTime:   timestamppb.New(when),
		ReadyToUse:     true,
	}}, nil
}

// DeleteSnapshot implements csi.ControllerServer. Only a snapshot the
// journal knows is deleted.
func (s *ControllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, csierr.Field("snapshot_id", "is required")
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	id, err := volid.Decode(req.GetSnapshotId())
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil // not ours: nothing to delete
	}
	t, err := s.openTarget(id.ClusterID, "", id.LocationID, creds)
	if errors.Is(err, errPoolNotFound) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer t.close()
	entry, err := s.snapshots.Find(t.p.Journal(), id.UUID)
	if err != nil {
		return nil, err
	}
	if entry == nil {
		klog.FromContext(ctx).Info("no journal entry for the snapshot: nothing of ours to delete", "snapshot", req.GetSnapshotId())
		return &csi.DeleteSnapshotResponse{}, nil
	}
	releaseName, err := s.Lock(locks.SnapshotName(entry.RequestName))
	if err != nil {
		return nil, err
	}
	defer releaseName()
	// Volumes restored from the snapshot keep working: the image goes to the
	// trash until its last clone is gone.
	// The image's own snapshot, for restores, is the one it carries.
	began := time.Now()
	found, parent, err := s.remover(t, entry.ImageName).remove(entry.ImageName, entry.ImageID, true)
	if metrics.Step(metrics.RBD, metrics.StepRemove, began, err) != nil {
		return nil, err
	}
	purgeAncestors(t.c, parent)
	if !found {
		purgeOurTrash(t.c, t.p)
	}
	failpoint.Hit("delete-snapshot-before-release")
	began = time.Now()
	if err := metrics.Step(metrics.RBD, metrics.StepJournalRelease, began, s.snapshots.Release(t.p.Journal(), entry)); err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}
