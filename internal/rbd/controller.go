// Package rbd implements the CSI controller and node services for RBD
// images.
package rbd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
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

// ControllerServer serves the CSI controller service for RBD.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	*service.Deps
	volumes   *journal.Journal
	snapshots *journal.Journal
	// connect opens a cluster; unit tests replace it with a fake.
	connect func(clusterID string, creds cephconn.Credentials) (*config.Cluster, cluster, error)
}

// NewControllerServer returns a controller that uses d.
func NewControllerServer(d *service.Deps) *ControllerServer {
	s := &ControllerServer{Deps: d,
		volumes:   journal.Volumes(d.Options.InstanceID),
		snapshots: journal.Snapshots(d.Options.InstanceID)}
	s.connect = func(clusterID string, creds cephconn.Credentials) (*config.Cluster, cluster, error) {
		cl, conn, err := d.Connect(clusterID, creds)
		if err != nil {
			return nil, nil, err
		}
		return cl, &radosCluster{conn: conn, namespace: cl.RBD.RadosNamespace}, nil
	}
	return s
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

// target is the pool a request works in, opened.
type target struct {
	config *config.Cluster
	c      cluster
	p      pool
}

func (t *target) close() {
	t.p.Close()
	t.c.Close()
}

// openTarget connects to clusterID and opens a pool by name (or by ID when
// name is ""). A missing pool is errPoolNotFound.
func (s *ControllerServer) openTarget(clusterID, name string, id int64, creds cephconn.Credentials) (*target, error) {
	cl, c, err := s.connect(clusterID, creds)
	if err != nil {
		return nil, err
	}
	p, err := c.OpenPool(name, id)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &target{config: cl, c: c, p: p}, nil
}

// remover returns the image remover of t, which proves a leftover
// snapshot ours through the journals of t's pool, or by its name when it
// is one of known (snapshots the caller knows it took).
func (s *ControllerServer) remover(t *target, known ...string) *remover {
	return &remover{c: t.c, p: t.p, owned: func(snap string) (bool, error) {
		for _, k := range known {
			if snap == k {
				return true, nil
			}
		}
		return s.ownSnapshot(t.p, snap)
	}}
}

// ownSnapshot reports whether a user snapshot found on one of our images
// is a temporary snapshot of ours: its name is that of a volume's -temp
// image or of a snapshot image, and the journal has that volume or
// snapshot.
func (s *ControllerServer) ownSnapshot(p pool, snap string) (bool, error) {
	uuid, ok := uuidOfName(snap)
	if !ok {
		return false, nil
	}
	for _, j := range []*journal.Journal{s.volumes, s.snapshots} {
		e, err := j.Find(p.Journal(), uuid)
		if err != nil {
			return false, err
		}
		if e != nil && (snap == e.ImageName || snap == e.ImageName+tempSuffix) {
			return true, nil
		}
	}
	return false, nil
}

// CreateVolume implements csi.ControllerServer.
func (s *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, csierr.Field("name", "is required")
	}
	if err := request.ValidateCapabilities(req.GetVolumeCapabilities(), false); err != nil {
		return nil, err
	}
	params, err := parseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	size, err := request.RoundedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	place, err := placeVolume(params, req)
	if err != nil {
		return nil, err
	}
	t, err := s.openTarget(params.ClusterID, params.Pool, 0, creds)
	if errors.Is(err, errPoolNotFound) {
		return nil, csierr.Param("pool", "%q does not exist in cluster %q", params.Pool, params.ClusterID)
	}
	if err != nil {
		return nil, err
	}
	defer t.close()
	if params.RadosNamespace != "" && params.RadosNamespace != t.config.RBD.RadosNamespace {
		// Volume IDs do not carry the namespace: DeleteVolume finds it only
		// through config.json, so a different one here would leak the image.
		return nil, csierr.Param("radosNamespace", "%q differs from config.json's rbd.radosNamespace %q for cluster %q",
			params.RadosNamespace, t.config.RBD.RadosNamespace, params.ClusterID)
	}
	if params.DataPool != "" {
		if ok, err := t.p.HasPool(params.DataPool); err != nil || !ok {
			return nil, csierr.Param("dataPool", "pool %q does not exist in cluster %q (%v)", params.DataPool, params.ClusterID, err)
		}
	}
	src, err := s.resolveSource(req.GetVolumeContentSource(), params.ClusterID, creds, size)
	if err != nil {
		return nil, err
	}
	if src != nil {
		defer src.close()
	}
	if err := checkSourceEncryption(src, params.Encryption); err != nil {
		return nil, err
	}
	owner := req.GetParameters()[request.PVCNamespaceKey]
	var volKMS kms.KMS
	if params.Encryption != nil {
		// Built before anything is made: a KMS the user misconfigured fails
		// the request with nothing left behind.
		if volKMS, err = s.volumeKMS(ctx, params.Encryption.KMSID, req.GetSecrets(), owner, true); err != nil {
			return nil, err
		}
	}
	digest := request.Digest(req.GetParameters(), "volume", strconv.FormatInt(size, 10),
		strconv.FormatInt(req.GetCapacityRange().GetLimitBytes(), 10), request.SourceOf(req.GetVolumeContentSource()))

	template := journal.Entry{Request: digest, Owner: owner}
	if params.Encryption != nil {
		template.KMSID, template.EncryptionType = kms.JournalID(params.Encryption.KMSID), encryptionTypeBlock
	}
	began := time.Now()
	entry, fresh, err := s.volumes.Claim(t.p.Journal(), name, params.NamePrefix, template)
	if metrics.Step(metrics.RBD, metrics.JournalStep(fresh), began, err) != nil {
		return nil, err
	}
	if fresh {
		failpoint.Hit("create-volume-after-reserve")
	} else if entry.Request != "" && entry.Request != digest {
		return nil, csierr.Errorf(csierr.ErrExists, "volume %q exists, made by a request with other parameters, size or content source", name)
	}
	var have int64
	created := fresh
	meta := request.VolumeMetadata(req.GetParameters(), s.Options.ClusterName)
	if fresh {
		have, err = s.newVolume(ctx, t, entry, params, size, src, meta)
	} else {
		have, created, err = s.finishVolume(ctx, t, entry, params, size, req.GetCapacityRange(), src)
	}
	var volumeID string
	if err == nil {
		volumeID, err = volid.ID{ClusterID: params.ClusterID, LocationID: t.p.ID(), UUID: entry.UUID}.Encode()
	}
	if err == nil {
		err = s.setupEncryption(ctx, t, entry, volKMS, src, volumeID, req.GetSecrets())
	}
	if err == nil && !fresh {
		// A new image got its names in newVolume.
		err = s.recordMetadata(t.p, entry, meta, src != nil)
	}
	if err != nil {
		// Only what this call began is undone: a volume an earlier call made
		// is never removed by a failing retry.
		if created && !errors.Is(err, csierr.ErrInProgress) {
			s.undoCreate(ctx, t, s.volumes, entry)
		}
		return nil, err
	}
	resp, err := s.volumeResponse(t, params, entry, have, req)
	if err == nil && place != nil {
		resp.Volume.AccessibleTopology = []*csi.Topology{{Segments: place.Segments}}
	}
	return resp, err
}

// placeVolume applies topologyConstrainedPools: with accessibility
// requirements in the request, the pool (and data pool) serving them
// replaces the StorageClass's. It returns the choice, nil without one.
func placeVolume(params *volumeParams, req *csi.CreateVolumeRequest) (*topology.Choice, error) {
	pools, err := topology.ParsePools(req.GetParameters()["topologyConstrainedPools"])
	if err != nil {
		return nil, err
	}
	choice, err := topology.Select(pools, req.GetAccessibilityRequirements())
	if err != nil || choice == nil {
		return nil, err
	}
	if err := request.ValidPoolName("topologyConstrainedPools", choice.Pool); err != nil {
		return nil, err
	}
	params.Pool = choice.Pool
	if choice.DataPool != "" {
		if err := request.ValidPoolName("topologyConstrainedPools", choice.DataPool); err != nil {
			return nil, err
		}
		params.DataPool = choice.DataPool
	}
	return choice, nil
}

// newVolume makes the image of an entry just reserved: its UUID is new, so
// no image can exist yet and nothing needs checking. The size is what was
// made; the image ID is read from its rbd_id object instead of opening the
// image, then written to the journal while the metadata kv goes onto the
// image (two objects, at once).
func (s *ControllerServer) newVolume(ctx context.Context, t *target, entry *journal.Entry, params *volumeParams, size int64,
	src *contentSource, kv map[string]string) (int64, error) {
	if err := s.createImage(ctx, t, entry, params, size, src); err != nil {
		return 0, err
	}
	id, err := t.p.ImageID(entry.ImageName)
	if err != nil {
		return 0, fmt.Errorf("reading the ID of the new image %s: %w", imageSpec(t.p, entry.ImageName), err)
	}
	entry.ImageID = id
	err = both(func() error { return s.volumes.SetImageID(t.p.Journal(), entry.UUID, id) },
		func() error { return s.recordMetadata(t.p, entry, kv, src != nil) })
	if err != nil {
		return 0, err
	}
	return size, nil
}

// both runs a and b at once (writes to two objects that do not depend on
// each other: two round trips in the time of one) and returns the first
// error.
func both(a, b func() error) error {
	errB := make(chan error, 1)
	go func() { errB <- b() }()
	errA := a()
	if err := <-errB; errA == nil {
		errA = err
	}
	return errA
}

// finishVolume makes the image of entry, or checks and finishes one an
// earlier call left, and returns its size; created says whether this call
// began making it. Every step accepts what an interrupted try left, so a
// retried request converges.
func (s *ControllerServer) finishVolume(ctx context.Context, t *target, entry *journal.Entry, params *volumeParams, size int64,
	r *csi.CapacityRange, src *contentSource) (have int64, created bool, err error) {
	img, err := t.p.OpenImage(entry.ImageName, true)
	switch {
	case csierr.IsNotFound(err):
		created = true
		if err := s.createImage(ctx, t, entry, params, size, src); err != nil {
			return 0, created, err
		}
		if img, err = t.p.OpenImage(entry.ImageName, true); err != nil {
			return 0, created, fmt.Errorf("opening the new image %s: %w", imageSpec(t.p, entry.ImageName), err)
		}
	case err != nil:
		return 0, false, fmt.Errorf("opening image %s: %w", imageSpec(t.p, entry.ImageName), err)
	default:
		klog.FromContext(ctx).V(2).Info("volume exists", "image", entry.ImageName)
		if entry.Request == "" {
			// Made by another driver: compare what can be seen.
			if err := matchExisting(t.p, img, entry, size, src); err != nil {
				img.Close()
				return 0, false, err
			}
		}
	}
	defer img.Close()
	have, err = s.completeImage(t, img, entry, size, r, src)
	if err == nil && !created && src != nil {
		err = s.requeueFlattens(ctx, t, img, src)
	}
	return have, created, err
}

// requeueFlattens queues again, for a retry that finds a clone made, the
// background flattens its create asks for: the earlier try may have
// stopped before queueing them. They are judged on the chain and the
// source as they are now.
func (s *ControllerServer) requeueFlattens(ctx context.Context, t *target, img image, src *contentSource) error {
	depth, err := cloneDepth(t.c, img)
	if err != nil {
		return err
	}
	flattenTemp := false
	if src.snapshot == nil {
		snaps, err := src.img.Snapshots()
		if err != nil {
			return fmt.Errorf("listing the snapshots of %s: %w", imageSpec(src.t.p, src.image), err)
		}
		// The count includes the snapshot this clone's -temp holds.
		flattenTemp = uint(len(snaps)) > s.Options.MinSnapsOnImage
	}
	return s.queueFlattens(ctx, t, img.Name(), depth, flattenTemp)
}

// completeImage does the last steps of a create on the open image: grow a
// clone to the requested size, check the size fits, record the image ID.
func (s *ControllerServer) completeImage(t *target, img image, entry *journal.Entry, size int64, r *csi.CapacityRange, src *contentSource) (int64, error) {
	have, err := img.Size()
	if err != nil {
		return 0, err
	}
	if int64(have) < size {
		// A clone grown to the requested size only after the clone: an
		// earlier try stopped in between.
		if src == nil {
			return 0, csierr.Errorf(csierr.ErrExists, "volume %q exists with size %d, not %d", entry.RequestName, have, size)
		}
		if err := growImage(t.p, entry.ImageName, uint64(size)); err != nil {
			return 0, err
		}
		have = uint64(size)
	}
	if !request.Fits(int64(have), r) {
		return 0, csierr.Errorf(csierr.ErrExists, "volume %q exists with size %d, outside the requested range", entry.RequestName, have)
	}
	if entry.ImageID == "" {
		id, err := img.ID()
		if err != nil {
			return 0, err
		}
		if err := s.volumes.SetImageID(t.p.Journal(), entry.UUID, id); err != nil {
			return 0, err
		}
		entry.ImageID = id
	}
	return int64(have), nil
}

// recordMetadata writes the Kubernetes names of --setmetadata on the image
// of entry (repeated retries write the same). A clone starts with its
// parent's metadata, names of another PVC or snapshot, which are dropped;
// an image that is no clone and gets no names needs no write.
func (s *ControllerServer) recordMetadata(p pool, entry *journal.Entry, kv map[string]string, clone bool) error {
	if !s.Options.SetMetadata || (len(kv) == 0 && !clone) {
		return nil
	}
	if err := p.SetImageMetadata(entry.ImageID, kv, request.MetadataKeys()); err != nil {
		return fmt.Errorf("recording metadata on %s: %w", imageSpec(p, entry.ImageName), err)
	}
	return nil
}

// matchExisting compares a volume made by another driver (its journal entry
// has no request digest) with a repeated request: same size, and a parent
// that fits the content source (for a PVC clone, its -temp image's parent).
// A flattened image has no parent left to compare and is accepted.
func matchExisting(p pool, img image, entry *journal.Entry, size int64, src *contentSource) error {
	have, err := img.Size()
	if err != nil {
		return err
	}
	if int64(have) != size {
		return csierr.Errorf(csierr.ErrExists, "volume %q exists with size %d, not %d", entry.RequestName, have, size)
	}
	parent, err := img.Parent()
	if err != nil {
		return err
	}
	switch {
	case parent == nil:
		return nil
	case src == nil:
		return csierr.Errorf(csierr.ErrExists, "volume %q exists as a clone of %s, and this request has no content source", entry.RequestName, parent.Image)
	}
	if src.snapshot == nil {
		if parent.Image != img.Name()+tempSuffix {
			return csierr.Errorf(csierr.ErrExists, "volume %q exists as a clone of %s, not of its -temp image", entry.RequestName, parent.Image)
		}
		// The -temp image says which volume it was cloned from.
		temp, err := p.OpenImageByID(parent.ImageID, true)
		if err != nil {
			return fmt.Errorf("opening %s: %w", imageSpec(p, parent.Image), err)
		}
		defer temp.Close()
		if parent, err = temp.Parent(); err != nil || parent == nil {
			return err
		}
	}
	if want := src.parentImage(); parent.Image != want {
		return csierr.Errorf(csierr.ErrExists, "volume %q exists as a clone of %s, not of %s", entry.RequestName, parent.Image, want)
	}
	return nil
}

// growImage resizes an image to size.
func growImage(p pool, name string, size uint64) error {
	img, err := p.OpenImage(name, false)
	if err != nil {
		return fmt.Errorf("opening %s: %w", imageSpec(p, name), err)
	}
	defer img.Close()
	failpoint.Hit("grow-image-before-resize")
	if err := img.Resize(size); err != nil {
		return fmt.Errorf("growing %s to %d bytes: %w", imageSpec(p, name), size, err)
	}
	return nil
}

// createImage makes the image of entry: empty, or cloned from src (then
// grown to size and, deep in a clone chain, flattened in the background).
func (s *ControllerServer) createImage(ctx context.Context, t *target, entry *journal.Entry, params *volumeParams, size int64, src *contentSource) error {
	if src == nil {
		began := time.Now()
		if err := metrics.Step(metrics.RBD, metrics.StepCreate, began, t.p.CreateImage(entry.ImageName, uint64(size), params.options())); err != nil {
			return fmt.Errorf("creating image %s: %w", imageSpec(t.p, entry.ImageName), err)
		}
		return nil
	}
	var depth int
	var flattenTemp bool
	var err error
	began := time.Now()
	if src.snapshot != nil {
		depth, err = s.restoreSnapshot(ctx, t, entry, params, src)
	} else {
		depth, flattenTemp, err = s.cloneVolume(ctx, t, entry, params, src)
	}
	if metrics.Step(metrics.RBD, metrics.StepClone, began, err) != nil {
		return err
	}
	failpoint.Hit("create-volume-after-clone")
	if size > src.size {
		if err := growImage(t.p, entry.ImageName, uint64(size)); err != nil {
			return err
		}
	}
	return s.queueFlattens(ctx, t, entry.ImageName, depth, flattenTemp)
}

// queueFlattens asks the manager to flatten a new clone in the background
// when it is deeper than the soft limit, and its -temp image when that
// frees a snapshot the source has too many of.
func (s *ControllerServer) queueFlattens(ctx context.Context, t *target, name string, depth int, flattenTemp bool) error {
	logger := klog.FromContext(ctx)
	if depth > int(s.Options.SoftMaxClones) {
		logger.V(2).Info("flattening a deep clone in the background", "image", name, "depth", depth)
		if err := queueFlatten(t.p, name); err != nil {
			return err
		}
	}
	if flattenTemp {
		temp := name + tempSuffix
		logger.V(2).Info("flattening a clone's intermediate image to free a snapshot on its source", "image", temp)
		if err := queueFlatten(t.p, temp); err != nil {
			return err
		}
	}
	return nil
}

// queueFlatten queues a flatten of an image of ours. The manager accepts a
// repeat; ENOENT (no parent left, or no image) is nothing to flatten.
func queueFlatten(p pool, name string) error {
	began := time.Now()
	if err := metrics.Step(metrics.RBD, metrics.StepFlattenQueue, began, p.QueueFlatten(name)); err != nil && !csierr.IsNotFound(err) {
		return fmt.Errorf("queueing a flatten of %s: %w", imageSpec(p, name), err)
	}
	return nil
}

// undoCreate removes what a failed create made (the image, a PVC clone's
// -temp image, then the journal entry), so nothing leaks. When the images
// cannot be removed the entry stays, for a retry or a delete to finish.
func (s *ControllerServer) undoCreate(ctx context.Context, t *target, j *journal.Journal, entry *journal.Entry) {
	logger := klog.FromContext(ctx)
	if _, err := s.removeImages(t, entry.ImageName, entry.ImageID); err != nil {
		logger.Error(err, "cleaning up after a failed create", "image", entry.ImageName)
		return
	}
	if err := j.Release(t.p.Journal(), entry); err != nil {
		logger.Error(err, "cleaning up the journal after a failed create", "uuid", entry.UUID)
	}
}

// removeImages removes an image of ours (id is its ID when the journal has
// it) and its -temp intermediate, then purges the trashed ancestors of
// ours no clone needs any more; found says whether the image was still
// there. An image still open (a node's mapping, a manager task) is kept:
// ErrPrecondition.
func (s *ControllerServer) removeImages(t *target, name, id string) (found bool, err error) {
	found, parent, err := s.remover(t).remove(name, id, false)
	if err != nil {
		return found, err
	}
	failpoint.Hit("remove-images-after-image")
	// Only PVC clones have a -temp: its rbd_id object (one read) says
	// whether there is one to remove.
	var tempParent *ancestor
	temp := name + tempSuffix
	tempID, err := t.p.ImageID(temp)
	switch {
	case csierr.IsNotFound(err):
	case err != nil:
		return found, fmt.Errorf("looking for %s: %w", imageSpec(t.p, temp), err)
	default:
		// Its snapshot named after the image is the one the image was
		// cloned from.
		if _, tempParent, err = s.remover(t, name).remove(temp, tempID, true); err != nil {
			return found, err
		}
	}
	purgeAncestors(t.c, parent)
	purgeAncestors(t.c, tempParent)
	return found, nil
}

func (s *ControllerServer) volumeResponse(t *target, params *volumeParams, entry *journal.Entry, size int64, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id, err := volid.ID{ClusterID: params.ClusterID, LocationID: t.p.ID(), UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, csierr.Param("clusterID", "%q: %v", params.ClusterID, err)
	}
	vc := request.PassThrough(req.GetParameters())
	vc["clusterID"] = params.ClusterID
	vc["pool"] = t.p.Name()
	vc["journalPool"] = t.p.Name()
	vc["imageName"] = entry.ImageName
	vc["imageFeatures"] = params.FeatureNames
	vc["imageFormat"] = "2"
	if ns := t.config.RBD.RadosNamespace; ns != "" {
		vc["radosNamespace"] = ns
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      id,
		CapacityBytes: size,
		VolumeContext: vc,
		ContentSource: req.GetVolumeContentSource(),
	}}, nil
}

// volumeRef is a volume found by its ID.
type volumeRef struct {
	*target
	id    volid.ID
	entry *journal.Entry // nil when the journal has no entry
}

// image is the volume's image name.
func (r *volumeRef) image() string {
	if r.entry != nil {
		return r.entry.ImageName
	}
	return request.DefaultVolumePrefix + r.id.UUID
}

// findVolume opens the pool of a volume ID and reads its journal entry. A
// malformed ID is volid.ErrMalformed, a missing pool errPoolNotFound.
func (s *ControllerServer) findVolume(volumeID string, creds cephconn.Credentials) (*volumeRef, error) {
	id, err := volid.Decode(volumeID)
	if err != nil {
		return nil, err
	}
	t, err := s.openTarget(id.ClusterID, "", id.LocationID, creds)
	if err != nil {
		return nil, err
	}
	entry, err := s.volumes.Find(t.p.Journal(), id.UUID)
	if err != nil {
		t.close()
		return nil, err
	}
	return &volumeRef{target: t, id: id, entry: entry}, nil
}

// notFoundVolume names a volume that cannot be found for a call on an
// existing volume: NotFound.
func notFoundVolume(volumeID string, err error) error {
	if errors.Is(err, volid.ErrMalformed) || errors.Is(err, errPoolNotFound) || csierr.IsNotFound(err) {
		return csierr.Errorf(csierr.ErrNotFound, "volume %q not found: %v", volumeID, err)
	}
	return err
}

// DeleteVolume implements csi.ControllerServer. Only a volume the journal
// knows is deleted: an ID whose entry is gone has nothing left of ours.
func (s *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Field("volume_id", "is required")
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, err := s.findVolume(req.GetVolumeId(), creds)
	switch {
	case errors.Is(err, volid.ErrMalformed), errors.Is(err, errPoolNotFound):
		// Not an ID of ours, or its pool is gone: nothing is left to delete.
		klog.FromContext(ctx).Info("deleting a volume that cannot exist", "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	case err != nil:
		return nil, err
	}
	defer ref.close()
	if ref.entry == nil {
		klog.FromContext(ctx).Info("no journal entry for the volume: nothing of ours to delete", "volume", req.GetVolumeId())
		return &csi.DeleteVolumeResponse{}, nil
	}
	// A concurrent CreateVolume of the same name must not see it half-deleted.
	releaseName, err := s.Lock(locks.VolumeName(ref.entry.RequestName))
	if err != nil {
		return nil, err
	}
	defer releaseName()
	began := time.Now()
	found, err := s.removeImages(ref.target, ref.image(), ref.entry.ImageID)
	if metrics.Step(metrics.RBD, metrics.StepRemove, began, err) != nil {
		return nil, err
	}
	if !found {
		// An earlier try removed the image and stopped: trashed ancestors
		// it meant to purge may be left.
		purgeOurTrash(ref.c, ref.p)
	}
	failpoint.Hit("delete-volume-before-release")
	began = time.Now()
	if err := metrics.Step(metrics.RBD, metrics.StepJournalRelease, began, s.volumes.Release(ref.p.Journal(), ref.entry)); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// openVolumeImage finds an existing volume of ours and opens its image;
// anything missing is NotFound. The caller closes both.
func (s *ControllerServer) openVolumeImage(volumeID string, creds cephconn.Credentials, readOnly bool) (*volumeRef, image, error) {
	ref, err := s.findVolume(volumeID, creds)
	if err != nil {
		return nil, nil, notFoundVolume(volumeID, err)
	}
	if ref.entry == nil {
		ref.close()
		return nil, nil, notFoundVolume(volumeID, journal.ErrNotFound)
	}
	img, err := ref.p.OpenImage(ref.image(), readOnly)
	if err != nil {
		ref.close()
		return nil, nil, notFoundVolume(volumeID, err)
	}
	return ref, img, nil
}

// ControllerExpandVolume implements csi.ControllerServer.
func (s *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	size, err := request.ExpandSize(req)
	if err != nil {
		return nil, err
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, img, err := s.openVolumeImage(req.GetVolumeId(), creds, false)
	if err != nil {
		return nil, err
	}
	defer ref.close()
	defer img.Close()
	have, err := img.Size()
	if err != nil {
		return nil, err
	}
	if uint64(size) > have {
		if err := img.Resize(uint64(size)); err != nil {
			return nil, fmt.Errorf("resizing %s to %d: %w", imageSpec(ref.p, ref.image()), size, err)
		}
		have = uint64(size)
	}
	// An encrypted block volume needs the node too: its LUKS mapping does
	// not follow the image by itself.
	block := req.GetVolumeCapability().GetBlock() != nil
	encrypted, err := imageEncrypted(img)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(have), NodeExpansionRequired: !block || encrypted}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (s *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, csierr.Field("volume_id", "is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, csierr.Field("volume_capabilities", "is required")
	}
	creds, err := request.Credentials(req.GetSecrets(), request.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, img, err := s.openVolumeImage(req.GetVolumeId(), creds, true)
	if err != nil {
		return nil, err
	}
	img.Close()
	ref.close()
	if err := request.ValidateCapabilities(req.GetVolumeCapabilities(), false); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}
