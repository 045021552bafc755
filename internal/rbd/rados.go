package rbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/ceph/go-ceph/rbd/admin"
	"golang.org/x/sync/singleflight"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
)

// radosCluster is the cluster seam on a live go-ceph connection.
type radosCluster struct {
	conn      *cephconn.Conn
	namespace string // config.json's rbd.radosNamespace
}

func (c *radosCluster) Close() { c.conn.Release() }

func (c *radosCluster) OpenPool(name string, id int64) (pool, error) {
	if name == "" {
		var err error
		if name, err = c.conn.GetPoolByID(id); err != nil {
			if csierr.IsNotFound(err) {
				return nil, fmt.Errorf("%w: pool ID %d", errPoolNotFound, id)
			}
			return nil, fmt.Errorf("looking up pool ID %d: %w", id, err)
		}
	}
	io, err := c.conn.OpenIOContext(name)
	if err != nil {
		if csierr.IsNotFound(err) || errors.Is(err, rados.ErrNotFound) {
			return nil, fmt.Errorf("%w: %q", errPoolNotFound, name)
		}
		return nil, fmt.Errorf("opening pool %q: %w", name, err)
	}
	io.SetNamespace(c.namespace)
	return &radosPool{conn: c.conn.Conn, io: io, name: name, id: io.GetPoolID(), namespace: c.namespace}, nil
}

type radosPool struct {
	conn      *rados.Conn
	io        *rados.IOContext
	name      string
	id        int64
	namespace string
}

func (p *radosPool) Name() string           { return p.name }
func (p *radosPool) ID() int64              { return p.id }
func (p *radosPool) Namespace() string      { return p.namespace }
func (p *radosPool) Journal() journal.Store { return journal.RadosStore{IO: p.io} }
func (p *radosPool) Close()                 { p.io.Destroy() }

func (p *radosPool) HasPool(name string) (bool, error) {
	_, err := p.conn.GetPoolByName(name)
	if errors.Is(err, rados.ErrNotFound) || csierr.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// goCephOptions turns o into librbd image options: format 2 and, for a
// clone, clone format 2 (no snapshot protection needed).
func goCephOptions(o imageOptions, clone bool) (*rbd.ImageOptions, error) {
	opts := rbd.NewRbdImageOptions()
	set := []struct {
		opt rbd.ImageOption
		v   uint64
	}{
		{rbd.ImageOptionFormat, 2},
		{rbd.ImageOptionFeatures, o.Features},
	}
	if clone {
		set = append(set, struct {
			opt rbd.ImageOption
			v   uint64
		}{rbd.ImageOptionCloneFormat, 2})
	}
	if o.StripeUnit != 0 {
		set = append(set, struct {
			opt rbd.ImageOption
			v   uint64
		}{rbd.ImageOptionStripeUnit, o.StripeUnit}, struct {
			opt rbd.ImageOption
			v   uint64
		}{rbd.ImageOptionStripeCount, o.StripeCount})
	}
	if o.ObjectOrder != 0 {
		set = append(set, struct {
			opt rbd.ImageOption
			v   uint64
		}{rbd.ImageOptionOrder, o.ObjectOrder})
	}
	for _, s := range set {
		if err := opts.SetUint64(s.opt, s.v); err != nil {
			opts.Destroy()
			return nil, err
		}
	}
	if o.DataPool != "" {
		if err := opts.SetString(rbd.ImageOptionDataPool, o.DataPool); err != nil {
			opts.Destroy()
			return nil, err
		}
	}
	return opts, nil
}

func (p *radosPool) CreateImage(name string, size uint64, o imageOptions) error {
	opts, err := goCephOptions(o, false)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	return rbd.CreateImage(p.io, name, size, opts)
}

func (p *radosPool) CloneImage(from pool, parent, snap, dst string, o imageOptions) error {
	src, ok := from.(*radosPool)
	if !ok {
		return fmt.Errorf("cloning from a pool of another cluster")
	}
	opts, err := goCephOptions(o, true)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	return rbd.CloneImage(src.io, parent, snap, p.io, dst, opts)
}

func (p *radosPool) OpenImage(name string, readOnly bool) (image, error) {
	var img *rbd.Image
	var err error
	if readOnly {
		img, err = rbd.OpenImageReadOnly(p.io, name, rbd.NoSnapshot)
	} else {
		img, err = rbd.OpenImage(p.io, name, rbd.NoSnapshot)
	}
	if err != nil {
		return nil, err
	}
	return &radosImage{img: img, conn: p.conn}, nil
}

func (p *radosPool) OpenImageByID(id string, readOnly bool) (image, error) {
	var img *rbd.Image
	var err error
	if readOnly {
		img, err = rbd.OpenImageByIdReadOnly(p.io, id, rbd.NoSnapshot)
	} else {
		img, err = rbd.OpenImageById(p.io, id, rbd.NoSnapshot)
	}
	if err != nil {
		return nil, err
	}
	return &radosImage{img: img, conn: p.conn}, nil
}

func (p *radosPool) RemoveImage(name string) error { return rbd.RemoveImage(p.io, name) }
func (p *radosPool) TrashImage(name string) error  { return rbd.GetImage(p.io, name).Trash(0) }
func (p *radosPool) RemoveTrashed(id string) error { return rbd.TrashRemove(p.io, id, false) }

func (p *radosPool) Trash() ([]trashEntry, error) {
	list, err := rbd.GetTrashList(p.io)
	if err != nil {
		return nil, err
	}
	out := make([]trashEntry, 0, len(list))
	for _, e := range list {
		out = append(out, trashEntry{ID: e.Id, Name: e.Name})
	}
	return out, nil
}

// ImageID reads the image's rbd_id object: one RADOS read instead of
// opening the image.
func (p *radosPool) ImageID(name string) (string, error) {
	buf := make([]byte, 128)
	n, err := p.io.Read("rbd_id."+name, buf, 0)
	if err != nil {
		return "", err
	}
	// A Ceph-encoded string: 32-bit little-endian length, then the bytes.
	if n < 4 {
		return "", fmt.Errorf("image %s: short rbd_id object", name)
	}
	l := int(binary.LittleEndian.Uint32(buf[:4]))
	if 4+l > n {
		return "", fmt.Errorf("image %s: malformed rbd_id object", name)
	}
	return string(buf[4 : 4+l]), nil
}

// headerCalls are the class calls librbd makes, when it opens an image,
// for what header holds, added to one read operation.
type headerCalls struct {
	parent, overlap, snapc *rados.ReadOpExecStep
}

func addHeaderCalls(op *rados.ReadOp) headerCalls {
	noSnap := binary.LittleEndian.AppendUint64(nil, cephNoSnap)
	return headerCalls{
		parent:  op.Exec("rbd", "parent_get", nil),
		overlap: op.Exec("rbd", "parent_overlap_get", noSnap),
		snapc:   op.Exec("rbd", "get_snapcontext", nil),
	}
}

// decode reads the calls' answers once the operation ran.
func (c headerCalls) decode(imageID string) (*header, error) {
	var out [3][]byte
	for i, step := range []*rados.ReadOpExecStep{c.parent, c.overlap, c.snapc} {
		b, err := step.Bytes()
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	h, err := decodeHeader(out[0], out[1], out[2])
	if err != nil {
		return nil, fmt.Errorf("image ID %s: %w", imageID, err)
	}
	return h, nil
}

// Header implements pool: the header's class calls in one read operation.
func (p *radosPool) Header(imageID string) (*header, error) {
	op := rados.CreateReadOp()
	defer op.Release()
	calls := addHeaderCalls(op)
	if err := op.Operate(p.io, "rbd_header."+imageID, rados.OperationNoFlag); err != nil {
		return nil, opError(err)
	}
	return calls.decode(imageID)
}

// Describe implements pool: the header's class calls and the metadata
// keys (librbd keeps them in the header's omap, each prefixed
// "metadata_") in one read operation, then one snapshot_get per snapshot
// in a second. A snapshot removed in between fails the second read with
// ENOENT; the first is then made again.
//
// Restores of one snapshot that run at once share one Describe: they would
// all read the same header, which each of their clones writes to, so every
// read waits behind those writes. A restore holds its source snapshot
// shared and DeleteSnapshot takes it exclusively, so a shared read never
// straddles the snapshot's removal.
func (p *radosPool) Describe(imageID string, metadata []string) (*imageFacts, error) {
	key := fmt.Sprintf("%p/%d/%s/%s/%s", p.conn, p.id, p.namespace, imageID, strings.Join(metadata, ","))
	v, err, _ := describes.Do(key, func() (any, error) { return p.describeRetrying(imageID, metadata) })
	if err != nil {
		return nil, err
	}
	return v.(*imageFacts), nil
}

// describes holds the Describe calls in flight, by connection and image.
var describes singleflight.Group

func (p *radosPool) describeRetrying(imageID string, metadata []string) (*imageFacts, error) {
	for try := 0; ; try++ {
		f, err := p.describe(imageID, metadata)
		if err == nil || try == 2 || !errors.Is(err, errSnapshotGone) {
			return f, err
		}
	}
}

// metadataKeyPrefix is what librbd puts before an image metadata key in
// the header object's omap.
const metadataKeyPrefix = "metadata_"

var errSnapshotGone = errors.New("a snapshot went away while it was read")

func (p *radosPool) describe(imageID string, metadata []string) (*imageFacts, error) {
	oid := "rbd_header." + imageID
	op := rados.CreateReadOp()
	defer op.Release()
	calls := addHeaderCalls(op)
	keys := make([]string, len(metadata))
	for i, k := range metadata {
		keys[i] = metadataKeyPrefix + k
	}
	meta := op.GetOmapValuesByKeys(keys)
	if err := op.Operate(p.io, oid, rados.OperationNoFlag); err != nil {
		return nil, opError(err)
	}
	h, err := calls.decode(imageID)
	if err != nil {
		return nil, err
	}
	f := &imageFacts{Parent: h.Parent, Metadata: make(map[string]string, len(metadata))}
	for _, k := range metadata {
		f.Metadata[k] = ""
	}
	for {
		kv, err := meta.Next()
		if err != nil {
			return nil, err
		}
		if kv == nil {
			break
		}
		f.Metadata[strings.TrimPrefix(kv.Key, metadataKeyPrefix)] = string(kv.Value)
	}
	if len(h.SnapIDs) == 0 {
		return f, nil
	}
	snapOp := rados.CreateReadOp()
	defer snapOp.Release()
	steps := make([]*rados.ReadOpExecStep, len(h.SnapIDs))
	for i, id := range h.SnapIDs {
		steps[i] = snapOp.Exec("rbd", "snapshot_get", binary.LittleEndian.AppendUint64(nil, id))
	}
	if err := opError(snapOp.Operate(p.io, oid, rados.OperationNoFlag)); err != nil {
		if csierr.IsNotFound(err) {
			return nil, errSnapshotGone
		}
		return nil, err
	}
	for _, step := range steps {
		b, err := step.Bytes()
		if err != nil {
			return nil, err
		}
		s, err := decodeSnapshotInfo(b)
		if err != nil {
			return nil, fmt.Errorf("image ID %s: %w", imageID, err)
		}
		f.Snapshots = append(f.Snapshots, s)
	}
	return f, nil
}

// TrashMarked implements pool: librbd keeps image metadata in the header's
// omap, each key prefixed "metadata_".
func (p *radosPool) TrashMarked(imageID string) (bool, error) {
	op := rados.CreateReadOp()
	defer op.Release()
	key := metadataKeyPrefix + trashedByUsKey
	step := op.GetOmapValuesByKeys([]string{key})
	if err := op.Operate(p.io, "rbd_header."+imageID, rados.OperationNoFlag); err != nil {
		return false, opError(err)
	}
	for {
		kv, err := step.Next()
		if err != nil || kv == nil {
			return false, err
		}
		if kv.Key == key {
			return string(kv.Value) == "true", nil
		}
	}
}

// opError gives the errno of a failed compound operation, which go-ceph
// reports in an OperationError that does not unwrap to it.
func opError(err error) error {
	var opErr rados.OperationError
	if errors.As(err, &opErr) && opErr.OpError != nil {
		return opErr.OpError
	}
	return err
}

// SetImageMetadata writes the keys into the image header's omap, where
// librbd keeps image metadata (each key prefixed "metadata_"), in one write
// operation instead of a round trip per key; `rbd image-meta` and librbd
// read them as any other.
func (p *radosPool) SetImageMetadata(id string, kv map[string]string, drop []string) error {
	op := rados.CreateWriteOp()
	defer op.Release()
	op.AssertExists()
	var rm []string
	for _, k := range drop {
		if _, set := kv[k]; !set {
			rm = append(rm, metadataKeyPrefix+k)
		}
	}
	if len(rm) > 0 {
		op.RmOmapKeys(rm)
	}
	pairs := make(map[string][]byte, len(kv))
	for k, v := range kv {
		pairs[metadataKeyPrefix+k] = []byte(v)
	}
	op.SetOmap(pairs)
	return op.Operate(p.io, "rbd_header."+id, rados.OperationNoFlag)
}

func (p *radosPool) FlattenQueued(imageID string) (bool, error) {
	tasks, err := admin.NewFromConn(p.conn).Task().List()
	if err != nil {
		return false, err
	}
	for _, t := range tasks {
		if t.Refs.Action == "flatten" && t.Refs.ImageID == imageID && t.Refs.PoolName == p.name && t.Refs.PoolNamespace == p.namespace {
			return true, nil
		}
	}
	return false, nil
}

func (p *radosPool) QueueFlatten(name string) error {
	_, err := admin.NewFromConn(p.conn).Task().AddFlatten(admin.NewImageSpec(p.name, p.namespace, name))
	return err
}

type radosImage struct {
	img  *rbd.Image
	conn *rados.Conn
}

func (i *radosImage) Name() string          { return i.img.GetName() }
func (i *radosImage) ID() (string, error)   { return i.img.GetId() }
func (i *radosImage) Size() (uint64, error) { return i.img.GetSize() }
func (i *radosImage) Close()                { _ = i.img.Close() }

func (i *radosImage) Features() (uint64, error) { return i.img.GetFeatures() }

func (i *radosImage) DataPool() (string, error) {
	id, err := i.img.GetDataPoolID()
	if err != nil {
		return "", err
	}
	name, err := i.conn.GetPoolByID(id)
	if err != nil {
		return "", fmt.Errorf("data pool %d: %w", id, err)
	}
	return name, nil
}

func (i *radosImage) Parent() (*parentInfo, error) {
	p, err := i.img.GetParent()
	if csierr.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &parentInfo{Pool: p.Image.PoolName, Namespace: p.Image.PoolNamespace, Image: p.Image.ImageName,
		ImageID: p.Image.ImageID, Snapshot: p.Snap.SnapName, Trash: p.Image.Trash}, nil
}

func (i *radosImage) Snapshots() ([]snapshotInfo, error) {
	snaps, err := i.img.GetSnapshotNames()
	if err != nil {
		return nil, err
	}
	out := make([]snapshotInfo, 0, len(snaps))
	for _, sn := range snaps {
		s := snapshotInfo{ID: sn.Id, Name: sn.Name, Size: sn.Size}
		if ns, err := i.img.GetSnapNamespaceType(sn.Id); err == nil {
			s.Trash = ns == rbd.SnapNamespaceTypeTrash
		}
		if ts, err := i.img.GetSnapTimestamp(sn.Id); err == nil {
			s.Created = time.Unix(ts.Sec, ts.Nsec)
		}
		out = append(out, s)
	}
	return out, nil
}

// refusedAfterFailover says whether a snapshot call should be made once
// more: the monitors may refuse, EPERM, a self-managed snapshot request
// that the client resent to another monitor after losing its own (seen with
// Tentacle 20.2.4: the leader logs "got unmanaged-snap pool op from entity
// with insufficient privileges" for the resent request), while a fresh
// request goes through. A real lack of permission fails the second time
// too, at the cost of one round trip.
func refusedAfterFailover(err error) bool { return csierr.IsErrno(err, syscall.EPERM) }

func (i *radosImage) CreateSnapshot(name string) error {
	_, err := i.img.CreateSnapshot(name)
	if refusedAfterFailover(err) {
		_, err = i.img.CreateSnapshot(name)
	}
	if csierr.IsErrno(err, syscall.EEXIST) {
		return nil
	}
	return err
}

func (i *radosImage) RemoveSnapshot(name string) error {
	err := i.img.GetSnapshot(name).Remove()
	if refusedAfterFailover(err) {
		err = i.img.GetSnapshot(name).Remove()
	}
	if csierr.IsNotFound(err) {
		return nil
	}
	return err
}

func (i *radosImage) Resize(size uint64) error { return i.img.Resize(size) }

func (i *radosImage) Allocated() (uint64, error) {
	size, err := i.img.GetSize()
	if err != nil || size == 0 {
		return 0, err
	}
	var used uint64
	err = i.img.DiffIterate(rbd.DiffIterateConfig{
		Offset: 0, Length: size, IncludeParent: rbd.ExcludeParent, WholeObject: rbd.DisableWholeObject,
		Callback: func(_, length uint64, exists int, _ any) int {
			if exists != 0 {
				used += length
			}
			return 0
		},
	})
	return used, err
}

// sparseSize is the smallest run of zeros sparsify gives back, as `rbd
// sparsify` defaults to.
const sparseSize = 4096

func (i *radosImage) Sparsify() error { return i.img.Sparsify(sparseSize) }

func (i *radosImage) Watchers() ([]string, error) {
	ws, err := i.img.ListWatchers()
	if err != nil {
		return nil, err
	}
	// A watcher's ID is its client's global ID: this connection's own
	// watches (a read-write open of this driver) are not another client.
	self := int64(i.conn.GetInstanceID())
	out := make([]string, 0, len(ws))
	for _, w := range ws {
		if w.Id != self {
			out = append(out, w.Addr)
		}
	}
	return out, nil
}

func (i *radosImage) Children() ([]childInfo, error) {
	specs, err := i.img.ListChildrenAttributes()
	if err != nil {
		return nil, err
	}
	out := make([]childInfo, 0, len(specs))
	for _, c := range specs {
		out = append(out, childInfo{Pool: c.PoolName, Namespace: c.PoolNamespace, Image: c.ImageName, Trash: c.Trash})
	}
	return out, nil
}

func (i *radosImage) Metadata(key string) (string, error) {
	v, err := i.img.GetMetadata(key)
	if csierr.IsNotFound(err) {
		return "", nil
	}
	return v, err
}

func (i *radosImage) SetMetadata(key, value string) error { return i.img.SetMetadata(key, value) }
