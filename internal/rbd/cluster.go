package rbd

import (
	"fmt"
	"path"
	"time"

	"github.com/leanceph/cephcsi/internal/journal"
)

// The seam between the controller's decisions and Ceph: a cluster opened
// with one request's credentials, its pools (each in the cluster's RADOS
// namespace) and their images. rados.go implements it with go-ceph; the unit
// tests use an in-memory fake.

// cluster is a connection to one Ceph cluster.
type cluster interface {
	// OpenPool opens a pool by name, or by ID when name is "". A pool that
	// does not exist is errPoolNotFound.
	OpenPool(name string, id int64) (pool, error)
	// Close gives the connection back.
	Close()
}

// pool is one pool of a cluster, in the cluster's RADOS namespace.
type pool interface {
	Name() string
	ID() int64
	Namespace() string
	// Journal is the omap store of the pool's CSI journal.
	Journal() journal.Store
	// HasPool reports whether another pool of the cluster exists (for a
	// dataPool parameter).
	HasPool(name string) (bool, error)

	// CreateImage makes an empty image.
	CreateImage(name string, size uint64, o imageOptions) error
	// CloneImage clones parent@snap (parent lives in from) into a new image
	// dst of this pool.
	CloneImage(from pool, parent, snap, dst string, o imageOptions) error
	// OpenImage opens an image; a read-only open takes no watch on it. A
	// missing image is an ENOENT error (csierr.IsNotFound).
	OpenImage(name string, readOnly bool) (image, error)
	// OpenImageByID opens an image by its ID, also one in the RBD trash.
	OpenImageByID(id string, readOnly bool) (image, error)
	// RemoveImage deletes an image that has no snapshots; one that clones
	// still depend on fails with ENOTEMPTY, EBUSY or EMLINK.
	RemoveImage(name string) error
	// TrashImage moves an image to the RBD trash.
	TrashImage(name string) error
	// RemoveTrashed deletes an image from the trash by ID; one that still
	// has clones fails.
	RemoveTrashed(id string) error
	// Trash lists the trash of the pool (in its namespace).
	Trash() ([]trashEntry, error)
	// ImageID reads the ID of an image without opening it.
	ImageID(name string) (string, error)
	// Header reads the parent and the snapshot IDs of the image with
	// this ID (also one in the RBD trash) from its header object, in one
	// round trip, without opening it (header.go). A missing image is
	// ENOENT.
	Header(imageID string) (*header, error)
	// Describe reads what a restore needs of the image with this ID
	// without opening it: its parent, its snapshots and the values of the
	// metadata keys asked for ("" when unset), in two round trips
	// (header.go). A missing image is ENOENT. The facts may be shared with
	// other callers: read them, never change them.
	Describe(imageID string, metadata []string) (*imageFacts, error)
	// TrashMarked reports, in one round trip, whether the image with this
	// ID carries the mark (trashedByUsKey) this driver sets on an image of
	// its own before moving it to the RBD trash.
	TrashMarked(imageID string) (bool, error)
	// SetImageMetadata sets the image metadata keys kv and removes the keys
	// drop (missing ones are fine) of the image with this ID, in one round
	// trip.
	SetImageMetadata(id string, kv map[string]string, drop []string) error
	// QueueFlatten asks the Ceph manager to flatten an image in the
	// background; repeating the request is harmless.
	QueueFlatten(name string) error
	// FlattenQueued reports whether the manager has a flatten of the image
	// with this ID queued or running.
	FlattenQueued(imageID string) (bool, error)
	Close()
}

// image is an open image.
type image interface {
	Name() string
	ID() (string, error)
	Size() (uint64, error)
	Features() (uint64, error)
	// DataPool is the image's data pool, "" when it has none of its own.
	DataPool() (string, error)
	// Parent is the image the open image was cloned from, nil when none
	// (never a clone, or flattened).
	Parent() (*parentInfo, error)
	// Snapshots lists the image's snapshots, those in the trash namespace
	// (kept for their clones) included.
	Snapshots() ([]snapshotInfo, error)
	// CreateSnapshot makes a snapshot; one left by an earlier try is fine.
	CreateSnapshot(name string) error
	// RemoveSnapshot removes a snapshot; a missing one is fine. One that
	// clones depend on moves to the trash namespace.
	RemoveSnapshot(name string) error
	Resize(size uint64) error
	// Watchers lists the addresses of the clients that have the image open
	// for writing (a node's mapping, a manager task), other than this
	// driver's own connection (whose read-write open of the image is one).
	Watchers() ([]string, error)
	// Children lists the clones of the image's snapshots.
	Children() ([]childInfo, error)
	// Metadata returns the value of an image metadata key, "" when unset.
	Metadata(key string) (string, error)
	SetMetadata(key, value string) error
	// Allocated is how much data the image's own objects hold (its
	// parent's excluded), extent by extent: a trimmed or sparsified range
	// counts no more even where its object still holds other data.
	Allocated() (uint64, error)
	// Sparsify deallocates the runs of zeros in the image's objects.
	Sparsify() error
	Close()
}

// imageOptions are what a new image or clone is made with.
type imageOptions struct {
	Features uint64
	DataPool string
	// StripeUnit and StripeCount (both or neither) and ObjectOrder (log2 of
	// the object size) are 0 for Ceph's defaults.
	StripeUnit  uint64
	StripeCount uint64
	ObjectOrder uint64
}

// parentInfo names the image and snapshot a clone was made from.
type parentInfo struct {
	Pool      string
	Namespace string
	Image     string
	ImageID   string
	Snapshot  string
	// Trash is set when the parent image sits in the RBD trash.
	Trash bool
}

// snapshotInfo is one snapshot of an image.
type snapshotInfo struct {
	ID      uint64
	Name    string
	Size    uint64
	Trash   bool // in the trash namespace
	Created time.Time
}

// imageFacts is what Describe reads of an image.
type imageFacts struct {
	Parent    *headerParent // nil when none, as in header
	Snapshots []snapshotInfo
	Metadata  map[string]string // the keys asked for
}

// childInfo is one clone of an image's snapshot.
type childInfo struct {
	Pool, Namespace, Image string
	Trash                  bool
}

// trashEntry is one image in the RBD trash.
type trashEntry struct {
	ID, Name string
}

// imageSpec names an image for messages: pool[/namespace]/name.
func imageSpec(p pool, name string) string {
	if ns := p.Namespace(); ns != "" {
		return path.Join(p.Name(), ns, name)
	}
	return path.Join(p.Name(), name)
}

// errPoolNotFound marks a pool that does not exist.
var errPoolNotFound = fmt.Errorf("pool not found")
