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
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// tempSuffix names the intermediate image of a PVC clone.
const tempSuffix = "-temp"

// contentSource is the snapshot or volume a new volume starts from.
type contentSource struct {
	pc        *poolConn
	clusterID string
	// snapshot is set for a snapshot source: the image is snapshot.ImageName
	// and the snapshot to clone from has the same name.
	snapshot *journal.Entry
	// image is the source volume's image, for a volume source.
	image string
	size  int64
	// img is the parent image, opened once while resolving the source and
	// used for the depth checks and the clone (read-only for a snapshot,
	// read-write for a volume, which gets a temporary snapshot).
	img *rbd.Image
}

func (c *contentSource) close() {
	if c.img != nil {
		c.img.Close()
	}
	c.pc.close()
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
func (s *ControllerServer) resolveSource(ctx context.Context, src *csi.VolumeContentSource, clusterID string, creds cephconn.Credentials, size int64) (*contentSource, error) {
	if src == nil {
		return nil, nil
	}
	var c *contentSource
	var err error
	switch {
	case src.GetSnapshot() != nil:
		c, err = s.openSnapshotSource(src.GetSnapshot().GetSnapshotId(), creds)
	case src.GetVolume() != nil:
		c, err = s.openVolumeSource(src.GetVolume().GetVolumeId(), creds)
	default:
		return nil, status.Error(codes.InvalidArgument, "volume_content_source: unsupported type")
	}
	if err != nil {
		return nil, err
	}
	if c.clusterID != clusterID {
		c.close()
		return nil, status.Errorf(codes.InvalidArgument, "volume_content_source is in cluster %q, not %q", c.clusterID, clusterID)
	}
	if size < c.size {
		c.close()
		return nil, status.Errorf(codes.OutOfRange, "requested size %d is smaller than the source's %d", size, c.size)
	}
	return c, nil
}

func (s *ControllerServer) openSnapshotSource(snapshotID string, creds cephconn.Credentials) (*contentSource, error) {
	notFound := func(err error) error {
		return status.Errorf(codes.NotFound, "source snapshot %q not found: %v", snapshotID, err)
	}
	id, err := volid.Decode(snapshotID)
	if err != nil {
		return nil, notFound(err)
	}
	pc, err := openPool(s.Deps, id.ClusterID, "", id.LocationID, creds)
	if errors.Is(err, errPoolNotFound) {
		return nil, notFound(err)
	}
	if err != nil {
		return nil, csierr.Status(err)
	}
	entry, err := s.snapshots.Get(pc.store(), id.UUID)
	if err != nil {
		pc.close()
		if errors.Is(err, journal.ErrNotFound) {
			return nil, notFound(err)
		}
		return nil, csierr.Status(err)
	}
	c := &contentSource{pc: pc, clusterID: id.ClusterID, snapshot: entry}
	c.img, err = rbd.OpenImageReadOnly(pc.io, entry.ImageName, rbd.NoSnapshot)
	var info *snapInfo
	if err == nil {
		info, err = snapshotInfoOf(c.img)
	}
	if err != nil {
		c.close()
		if csierr.IsNotFound(err) {
			return nil, notFound(err)
		}
		return nil, csierr.Status(err)
	}
	c.size = int64(info.Size)
	return c, nil
}

func (s *ControllerServer) openVolumeSource(volumeID string, creds cephconn.Credentials) (*contentSource, error) {
	ref, err := s.findVolume(volumeID, creds)
	if err != nil {
		return nil, notFoundVolume(volumeID, err)
	}
	c := &contentSource{pc: ref.pc, clusterID: ref.id.ClusterID, image: ref.image}
	c.img, err = rbd.OpenImage(ref.pc.io, ref.image, rbd.NoSnapshot)
	var size uint64
	if err == nil {
		size, err = c.img.GetSize()
	}
	if err != nil {
		c.close()
		return nil, notFoundVolume(volumeID, err)
	}
	c.size = int64(size)
	return c, nil
}

// matchesParentOf checks that an existing image was made from this source
// (or from no source when c is nil). A flattened image has no parent left
// to compare and is accepted.
func (c *contentSource) matchesParentOf(img *rbd.Image) error {
	parent, err := img.GetParent()
	if csierr.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if c == nil {
		return fmt.Errorf("it is a clone of %s", parent.Image.ImageName)
	}
	want := c.parentImage()
	if c.snapshot == nil {
		want = img.GetName() + tempSuffix
	}
	if parent.Image.ImageName != want {
		return fmt.Errorf("it is a clone of %s, not %s", parent.Image.ImageName, want)
	}
	return nil
}

// limitDepth enforces the clone depth limits for a new image that would sit
// `added` levels below parent: past the hard limit the parent is flattened
// first and the call is retried; the returned depth is the new image's.
func (s *ControllerServer) limitDepth(ctx context.Context, src *poolConn, parent *rbd.Image, added int) (int, error) {
	depth, err := cloneDepth(src.conn.Conn, parent)
	if err != nil {
		return 0, err
	}
	if depth+added > int(s.Options.HardMaxClones) {
		if err := queueFlatten(src, parent.GetName()); err != nil {
			return 0, err
		}
		klog.FromContext(ctx).Info("clone chain too deep, flattening the source first", "image", parent.GetName(), "depth", depth)
		return 0, status.Errorf(codes.Aborted, "image %s is %d clones deep (limit %d); it is being flattened, retry later",
			parent.GetName(), depth, s.Options.HardMaxClones)
	}
	return depth + added, nil
}

// limitChildren applies the snapshot-count limits to a parent image: at the
// maximum its children are flattened and the call is retried later; past the
// minimum the caller flattens the new clone in the background.
func (s *ControllerServer) limitChildren(ctx context.Context, src *poolConn, parent *rbd.Image) (flattenNew bool, err error) {
	// Every snapshot or clone of ours leaves one snapshot (in the trash
	// namespace) on its source. The list comes with the open image, so
	// counting costs no round trip; listing the children does, per snapshot,
	// and is done only when they must be flattened.
	snaps, err := parent.GetSnapshotNames()
	if err != nil {
		return false, fmt.Errorf("listing the snapshots of %s: %w", parent.GetName(), err)
	}
	n := uint(len(snaps))
	if n < s.Options.MaxSnapsOnImage {
		return n >= s.Options.MinSnapsOnImage, nil
	}
	children, err := parent.ListChildrenAttributes()
	if err != nil {
		return false, fmt.Errorf("listing the clones of %s: %w", parent.GetName(), err)
	}
	for _, child := range children {
		if child.Trash || child.PoolName != src.name {
			continue // the clones in this pool free enough snapshots
		}
		if err := queueFlatten(src, child.ImageName); err != nil {
			return false, err
		}
	}
	klog.FromContext(ctx).Info("too many snapshots on image, flattening its clones", "image", parent.GetName(), "snapshots", n)
	return false, status.Errorf(codes.Aborted, "image %s has %d snapshots (limit %d); its clones are being flattened, retry later",
		parent.GetName(), n, s.Options.MaxSnapsOnImage)
}

// restoreSnapshot clones the volume's image from the snapshot image.
func (s *ControllerServer) restoreSnapshot(ctx context.Context, pc *poolConn, entry *journal.Entry, opts *rbd.ImageOptions, size int64, src *contentSource) error {
	snapImage := src.snapshot.ImageName
	depth, err := s.limitDepth(ctx, src.pc, src.img, 1)
	if err != nil {
		return err
	}
	if err := opts.SetUint64(rbd.ImageOptionCloneFormat, 2); err != nil {
		return err
	}
	if err := cloneImage(src.pc.io, snapImage, snapImage, pc.io, entry.ImageName, opts); err != nil {
		return err
	}
	return s.finishClone(ctx, pc, entry.ImageName, size, src.size, depth)
}

// finishClone grows a new clone to the requested size and queues a flatten
// when it sits deeper than the soft limit.
func (s *ControllerServer) finishClone(ctx context.Context, pc *poolConn, image string, size, srcSize int64, depth int) error {
	if size > srcSize {
		img, err := rbd.OpenImage(pc.io, image, rbd.NoSnapshot)
		if err != nil {
			return fmt.Errorf("opening %s: %w", image, err)
		}
		err = img.Resize(uint64(size))
		img.Close()
		if err != nil {
			return fmt.Errorf("growing %s to %d bytes: %w", image, size, err)
		}
	}
	if depth > int(s.Options.SoftMaxClones) {
		klog.FromContext(ctx).V(2).Info("flattening a deep clone in the background", "image", image, "depth", depth)
		return queueFlatten(pc, image)
	}
	return nil
}

// cloneVolume makes a PVC clone: source@tmp -> <name>-temp, the temporary
// snapshot dropped from the source, then <name>-temp@<name> -> <name>.
func (s *ControllerServer) cloneVolume(ctx context.Context, pc *poolConn, entry *journal.Entry, opts *rbd.ImageOptions, size int64, src *contentSource) error {
	temp := entry.ImageName + tempSuffix
	parent := src.img
	depth, err := s.limitDepth(ctx, src.pc, parent, 2)
	if err != nil {
		return err
	}
	flattenNew, err := s.limitChildren(ctx, src.pc, parent)
	if err != nil {
		return err
	}
	tempOpts, err := cloneOptions()
	if err != nil {
		return err
	}
	defer tempOpts.Destroy()
	if err := createSnapshot(parent, temp); err != nil {
		return err
	}
	err = cloneImage(src.pc.io, src.image, temp, pc.io, temp, tempOpts)
	// The source keeps no snapshot: with children it moves to the trash
	// namespace and disappears with its last child.
	if rerr := removeSnapshot(parent, temp); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	tempImg, err := rbd.OpenImage(pc.io, temp, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("opening %s: %w", temp, err)
	}
	err = createSnapshot(tempImg, entry.ImageName)
	tempImg.Close()
	if err != nil {
		return err
	}
	if err := opts.SetUint64(rbd.ImageOptionCloneFormat, 2); err != nil {
		return err
	}
	if err := cloneImage(pc.io, temp, entry.ImageName, pc.io, entry.ImageName, opts); err != nil {
		return err
	}
	if flattenNew {
		depth = int(s.Options.SoftMaxClones) + 1
	}
	return s.finishClone(ctx, pc, entry.ImageName, size, src.size, depth)
}
