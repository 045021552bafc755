package cephfs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// errCloneFailed marks a clone that ended without completing; CreateVolume
// removes it and reports the failure.
var errCloneFailed = errors.New("clone failed")

// contentSource is the snapshot or volume a new volume starts from. Both
// live in the new volume's filesystem and subvolume group.
type contentSource struct {
	// snapshot is set for a snapshot source: ImageName is the subvolume
	// snapshot, Source the subvolume it belongs to.
	snapshot   *journal.Entry
	snapshotID string
	// volume is the source subvolume, for a volume source.
	volume string
	// size is the source's quota; 0 when unknown (a deleted source whose
	// snapshots were retained) or not read (a completed clone's retry, see
	// resolveSource).
	size int64
	// root is the source subvolume's directory above its data directory
	// ("" when not read, as size).
	root string
	// kmsID and encryptionType are the source's encryption, from its
	// journal entry (ceph-csi records them for snapshots too); both ""
	// for a plain source.
	kmsID, encryptionType string
}

// origin returns the subvolume and snapshot a clone named name copies. A
// volume source is cloned through a temporary snapshot named after the new
// subvolume, so a retry finds it again.
func (c *contentSource) origin(name string) (subvolume, snapshot string) {
	if c.snapshot != nil {
		return c.snapshot.Source, c.snapshot.ImageName
	}
	return c.volume, name
}

// resolveSource checks the source of a CreateVolume request: it must exist
// and live in the same cluster and filesystem. With cloned set (the clone
// this request started is complete, and its source was checked when it
// began) only the source's journal entry is read, for its name and
// encryption: a subvolume or snapshot that was there for the copy is not
// asked for again.
func (s *ControllerServer) resolveSource(f *fsConn, src *csi.VolumeContentSource, clusterID string, cloned bool) (*contentSource, error) {
	if src == nil {
		return nil, nil
	}
	var (
		field, id string
		kind      string
	)
	switch {
	case src.GetSnapshot() != nil:
		field, id, kind = "volume_content_source.snapshot.snapshot_id", src.GetSnapshot().GetSnapshotId(), "snapshot"
	case src.GetVolume() != nil:
		field, id, kind = "volume_content_source.volume.volume_id", src.GetVolume().GetVolumeId(), "volume"
	default:
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_content_source: unsupported type")
	}
	if id == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "%s is required", field)
	}
	decoded, err := volid.Decode(id)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrNotFound, "source %s %q not found: %v", kind, id, err)
	}
	if decoded.ClusterID != clusterID || decoded.LocationID != f.fs.ID {
		return nil, csierr.Errorf(csierr.ErrInvalid, "source %s %q is not in filesystem %s of cluster %q", kind, id, f.fs.Name, clusterID)
	}
	if kind == "snapshot" {
		find := s.findBackingSnapshot
		if cloned {
			find = s.snapshotEntry
		}
		c, err := find(f, id)
		if err != nil {
			return nil, csierr.Errorf(csierr.ErrNotFound, "source snapshot %q not found: %v", id, err)
		}
		return c, nil
	}
	entry, err := s.volumes.Get(f.store(), decoded.UUID)
	switch {
	case errors.Is(err, journal.ErrNotFound):
		return nil, csierr.Errorf(csierr.ErrNotFound, "source volume %q not found: %v", id, err)
	case err != nil:
		return nil, err
	case entry.BackingSnapshotID != "":
		return nil, csierr.Errorf(csierr.ErrInvalid, "source volume %q is snapshot-backed; clone its snapshot instead", id)
	}
	name := entry.ImageName
	c := &contentSource{volume: name, kmsID: entry.KMSID, encryptionType: entry.EncryptionType}
	if cloned {
		return c, nil
	}
	info, err := f.admin.SubVolumeInfo(f.fs.Name, f.group, name)
	switch {
	case csierr.IsNotFound(err) || (err == nil && info.State == admin.StateSnapRetained):
		return nil, csierr.Errorf(csierr.ErrNotFound, "source volume %q not found", id)
	case csierr.IsErrno(err, syscall.EAGAIN):
		return nil, csierr.Errorf(csierr.ErrInProgress, "source volume %q is still being populated; retry later", id)
	case err != nil:
		return nil, fmt.Errorf("reading source subvolume %s: %w", name, err)
	}
	c.size, c.root = quotaBytes(info), subvolumeRoot(f.group, name, info.Path)
	return c, nil
}

// snapshotEntry is the content source snapshotID names, from its journal
// entry alone.
func (s *ControllerServer) snapshotEntry(f *fsConn, snapshotID string) (*contentSource, error) {
	decoded, err := volid.Decode(snapshotID)
	if err != nil {
		return nil, err
	}
	entry, err := s.snapshots.Get(f.store(), decoded.UUID)
	if err != nil {
		return nil, err
	}
	return &contentSource{snapshot: entry, snapshotID: snapshotID, kmsID: entry.KMSID, encryptionType: entry.EncryptionType}, nil
}

// findBackingSnapshot reads the journal entry of snapshotID and checks that
// the subvolume snapshot exists.
func (s *ControllerServer) findBackingSnapshot(f *fsConn, snapshotID string) (*contentSource, error) {
	c, err := s.snapshotEntry(f, snapshotID)
	if err != nil {
		return nil, err
	}
	entry := c.snapshot
	if _, err := f.admin.SubVolumeSnapshotInfo(f.fs.Name, f.group, entry.Source, entry.ImageName); err != nil {
		return nil, fmt.Errorf("snapshot %s of %s: %w", entry.ImageName, entry.Source, err)
	}
	// A source deleted with its snapshots retained has no info; its size is
	// then unknown, and the snapshots sit below the fixed root.
	var dataPath string
	if info, err := f.subvolumeInfo(entry.Source); err == nil {
		c.size, dataPath = quotaBytes(info), info.Path
	} else if !csierr.IsNotFound(err) {
		return nil, err
	}
	c.root = subvolumeRoot(f.group, entry.Source, dataPath)
	return c, nil
}

// startClone begins copying src into the new subvolume name.
func startClone(f *fsConn, name, pool string, src *contentSource) error {
	sub, snap := src.origin(name)
	if src.volume != "" {
		err := f.admin.CreateSubVolumeSnapshot(f.fs.Name, f.group, sub, snap)
		if err != nil && !csierr.IsErrno(err, syscall.EEXIST) {
			return fmt.Errorf("snapshotting source volume %s for the clone: %w", sub, err)
		}
		failpoint.Hit("cephfs-clone-after-temp-snapshot")
	}
	err := f.admin.CloneSubVolumeSnapshot(f.fs.Name, f.group, sub, snap, name,
		&admin.CloneOptions{TargetGroup: f.group, PoolLayout: pool})
	switch {
	case err == nil, csierr.IsErrno(err, syscall.EEXIST):
		failpoint.Hit("cephfs-clone-after-start")
		return nil
	case csierr.IsErrno(err, syscall.EAGAIN):
		return csierr.Errorf(csierr.ErrExhausted, "cannot start cloning %s@%s now (the cloner is busy): %v; retry later", sub, snap, err)
	case csierr.IsNotFound(err):
		return csierr.Errorf(csierr.ErrNotFound, "clone source %s@%s not found: %v", sub, snap, err)
	}
	return fmt.Errorf("cloning %s@%s into %s: %w", sub, snap, name, err)
}

// cloneProgress turns a clone's state into the call's outcome: nil once
// complete, Aborted while copying, errCloneFailed when it ended otherwise.
func cloneProgress(name string, st *admin.CloneStatus) error {
	switch st.State {
	case admin.CloneComplete:
		return nil
	case admin.ClonePending, admin.CloneInProgress:
		progress := ""
		if p := st.ProgressReport.PercentageCloned; p != "" {
			progress = ", " + p + " copied"
		}
		return csierr.Errorf(csierr.ErrInProgress, "volume %s is still being copied from its source (%s%s); retry later", name, st.State, progress)
	case admin.CloneFailed, admin.CloneState(admin.StateCanceled):
		detail := ""
		if fl := st.GetFailure(); fl != nil {
			detail = fmt.Sprintf(": errno %s: %s", fl.Errno, fl.ErrStr)
		}
		return fmt.Errorf("%w: copying into %s ended as %s%s", errCloneFailed, name, st.State, detail)
	}
	return fmt.Errorf("clone %s is in unknown state %q", name, st.State)
}

// provisionBacking records volumeID as a user of its snapshot, then checks
// the snapshot is still there (DeleteSnapshot may have run in between).
func (s *ControllerServer) provisionBacking(f *fsConn, volumeID string, src *contentSource) (*provisioned, error) {
	if err := (refTracker{f.io}).add(backingRefObject(src.snapshotID), src.snapshotID, volumeID); err != nil {
		return nil, fmt.Errorf("recording the use of snapshot %s: %w", src.snapshot.ImageName, err)
	}
	if _, err := f.admin.SubVolumeSnapshotInfo(f.fs.Name, f.group, src.snapshot.Source, src.snapshot.ImageName); err != nil {
		if csierr.IsNotFound(err) {
			return nil, csierr.Errorf(csierr.ErrNotFound, "snapshot %s was deleted", src.snapshot.ImageName)
		}
		return nil, err
	}
	return &provisioned{path: src.root, size: src.size}, nil
}

// unrefBackingSnapshot drops a volume's use of its snapshot. When the
// snapshot was deleted already and this was its last user, the snapshot
// goes now.
func (s *ControllerServer) unrefBackingSnapshot(ctx context.Context, f *fsConn, snapshotID, volumeID string) error {
	gone, err := (refTracker{f.io}).remove(backingRefObject(snapshotID), []string{volumeID}, nil)
	if err != nil || !gone {
		return err
	}
	decoded, err := volid.Decode(snapshotID)
	if err != nil {
		return nil // not a snapshot of ours
	}
	entry, err := s.snapshots.Get(f.store(), decoded.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("removing a deleted snapshot with its last snapshot-backed volume", "snapshot", entry.ImageName)
	return s.removeSnapshotAndEntry(f, entry)
}

// removeSnapshotAndEntry removes a subvolume snapshot and its journal entry.
func (s *ControllerServer) removeSnapshotAndEntry(f *fsConn, entry *journal.Entry) error {
	if err := f.removeSnapshot(entry.Source, entry.ImageName); err != nil {
		return err
	}
	failpoint.Hit("cephfs-delete-snapshot-before-release")
	return s.snapshots.Release(f.store(), entry)
}

// checkSourceEncryption refuses content sources that would not give an
// encrypted volume its files. An encrypted source cannot be copied at all:
// the manager's subvolume cloner (Tentacle 20.2) copies the encrypted
// directory without its fscrypt policy, so the copy can never be unlocked
// (docs/encryption.md). A plain source under an encrypted StorageClass
// would keep its files plain beside the encrypted directory.
func checkSourceEncryption(src *contentSource, e *encryption, id string) error {
	switch {
	case src == nil:
		return nil
	case src.encryptionType != "":
		return csierr.Errorf(csierr.ErrInvalid, "volume_content_source %s is encrypted with fscrypt (KMS %q), and Ceph's subvolume clone "+
			"does not carry fscrypt policies: the copy could not be unlocked; restoring or cloning encrypted CephFS volumes is not supported",
			id, src.kmsID)
	case e != nil:
		return csierr.Errorf(csierr.ErrInvalid, "volume_content_source %s is not encrypted, and this StorageClass asks for encryption: "+
			"its files would stay plain", id)
	}
	return nil
}
