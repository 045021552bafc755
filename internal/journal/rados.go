package journal

/*
#cgo LDFLAGS: -lrados
#include <stdlib.h>
#include <rados/librados.h>

// omap_guarded makes one write operation on oid that sets key to val, or
// with remove drops key, only when the key's value is want. The OSD
// compares a missing key as empty, so want "" means "key absent"; any
// other value fails the whole operation with -ECANCELED. A missing object
// is -ENOENT.
static int omap_guarded(rados_ioctx_t io, const char *oid, const char *key, size_t key_len,
                        const char *want, size_t want_len, const char *val, size_t val_len, int remove) {
	rados_write_op_t op = rados_create_write_op();
	int cmp = 0;
	rados_write_op_omap_cmp2(op, key, LIBRADOS_CMPXATTR_OP_EQ, want, key_len, want_len, &cmp);
	if (remove)
		rados_write_op_omap_rm_keys2(op, &key, &key_len, 1);
	else
		rados_write_op_omap_set2(op, &key, &val, &key_len, &val_len, 1);
	int r = rados_write_op_operate2(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
)

// RadosStore is a Store on one pool (and RADOS namespace).
type RadosStore struct{ IO *rados.IOContext }

// GetOmap implements Store.
func (r RadosStore) GetOmap(oid string, keys []string) (map[string]string, error) {
	op := rados.CreateReadOp()
	defer op.Release()
	op.AssertExists()
	step := op.GetOmapValuesByKeys(keys)
	if err := op.Operate(r.IO, oid, rados.OperationNoFlag); err != nil {
		if isNotFound(err) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	out := make(map[string]string, len(keys))
	for {
		kv, err := step.Next()
		if err != nil {
			return nil, err
		}
		if kv == nil {
			return out, nil
		}
		out[kv.Key] = string(kv.Value)
	}
}

// SetOmap implements Store.
func (r RadosStore) SetOmap(oid string, kv map[string]string, exclusive bool) error {
	op := rados.CreateWriteOp()
	defer op.Release()
	if exclusive {
		op.Create(rados.CreateExclusive)
	}
	pairs := make(map[string][]byte, len(kv))
	for k, v := range kv {
		pairs[k] = []byte(v)
	}
	op.SetOmap(pairs)
	return op.Operate(r.IO, oid, rados.OperationNoFlag)
}

// SetOmapKeyIfAbsent implements Store. go-ceph's WriteOp has no omap
// comparison, so the guarded operations go through librados directly, on
// go-ceph's IOContext.
func (r RadosStore) SetOmapKeyIfAbsent(oid, key, value string) error {
	err := r.guarded(oid, key, "", value, false)
	switch {
	case errors.Is(err, syscall.ECANCELED):
		return ErrKeyExists
	case errors.Is(err, syscall.ENOENT):
		return ErrNotFound
	case err != nil:
		return fmt.Errorf("setting omap key on %s: %w", oid, err)
	}
	return nil
}

// RemoveOmapKeyIfValue implements Store.
func (r RadosStore) RemoveOmapKeyIfValue(oid, key, value string) error {
	err := r.guarded(oid, key, value, "", true)
	if err == nil || errors.Is(err, syscall.ECANCELED) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return fmt.Errorf("removing omap key from %s: %w", oid, err)
}

func (r RadosStore) guarded(oid, key, want, value string, remove bool) error {
	cOid, cKey, cWant, cVal := C.CString(oid), C.CString(key), C.CString(want), C.CString(value)
	defer C.free(unsafe.Pointer(cOid))
	defer C.free(unsafe.Pointer(cKey))
	defer C.free(unsafe.Pointer(cWant))
	defer C.free(unsafe.Pointer(cVal))
	var rm C.int
	if remove {
		rm = 1
	}
	ret := C.omap_guarded(C.rados_ioctx_t(r.IO.Pointer()), cOid, cKey, C.size_t(len(key)),
		cWant, C.size_t(len(want)), cVal, C.size_t(len(value)), rm)
	if ret != 0 {
		return syscall.Errno(-ret)
	}
	return nil
}

// Remove implements Store.
func (r RadosStore) Remove(oid string) error {
	err := r.IO.Delete(oid)
	if errors.Is(err, rados.ErrNotFound) {
		return nil
	}
	return err
}

// isNotFound sees ENOENT also inside the OperationError of a compound op,
// which does not unwrap to its parts.
func isNotFound(err error) bool {
	if errors.Is(err, rados.ErrNotFound) {
		return true
	}
	var opErr rados.OperationError
	return errors.As(err, &opErr) && errors.Is(opErr.OpError, rados.ErrNotFound)
}
