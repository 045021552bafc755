//go:build integration

package journal_test

import (
	"errors"
	"testing"

	"github.com/ceph/go-ceph/rados"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// TestSetOmapKeyIfAbsentOnRADOS checks the one conditional write the
// journal's Claim relies on against a real OSD: set when the key is
// absent, refused (value kept) when it is set, and a missing object
// reported as such without creating it; and the guarded removal that
// takes a timed-out reservation back.
func TestSetOmapKeyIfAbsentOnRADOS(t *testing.T) {
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, "rbd")
	s := journal.RadosStore{IO: io}
	oid := "cephcsi-test.setifabsent." + uuid.NewString()
	t.Cleanup(func() { _ = io.Delete(oid) })

	if err := s.SetOmapKeyIfAbsent(oid, "k", "v1"); !errors.Is(err, journal.ErrNotFound) {
		t.Fatalf("on a missing object: %v, want ErrNotFound", err)
	}
	if _, err := io.Stat(oid); !errors.Is(err, rados.ErrNotFound) {
		t.Fatalf("the refused write made the object (stat: %v)", err)
	}
	if err := s.SetOmap(oid, map[string]string{"other": "x"}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOmapKeyIfAbsent(oid, "k", "v1"); err != nil {
		t.Fatalf("absent key: %v", err)
	}
	if err := s.SetOmapKeyIfAbsent(oid, "k", "v2"); !errors.Is(err, journal.ErrKeyExists) {
		t.Fatalf("present key: %v, want ErrKeyExists", err)
	}
	got, err := s.GetOmap(oid, []string{"k", "other"})
	if err != nil {
		t.Fatal(err)
	}
	if got["k"] != "v1" || got["other"] != "x" {
		t.Fatalf("omap after the refused write = %v, want k=v1 other=x", got)
	}
	// The guarded removal: another value is left, the right one removed.
	if err := s.RemoveOmapKeyIfValue(oid, "k", "v2"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetOmap(oid, []string{"k"}); err != nil || got["k"] != "v1" {
		t.Fatalf("after removing k=v2: %v, %v; want k=v1 kept", got, err)
	}
	if err := s.RemoveOmapKeyIfValue(oid, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetOmap(oid, []string{"k", "other"}); err != nil || len(got) != 1 || got["other"] != "x" {
		t.Fatalf("after removing k=v1: %v, %v; want only other=x", got, err)
	}
	if err := s.RemoveOmapKeyIfValue(oid+".missing", "k", "v1"); err != nil {
		t.Fatalf("on a missing object: %v", err)
	}
}

// TestClaimOnRADOS: a claim of a new name in an existing directory makes
// one key and one entry object; claiming it again returns that entry.
func TestClaimOnRADOS(t *testing.T) {
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, "rbd")
	s := journal.RadosStore{IO: io}
	j := journal.Volumes("cephcsi-test-" + uuid.NewString()[:8])
	t.Cleanup(func() { _ = io.Delete(j.Directory()) })

	var made []*journal.Entry
	for _, name := range []string{"pvc-a", "pvc-b"} { // the first makes the directory
		e, fresh, err := j.Claim(s, name, "csi-vol-", journal.Entry{Request: "digest-" + name})
		if err != nil || !fresh {
			t.Fatalf("claim %s = %+v, %v, %v", name, e, fresh, err)
		}
		t.Cleanup(func() { _ = io.Delete(j.EntryObject(e.UUID)) })
		made = append(made, e)
	}
	again, fresh, err := j.Claim(s, "pvc-b", "csi-vol-", journal.Entry{Request: "other"})
	if err != nil || fresh || again.UUID != made[1].UUID || again.Request != "digest-pvc-b" {
		t.Fatalf("repeated claim = %+v, %v, %v; want the entry %s", again, fresh, err, made[1].UUID)
	}
	dir, err := s.GetOmap(j.Directory(), []string{"csi.volume.pvc-a", "csi.volume.pvc-b"})
	if err != nil {
		t.Fatal(err)
	}
	if dir["csi.volume.pvc-a"] != made[0].UUID || dir["csi.volume.pvc-b"] != made[1].UUID {
		t.Fatalf("directory = %v", dir)
	}
	for _, e := range made {
		got, err := j.Get(s, e.UUID)
		if err != nil || got.RequestName != e.RequestName || got.ImageName != "csi-vol-"+e.UUID {
			t.Fatalf("entry object of %s = %+v, %v", e.RequestName, got, err)
		}
	}
}
