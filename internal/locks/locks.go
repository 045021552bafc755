// Package locks keeps one operation at a time per volume name, volume ID,
// snapshot name or snapshot ID.
//
// The CSI sidecars retry every call, so a second request for a key that is
// already busy is refused at once (Aborted) instead of queueing behind the
// first. The keys a request names are taken by the server's middleware
// (Interceptor) before the handler runs, the same way for every service.
//
// A key can also be taken shared (Key.Shared): by any number of calls at
// once that only read what it names (restores of one snapshot), while no
// call holds it exclusively, and the other way round. A delete of the
// snapshot is refused while restores of it run, as before; the restores no
// longer refuse each other.
package locks

import (
	"strings"
	"sync"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/volid"
)

// kind says what a key names.
type kind uint8

const (
	volumeName kind = iota + 1
	volumeID
	snapshotName
	snapshotID
)

// Key is one lockable thing, taken exclusively unless shared.
type Key struct {
	kind   kind
	id     string
	shared bool
}

// Shared returns the key taken in shared mode.
func (k Key) Shared() Key {
	k.shared = true
	return k
}

// base is the key as the set holds it, whatever the mode.
func (k Key) base() Key {
	k.shared = false
	return k
}

// VolumeName is the key of a CreateVolume request name.
func VolumeName(name string) Key { return Key{kind: volumeName, id: name} }

// VolumeID is the key of a volume, for controller and node calls alike.
// IDs of ours are taken in their canonical form, so that two spellings of
// one ID share one lock.
func VolumeID(id string) Key { return Key{kind: volumeID, id: canonical(id)} }

// SnapshotName is the key of a CreateSnapshot request name.
func SnapshotName(name string) Key { return Key{kind: snapshotName, id: name} }

// SnapshotID is the key of a snapshot.
func SnapshotID(id string) Key { return Key{kind: snapshotID, id: canonical(id)} }

func (k Key) String() string {
	switch k.kind {
	case volumeName:
		return "volume name " + k.id
	case volumeID:
		return "volume " + k.id
	case snapshotName:
		return "snapshot name " + k.id
	case snapshotID:
		return "snapshot " + k.id
	}
	return k.id
}

func canonical(id string) string {
	if d, err := volid.Decode(id); err == nil {
		if s, err := d.Encode(); err == nil {
			return s
		}
	}
	return id
}

// Set is a set of held keys. The zero value is ready to use.
type Set struct {
	mu sync.Mutex
	// held counts the holders of a key: -1 for an exclusive one, the
	// number of shared ones otherwise.
	held map[Key]int
}

// TryAcquire takes key and reports whether it was free (for a shared key:
// held by no exclusive holder).
func (s *Set) TryAcquire(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = make(map[Key]int)
	}
	b := key.base()
	n := s.held[b]
	switch {
	case key.shared && n >= 0:
		s.held[b] = n + 1
	case !key.shared && n == 0:
		s.held[b] = -1
	default:
		return false
	}
	return true
}

// Release frees key (one shared holder of it).
func (s *Set) Release(key Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := key.base()
	if n := s.held[b]; key.shared && n > 1 {
		s.held[b] = n - 1
		return
	}
	delete(s.held, b)
}

// TryAcquireAll takes every key or none of them; on success it returns the
// function that releases them all. A key named twice is taken once.
func (s *Set) TryAcquireAll(keys ...Key) (release func(), ok bool) {
	taken := make([]Key, 0, len(keys))
	for _, k := range keys {
		dup := false
		for _, t := range taken {
			dup = dup || t == k
		}
		if dup {
			continue
		}
		if !s.TryAcquire(k) {
			for _, t := range taken {
				s.Release(t)
			}
			return nil, false
		}
		taken = append(taken, k)
	}
	return func() {
		for _, k := range taken {
			s.Release(k)
		}
	}, true
}

// Acquire is TryAcquireAll that fails with csierr.ErrInProgress (Aborted)
// naming the keys when one of them is held.
func (s *Set) Acquire(keys ...Key) (release func(), err error) {
	release, ok := s.TryAcquireAll(keys...)
	if !ok {
		names := make([]string, len(keys))
		for i, k := range keys {
			names[i] = k.String()
		}
		return nil, csierr.Errorf(csierr.ErrInProgress, "an operation on %s is already in progress", strings.Join(names, ", "))
	}
	return release, nil
}
