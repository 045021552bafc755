package rbd

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"
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
	if err != nil || h.Parent != nil || len(h.SnapIDs) != 1 || h.SnapIDs[0] != 0x3ca {
		t.Errorf("no parent, one snapshot: %+v, %v", h, err)
	}
	h, err = decodeHeader(parent, overlap, noSnaps)
	if err != nil || h.Parent == nil || *h.Parent != (headerParent{PoolID: 2, Namespace: "ns", ImageID: "10a2b3", SnapID: 4}) || len(h.SnapIDs) != 0 {
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

// snapshotInfoBytes encodes a cls::rbd::SnapshotInfo as the OSD does.
func snapshotInfoBytes(id uint64, namespace []byte, name string, size uint64, sec, nsec uint32) []byte {
	le := binary.LittleEndian
	versioned := func(v uint8, body []byte) []byte {
		return append(le.AppendUint32([]byte{v, 1}, uint32(len(body))), body...)
	}
	str := func(b []byte, s string) []byte { return append(le.AppendUint32(b, uint32(len(s))), s...) }
	body := le.AppendUint64(nil, id)
	body = append(body, versioned(2, namespace)...)
	body = str(body, name)
	body = le.AppendUint64(body, size)
	body = le.AppendUint32(le.AppendUint32(body, sec), nsec)
	body = le.AppendUint32(body, 3) // child count
	return versioned(1, body)
}

func TestDecodeSnapshotInfo(t *testing.T) {
	le := binary.LittleEndian
	user := le.AppendUint32(nil, 0)
	// The trash namespace carries the snapshot's former name and type.
	trash := le.AppendUint32(nil, snapNamespaceTrash)
	trash = append(le.AppendUint32(trash, 4), "snap"...)
	trash = le.AppendUint32(trash, 0)

	b := snapshotInfoBytes(7, user, "csi-snap-1", 8<<20, 1700000000, 5)
	s, err := decodeSnapshotInfo(b)
	if err != nil || s.ID != 7 || s.Name != "csi-snap-1" || s.Size != 8<<20 || s.Trash || !s.Created.Equal(time.Unix(1700000000, 5)) {
		t.Errorf("user snapshot: %+v, %v", s, err)
	}
	s, err = decodeSnapshotInfo(snapshotInfoBytes(9, trash, "2d7e0b6c-uuid", 4<<20, 1, 0))
	if err != nil || s.ID != 9 || s.Name != "2d7e0b6c-uuid" || s.Size != 4<<20 || !s.Trash {
		t.Errorf("trash snapshot: %+v, %v", s, err)
	}
	for _, bad := range [][]byte{b[:5], b[:20], b[:len(b)-14], append([]byte{0}, b[1:]...)} {
		if s, err := decodeSnapshotInfo(bad); err == nil {
			t.Errorf("truncated or bad input decoded: %+v", s)
		}
	}

	ids, err := decodeSnapIDs(unhex(t, "ca03000000000000"+"02000000"+"ca03000000000000"+"0500000000000000"))
	if err != nil || len(ids) != 2 || ids[0] != 0x3ca || ids[1] != 5 {
		t.Errorf("snapshot IDs: %v, %v", ids, err)
	}
	if ids, err := decodeSnapIDs(unhex(t, "ca03000000000000"+"ffffff7f")); err == nil {
		t.Errorf("a count past the buffer decoded: %v", ids)
	}
}
