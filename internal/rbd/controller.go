// Package rbd implements the CSI controller and node services for RBD
// images.
package rbd

import (
	"context"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/common"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// ControllerServer serves the CSI controller service for RBD.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	*common.Deps
	volumes   *journal.Journal
	snapshots *journal.Journal
}

// NewControllerServer returns a controller that uses d.
func NewControllerServer(d *common.Deps) *ControllerServer {
	return &ControllerServer{Deps: d,
		volumes:   journal.Volumes(d.Options.InstanceID),
		snapshots: journal.Snapshots(d.Options.InstanceID)}
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (s *ControllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume implements csi.ControllerServer.
func (s *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := common.ValidateCapabilities(req.GetVolumeCapabilities(), false); err != nil {
		return nil, err
	}
	params, err := parseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	size, err := common.RoundedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	release, err := s.Lock("volume-name/" + name)
	if err != nil {
		return nil, err
	}
	defer release()

	pc, err := openPool(s.Deps, params.ClusterID, params.Pool, 0, creds)
	if err != nil {
		return nil, csierr.Status(err)
	}
	defer pc.close()
	if params.RadosNamespace != "" && params.RadosNamespace != pc.cluster.RBD.RadosNamespace {
		// Volume IDs do not carry the namespace: DeleteVolume finds it only
		// through config.json, so a different one here would leak the image.
		return nil, invalidParam("radosNamespace", "%q differs from config.json's rbd.radosNamespace %q for cluster %q",
			params.RadosNamespace, pc.cluster.RBD.RadosNamespace, params.ClusterID)
	}
	if params.DataPool != "" {
		if _, err := pc.conn.GetPoolByName(params.DataPool); err != nil {
			return nil, invalidParam("dataPool", "pool %q: %v", params.DataPool, err)
		}
	}
	src, err := s.resolveSource(ctx, req.GetVolumeContentSource(), params.ClusterID, creds, size)
	if err != nil {
		return nil, err
	}
	if src != nil {
		defer src.close()
	}

	store := pc.store()
	entry, err := s.volumes.Lookup(store, name)
	if err != nil {
		return nil, csierr.Status(err)
	}
	if entry != nil {
		done, err := s.checkExisting(pc, entry, size, src)
		if err != nil {
			return nil, err
		}
		if done {
			return s.volumeResponse(pc, params, entry, size, req)
		}
		// The journal has the name but the image is missing: a crash between
		// reserving and creating. Finish the job under the same UUID.
		klog.FromContext(ctx).Info("repairing a half-created volume", "image", entry.ImageName)
	} else {
		if entry, err = s.volumes.Reserve(store, name, params.NamePrefix, journal.Entry{}); err != nil {
			return nil, csierr.Status(err)
		}
	}
	if err := s.createImage(ctx, pc, entry, params, size, src); err != nil {
		s.undoCreate(ctx, pc, entry)
		return nil, csierr.Status(err)
	}
	return s.volumeResponse(pc, params, entry, size, req)
}

// checkExisting compares an already journaled volume with a repeated request.
// It reports done=false when the image still has to be created.
func (s *ControllerServer) checkExisting(pc *poolConn, entry *journal.Entry, size int64, src *contentSource) (bool, error) {
	img, err := rbd.OpenImageReadOnly(pc.io, entry.ImageName, rbd.NoSnapshot)
	if csierr.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, csierr.Status(fmt.Errorf("opening image %s: %w", entry.ImageName, err))
	}
	defer img.Close()
	have, err := img.GetSize()
	if err != nil {
		return false, csierr.Status(err)
	}
	if int64(have) != size {
		return false, status.Errorf(codes.AlreadyExists, "volume %q exists with size %d, not %d", entry.RequestName, have, size)
	}
	if err := src.matchesParentOf(img); err != nil {
		return false, status.Errorf(codes.AlreadyExists, "volume %q exists with another content source: %v", entry.RequestName, err)
	}
	return true, nil
}

// createImage makes the image for entry: empty, or cloned from src.
func (s *ControllerServer) createImage(ctx context.Context, pc *poolConn, entry *journal.Entry, params *volumeParams, size int64, src *contentSource) error {
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionFormat, 2); err != nil {
		return err
	}
	if err := opts.SetUint64(rbd.ImageOptionFeatures, params.Features); err != nil {
		return err
	}
	if params.DataPool != "" {
		if err := opts.SetString(rbd.ImageOptionDataPool, params.DataPool); err != nil {
			return err
		}
	}
	var err error
	switch {
	case src == nil:
		err = rbd.CreateImage(pc.io, entry.ImageName, uint64(size), opts)
		if err != nil {
			err = fmt.Errorf("creating image %s/%s: %w", pc.name, entry.ImageName, err)
		}
	case src.snapshot != nil:
		err = s.restoreSnapshot(ctx, pc, entry, opts, size, src)
	default:
		err = s.cloneVolume(ctx, pc, entry, opts, size, src)
	}
	if err != nil {
		return err
	}
	id, err := readImageID(pc.io, entry.ImageName)
	if err != nil {
		return err
	}
	entry.ImageID = id
	return s.volumes.SetImageID(pc.store(), entry.UUID, id)
}

// undoCreate removes what a failed CreateVolume made, so nothing leaks.
func (s *ControllerServer) undoCreate(ctx context.Context, pc *poolConn, entry *journal.Entry) {
	logger := klog.FromContext(ctx)
	if err := removeVolumeImages(pc, entry.ImageName, false); err != nil {
		logger.Error(err, "cleaning up after a failed create", "image", entry.ImageName)
		return // keep the journal entry so a retry or delete can finish
	}
	if err := s.volumes.Release(pc.store(), entry); err != nil {
		logger.Error(err, "cleaning up the journal after a failed create", "uuid", entry.UUID)
	}
}

func (s *ControllerServer) volumeResponse(pc *poolConn, params *volumeParams, entry *journal.Entry, size int64, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id, err := volid.ID{ClusterID: params.ClusterID, LocationID: pc.id, UUID: entry.UUID}.Encode()
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "clusterID %q: %v", params.ClusterID, err)
	}
	vc := common.PassThrough(req.GetParameters())
	vc["clusterID"] = params.ClusterID
	vc["pool"] = pc.name
	vc["journalPool"] = pc.name
	vc["imageName"] = entry.ImageName
	vc["imageFeatures"] = params.FeatureNames
	vc["imageFormat"] = "2"
	if ns := pc.cluster.RBD.RadosNamespace; ns != "" {
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
	pc    *poolConn
	id    volid.ID
	entry *journal.Entry // nil when the journal has no entry
	image string
}

// findVolume opens the pool of a volume ID and reads its journal entry.
// errPoolNotFound means the whole pool is gone.
func (s *ControllerServer) findVolume(volumeID string, creds cephconn.Credentials) (*volumeRef, error) {
	id, err := volid.Decode(volumeID)
	if err != nil {
		return nil, err
	}
	pc, err := openPool(s.Deps, id.ClusterID, "", id.LocationID, creds)
	if err != nil {
		return nil, err
	}
	ref := &volumeRef{pc: pc, id: id, image: defaultVolumePrefix + id.UUID}
	entry, err := s.volumes.Get(pc.store(), id.UUID)
	switch {
	case err == nil:
		ref.entry, ref.image = entry, entry.ImageName
	case errors.Is(err, journal.ErrNotFound):
	default:
		pc.close()
		return nil, err
	}
	return ref, nil
}

// DeleteVolume implements csi.ControllerServer.
func (s *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	release, err := s.Lock("volume-id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	ref, err := s.findVolume(req.GetVolumeId(), creds)
	switch {
	case errors.Is(err, volid.ErrMalformed), errors.Is(err, errPoolNotFound):
		// Not an ID of ours, or its pool is gone: nothing is left to delete.
		klog.FromContext(ctx).Info("deleting a volume that cannot exist", "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	case err != nil:
		return nil, csierr.Status(err)
	}
	defer ref.pc.close()
	if ref.entry != nil {
		// A concurrent CreateVolume of the same name must not see it half-deleted.
		releaseName, err := s.Lock("volume-name/" + ref.entry.RequestName)
		if err != nil {
			return nil, err
		}
		defer releaseName()
	}
	if err := removeVolumeImages(ref.pc, ref.image, true); err != nil {
		return nil, csierr.Status(err)
	}
	if ref.entry != nil {
		if err := s.volumes.Release(ref.pc.store(), ref.entry); err != nil {
			return nil, csierr.Status(err)
		}
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume implements csi.ControllerServer.
func (s *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity_range is required")
	}
	size, err := common.RoundedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	release, err := s.Lock("volume-id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer release()
	ref, err := s.findVolume(req.GetVolumeId(), creds)
	if err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	defer ref.pc.close()
	img, err := rbd.OpenImage(ref.pc.io, ref.image, rbd.NoSnapshot)
	if err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	defer img.Close()
	have, err := img.GetSize()
	if err != nil {
		return nil, csierr.Status(err)
	}
	if uint64(size) > have {
		if err := img.Resize(uint64(size)); err != nil {
			return nil, csierr.Status(fmt.Errorf("resizing %s to %d: %w", ref.image, size, err))
		}
		have = uint64(size)
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(have), NodeExpansionRequired: !block}, nil
}

// notFoundVolume maps lookup failures of an existing-volume call to NotFound.
func notFoundVolume(volumeID string, err error) error {
	if errors.Is(err, volid.ErrMalformed) || errors.Is(err, errPoolNotFound) || csierr.IsNotFound(err) {
		return status.Errorf(codes.NotFound, "volume %q not found: %v", volumeID, err)
	}
	return csierr.Status(err)
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (s *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities is required")
	}
	creds, err := common.Credentials(req.GetSecrets(), common.UserSecret)
	if err != nil {
		return nil, err
	}
	ref, err := s.findVolume(req.GetVolumeId(), creds)
	if err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	defer ref.pc.close()
	if _, err := imageSize(ref.pc.io, ref.image); err != nil {
		return nil, notFoundVolume(req.GetVolumeId(), err)
	}
	if err := common.ValidateCapabilities(req.GetVolumeCapabilities(), false); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}
