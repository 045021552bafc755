package rbd

import (
	"context"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// intermediateOptions are the options of the images a snapshot or PVC
// clone goes through (csi-snap-..., csi-vol-...-temp): layering and
// deep-flatten, so that a flatten frees them and their snapshots from
// their parents.
var intermediateOptions = imageOptions{Features: rbd.FeatureLayering | rbd.FeatureDeepFlatten}

// contentSource is the snapshot or volume a new volume starts from.
type contentSource struct {
	t         *target // the source's cluster and pool
	clusterID string
	// snapshot is set for a snapshot source: the image is its ImageName and
	// the snapshot to clone from has the same name.
	snapshot *journal.Entry
	// image is the source volume's image, for a volume source.
	image string
	size  int64
	// img is a source volume's image, opened read-write once while
	// resolving the source (it gets a temporary snapshot).
	img image
	// facts is what a restore needs of a snapshot's image, read from its
	// header instead of opening it: an open costs a dozen round trips,
	// and as many again for each ancestor, and librbd's clone opens the
	// image once more anyway.
	facts *imageFacts
	// id is the CSI ID of the source (snapshot or volume) and entry its
	// journal entry: an encrypted source's DEK is sealed for that ID by
	// the KMS the entry names.
	id    string
	entry *journal.Entry
}

func (c *contentSource) close() {
	if c.img != nil {
		c.img.Close()
	}
	c.t.close()
}

// Name and Metadata make a source a metadataSource: its image's.
func (c *contentSource) Name() string { return c.parentImage() }

func (c *contentSource) Metadata(key string) (string, error) {
	if c.img != nil {
		return c.img.Metadata(key)
	}
	v, ok := c.facts.Metadata[key]
	if !ok {
		return "", fmt.Errorf("metadata key %s of %s was not read", key, c.parentImage())
	}
	return v, nil
}

// depth is the clone depth of the source's image.
func (c *contentSource) depth() (int, error) {
	if c.img != nil {
		return cloneDepth(c.t.c, c.img)
	}
	return headerDepth(c.t.c, c.facts.Parent)
}

// parentImage is the image the new volume (or its -temp) is cloned from.
func (c *contentSource) parentImage() string {
	if c.snapshot != nil {
		return c.snapshot.ImageName
	}
	return c.image
}

// resolveSource opens the source of a CreateVolume request, checking that
// it exists, lives in the same cluster and is not larger than size.
func (s *ControllerServer) resolveSource(src *csi.VolumeContentSource, clusterID string, creds cephconn.Credentials, size int64) (*contentSource, error) {
	if src == nil {
		return nil, nil
	}
	var c *contentSource
	var err error
	switch {
	case src.GetSnapshot() != nil:
		if src.GetSnapshot().GetSnapshotId() == "" {
			return nil, csierr.Field("volume_content_source.snapshot.snapshot_id", "is required")
		}
		c, err = s.openSnapshotSource(src.GetSnapshot().GetSnapshotId(), creds)
	case src.GetVolume() != nil:
		if src.GetVolume().GetVolumeId() == "" {
			return nil, csierr.Field("volume_content_source.volume.volume_id", "is required")
		}
		c, err = s.openVolumeSource(src.GetVolume().GetVolumeId(), creds)
	default:
		return nil, csierr.Field("volume_content_source", "has an unsupported type")
	}
	if err != nil {
		return nil, err
	}
	if c.clusterID != clusterID {
		c.close()
		return nil, csierr.Errorf(csierr.ErrInvalid, "volume_content_source is in cluster %q, not %q", c.clusterID, clusterID)
	}
	if size < c.size {
		c.close()
		return nil, csierr.Errorf(csierr.ErrOutOfRange, "requested size %d is smaller than the source's %d", size, c.size)
	}
	return c, nil
}

func (s *ControllerServer) openSnapshotSource(snapshotID string, creds cephconn.Credentials) (*contentSource, error) {
	notFound := func(err error) error {
		return csierr.Errorf(csierr.ErrNotFound, "source snapshot %q not found: %v", snapshotID, err)
	}
	id, err := volid.Decode(snapshotID)
	if err != nil {
		return nil, notFound(err)
	}
	t, err := s.openTarget(id.ClusterID, "", id.LocationID, creds)
	if errors.Is(err, errPoolNotFound) || errors.Is(err, config.ErrUnknownCluster) {
		return nil, notFound(err)
	}
	if err != nil {
		return nil, err
	}
	entry, err := s.snapshots.Find(t.p.Journal(), id.UUID)
	if err == nil && entry == nil {
		err = notFound(journal.ErrNotFound)
	}
	if err != nil {
		t.close()
		return nil, err
	}
	c := &contentSource{t: t, clusterID: id.ClusterID, snapshot: entry, id: snapshotID, entry: entry}
	imageID := entry.ImageID
	if imageID == "" {
		imageID, err = t.p.ImageID(entry.ImageName)
	}
	if err == nil {
		c.facts, err = t.p.Describe(imageID, encryptionKeys)
	}
	var info *snapshotInfo
	if err == nil {
		info, err = restoreSnapshotIn(c.facts.Snapshots, entry.ImageName)
	}
	if err != nil {
		c.close()
		if csierr.IsNotFound(err) {
			return nil, notFound(err)
		}
		return nil, err
	}
	c.size = int64(info.Size)
	return c, nil
}

func (s *ControllerServer) openVolumeSource(volumeID string, creds cephconn.Credentials) (*contentSource, error) {
	ref, err := s.findVolume(volumeID, creds)
	if errors.Is(err, config.ErrUnknownCluster) {
		return nil, csierr.Errorf(csierr.ErrNotFound, "source volume %q not found: %v", volumeID, err)
	}
	if err != nil {
		return nil, notFoundVolume(volumeID, err)
	}
	if ref.entry == nil {
		ref.close()
		return nil, notFoundVolume(volumeID, journal.ErrNotFound)
	}
	c := &contentSource{t: ref.target, clusterID: ref.id.ClusterID, image: ref.image(), id: volumeID, entry: ref.entry}
	c.img, err = ref.p.OpenImage(ref.image(), false)
	var size uint64
	if err == nil {
		size, err = c.img.Size()
	}
	if err != nil {
		c.close()
		return nil, notFoundVolume(volumeID, err)
	}
	c.size = int64(size)
	return c, nil
}

// limitDepth enforces the hard clone depth limit for a new image that would
// sit `added` levels below the image name (in t), itself depth clones
// deep: past it that image is flattened first and the call is retried
// (ErrInProgress). It returns the new image's depth.
func (s *ControllerServer) limitDepth(ctx context.Context, t *target, name string, depth, added int) (int, error) {
	if depth+added > int(s.Options.HardMaxClones) {
		if err := t.p.QueueFlatten(name); err != nil {
			return 0, fmt.Errorf("queueing a flatten of %s: %w", imageSpec(t.p, name), err)
		}
		klog.FromContext(ctx).Info("clone chain too deep, flattening the source first", "image", name, "depth", depth)
		return 0, csierr.Errorf(csierr.ErrInProgress, "image %s is %d clones deep (limit %d); it is being flattened, retry later",
			imageSpec(t.p, name), depth, s.Options.HardMaxClones)
	}
	return depth + added, nil
}

// limitSourceDepth is limitDepth for a new image cloned from src.
func (s *ControllerServer) limitSourceDepth(ctx context.Context, src *contentSource, added int) (int, error) {
	depth, err := src.depth()
	if err != nil {
		return 0, err
	}
	return s.limitDepth(ctx, src.t, src.parentImage(), depth, added)
}

// limitChildren applies the snapshot-count limits to a parent image: at the
// maximum its children are flattened and the call is retried later; from the
// minimum on the caller flattens, in the background, the new image that
// holds the new snapshot on the parent (a snapshot image, or a PVC clone's
// -temp image).
func (s *ControllerServer) limitChildren(ctx context.Context, src *target, parent image) (flattenNew bool, err error) {
	// Every snapshot or clone of ours leaves one snapshot (in the trash
	// namespace) on its source. The list comes with the open image, so
	// counting costs no round trip; listing the children does, and is done
	// only when they must be flattened.
	snaps, err := parent.Snapshots()
	if err != nil {
		return false, fmt.Errorf("listing the snapshots of %s: %w", imageSpec(src.p, parent.Name()), err)
	}
	n := uint(len(snaps))
	if n < s.Options.MaxSnapsOnImage {
		return n >= s.Options.MinSnapsOnImage, nil
	}
	children, err := parent.Children()
	if err != nil {
		return false, fmt.Errorf("listing the clones of %s: %w", imageSpec(src.p, parent.Name()), err)
	}
	for _, child := range children {
		if child.Trash || child.Pool != src.p.Name() {
			continue // the clones in this pool free enough snapshots
		}
		if err := src.p.QueueFlatten(child.Image); err != nil {
			return false, fmt.Errorf("queueing a flatten of %s: %w", imageSpec(src.p, child.Image), err)
		}
	}
	klog.FromContext(ctx).Info("too many snapshots on image, flattening its clones", "image", parent.Name(), "snapshots", n)
	return false, csierr.Errorf(csierr.ErrInProgress, "image %s has %d snapshots (limit %d); its clones are being flattened, retry later",
		imageSpec(src.p, parent.Name()), n, s.Options.MaxSnapsOnImage)
}

// restoreSnapshot clones the volume's image from the snapshot image and
// returns the new image's depth.
func (s *ControllerServer) restoreSnapshot(ctx context.Context, t *target, entry *journal.Entry, params *volumeParams, src *contentSource) (int, error) {
	snapImage := src.snapshot.ImageName
	depth, err := s.limitSourceDepth(ctx, src, 1)
	if err != nil {
		return 0, err
	}
	if err := cloneImage(src.t.p, snapImage, snapImage, t.p, entry.ImageName, params.options()); err != nil {
		return 0, err
	}
	return depth, nil
}

// cloneVolume makes a PVC clone: source@tmp -> <name>-temp (the temporary
// snapshot dropped from the source again), then <name>-temp@<name> ->
// <name>. It returns the new image's depth, and whether the source carries
// so many snapshots that -temp, which holds one of them, is to be flattened.
func (s *ControllerServer) cloneVolume(ctx context.Context, t *target, entry *journal.Entry, params *volumeParams,
	src *contentSource) (depth int, flattenTemp bool, err error) {
	temp := entry.ImageName + tempSuffix
	parent := src.img
	if err := refuseWhileFlattening(src.t.p, parent); err != nil {
		return 0, false, err
	}
	if depth, err = s.limitSourceDepth(ctx, src, 2); err != nil {
		return 0, false, err
	}
	if flattenTemp, err = s.limitChildren(ctx, src.t, parent); err != nil {
		return 0, false, err
	}
	if err := cloneThroughSnapshot(src.t.p, parent, temp, t.p, temp, intermediateOptions); err != nil {
		return 0, false, err
	}
	failpoint.Hit("clone-volume-after-temp")
	tempImg, err := t.p.OpenImage(temp, false)
	if err != nil {
		return 0, false, fmt.Errorf("opening %s: %w", imageSpec(t.p, temp), err)
	}
	err = tempImg.CreateSnapshot(entry.ImageName)
	tempImg.Close()
	if err != nil {
		return 0, false, fmt.Errorf("creating snapshot %s@%s: %w", imageSpec(t.p, temp), entry.ImageName, err)
	}
	if err := cloneImage(t.p, temp, entry.ImageName, t.p, entry.ImageName, params.options()); err != nil {
		return 0, false, err
	}
	return depth, flattenTemp, nil
}
