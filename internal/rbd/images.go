package rbd

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/ceph/go-ceph/rbd/admin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// maxChainWalk bounds the parent walk in case of a corrupt parent loop.
const maxChainWalk = 64

// cloneOptions are the options for the images a snapshot or PVC clone goes
// through: clone format 2 (no snapshot protection needed), layering and
// deep-flatten so that they can be flattened with their snapshots.
func cloneOptions() (*rbd.ImageOptions, error) {
	opts := rbd.NewRbdImageOptions()
	for _, o := range []struct {
		opt rbd.ImageOption
		v   uint64
	}{
		{rbd.ImageOptionFormat, 2},
		{rbd.ImageOptionCloneFormat, 2},
		{rbd.ImageOptionFeatures, rbd.FeatureLayering | rbd.FeatureDeepFlatten},
	} {
		if err := opts.SetUint64(o.opt, o.v); err != nil {
			opts.Destroy()
			return nil, err
		}
	}
	return opts, nil
}

// cloneDepth counts the ancestors of an open image.
func cloneDepth(conn *rados.Conn, img *rbd.Image) (int, error) {
	depth := 0
	cur := img
	defer func() {
		if cur != img {
			cur.Close()
		}
	}()
	for depth < maxChainWalk {
		parent, err := cur.GetParent()
		if csierr.IsNotFound(err) {
			return depth, nil
		}
		if err != nil {
			return 0, fmt.Errorf("reading the parent of %s: %w", cur.GetName(), err)
		}
		depth++
		io, err := conn.OpenIOContext(parent.Image.PoolName)
		if err != nil {
			return 0, err
		}
		io.SetNamespace(parent.Image.PoolNamespace)
		next, err := rbd.OpenImageByIdReadOnly(io, parent.Image.ImageID, rbd.NoSnapshot)
		io.Destroy()
		if err != nil {
			return 0, fmt.Errorf("opening parent %s: %w", parent.Image.ImageName, err)
		}
		if cur != img {
			cur.Close()
		}
		cur = next
	}
	return depth, nil
}

// queueFlatten asks the Ceph manager to flatten an image in the background.
// The manager deduplicates tasks, so repeating the request is harmless.
func queueFlatten(pc *poolConn, image string) error {
	ns, _ := pc.io.GetNamespace()
	_, err := admin.NewFromConn(pc.conn.Conn).Task().AddFlatten(admin.NewImageSpec(pc.name, ns, image))
	if err != nil {
		return fmt.Errorf("queueing a flatten of %s/%s: %w", pc.name, image, err)
	}
	return nil
}

// removeImage deletes an image with its snapshots. Snapshots that clones
// still depend on move to the trash namespace, and then the image itself
// moves to the RBD trash, from which purgeTrash removes it once its last
// child is gone. With refuseWatched an image a client still has open (a
// node's mapping) is kept: FailedPrecondition.
//
// The image is opened read-only (a read-only open adds no watcher of its
// own); only an image with user snapshots to remove is opened again to
// write, which our volumes, whose snapshots live in the trash namespace,
// never need.
func removeImage(pc *poolConn, name string, refuseWatched bool) error {
	img, err := rbd.OpenImageReadOnly(pc.io, name, rbd.NoSnapshot)
	if csierr.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening image %s: %w", name, err)
	}
	if refuseWatched {
		err = refuseIfWatched(pc, img)
	}
	var userSnaps []string
	if err == nil {
		userSnaps, err = userSnapshots(img)
	}
	img.Close()
	if err != nil {
		return err
	}
	if len(userSnaps) > 0 {
		if err := removeSnapshots(pc, name, userSnaps); err != nil {
			return err
		}
	}
	err = rbd.RemoveImage(pc.io, name)
	switch {
	case err == nil, csierr.IsNotFound(err):
		return nil
	case csierr.IsErrno(err, syscall.ENOTEMPTY), csierr.IsErrno(err, syscall.EBUSY), csierr.IsErrno(err, syscall.EMLINK):
		// Clones still hang off this image's (trashed) snapshots.
		if terr := rbd.GetImage(pc.io, name).Trash(0); terr != nil && !csierr.IsNotFound(terr) {
			return fmt.Errorf("moving image %s to the trash: %w", name, terr)
		}
		return nil
	default:
		return fmt.Errorf("removing image %s: %w", name, err)
	}
}

// refuseIfWatched is FailedPrecondition when a client has img open.
func refuseIfWatched(pc *poolConn, img *rbd.Image) error {
	watchers, err := img.ListWatchers()
	if err != nil {
		return fmt.Errorf("listing watchers of %s: %w", img.GetName(), err)
	}
	if len(watchers) > 0 {
		return status.Errorf(codes.FailedPrecondition, "image %s/%s is in use by %d client(s) (first: %s); unmap it first",
			pc.name, img.GetName(), len(watchers), watchers[0].Addr)
	}
	return nil
}

// userSnapshots names the snapshots of img in the user namespace; those in
// the trash namespace go away with their last clone.
func userSnapshots(img *rbd.Image) ([]string, error) {
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, fmt.Errorf("listing the snapshots of %s: %w", img.GetName(), err)
	}
	var names []string
	for _, sn := range snaps {
		if ns, err := img.GetSnapNamespaceType(sn.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
			names = append(names, sn.Name)
		}
	}
	return names, nil
}

// removeSnapshots removes the named snapshots of an image; missing ones are
// fine.
func removeSnapshots(pc *poolConn, name string, snaps []string) error {
	img, err := rbd.OpenImage(pc.io, name, rbd.NoSnapshot)
	if csierr.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening image %s: %w", name, err)
	}
	defer img.Close()
	for _, sn := range snaps {
		if err := img.GetSnapshot(sn).Remove(); err != nil && !csierr.IsNotFound(err) {
			return fmt.Errorf("removing snapshot %s@%s: %w", name, sn, err)
		}
	}
	return nil
}

// removeVolumeImages removes a volume's image and its -temp intermediate,
// then purges whatever in the trash no longer has children. With
// refuseWatched a volume image a node still has mapped is kept.
func removeVolumeImages(pc *poolConn, name string, refuseWatched bool) error {
	if err := removeImage(pc, name, refuseWatched); err != nil {
		return err
	}
	if err := removeImage(pc, name+tempSuffix, false); err != nil {
		return err
	}
	purgeTrash(pc.io)
	return nil
}

// createSnapshot makes snap on img, accepting one left by an earlier try.
func createSnapshot(img *rbd.Image, snap string) error {
	if _, err := img.CreateSnapshot(snap); err != nil && !csierr.IsErrno(err, syscall.EEXIST) {
		return fmt.Errorf("creating snapshot %s@%s: %w", img.GetName(), snap, err)
	}
	return nil
}

// removeSnapshot removes snap from img; a missing one is fine.
func removeSnapshot(img *rbd.Image, snap string) error {
	if err := img.GetSnapshot(snap).Remove(); err != nil && !csierr.IsNotFound(err) {
		return fmt.Errorf("removing snapshot %s@%s: %w", img.GetName(), snap, err)
	}
	return nil
}

// cloneImage clones parent@snap into dst, accepting a dst left by an
// earlier try only when it is a clone of the same parent.
func cloneImage(parentIO *rados.IOContext, parent, snap string, dstIO *rados.IOContext, dst string, opts *rbd.ImageOptions) error {
	err := rbd.CloneImage(parentIO, parent, snap, dstIO, dst, opts)
	if err == nil {
		return nil
	}
	if !errors.Is(err, rbd.ErrExist) && !csierr.IsErrno(err, syscall.EEXIST) {
		return fmt.Errorf("cloning %s@%s into %s: %w", parent, snap, dst, err)
	}
	img, oerr := rbd.OpenImageReadOnly(dstIO, dst, rbd.NoSnapshot)
	if oerr != nil {
		return fmt.Errorf("cloning %s@%s into %s: %w", parent, snap, dst, err)
	}
	defer img.Close()
	info, perr := img.GetParent()
	if perr != nil || info.Image.ImageName != parent {
		return fmt.Errorf("image %s exists but is not a clone of %s", dst, parent)
	}
	return nil
}
