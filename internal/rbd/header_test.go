package rbd

import (
	"encoding/hex"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The encodings as a Tentacle OSD returned them (header_integration_test.go
// checks the decoded results against librbd on a live cluster).
func TestDecodeHeader(t *testing.T) {
	// No parent: pool -1, empty namespace and image ID, CEPH_NOSNAP.
	noParent := unhex(t, "010118000000"+"ffffffffffffffff"+"00000000"+"00000000"+"feffffffffffffff")
	// Pool 2, namespace "ns", image "10a2b3", snapshot 4.
	parent := unhex(t, "010120000000"+"0200000000000000"+"020000006e73"+"06000000313061326233"+"0400000000000000")
	snapc := unhex(t, "ca03000000000000"+"01000000"+"ca03000000000000")
	noSnaps := unhex(t, "0000000000000000"+"00000000")
	overlap := unhex(t, "01"+"0000000001000000")
	noOverlap := unhex(t, "00")

	h, err := decodeHeader(noParent, noOverlap, snapc)
	if err != nil || h.Parent != nil || h.Snapshots != 1 {
		t.Errorf("no parent, one snapshot: %+v, %v", h, err)
	}
	h, err = decodeHeader(parent, overlap, noSnaps)
	if err != nil || h.Parent == nil || *h.Parent != (headerParent{PoolID: 2, Namespace: "ns", ImageID: "10a2b3", SnapID: 4}) || h.Snapshots != 0 {
		t.Errorf("clone: %+v, %v", h, err)
	}
	// A flattened head whose snapshot still reads from the parent.
	if h, err = decodeHeader(parent, noOverlap, snapc); err != nil || h.Parent != nil {
		t.Errorf("parent without overlap at the head: %+v, %v; want no parent", h, err)
	}
	for _, bad := range [][3][]byte{
		{parent[:10], overlap, snapc},
		{parent, overlap[:3], snapc},
		{parent, overlap, snapc[:14]},
		{unhex(t, "000118000000"), overlap, snapc},
	} {
		if h, err := decodeHeader(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("truncated or bad input decoded: %+v", h)
		}
	}
}
