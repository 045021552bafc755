package cephfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/rados"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// A snapshot-backed volume mounts its snapshot directly, so the snapshot
// must outlive DeleteSnapshot while such volumes exist. References are kept
// in a RADOS object next to the journal, in the layout ceph-csi uses, so
// either driver can finish what the other started:
//
//	object rt-backingsnapshot-<snapshot ID>
//	  xattr csi.ceph.com/rt-version  uint32 big-endian, 1
//	  data                           uint32 big-endian: number of counted refs
//	  omap  <ref key> -> one byte    1: counted, 2: masked (kept, not counted)
//
// The refs are the snapshot ID itself (masked once DeleteSnapshot ran) and
// the ID of each volume backed by it. The object is removed when its count
// drops to zero; whoever removes it deletes the snapshot.
const (
	refObjectPrefix = "rt-backingsnapshot-"
	refVersionXattr = "csi.ceph.com/rt-version"
	refVersion      = 1

	refCounted byte = 1
	refMasked  byte = 2

	// refRetries bounds retries after a concurrent writer changed the object.
	refRetries = 10
)

func backingRefObject(snapshotID string) string { return refObjectPrefix + snapshotID }

// refTracker keeps reference objects in one pool and namespace.
type refTracker struct{ io *rados.IOContext }

var errRefConflict = errors.New("reference object changed concurrently")

// version reads the object's layout version and the object's RADOS version
// (used to make the following update conditional). found is false when the
// object does not exist.
func (r refTracker) version(oid string) (found bool, gen uint64, err error) {
	buf := make([]byte, 4)
	n, err := r.io.GetXattr(oid, refVersionXattr, buf)
	if errors.Is(err, rados.ErrNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("reading %s: %w", oid, err)
	}
	if n != 4 || binary.BigEndian.Uint32(buf) != refVersion {
		return false, 0, fmt.Errorf("%s has an unknown layout version", oid)
	}
	gen, err = r.io.GetLastVersion()
	return true, gen, err
}

// read returns the counted total and the types of the given keys present,
// provided the object is still at version gen.
func (r refTracker) read(oid string, gen uint64, keys []string) (uint32, map[string]byte, error) {
	op := rados.CreateReadOp()
	defer op.Release()
	op.AssertVersion(gen)
	buf := make([]byte, 4)
	readStep := op.Read(0, buf)
	omap := op.GetOmapValuesByKeys(keys)
	if err := op.Operate(r.io, oid, rados.OperationNoFlag); err != nil {
		return 0, nil, conflictOr(err)
	}
	if readStep.BytesRead != 4 {
		return 0, nil, fmt.Errorf("%s: reference count is %d bytes, not 4", oid, readStep.BytesRead)
	}
	found := map[string]byte{}
	for {
		kv, err := omap.Next()
		if err != nil {
			return 0, nil, err
		}
		if kv == nil {
			break
		}
		if len(kv.Value) != 1 || (kv.Value[0] != refCounted && kv.Value[0] != refMasked) {
			return 0, nil, fmt.Errorf("%s: bad reference type for %q", oid, kv.Key)
		}
		found[kv.Key] = kv.Value[0]
	}
	return binary.BigEndian.Uint32(buf), found, nil
}

// conflictOr turns the errors of a failed version assertion, and of an object
// created or removed in between, into errRefConflict.
func conflictOr(err error) error {
	var opErr rados.OperationError
	if errors.As(err, &opErr) {
		err = opErr.OpError
	}
	if csierr.IsErrno(err, syscall.ERANGE) || csierr.IsErrno(err, syscall.EOVERFLOW) ||
		csierr.IsErrno(err, syscall.ECANCELED) || csierr.IsErrno(err, syscall.EEXIST) ||
		errors.Is(err, rados.ErrNotFound) {
		return errRefConflict
	}
	return err
}

func countBytes(n uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, n)
	return b
}

// add adds counted refs that are not yet present (masked ones stay masked),
// creating the object when missing.
func (r refTracker) add(oid string, refs ...string) error {
	return retryConflicts(func() error {
		found, gen, err := r.version(oid)
		if err != nil {
			return err
		}
		if !found {
			op := rados.CreateWriteOp()
			defer op.Release()
			op.Create(rados.CreateExclusive)
			op.SetXattr(refVersionXattr, countBytes(refVersion))
			kv := map[string][]byte{}
			for _, ref := range refs {
				kv[ref] = []byte{refCounted}
			}
			op.SetOmap(kv)
			op.WriteFull(countBytes(uint32(len(kv))))
			return conflictOr(op.Operate(r.io, oid, rados.OperationNoFlag))
		}
		total, have, err := r.read(oid, gen, refs)
		if err != nil {
			return err
		}
		kv := map[string][]byte{}
		for _, ref := range refs {
			if _, ok := have[ref]; !ok {
				kv[ref] = []byte{refCounted}
			}
		}
		if len(kv) == 0 {
			return nil
		}
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(gen)
		op.WriteFull(countBytes(total + uint32(len(kv))))
		op.SetOmap(kv)
		return conflictOr(op.Operate(r.io, oid, rados.OperationNoFlag))
	})
}

// remove drops counted refs (drop) and masks others (mask). It reports
// whether no counted ref is left, in which case the object is gone; a missing
// object counts as gone.
func (r refTracker) remove(oid string, drop, mask []string) (gone bool, err error) {
	err = retryConflicts(func() error {
		found, gen, err := r.version(oid)
		if err != nil || !found {
			gone = err == nil
			return err
		}
		total, have, err := r.read(oid, gen, append(append([]string{}, drop...), mask...))
		if err != nil {
			return err
		}
		var rm []string
		set := map[string][]byte{}
		var less uint32
		for _, ref := range drop {
			if t, ok := have[ref]; ok {
				rm = append(rm, ref)
				if t == refCounted {
					less++
				}
			}
		}
		for _, ref := range mask {
			switch t, ok := have[ref]; {
			case !ok:
				set[ref] = []byte{refMasked}
			case t == refCounted:
				set[ref] = []byte{refMasked}
				less++
			}
		}
		if len(rm) == 0 && len(set) == 0 {
			gone = total == 0
			return nil
		}
		if less > total {
			return fmt.Errorf("%s: reference count %d is below the %d refs being removed", oid, total, less)
		}
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(gen)
		if total == less {
			op.Remove()
		} else {
			op.WriteFull(countBytes(total - less))
			if len(rm) > 0 {
				op.RmOmapKeys(rm)
			}
			if len(set) > 0 {
				op.SetOmap(set)
			}
		}
		if err := conflictOr(op.Operate(r.io, oid, rados.OperationNoFlag)); err != nil {
			return err
		}
		gone = total == less
		return nil
	})
	return gone, err
}

func retryConflicts(f func() error) error {
	var err error
	for i := 0; i < refRetries; i++ {
		if err = f(); !errors.Is(err, errRefConflict) {
			return err
		}
	}
	return fmt.Errorf("updating a snapshot reference object: %w after %d attempts", err, refRetries)
}
