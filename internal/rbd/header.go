package rbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// An image's header object (rbd_header.<id>) answers, through the rbd
// object class that librbd itself calls when it opens an image, what some
// decisions need without opening the image: opening costs a dozen
// sequential round trips, and as many again for every ancestor, which
// librbd opens too. Three class calls in one read operation say whether
// the image has a parent and how many snapshots it has.

// headerParent is a parent as the header records it: IDs, not names.
type headerParent struct {
	PoolID    int64
	Namespace string
	ImageID   string
	SnapID    uint64
}

// header is what Header reads.
type header struct {
	// Parent is nil when the image has no parent (never cloned, or
	// flattened: librbd's rule, a parent with no overlap at the head is
	// no parent of the head).
	Parent *headerParent
	// SnapIDs are the IDs of the image's snapshots, of every namespace
	// (the trash namespace included).
	SnapIDs []uint64
}

// cephNoSnap is CEPH_NOSNAP ((uint64)-2), the snapshot ID of an image's
// head.
const cephNoSnap = ^uint64(1)

// cephDecoder reads Ceph's little-endian encoding.
type cephDecoder struct {
	b   []byte
	err error
}

var errShort = errors.New("short buffer")

func (d *cephDecoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = errShort
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *cephDecoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *cephDecoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *cephDecoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *cephDecoder) str() string {
	n := d.u32()
	return string(d.take(int(n)))
}

// decodeParentSpec decodes the output of cls rbd.parent_get, a
// cls::rbd::ParentImageSpec: a versioned struct (version, compat version,
// length) of pool ID, pool namespace, image ID and snapshot ID.
func decodeParentSpec(b []byte) (headerParent, error) {
	d := (&cephDecoder{b: b}).versioned()
	var p headerParent
	p.PoolID = int64(d.u64())
	p.Namespace = d.str()
	p.ImageID = d.str()
	p.SnapID = d.u64()
	if d.err != nil {
		return headerParent{}, fmt.Errorf("parent spec: %w", d.err)
	}
	return p, nil
}

// decodeOverlap decodes the output of cls rbd.parent_overlap_get, an
// optional 64-bit overlap: present says whether the head has one.
func decodeOverlap(b []byte) (present bool, err error) {
	d := &cephDecoder{b: b}
	present = d.u8() != 0
	if present {
		d.u64()
	}
	if d.err != nil {
		return false, fmt.Errorf("parent overlap: %w", d.err)
	}
	return present, nil
}

// decodeSnapIDs decodes the output of cls rbd.get_snapcontext: the
// sequence number, then the IDs of the image's snapshots.
func decodeSnapIDs(b []byte) ([]uint64, error) {
	d := &cephDecoder{b: b}
	d.u64() // seq
	n := d.u32()
	if d.err == nil && len(d.b) < 8*int(n) {
		return nil, fmt.Errorf("snapshot context: %w", errShort)
	}
	ids := make([]uint64, 0, n)
	for range n {
		ids = append(ids, d.u64())
	}
	if d.err != nil {
		return nil, fmt.Errorf("snapshot context: %w", d.err)
	}
	return ids, nil
}

// snapNamespaceTrash is cls::rbd::SNAPSHOT_NAMESPACE_TYPE_TRASH: a
// snapshot removed while clones still read from it.
const snapNamespaceTrash = 2

// versioned opens a struct of Ceph's versioned encoding (version,
// compat version, length) and returns a decoder of its body.
func (d *cephDecoder) versioned() *cephDecoder {
	v := d.u8()
	d.u8() // compat version
	n := d.u32()
	body := &cephDecoder{b: d.take(int(n)), err: d.err}
	if body.err == nil && v < 1 {
		body.err = fmt.Errorf("struct version %d", v)
	}
	return body
}

// decodeSnapshotInfo decodes the output of cls rbd.snapshot_get, a
// cls::rbd::SnapshotInfo: ID, namespace (itself versioned: its type, then
// what that type holds), name, size at the snapshot, timestamp.
func decodeSnapshotInfo(b []byte) (snapshotInfo, error) {
	d := (&cephDecoder{b: b}).versioned()
	var s snapshotInfo
	s.ID = d.u64()
	ns := d.versioned()
	s.Trash = ns.u32() == snapNamespaceTrash
	s.Name = d.str()
	s.Size = d.u64()
	sec, nsec := d.u32(), d.u32()
	for _, err := range []error{d.err, ns.err} {
		if err != nil {
			return snapshotInfo{}, fmt.Errorf("snapshot info: %w", err)
		}
	}
	s.Created = time.Unix(int64(sec), int64(nsec))
	return s, nil
}

// decodeHeader makes a header of the three class call outputs.
func decodeHeader(parent, overlap, snapc []byte) (*header, error) {
	spec, err := decodeParentSpec(parent)
	if err != nil {
		return nil, err
	}
	present, err := decodeOverlap(overlap)
	if err != nil {
		return nil, err
	}
	ids, err := decodeSnapIDs(snapc)
	if err != nil {
		return nil, err
	}
	h := &header{SnapIDs: ids}
	if spec.PoolID >= 0 && spec.ImageID != "" && present {
		h.Parent = &spec
	}
	return h, nil
}
