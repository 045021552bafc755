package rbd

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"syscall"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// maxChainWalk bounds walks up a parent chain, in case of a corrupt loop.
const maxChainWalk = 64

// tempSuffix names the intermediate image of a PVC clone.
const tempSuffix = "-temp"

// trashedByUsKey is the image metadata key set on an image just before
// this driver moves it to the RBD trash. Only trash entries that carry it
// are ever purged: an image someone else put in the trash is never ours to
// delete, whatever its name.
const trashedByUsKey = "cephcsi.trashed"

// ourName matches the names this driver gives images and the snapshots it
// takes: a prefix, a UUID and, for PVC-clone intermediates, "-temp".
var ourName = regexp.MustCompile(`^(.*)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(-temp)?$`)

// uuidOfName returns the UUID in one of our image or snapshot names.
func uuidOfName(name string) (string, bool) {
	m := ourName.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return m[2], true
}

// hasDependentClones reports the errors librbd gives when removing an
// image that clones still depend on.
func hasDependentClones(err error) bool {
	return csierr.IsErrno(err, syscall.ENOTEMPTY) || csierr.IsErrno(err, syscall.EBUSY) || csierr.IsErrno(err, syscall.EMLINK)
}

// cloneDepth counts the ancestors of an open image. Its parent comes with
// the open (no round trip); each further ancestor's is read from the
// ancestor's header (one round trip a level) instead of opening it (a
// dozen round trips, and librbd opens the ancestor's own ancestors too).
func cloneDepth(c cluster, img image) (int, error) {
	first, err := img.Parent()
	if err != nil {
		return 0, fmt.Errorf("reading the parent of %s: %w", img.Name(), err)
	}
	if first == nil {
		return 0, nil
	}
	p, err := c.OpenPool(first.Pool, 0)
	if err != nil {
		return 0, fmt.Errorf("opening pool %s of parent %s: %w", first.Pool, first.Image, err)
	}
	return depthFrom(c, p, first.ImageID)
}

// headerDepth counts the ancestors of an image whose parent was read
// from its header (nil: none), the same way.
func headerDepth(c cluster, parent *headerParent) (int, error) {
	if parent == nil {
		return 0, nil
	}
	p, err := c.OpenPool("", parent.PoolID)
	if err != nil {
		return 0, fmt.Errorf("opening pool %d of parent image ID %s: %w", parent.PoolID, parent.ImageID, err)
	}
	return depthFrom(c, p, parent.ImageID)
}

// depthFrom counts the image with this ID (in p, which it closes) and its
// ancestors.
func depthFrom(c cluster, p pool, imageID string) (int, error) {
	depth := 0
	next := func(p pool, imageID string) (*headerParent, error) {
		depth++
		h, err := p.Header(imageID)
		p.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the header of parent image ID %s: %w", imageID, err)
		}
		return h.Parent, nil
	}
	parent, err := next(p, imageID)
	for err == nil && parent != nil && depth < maxChainWalk {
		if p, err = c.OpenPool("", parent.PoolID); err != nil {
			return 0, fmt.Errorf("opening pool %d of parent image ID %s: %w", parent.PoolID, parent.ImageID, err)
		}
		parent, err = next(p, parent.ImageID)
	}
	if err != nil {
		return 0, err
	}
	return depth, nil
}

// cloneImage clones parent@snap (in from) into dst (in to), accepting a
// dst left by an earlier try only when it is a clone of the same parent.
func cloneImage(from pool, parent, snap string, to pool, dst string, o imageOptions) error {
	err := to.CloneImage(from, parent, snap, dst, o)
	if err == nil {
		return nil
	}
	if !csierr.IsErrno(err, syscall.EEXIST) {
		return fmt.Errorf("cloning %s@%s into %s: %w", imageSpec(from, parent), snap, imageSpec(to, dst), err)
	}
	img, oerr := to.OpenImage(dst, true)
	if oerr != nil {
		return fmt.Errorf("cloning %s@%s into %s: %w", imageSpec(from, parent), snap, imageSpec(to, dst), err)
	}
	defer img.Close()
	info, perr := img.Parent()
	if perr != nil || info == nil || info.Image != parent {
		return csierr.Errorf(csierr.ErrExists, "image %s exists but is not a clone of %s", imageSpec(to, dst), parent)
	}
	return nil
}

// cloneThroughSnapshot copies the current content of src into a new clone
// dst: src@snap, the clone, then snap removed from src again (librbd keeps
// it in the trash namespace for as long as the clone needs it), so the
// source is left without a snapshot. Every step accepts what an earlier,
// interrupted try left.
func cloneThroughSnapshot(sp pool, src image, snap string, dp pool, dst string, o imageOptions) error {
	if err := src.CreateSnapshot(snap); err != nil {
		return fmt.Errorf("creating snapshot %s@%s: %w", imageSpec(sp, src.Name()), snap, err)
	}
	err := cloneImage(sp, src.Name(), snap, dp, dst, o)
	if rerr := src.RemoveSnapshot(snap); rerr != nil && err == nil {
		err = fmt.Errorf("removing snapshot %s@%s: %w", imageSpec(sp, src.Name()), snap, rerr)
	}
	return err
}

// refuseWhileFlattening is ErrInProgress while the Ceph manager has a
// flatten of img queued or running. A snapshot taken during a flatten
// loses its parent when the flatten ends (librbd then lets the parent be
// removed although the snapshot still reads from it), which breaks every
// clone made from that snapshot; so a clone chain is only extended once
// its flatten is done.
func refuseWhileFlattening(p pool, img image) error {
	parent, err := img.Parent()
	if err != nil {
		return fmt.Errorf("reading the parent of %s: %w", imageSpec(p, img.Name()), err)
	}
	if parent == nil {
		return nil // nothing to flatten
	}
	id, err := img.ID()
	if err != nil {
		return err
	}
	queued, err := p.FlattenQueued(id)
	if err != nil {
		return fmt.Errorf("listing the manager's flatten tasks: %w", err)
	}
	if queued {
		return csierr.Errorf(csierr.ErrInProgress, "image %s is being flattened by the Ceph manager; retry when it is done", imageSpec(p, img.Name()))
	}
	return nil
}

// remover deletes images of ours from one pool.
type remover struct {
	c cluster
	p pool
	// owned proves that a user snapshot found on an image being removed was
	// taken by this driver (a temporary snapshot left by an interrupted
	// call). Snapshots it cannot prove ours keep the image.
	owned func(snapshot string) (bool, error)
}

// ancestor is the parent of an image just removed, for purgeAncestors:
// named by librbd (which says whether it is in the trash), or by IDs from
// the image's header (which does not).
type ancestor struct {
	pool    string // "" when only poolID is known
	poolID  int64
	imageID string
	inTrash *bool // nil: not known, the trash mark decides
}

func ancestorOf(p *parentInfo) *ancestor {
	if p == nil {
		return nil
	}
	trash := p.Trash
	return &ancestor{pool: p.Pool, imageID: p.ImageID, inTrash: &trash}
}

// remove deletes an image of ours. An image that clones still depend on
// moves to the RBD trash, marked as ours, and is purged once its last
// clone is gone. An image a client still has open (a node's mapping, a
// manager task flattening it) is kept, unchanged: ErrPrecondition, for a
// retry. Trashing it instead would leave an entry with no clone to purge
// it (librbd moves an open image without exclusive-lock to the trash). It
// returns whether the image was there and its parent, for purgeAncestors;
// a missing image is fine.
//
// id is the image's ID when the journal has it, "" when not. withSnapshots
// says the image normally carries a snapshot of ours (a snapshot image's
// restore snapshot, a -temp image's clone snapshot): it is then opened for
// writing at once, to remove them through the same open.
func (r *remover) remove(name, id string, withSnapshots bool) (found bool, parent *ancestor, err error) {
	if id != "" && !withSnapshots {
		if parent, ok := r.removeDirect(name, id); ok {
			return true, parent, nil
		}
	}
	img, err := r.p.OpenImage(name, !withSnapshots)
	if csierr.IsNotFound(err) {
		return false, nil, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("opening image %s: %w", imageSpec(r.p, name), err)
	}
	info, err := r.inspect(img)
	userSnaps := []string(nil)
	if err == nil {
		userSnaps, err = r.userSnapshots(img)
	}
	if err == nil && len(userSnaps) > 0 && withSnapshots {
		err = removeSnapshotsOf(r.p, img, userSnaps)
		userSnaps = nil
	}
	img.Close()
	if err != nil {
		return true, nil, err
	}
	if len(userSnaps) > 0 {
		if err := r.removeSnapshots(name, userSnaps); err != nil {
			return true, nil, err
		}
	}
	err = r.p.RemoveImage(name)
	switch {
	case err == nil, csierr.IsNotFound(err):
		return true, ancestorOf(info), nil
	case hasDependentClones(err):
		return true, ancestorOf(info), r.trash(name)
	}
	return true, nil, fmt.Errorf("removing image %s: %w", imageSpec(r.p, name), err)
}

// removeDirect is the common case of remove: an image without snapshots
// goes straight to librbd's remove, which refuses, before it changes
// anything, an image that another client has open (EBUSY), that has
// snapshots (ENOTEMPTY) or that is in a group (EMLINK). Only when it
// refuses, or the header cannot be read, is the image opened and looked
// at (ok false: remove goes on). The parent comes from the header, read
// first in one round trip.
func (r *remover) removeDirect(name, id string) (parent *ancestor, ok bool) {
	h, err := r.p.Header(id)
	if err != nil || len(h.SnapIDs) > 0 {
		return nil, false
	}
	if err := r.p.RemoveImage(name); err != nil {
		return nil, false
	}
	if h.Parent != nil {
		parent = &ancestor{poolID: h.Parent.PoolID, imageID: h.Parent.ImageID}
	}
	return parent, true
}

// inspect checks the watchers of an image about to be removed and returns
// its parent.
func (r *remover) inspect(img image) (*parentInfo, error) {
	watchers, err := img.Watchers()
	if err != nil {
		return nil, fmt.Errorf("listing watchers of %s: %w", imageSpec(r.p, img.Name()), err)
	}
	if len(watchers) > 0 {
		return nil, csierr.Errorf(csierr.ErrPrecondition,
			"image %s is in use by %d client(s) (first: %s), a node's mapping or a manager task; retry once it is closed",
			imageSpec(r.p, img.Name()), len(watchers), watchers[0])
	}
	parent, err := img.Parent()
	if err != nil {
		return nil, fmt.Errorf("reading the parent of %s: %w", imageSpec(r.p, img.Name()), err)
	}
	return parent, nil
}

// userSnapshots names the snapshots of img in the user namespace (those in
// the trash namespace go away with their last clone), refusing the
// removal when one of them is not provably ours.
func (r *remover) userSnapshots(img image) ([]string, error) {
	snaps, err := img.Snapshots()
	if err != nil {
		return nil, fmt.Errorf("listing the snapshots of %s: %w", imageSpec(r.p, img.Name()), err)
	}
	var ours, foreign []string
	for _, sn := range snaps {
		if sn.Trash {
			continue
		}
		ok := false
		if r.owned != nil {
			if ok, err = r.owned(sn.Name); err != nil {
				return nil, err
			}
		}
		if ok {
			ours = append(ours, sn.Name)
		} else {
			foreign = append(foreign, sn.Name)
		}
	}
	if len(foreign) > 0 {
		return nil, csierr.Errorf(csierr.ErrPrecondition, "image %s has snapshots this driver did not take (%s); remove them first",
			imageSpec(r.p, img.Name()), strings.Join(foreign, ", "))
	}
	return ours, nil
}

func (r *remover) removeSnapshots(name string, snaps []string) error {
	img, err := r.p.OpenImage(name, false)
	if csierr.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening image %s: %w", imageSpec(r.p, name), err)
	}
	defer img.Close()
	return removeSnapshotsOf(r.p, img, snaps)
}

// removeSnapshotsOf removes snapshots of an image open for writing.
func removeSnapshotsOf(p pool, img image, snaps []string) error {
	for _, sn := range snaps {
		if err := img.RemoveSnapshot(sn); err != nil {
			return fmt.Errorf("removing snapshot %s@%s: %w", imageSpec(p, img.Name()), sn, err)
		}
	}
	return nil
}

// trash marks an image as ours and moves it to the RBD trash. Its last
// clone may have gone in the meantime, deleted concurrently: that delete
// looked for a trashed parent before this one was trashed and purged
// nothing. So the entry is purged here at once when no clone needs it any
// more; one of the two deletes always sees the final state.
func (r *remover) trash(name string) error {
	img, err := r.p.OpenImage(name, false)
	if csierr.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening image %s: %w", imageSpec(r.p, name), err)
	}
	// The DEK of an encrypted image goes now: a trashed image is never
	// staged again, and its clones carry their own copy.
	id, err := img.ID()
	img.Close()
	if err == nil {
		err = r.p.SetImageMetadata(id, map[string]string{trashedByUsKey: "true"}, []string{metaDEK, metaDEKOld})
	}
	if err != nil {
		return fmt.Errorf("marking image %s before moving it to the trash: %w", imageSpec(r.p, name), err)
	}
	if err := r.p.TrashImage(name); err != nil && !csierr.IsNotFound(err) {
		return fmt.Errorf("moving image %s to the trash: %w", imageSpec(r.p, name), err)
	}
	if parent, err := purgeTrashed(r.p, id); err == nil {
		purgeAncestors(r.c, ancestorOf(parent))
	}
	return nil
}

// purgeAncestors walks up from the parent of an image just removed and
// deletes the trashed ancestors of ours that no clone needs any more. It
// stops at the first ancestor that is not in the trash, not marked as
// ours, or still has clones. Failures only leave an entry for a later
// delete to purge. An ancestor's trash state is not trusted when it says
// "not in the trash": it was read before the image went, and a concurrent
// delete of the ancestor may have trashed it since (and failed to purge it,
// the clone being still there), so its mark decides.
func purgeAncestors(c cluster, a *ancestor) {
	for i := 0; a != nil && i < maxChainWalk; i++ {
		p, err := c.OpenPool(a.pool, a.poolID)
		if err != nil {
			return
		}
		var next *parentInfo
		if a.inTrash == nil || !*a.inTrash {
			// The mark (one round trip) says whether it is a trashed
			// image of ours, before any open.
			var marked bool
			if marked, err = p.TrashMarked(a.imageID); err == nil && !marked {
				err = errNotOurs
			}
		}
		if err == nil {
			next, err = purgeTrashed(p, a.imageID)
		}
		p.Close()
		if err != nil {
			return
		}
		a = ancestorOf(next)
	}
}

// errNotOurs stops purgeAncestors at an image that is not a trashed image
// of ours.
var errNotOurs = errors.New("not a trashed image of ours")

// errStillNeeded means a trashed image of ours still has clones.
var errStillNeeded = errors.New("still has clones")

// purgeTrashed deletes one trashed image when it is ours and no clone
// needs it, returning its parent.
func purgeTrashed(p pool, id string) (*parentInfo, error) {
	img, err := p.OpenImageByID(id, true)
	if err != nil {
		return nil, err
	}
	mark, err := img.Metadata(trashedByUsKey)
	var parent *parentInfo
	if err == nil {
		parent, err = img.Parent()
	}
	img.Close()
	if err != nil {
		return nil, err
	}
	if mark != "true" {
		return nil, fmt.Errorf("trash entry %s is not ours", id)
	}
	if err := p.RemoveTrashed(id); err != nil {
		if hasDependentClones(err) {
			return nil, errStillNeeded
		}
		return nil, err
	}
	return parent, nil
}

// purgeOurTrash tries every trash entry of the pool that is ours; used when
// a delete finds its image already gone (an interrupted earlier try may
// have left trashed ancestors that no clone needs).
func purgeOurTrash(c cluster, p pool) {
	for pass := 0; pass < maxChainWalk; pass++ {
		entries, err := p.Trash()
		if err != nil {
			return
		}
		removed := 0
		for _, e := range entries {
			if _, ok := uuidOfName(e.Name); !ok {
				continue // not named by us: never opened, never touched
			}
			if parent, err := purgeTrashed(p, e.ID); err == nil {
				removed++
				purgeAncestors(c, ancestorOf(parent))
			}
		}
		if removed == 0 {
			return
		}
	}
}
