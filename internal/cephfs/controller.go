// Package cephfs implements the CSI controller and node services for CephFS
// subvolumes.
package cephfs

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/metrics"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
	"github.com/leanceph/cephcsi/internal/topology"
	"github.com/leanceph/cephcsi/internal/volid"
)

// subvolumeMode is the mode of a new subvolume's root: writable by any pod
// user, as ceph-csi makes it.
const subvolumeMode = 0o777

// ControllerServer serves the CSI controller service for CephFS.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	*service.Deps
	volumes   *journal.Journal
	snapshots *journal.Journal
}

// NewControllerServer returns a controller that uses d.
func NewControllerServer(d *service.Deps) *ControllerServer {
	return &ControllerServer{Deps: d,
		volumes:   journal.Volumes(d.Options.InstanceID),
		snapshots: journal.Snapshots(d.Options.InstanceID)}
}

// provisionerCredentials picks adminID/adminKey, or userID/userKey when the
// admin pair is absent.
func provisionerCredentials(secrets map[string]string) (cephconn.Credentials, error) {
	return request.Credentials(secrets, request.AdminSecret, request.UserSecret)
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (s *ControllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: request.ControllerCapabilities(
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	)}, nil
}

// provisioned is where a volume's data lives and how big it is.
type provisioned struct {
	path string // subvolumePath for the volume context
	size int64
}

// CreateVolume implements csi.ControllerServer.
func (s *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "name is required")
	}
	if err := request.ValidateCapabilities(req.GetVolumeCapabilities(), true); err != nil {
		return nil, err
	}
	params, err := parseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	// topologyConstrainedPools picks the data pool that serves the
	// requested topology.
	pools, err := topology.ParsePools(req.GetParameters()["topologyConstrainedPools"])
	if err != nil {
		return nil, err
	}
	place, err := topology.Select(pools, req.GetAccessibilityRequirements())
	if err != nil {
		return nil, err
	}
	if place != nil {
		if err := request.ValidPoolName("topologyConstrainedPools", place.Pool); err != nil {
			return nil, err
		}
		params.Pool = place.Pool
	}
	size, err := request.RoundedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if params.BackingSnapshot {
		if req.GetVolumeContentSource().GetSnapshot() == nil {
			return nil, csierr.Param("backingSnapshot", "needs a snapshot as volume_content_source")
		}
		if !request.ReadOnlyModes(req.GetVolumeCapabilities()) {
			return nil, csierr.Field("volume_capabilities",
				"must be reader-only for a snapshot-backed volume; use SINGLE_NODE_READER_ONLY or MULTI_NODE_READER_ONLY")
		}
	}
	creds, err := provisionerCredentials(req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if params.Encryption != nil {
		// Built before anything is made: a KMS the user misconfigured
		// fails the request with nothing left behind.
		secret, _, err := fileSecret(ctx, s.Deps, params.Encryption, req.GetSecrets(), req.GetParameters()[request.PVCNamespaceKey], true)
		if err != nil {
			return nil, err
		}
		clear(secret)
	}

	f, err := openFSByName(s.Deps, params.ClusterID, params.FsName, creds)
	if err != nil {
		return nil, err
	}
	defer f.close()
	if params.Pool != "" && !f.fs.hasDataPool(params.Pool) {
		return nil, csierr.Param("pool", "%q is not a data pool of filesystem %s (%v)", params.Pool, f.fs.Name, f.fs.DataPools)
	}
	digest := request.Digest(req.GetParameters(), "volume", strconv.FormatInt(size, 10),
		strconv.FormatInt(req.GetCapacityRange().GetLimitBytes(), 10), request.SourceOf(req.GetVolumeContentSource()))
	var entry *journal.Entry
	cloned := false
	if req.GetVolumeContentSource() != nil {
		// A retry of a clone still copying is answered from the clone's
		// state alone (with --clonewait the full path waits for it
		// instead), before the source is read. A volume without a source
		// has nothing to read first: provisionVolume claims its name.
		began := time.Now()
		entry, err = s.volumes.Lookup(f.store(), name)
		if metrics.Step(metrics.CephFS, metrics.StepJournalLookup, began, err) != nil {
			return nil, err
		}
		if entry != nil && entry.Request == digest && !params.BackingSnapshot && s.Options.CloneWait == 0 {
			if cloned, err = s.cloneInFlight(f, entry); err != nil {
				return nil, err
			}
		}
	}
	entry, src, res, err := s.provisionVolume(ctx, f, name, entry, digest, params, req, size, cloned)
	if err != nil {
		return nil, err
	}
	volumeID, err := volid.ID{ClusterID: params.ClusterID, LocationID: f.fs.ID, UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "clusterID %q: %v", params.ClusterID, err)
	}
	if s.Options.SetMetadata && !params.BackingSnapshot {
		if err := f.setMetadata(ctx, entry.ImageName, "", request.VolumeMetadata(req.GetParameters(), s.Options.ClusterName)); err != nil {
			return nil, err
		}
	}
	vc := request.PassThrough(req.GetParameters())
	vc["clusterID"] = params.ClusterID
	vc["fsName"] = f.fs.Name
	vc["subvolumeName"] = entry.ImageName
	vc["subvolumePath"] = res.path
	if params.BackingSnapshot {
		vc["subvolumeName"] = src.snapshot.Source
		vc["backingSnapshotID"] = entry.BackingSnapshotID
	}
	var accessible []*csi.Topology
	if place != nil {
		accessible = []*csi.Topology{{Segments: place.Segments}}
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           volumeID,
		CapacityBytes:      res.size,
		VolumeContext:      vc,
		ContentSource:      req.GetVolumeContentSource(),
		AccessibleTopology: accessible,
	}}, nil
}

// provisionVolume checks the content source and makes (or finishes) the
// volume of request name: entry is its journal entry, nil when the name is
// not looked up yet (then claimed here). cloned says that entry's clone,
// started by this same request, is complete (see resolveSource).
func (s *ControllerServer) provisionVolume(ctx context.Context, f *fsConn, name string, entry *journal.Entry, digest string,
	params *volumeParams, req *csi.CreateVolumeRequest, size int64, cloned bool) (*journal.Entry, *contentSource, *provisioned, error) {
	src, err := s.resolveSource(f, req.GetVolumeContentSource(), params.ClusterID, cloned)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := checkSourceEncryption(src, params.Encryption, request.SourceOf(req.GetVolumeContentSource())); err != nil {
		return nil, nil, nil, err
	}
	if src != nil && !params.BackingSnapshot && src.size > size {
		return nil, nil, nil, csierr.Errorf(csierr.ErrOutOfRange, "requested size %d is smaller than the source's %d", size, src.size)
	}
	backingID := ""
	if params.BackingSnapshot {
		backingID = src.snapshotID
	}
	fresh := false
	if entry == nil {
		template := journal.Entry{BackingSnapshotID: backingID, Request: digest, Owner: req.GetParameters()[request.PVCNamespaceKey]}
		if params.Encryption != nil {
			template.KMSID, template.EncryptionType = kms.JournalID(params.Encryption.KMSID), encryptionTypeFile
		}
		began := time.Now()
		entry, fresh, err = s.volumes.Claim(f.store(), name, params.NamePrefix, template)
		if metrics.Step(metrics.CephFS, metrics.JournalStep(fresh), began, err) != nil {
			return nil, nil, nil, err
		}
	}
	switch {
	case fresh:
		failpoint.Hit("cephfs-create-volume-after-reserve")
	case entry.Request != "" && entry.Request != digest:
		return nil, nil, nil, csierr.Errorf(csierr.ErrExists, "volume %q exists, made by a request with other parameters, size or content source", name)
	case entry.BackingSnapshotID != backingID:
		return nil, nil, nil, csierr.Errorf(csierr.ErrExists, "volume %q exists with backing snapshot %q, not %q", name, entry.BackingSnapshotID, backingID)
	}
	volumeID, err := volid.ID{ClusterID: params.ClusterID, LocationID: f.fs.ID, UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, nil, nil, csierr.Errorf(csierr.ErrInvalid, "clusterID %q: %v", params.ClusterID, err)
	}
	var res *provisioned
	started := false
	if params.BackingSnapshot {
		res, err = s.provisionBacking(f, volumeID, src)
	} else {
		res, started, err = s.provisionSubvolume(ctx, f, entry, fresh, params.Pool, req.GetCapacityRange(), size, src)
	}
	if err != nil {
		// A running clone is kept for the retry; a volume an earlier call
		// made is kept unless its clone failed.
		if !errors.Is(err, csierr.ErrInProgress) && (fresh || started || errors.Is(err, errCloneFailed)) {
			s.undoCreate(ctx, f, entry, volumeID, src)
		}
		return nil, nil, nil, err
	}
	return entry, src, res, nil
}

// cloneInFlight answers a repeated CreateVolume of a clone this driver
// started (its entry carries this request's digest, so source, size and
// parameters were checked when it began) while the copy runs: one manager
// command per retry, as a client polling the clone would make, instead of
// reading the source and the new subvolume again each time. It returns
// ErrInProgress while the clone copies; otherwise the full path decides,
// told with complete that the copy finished, so that it reads the source's
// journal entry only. (The manager names no source for a complete clone,
// hence the order of the cases.)
func (s *ControllerServer) cloneInFlight(f *fsConn, entry *journal.Entry) (complete bool, err error) {
	st, err := f.admin.CloneStatus(f.fs.Name, f.group, entry.ImageName)
	switch {
	case err != nil:
		return false, nil
	case st.State == admin.CloneComplete:
		return true, nil
	case st.Source.SubVolume == "":
		return false, nil
	}
	if err := cloneProgress(entry.ImageName, st); errors.Is(err, csierr.ErrInProgress) {
		return false, err
	}
	return false, nil
}

// growClone grows a clone (which has its source's quota) to size.
func (f *fsConn) growClone(name string, have, size int64) (int64, error) {
	if have >= size {
		return have, nil
	}
	if _, err := f.admin.ResizeSubVolume(f.fs.Name, f.group, name, admin.ByteCount(size), true); err != nil {
		return 0, fmt.Errorf("growing clone %s to %d bytes: %w", name, size, err)
	}
	return size, nil
}

// provisionSubvolume makes the subvolume of entry, or checks and finishes the
// one an earlier call made. started says whether this call started it.
func (s *ControllerServer) provisionSubvolume(ctx context.Context, f *fsConn, entry *journal.Entry, fresh bool, pool string, r *csi.CapacityRange, size int64,
	src *contentSource) (res *provisioned, started bool, err error) {
	name := entry.ImageName
	// A reservation just made has a new UUID, which names no subvolume yet:
	// nothing to look at.
	var info *admin.SubVolumeInfo
	err = errNoSubvolumeYet
	if !fresh {
		info, err = f.admin.SubVolumeInfo(f.fs.Name, f.group, name)
	}
	switch {
	case csierr.IsNotFound(err):
		started = true
		if src == nil {
			began := time.Now()
			if err := metrics.Step(metrics.CephFS, metrics.StepCreate, began, f.createSubvolume(name, size, pool)); err != nil {
				return nil, started, err
			}
			if info, err = f.subvolumeInfo(name); err != nil {
				return nil, started, err
			}
			return &provisioned{path: info.Path, size: quotaBytes(info)}, started, nil
		}
		began := time.Now()
		if err := metrics.Step(metrics.CephFS, metrics.StepClone, began, startClone(f, name, pool, src)); err != nil {
			return nil, started, err
		}
		info = nil
	case csierr.IsErrno(err, syscall.EAGAIN):
		// Only a clone that has not completed refuses `subvolume info`.
		info = nil
		if src == nil {
			return nil, false, csierr.Errorf(csierr.ErrExists, "volume %q exists as a clone, without a content source in this request", entry.RequestName)
		}
	case err != nil:
		return nil, false, fmt.Errorf("reading subvolume %s: %w", name, err)
	case info.State == admin.StateSnapRetained:
		return nil, false, fmt.Errorf("subvolume %s of volume %q was deleted; only its snapshots remain", name, entry.RequestName)
	case (info.Type == "clone") != (src != nil):
		return nil, false, csierr.Errorf(csierr.ErrExists, "volume %q exists as a %s, which does not match this request's content source", entry.RequestName, info.Type)
	}
	if src != nil && info == nil {
		if err := s.awaitClone(ctx, f, entry, src); err != nil {
			return nil, started, err
		}
		if info, err = f.subvolumeInfo(name); err != nil {
			return nil, started, err
		}
	}
	have := quotaBytes(info)
	if src != nil {
		if src.volume != "" {
			// The temporary snapshot on the source volume has done its job.
			if err := f.removeSnapshot(src.volume, name); err != nil {
				return nil, started, err
			}
		}
		if have, err = f.growClone(name, have, size); err != nil {
			return nil, started, err
		}
	}
	if !request.Fits(have, r) {
		return nil, started, csierr.Errorf(csierr.ErrExists, "volume %q exists with size %d, which does not fit the requested capacity range", entry.RequestName, have)
	}
	return &provisioned{path: info.Path, size: have}, started, nil
}

// errNoSubvolumeYet stands for the subvolume info of a new reservation.
var errNoSubvolumeYet = fmt.Errorf("new reservation: %w", csierr.ErrNotFound)

// A clone's state is read every clonePollFirst for the first
// clonePollQuick (a small copy is done within a few MDS ticks), then less
// often, up to every clonePollMax.
const (
	clonePollFirst = 20 * time.Millisecond
	clonePollQuick = time.Second
	clonePollMax   = time.Second
)

// clonePollAfter is the wait before the next read of a clone's state when
// waited has passed since the first.
func clonePollAfter(waited, last time.Duration) time.Duration {
	if waited < clonePollQuick {
		return clonePollFirst
	}
	return min(max(last*3/2, clonePollFirst), clonePollMax)
}

// awaitClone reads the state of the clone of entry until it is complete,
// for at most --clonewait (and never past the call's deadline); a copy
// still running then is Aborted, for the caller to retry.
func (s *ControllerServer) awaitClone(ctx context.Context, f *fsConn, entry *journal.Entry, src *contentSource) error {
	name := entry.ImageName
	sub, snap := src.origin(name)
	start := time.Now()
	deadline := start.Add(s.Options.CloneWait)
	if d, ok := ctx.Deadline(); ok && d.Add(-time.Second).Before(deadline) {
		deadline = d.Add(-time.Second)
	}
	var interval time.Duration
	for {
		st, err := f.admin.CloneStatus(f.fs.Name, f.group, name)
		if err != nil {
			return fmt.Errorf("reading the clone status of %s: %w", name, err)
		}
		if st.Source.SubVolume != "" && (st.Source.SubVolume != sub || st.Source.Snapshot != snap) {
			return csierr.Errorf(csierr.ErrExists, "volume %q is being cloned from %s@%s, not %s@%s",
				entry.RequestName, st.Source.SubVolume, st.Source.Snapshot, sub, snap)
		}
		err = cloneProgress(name, st)
		interval = clonePollAfter(time.Since(start), interval)
		if !errors.Is(err, csierr.ErrInProgress) || time.Now().Add(interval).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(interval):
		}
	}
}

// undoCreate removes what a failed CreateVolume made, so nothing leaks.
func (s *ControllerServer) undoCreate(ctx context.Context, f *fsConn, entry *journal.Entry, volumeID string, src *contentSource) {
	logger := klog.FromContext(ctx)
	if entry.BackingSnapshotID != "" {
		if _, err := (refTracker{f.io}).remove(backingRefObject(entry.BackingSnapshotID), []string{volumeID}, nil); err != nil {
			logger.Error(err, "dropping the snapshot reference of a failed create", "volume", volumeID)
			return
		}
	} else {
		cloneSrc, err := f.removeSubvolume(entry.ImageName)
		if err != nil {
			logger.Error(err, "cleaning up after a failed create", "subvolume", entry.ImageName)
			return // keep the journal entry so a retry or delete can finish
		}
		tempOn := ""
		if src != nil && src.volume != "" {
			tempOn = src.volume
		} else if cloneSrc != nil && cloneSrc.Snapshot == entry.ImageName {
			tempOn = cloneSrc.SubVolume
		}
		if tempOn != "" {
			if err := f.removeSnapshot(tempOn, entry.ImageName); err != nil {
				logger.Error(err, "removing the temporary snapshot of a failed clone", "subvolume", tempOn)
				return
			}
		}
	}
	if err := s.volumes.Release(f.store(), entry); err != nil {
		logger.Error(err, "cleaning up the journal after a failed create", "uuid", entry.UUID)
	}
}

// volumeRef is a volume found by its ID.
type volumeRef struct {
	f     *fsConn
	id    volid.ID
	entry *journal.Entry // nil when the journal has no entry
	name  string         // subvolume name
}

func (r *volumeRef) backing() bool { return r.entry != nil && r.entry.BackingSnapshotID != "" }

// findVolume opens the filesystem of a volume ID and reads its journal
// entry; a volume the journal does not know is not ours to touch
// (journal.ErrNotFound).
func (s *ControllerServer) findVolume(field, volumeID string, secrets map[string]string) (*volumeRef, error) {
	if volumeID == "" {
		return nil, csierr.Field(field, "is required")
	}
	creds, err := provisionerCredentials(secrets)
	if err != nil {
		return nil, err
	}
	id, err := volid.Decode(volumeID)
	if err != nil {
		return nil, err
	}
	f, err := openFS(s.Deps, id.ClusterID, "", id.LocationID, creds)
	if err != nil {
		return nil, err
	}
	entry, err := s.volumes.Get(f.store(), id.UUID)
	if err != nil {
		f.close()
		return nil, err
	}
	return &volumeRef{f: f, id: id, entry: entry, name: entry.ImageName}, nil
}

// existingVolume is findVolume for calls on a volume that must exist: an
// ID that cannot name one of ours is NotFound.
func (s *ControllerServer) existingVolume(field, volumeID string, secrets map[string]string) (*volumeRef, error) {
	ref, err := s.findVolume(field, volumeID, secrets)
	if err != nil {
		return nil, notFoundVolume(volumeID, err)
	}
	return ref, nil
}

// notFoundVolume maps lookup failures of an existing-volume call to NotFound.
func notFoundVolume(volumeID string, err error) error {
	if errors.Is(err, volid.ErrMalformed) || errors.Is(err, errFSNotFound) || csierr.IsNotFound(err) {
		return csierr.Errorf(csierr.ErrNotFound, "volume %q not found: %v", volumeID, err)
	}
	return err
}

// DeleteVolume implements csi.ControllerServer.
func (s *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	volumeID := req.GetVolumeId()
	ref, err := s.findVolume("volume_id", volumeID, req.GetSecrets())
	switch {
	case errors.Is(err, volid.ErrMalformed), errors.Is(err, errFSNotFound), errors.Is(err, journal.ErrNotFound):
		// Not an ID of ours, its filesystem is gone, or the journal does not
		// know it: nothing of ours is left to delete.
		klog.FromContext(ctx).Info("deleting a volume that cannot exist", "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	case err != nil:
		return nil, err
	}
	f := ref.f
	defer f.close()
	// A concurrent CreateVolume of the same name must not see it half-deleted.
	releaseName, err := s.Lock(locks.VolumeName(ref.entry.RequestName))
	if err != nil {
		return nil, err
	}
	defer releaseName()
	if ref.backing() {
		if err := s.unrefBackingSnapshot(ctx, f, ref.entry.BackingSnapshotID, volumeID); err != nil {
			return nil, err
		}
	} else {
		began := time.Now()
		cloneSrc, err := f.removeSubvolume(ref.name)
		if metrics.Step(metrics.CephFS, metrics.StepRemove, began, err) != nil {
			return nil, err
		}
		if cloneSrc != nil && cloneSrc.Snapshot == ref.name {
			// A PVC clone cut short: its temporary snapshot on the source goes too.
			if err := f.removeSnapshot(cloneSrc.SubVolume, ref.name); err != nil {
				return nil, err
			}
		}
	}
	failpoint.Hit("cephfs-delete-volume-before-release")
	began := time.Now()
	if err := metrics.Step(metrics.CephFS, metrics.StepJournalRelease, began, s.volumes.Release(f.store(), ref.entry)); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume implements csi.ControllerServer. The quota is the
// size; nothing is left for the node to do.
func (s *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	size, err := request.ExpandSize(req)
	if err != nil {
		return nil, err
	}
	ref, err := s.existingVolume("volume_id", req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer ref.f.close()
	if ref.backing() {
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume %q is a read-only snapshot-backed volume and cannot be expanded", req.GetVolumeId())
	}
	info, err := ref.f.subvolumeInfo(ref.name)
	if err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	have := quotaBytes(info)
	if size > have {
		if _, err := ref.f.admin.ResizeSubVolume(ref.f.fs.Name, ref.f.group, ref.name, admin.ByteCount(size), true); err != nil {
			return nil, fmt.Errorf("resizing %s to %d bytes: %w", ref.name, size, err)
		}
		have = size
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: have, NodeExpansionRequired: false}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (s *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Field("volume_id", "is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, csierr.Field("volume_capabilities", "is required")
	}
	ref, err := s.existingVolume("volume_id", req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer ref.f.close()
	if ref.backing() {
		if _, err := s.findBackingSnapshot(ref.f, ref.entry.BackingSnapshotID); err != nil {
			return nil, notFoundVolume(req.GetVolumeId(), err)
		}
		if !request.ReadOnlyModes(req.GetVolumeCapabilities()) {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: "a snapshot-backed volume supports reader-only access modes only"}, nil
		}
	} else if _, err := ref.f.subvolumeInfo(ref.name); err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	if err := request.ValidateCapabilities(req.GetVolumeCapabilities(), true); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// subvolumeRoot is the directory that holds a subvolume's data directory and
// its snapshots, in the mgr volumes module's layout.
func subvolumeRoot(group, subvolume, dataPath string) string {
	if dataPath != "" {
		return path.Dir(dataPath)
	}
	return path.Join("/volumes", group, subvolume)
}
