package journal

import (
	"errors"

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

// RemoveOmapKeys implements Store.
func (r RadosStore) RemoveOmapKeys(oid string, keys []string) error {
	op := rados.CreateWriteOp()
	defer op.Release()
	op.AssertExists()
	op.RmOmapKeys(keys)
	err := op.Operate(r.IO, oid, rados.OperationNoFlag)
	if isNotFound(err) {
		return nil
	}
	return err
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
