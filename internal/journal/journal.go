// Package journal implements the omap journal that maps CSI request names to
// the UUIDs of the Ceph objects created for them, in the on-cluster format
// ceph-csi uses, so that either driver can serve the other's volumes.
//
// Layout, for volumes (snapshots use "snaps"/"snap" in the same places):
//
//	object csi.volumes.<instance>: key csi.volume.<request name> -> <uuid>
//	object csi.volume.<uuid>:      csi.volname, csi.imagename, csi.imageid, ...
package journal

import (
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/failpoint"
)

var (
	// ErrNotFound is returned by a Store for a missing object.
	ErrNotFound = fmt.Errorf("journal object %w", csierr.ErrNotFound)
	// ErrKeyExists is returned by Store.SetOmapKeyIfAbsent for a key that
	// has a value.
	ErrKeyExists = errors.New("journal key exists")
)

// Store is the omap access the journal needs; RadosStore implements it on a
// pool's IOContext.
type Store interface {
	// GetOmap returns the values of keys that exist; a missing object is
	// ErrNotFound.
	GetOmap(oid string, keys []string) (map[string]string, error)
	// SetOmap sets keys, creating the object; with exclusive it fails when
	// the object already exists.
	SetOmap(oid string, kv map[string]string, exclusive bool) error
	// SetOmapKeyIfAbsent sets key on an existing object, in one operation,
	// only when the key has no value: ErrKeyExists when it has one,
	// ErrNotFound when the object is missing.
	SetOmapKeyIfAbsent(oid, key, value string) error
	// RemoveOmapKeyIfValue removes key, in one operation, only when it
	// holds value; a key with another value or none, or a missing object,
	// is left and is not an error.
	RemoveOmapKeyIfValue(oid, key, value string) error
	// Remove deletes an object; a missing object is not an error.
	Remove(oid string) error
}

// Omap keys of an entry object, as written by ceph-csi.
const (
	keyImageName       = "csi.imagename"
	keyImageID         = "csi.imageid"
	keyJournalPool     = "csi.journalpool"
	keySource          = "csi.source"
	keyBackingSnapshot = "csi.backingsnapshotid"
	// Encryption (ceph-csi writes these keys in both journals): the KMS ID
	// of an encrypted volume ("default" without encryptionKMSID), the
	// encryption type ("block" or "file"), and the owner, the namespace of
	// the PVC, which some KMS configurations read their Secret from.
	keyEncryptKMS     = "csi.volume.encryptKMS"
	keyEncryptionType = "csi.volume.encryptionType"
	keyOwner          = "csi.volume.owner"
	// keyRequest is ours (ceph-csi reads only the keys it knows): a digest
	// of what the creating request asked for, so that a repeated request
	// is answered from the same volume only when it asks for the same.
	keyRequest = "cephcsi.request"
)

// Journal is one kind of journal: volumes or snapshots.
type Journal struct {
	directory  string // csi.volumes.default
	nameKeyPfx string // csi.volume.
	entryPfx   string // csi.volume.
	nameKey    string // csi.volname
}

// Volumes returns the volume journal for an --instanceid.
func Volumes(instanceID string) *Journal {
	return &Journal{directory: "csi.volumes." + instanceID, nameKeyPfx: "csi.volume.", entryPfx: "csi.volume.", nameKey: "csi.volname"}
}

// Snapshots returns the snapshot journal for an --instanceid.
func Snapshots(instanceID string) *Journal {
	return &Journal{directory: "csi.snaps." + instanceID, nameKeyPfx: "csi.snap.", entryPfx: "csi.snap.", nameKey: "csi.snapname"}
}

// Directory is the name of the object that maps request names to UUIDs.
func (j *Journal) Directory() string { return j.directory }

// EntryObject is the name of the object that holds uuid's attributes.
func (j *Journal) EntryObject(uuid string) string { return j.entryPfx + uuid }

// Entry is what the journal knows about one volume or snapshot.
type Entry struct {
	UUID        string
	RequestName string
	ImageName   string // RBD image or CephFS subvolume/snapshot name
	ImageID     string // RBD image ID, once the image exists
	JournalPool string // set only when the journal lives in another pool
	Source      string // snapshots: the source volume's image name
	// BackingSnapshotID is the snapshot ID a CephFS backingSnapshot volume mounts.
	BackingSnapshotID string
	// Request is the digest of the request that created the entry; empty
	// for entries written by another driver.
	Request string
	// KMSID and EncryptionType are set for an encrypted volume (and the
	// snapshots of one); Owner is the PVC's namespace when it was known.
	KMSID          string
	EncryptionType string
	Owner          string
}

func (e *Entry) fromOmap(m map[string]string, nameKey string) {
	e.RequestName = m[nameKey]
	e.ImageName = m[keyImageName]
	e.ImageID = m[keyImageID]
	e.JournalPool = m[keyJournalPool]
	e.Source = m[keySource]
	e.BackingSnapshotID = m[keyBackingSnapshot]
	e.Request = m[keyRequest]
	e.KMSID = m[keyEncryptKMS]
	e.EncryptionType = m[keyEncryptionType]
	e.Owner = m[keyOwner]
}

func (e *Entry) toOmap(nameKey string) map[string]string {
	m := map[string]string{nameKey: e.RequestName, keyImageName: e.ImageName}
	for k, v := range map[string]string{keyImageID: e.ImageID, keyJournalPool: e.JournalPool,
		keySource: e.Source, keyBackingSnapshot: e.BackingSnapshotID, keyRequest: e.Request,
		keyEncryptKMS: e.KMSID, keyEncryptionType: e.EncryptionType, keyOwner: e.Owner} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

func (j *Journal) entryKeys() []string {
	return []string{j.nameKey, keyImageName, keyImageID, keyJournalPool, keySource, keyBackingSnapshot, keyRequest,
		keyEncryptKMS, keyEncryptionType, keyOwner}
}

// Lookup returns the entry reserved for requestName, or nil when there is
// none. A directory key whose entry object is missing or names another
// request (left by a crash) is removed and reported as no entry.
func (j *Journal) Lookup(s Store, requestName string) (*Entry, error) {
	dirKey := j.nameKeyPfx + requestName
	dir, err := s.GetOmap(j.directory, []string{dirKey})
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", j.directory, err)
	}
	id, ok := dir[dirKey]
	if !ok {
		return nil, nil
	}
	e, err := j.Get(s, id)
	if errors.Is(err, ErrNotFound) || (err == nil && e.RequestName != requestName) {
		if err := s.RemoveOmapKeyIfValue(j.directory, dirKey, id); err != nil {
			return nil, fmt.Errorf("removing stale journal key %s: %w", dirKey, err)
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Find reads the entry of uuid; a missing one is nil, not an error.
func (j *Journal) Find(s Store, id string) (*Entry, error) {
	e, err := j.Get(s, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return e, err
}

// Get reads the entry of uuid; a missing one is ErrNotFound.
func (j *Journal) Get(s Store, id string) (*Entry, error) {
	m, err := s.GetOmap(j.EntryObject(id), j.entryKeys())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", j.EntryObject(id), err)
	}
	e := &Entry{UUID: id}
	e.fromOmap(m, j.nameKey)
	return e, nil
}

// Claim returns the entry of requestName and whether this call reserved
// it (fresh), as Lookup followed by reserve for a new name would, with one
// round trip less for a name the directory does not hold: the operation
// that checks its key is absent also writes it. A name the directory holds,
// or a directory not made yet, goes the Lookup and reserve way.
func (j *Journal) Claim(s Store, requestName, namePrefix string, template Entry) (*Entry, bool, error) {
	fresh, err := j.newEntry(requestName, namePrefix, template)
	if err != nil {
		return nil, false, err
	}
	dirKey := j.nameKeyPfx + requestName
	err = s.SetOmapKeyIfAbsent(j.directory, dirKey, fresh.UUID)
	switch {
	case err == nil:
		if err := j.createEntry(s, fresh); err != nil {
			return nil, false, err
		}
		return fresh, true, nil
	case errors.Is(err, ErrKeyExists):
		existing, err := j.Lookup(s, requestName)
		if err != nil || existing != nil {
			return existing, false, err
		}
		// A dangling key, which Lookup just removed.
	case !errors.Is(err, ErrNotFound):
		// A write that timed out may still land (an OSD cut off, then back):
		// take the key back if it holds our UUID. The removal goes to the
		// same object, so the OSD applies it after the write if both land.
		_ = s.RemoveOmapKeyIfValue(j.directory, dirKey, fresh.UUID)
		return nil, false, fmt.Errorf("reserving %q in %s: %w", requestName, j.directory, err)
	}
	// No directory object yet, or a dangling key removed: reserve the old
	// way, which creates the directory.
	if fresh, err = j.reserve(s, requestName, namePrefix, template); err != nil {
		return nil, false, err
	}
	return fresh, true, nil
}

// reserve records a new UUID for requestName. The object name is
// namePrefix+uuid; template supplies Source, JournalPool and the like. The
// directory key is written first, so a crash leaves at worst a dangling key
// that the next Lookup of the same name removes.
func (j *Journal) reserve(s Store, requestName, namePrefix string, template Entry) (*Entry, error) {
	e, err := j.newEntry(requestName, namePrefix, template)
	if err != nil {
		return nil, err
	}
	if err := s.SetOmap(j.directory, map[string]string{j.nameKeyPfx + requestName: e.UUID}, false); err != nil {
		return nil, fmt.Errorf("reserving %q in %s: %w", requestName, j.directory, err)
	}
	if err := j.createEntry(s, e); err != nil {
		return nil, err
	}
	return e, nil
}

// newEntry is the entry of a new reservation of requestName.
func (j *Journal) newEntry(requestName, namePrefix string, template Entry) (*Entry, error) {
	if requestName == "" {
		return nil, errors.New("empty request name")
	}
	e := template
	e.UUID = uuid.NewString()
	e.RequestName = requestName
	e.ImageName = namePrefix + e.UUID
	return &e, nil
}

// createEntry makes the entry object of e, whose directory key was just
// written; on failure it removes that key again.
func (j *Journal) createEntry(s Store, e *Entry) error {
	failpoint.Hit("journal-reserve-after-directory")
	if err := s.SetOmap(j.EntryObject(e.UUID), e.toOmap(j.nameKey), true); err != nil {
		_ = s.RemoveOmapKeyIfValue(j.directory, j.nameKeyPfx+e.RequestName, e.UUID)
		return fmt.Errorf("creating %s: %w", j.EntryObject(e.UUID), err)
	}
	return nil
}

// SetImageID records the RBD image ID of an entry.
func (j *Journal) SetImageID(s Store, id, imageID string) error {
	if err := s.SetOmap(j.EntryObject(id), map[string]string{keyImageID: imageID}, false); err != nil {
		return fmt.Errorf("recording image ID in %s: %w", j.EntryObject(id), err)
	}
	return nil
}

// Release removes an entry: its directory key first (while the entry object
// still says which name it had), then the entry object. Both steps tolerate
// earlier partial runs, so Release may be retried.
func (j *Journal) Release(s Store, e *Entry) error {
	if e.RequestName != "" {
		// Guarded by the UUID: the name may since belong to a new reservation.
		dirKey := j.nameKeyPfx + e.RequestName
		if err := s.RemoveOmapKeyIfValue(j.directory, dirKey, e.UUID); err != nil {
			return fmt.Errorf("removing %s from %s: %w", dirKey, j.directory, err)
		}
	}
	failpoint.Hit("journal-release-after-directory")
	if err := s.Remove(j.EntryObject(e.UUID)); err != nil {
		return fmt.Errorf("removing %s: %w", j.EntryObject(e.UUID), err)
	}
	return nil
}
