package journal

import (
	"errors"
	"testing"
)

// memStore is an in-memory Store for unit tests; the integration tests run the
// same journal on RADOS.
type memStore struct {
	objects map[string]map[string]string
	reads   int // GetOmap calls: round trips a new name should not need
}

func newMemStore() *memStore { return &memStore{objects: map[string]map[string]string{}} }

func (m *memStore) GetOmap(oid string, keys []string) (map[string]string, error) {
	m.reads++
	obj, ok := m.objects[oid]
	if !ok {
		return nil, ErrNotFound
	}
	out := map[string]string{}
	for _, k := range keys {
		if v, ok := obj[k]; ok {
			out[k] = v
		}
	}
	return out, nil
}

func (m *memStore) SetOmap(oid string, kv map[string]string, exclusive bool) error {
	obj, ok := m.objects[oid]
	if ok && exclusive {
		return errors.New("exists")
	}
	if !ok {
		obj = map[string]string{}
		m.objects[oid] = obj
	}
	for k, v := range kv {
		obj[k] = v
	}
	return nil
}

func (m *memStore) SetOmapKeyIfAbsent(oid, key, value string) error {
	obj, ok := m.objects[oid]
	if !ok {
		return ErrNotFound
	}
	if obj[key] != "" {
		return ErrKeyExists
	}
	obj[key] = value
	return nil
}

func (m *memStore) RemoveOmapKeyIfValue(oid, key, value string) error {
	if obj, ok := m.objects[oid]; ok && obj[key] == value {
		delete(obj, key)
	}
	return nil
}

func (m *memStore) Remove(oid string) error { delete(m.objects, oid); return nil }

func TestReserveLookupRelease(t *testing.T) {
	s := newMemStore()
	j := Volumes("default")
	if e, err := j.Lookup(s, "pvc-1"); err != nil || e != nil {
		t.Fatalf("Lookup on empty journal = %v, %v", e, err)
	}
	e, err := j.reserve(s, "pvc-1", "csi-vol-", Entry{JournalPool: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if e.ImageName != "csi-vol-"+e.UUID || len(e.UUID) != 36 {
		t.Fatalf("entry = %+v", e)
	}
	// The exact keys ceph-csi reads.
	if got := s.objects["csi.volumes.default"]["csi.volume.pvc-1"]; got != e.UUID {
		t.Fatalf("directory key = %q", got)
	}
	obj := s.objects["csi.volume."+e.UUID]
	if obj["csi.volname"] != "pvc-1" || obj["csi.imagename"] != e.ImageName || obj["csi.journalpool"] != "other" {
		t.Fatalf("entry object = %v", obj)
	}
	if _, has := obj["csi.imageid"]; has {
		t.Fatal("image id written before it is known")
	}
	if err := j.SetImageID(s, e.UUID, "abc123"); err != nil {
		t.Fatal(err)
	}
	got, err := j.Lookup(s, "pvc-1")
	if err != nil || got == nil || got.UUID != e.UUID || got.ImageID != "abc123" {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if err := j.Release(s, got); err != nil {
		t.Fatal(err)
	}
	if len(s.objects["csi.volumes.default"]) != 0 || s.objects["csi.volume."+e.UUID] != nil {
		t.Fatalf("Release left %v", s.objects)
	}
	if err := j.Release(s, got); err != nil {
		t.Fatalf("second Release: %v", err)
	}
}

func TestLookupRepairsDanglingKey(t *testing.T) {
	s := newMemStore()
	j := Snapshots("default")
	// A crash after the directory key was written, before the entry object.
	s.objects["csi.snaps.default"] = map[string]string{"csi.snap.snap-1": "00000000-0000-0000-0000-000000000001"}
	e, err := j.Lookup(s, "snap-1")
	if err != nil || e != nil {
		t.Fatalf("Lookup = %+v, %v; want none", e, err)
	}
	if _, left := s.objects["csi.snaps.default"]["csi.snap.snap-1"]; left {
		t.Fatal("dangling key not removed")
	}
}

func TestReleaseKeepsNewerReservationOfSameName(t *testing.T) {
	s := newMemStore()
	j := Volumes("default")
	old, _ := j.reserve(s, "pvc", "csi-vol-", Entry{})
	newer, _ := j.reserve(s, "pvc", "csi-vol-", Entry{})
	if err := j.Release(s, old); err != nil {
		t.Fatal(err)
	}
	got, err := j.Lookup(s, "pvc")
	if err != nil || got == nil || got.UUID != newer.UUID {
		t.Fatalf("Lookup after releasing the old entry = %+v, %v", got, err)
	}
}

func TestSnapshotSourceKey(t *testing.T) {
	s := newMemStore()
	j := Snapshots("inst")
	e, err := j.reserve(s, "snap", "csi-snap-", Entry{Source: "csi-vol-x"})
	if err != nil {
		t.Fatal(err)
	}
	obj := s.objects["csi.snap."+e.UUID]
	if obj["csi.snapname"] != "snap" || obj["csi.source"] != "csi-vol-x" || obj["csi.imagename"] != "csi-snap-"+e.UUID {
		t.Fatalf("snapshot entry = %v", obj)
	}
	if _, ok := s.objects["csi.snaps.inst"]; !ok {
		t.Fatal("instance ID not used in the directory object name")
	}
}

func TestClaim(t *testing.T) {
	s := newMemStore()
	j := Volumes("default")
	dir := "csi.volumes.default"

	// No directory yet: the first claim reserves through reserve.
	first, fresh, err := j.Claim(s, "pvc-1", "csi-vol-", Entry{Request: "r1"})
	if err != nil || !fresh || s.objects[dir]["csi.volume.pvc-1"] != first.UUID {
		t.Fatalf("first claim = %+v, %v, %v; directory %v", first, fresh, err, s.objects[dir])
	}
	// A new name in an existing directory: reserved in place.
	second, fresh, err := j.Claim(s, "pvc-2", "csi-vol-", Entry{Request: "r2"})
	if err != nil || !fresh || second.UUID == first.UUID || s.objects[dir]["csi.volume.pvc-2"] != second.UUID {
		t.Fatalf("second claim = %+v, %v, %v", second, fresh, err)
	}
	if s.reads != 0 {
		t.Fatalf("claims of two new names read the journal %d times", s.reads)
	}
	if obj := s.objects["csi.volume."+second.UUID]; obj["csi.volname"] != "pvc-2" || obj["cephcsi.request"] != "r2" {
		t.Fatalf("entry object of the second claim = %v", obj)
	}
	// The same name again: the existing entry, not a new one, whatever the
	// template says.
	again, fresh, err := j.Claim(s, "pvc-2", "csi-vol-", Entry{Request: "other"})
	if err != nil || fresh || again.UUID != second.UUID || again.Request != "r2" {
		t.Fatalf("repeated claim = %+v, %v, %v", again, fresh, err)
	}
	if n := len(s.objects); n != 3 {
		t.Fatalf("%d objects after a repeated claim, want the directory and two entries: %v", n, s.objects)
	}
	// A key whose entry object is gone (a crash inside a reservation):
	// replaced by a new reservation.
	delete(s.objects, "csi.volume."+second.UUID)
	third, fresh, err := j.Claim(s, "pvc-2", "csi-vol-", Entry{Request: "r3"})
	if err != nil || !fresh || third.UUID == second.UUID || s.objects[dir]["csi.volume.pvc-2"] != third.UUID {
		t.Fatalf("claim over a dangling key = %+v, %v, %v", third, fresh, err)
	}
}

// A claim whose writes fail leaves no key for its name, and removes no
// other name's key.
func TestClaimFailsCleanly(t *testing.T) {
	failing := &failingEntryStore{memStore: newMemStore()}
	landing := &landingStore{memStore: newMemStore()}
	for _, tc := range []struct {
		what string
		s    Store
		mem  *memStore
		fail func()
	}{
		{"the entry object cannot be made", failing, failing.memStore, func() { failing.failEntries = true }},
		{"the directory write times out after it landed", landing, landing.memStore, func() { landing.timeOut = true }},
	} {
		t.Run(tc.what, func(t *testing.T) {
			j := Volumes("default")
			if _, _, err := j.Claim(tc.s, "pvc-0", "csi-vol-", Entry{}); err != nil {
				t.Fatal(err)
			}
			tc.fail()
			if e, fresh, err := j.Claim(tc.s, "pvc-1", "csi-vol-", Entry{}); err == nil || e != nil || fresh {
				t.Fatalf("failed claim = %+v, %v, %v", e, fresh, err)
			}
			if v, has := tc.mem.objects["csi.volumes.default"]["csi.volume.pvc-1"]; has {
				t.Fatalf("the failed claim left its directory key %q", v)
			}
			if _, has := tc.mem.objects["csi.volumes.default"]["csi.volume.pvc-0"]; !has {
				t.Fatal("the cleanup removed another name's key")
			}
		})
	}
}

// landingStore's conditional set reports a timeout after it was applied,
// as a write cut off from its OSD and delivered later does.
type landingStore struct {
	*memStore
	timeOut bool
}

func (s *landingStore) SetOmapKeyIfAbsent(oid, key, value string) error {
	if err := s.memStore.SetOmapKeyIfAbsent(oid, key, value); err != nil || !s.timeOut {
		return err
	}
	return errors.New("connection timed out")
}

// failingEntryStore fails the creation of entry objects when told to.
type failingEntryStore struct {
	*memStore
	failEntries bool
}

func (s *failingEntryStore) SetOmap(oid string, kv map[string]string, exclusive bool) error {
	if s.failEntries && exclusive {
		return errors.New("injected")
	}
	return s.memStore.SetOmap(oid, kv, exclusive)
}
