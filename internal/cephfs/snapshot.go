package cephfs

import (
	"context"
	"errors"
	"syscall"
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

// CreateSnapshot implements csi.ControllerServer. A snapshot is a subvolume
// snapshot, ready as soon as it exists.
func (s *ControllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, csierr.Field("name", "is required")
	}
	sourceID := req.GetSourceVolumeId()
	if sourceID == "" {
		return nil, csierr.Field("source_volume_id", "is required")
	}
	prefix, err := snapshotPrefix(req.GetParameters())
	if err != nil {
		return nil, err
	}
	ref, err := s.existingVolume("source_volume_id", sourceID, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	f := ref.f
	defer f.close()
	if c := req.GetParameters()["clusterID"]; c != "" && c != ref.id.ClusterID {
		return nil, csierr.Param("clusterID", "%q differs from the source volume's cluster %q", c, ref.id.ClusterID)
	}
	if ref.backing() {
		return nil, csierr.Errorf(csierr.ErrInvalid, "source volume %q is snapshot-backed; it cannot be snapshotted", sourceID)
	}
	info, err := f.subvolumeInfo(ref.name)
	if csierr.IsErrno(err, syscall.EAGAIN) {
		return nil, csierr.Errorf(csierr.ErrInProgress, "source volume %q is still being populated; retry later", sourceID)
	}
	if err != nil {
		return nil, notFoundVolume(sourceID, err)
	}

	digest := request.Digest(req.GetParameters(), "snapshot", sourceID)
	began := time.Now()
	entry, fresh, err := s.snapshots.Claim(f.store(), name, prefix, journal.Entry{Source: ref.name, Request: digest,
		KMSID: ref.entry.KMSID, EncryptionType: ref.entry.EncryptionType, Owner: ref.entry.Owner})
	if metrics.Step(metrics.CephFS, metrics.JournalStep(fresh), began, err) != nil {
		return nil, err
	}
	if fresh {
		failpoint.Hit("cephfs-create-snapshot-after-reserve")
	} else if entry.Source != ref.name || (entry.Request != "" && entry.Request != digest) {
		return nil, csierr.Errorf(csierr.ErrExists, "snapshot %q exists for source subvolume %s with its own parameters, not for %s as asked",
			name, entry.Source, ref.name)
	}
	// Creating an existing subvolume snapshot succeeds (or, on some
	// releases, is EEXIST): a repeated request repeats it harmlessly.
	created := time.Now()
	err = f.admin.CreateSubVolumeSnapshot(f.fs.Name, f.group, ref.name, entry.ImageName)
	if err != nil && csierr.IsErrno(err, syscall.EEXIST) {
		err = nil
	}
	if metrics.Step(metrics.CephFS, metrics.StepSnapshot, created, err) != nil {
		if fresh {
			if rerr := s.snapshots.Release(f.store(), entry); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "cleaning up the journal after a failed snapshot", "uuid", entry.UUID)
			}
		}
		return nil, err
	}
	if !fresh {
		// An earlier call may have made it: report when it really was.
		sinfo, err := f.admin.SubVolumeSnapshotInfo(f.fs.Name, f.group, ref.name, entry.ImageName)
		if err != nil {
			return nil, err
		}
		created = sinfo.CreatedAt.Time
	}
	if s.Options.SetMetadata {
		if err := f.setMetadata(ctx, ref.name, entry.ImageName, request.SnapshotMetadata(req.GetParameters(), s.Options.ClusterName)); err != nil {
			return nil, err
		}
	}
	id, err := volid.ID{ClusterID: ref.id.ClusterID, LocationID: f.fs.ID, UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId:     id,
		SourceVolumeId: sourceID,
		SizeBytes:      quotaBytes(info),
		CreationTime:   timestamppb.New(created),
		ReadyToUse:     true,
	}}, nil
}

// DeleteSnapshot implements csi.ControllerServer. A snapshot that clones
// still copy from is FailedPrecondition; one that snapshot-backed volumes
// still mount stays (without being reported) until the last of them goes.
func (s *ControllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	snapshotID := req.GetSnapshotId()
	if snapshotID == "" {
		return nil, csierr.Field("snapshot_id", "is required")
	}
	creds, err := provisionerCredentials(req.GetSecrets())
	if err != nil {
		return nil, err
	}
	id, err := volid.Decode(snapshotID)
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil // not ours: nothing to delete
	}
	f, err := openFS(s.Deps, id.ClusterID, "", id.LocationID, creds)
	if errors.Is(err, errFSNotFound) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.close()
	entry, err := s.snapshots.Get(f.store(), id.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		// Without the entry the source subvolume is unknown; the snapshot
		// was deleted already.
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	releaseName, err := s.Lock(locks.SnapshotName(entry.RequestName))
	if err != nil {
		return nil, err
	}
	defer releaseName()
	gone, err := (refTracker{f.io}).remove(backingRefObject(snapshotID), nil, []string{snapshotID})
	if err != nil {
		return nil, err
	}
	if !gone {
		klog.FromContext(ctx).V(2).Info("snapshot still backs volumes; it goes with the last of them", "snapshot", entry.ImageName)
		return &csi.DeleteSnapshotResponse{}, nil
	}
	began := time.Now()
	if err := metrics.Step(metrics.CephFS, metrics.StepRemove, began, s.removeSnapshotAndEntry(f, entry)); err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}
