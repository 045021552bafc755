package rbd

import (
	"fmt"
	"maps"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
)

// An in-memory Ceph cluster behind the cluster/pool/image seam, for the
// controller's unit tests. It models what the controller relies on, the way
// librbd and the manager's rbd_support module behave: format 2 clones
// (no snapshot protection; a removed snapshot that clones still use moves
// to the trash namespace and goes away with its last clone), the RBD
// trash, watchers (every read-write open is one, as in librbd, though the
// driver does not see its own: Watchers), queued
// flatten tasks, and the errnos librbd returns. It is not safe for
// concurrent use: the controller's handlers are called one at a time.
//
// Any step can be made to fail (fail) or to crash (crash: the call panics
// there, as the process dies at a failpoint; crashes recovers it).

const fakeClusterID = "c1"

// cephErr is an error as go-ceph returns it: ErrorCode is the negative
// errno, which csierr.IsErrno and csierr.IsNotFound read.
type cephErr struct {
	what  string
	errno syscall.Errno
}

func (e cephErr) Error() string  { return fmt.Sprintf("%s: %v", e.what, e.errno) }
func (e cephErr) ErrorCode() int { return -int(e.errno) }

func errno(e syscall.Errno, format string, args ...any) error {
	return cephErr{what: fmt.Sprintf(format, args...), errno: e}
}

// fakeCrash is the panic of an armed crash.
type fakeCrash struct{ op, target string }

// fakeRule makes the nth matching call of op fail with err, or crash when
// err is nil.
type fakeRule struct {
	op, match string
	left      int
	err       error
	// run, when set, runs before the call goes on: another client acting
	// in between.
	run func()
}

type fakeCluster struct {
	namespace string
	pools     []*fakePool
	tasks     map[string]bool // queued flattens: pool/namespace/imageID
	rules     []*fakeRule
	calls     map[string]int
	// handles are the open connections, pools and images, described.
	handles map[any]string
	misuse  []string
	nextID  int
	clock   time.Time
}

func newFakeCluster(pools ...string) *fakeCluster {
	f := &fakeCluster{tasks: map[string]bool{}, calls: map[string]int{}, handles: map[any]string{},
		clock: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	for i, name := range pools {
		f.pools = append(f.pools, &fakePool{f: f, name: name, id: int64(i + 1), images: map[string]*fakeImage{},
			store: &fakeStore{f: f, objects: map[string]map[string]string{}}})
	}
	return f
}

// fail makes the nth call of op (from now, counting only calls whose target
// contains match) return an EIO error.
func (f *fakeCluster) fail(op string, nth int, match string) {
	f.failWith(op, nth, match, errno(syscall.EIO, "injected failure of %s", op))
}

func (f *fakeCluster) failWith(op string, nth int, match string, err error) {
	f.rules = append(f.rules, &fakeRule{op: op, match: match, left: nth, err: err})
}

// before runs fn just before the next matching call of op does anything.
func (f *fakeCluster) before(op, match string, fn func()) {
	f.rules = append(f.rules, &fakeRule{op: op, match: match, left: 1, run: fn})
}

// crash makes the nth matching call of op panic before it does anything.
func (f *fakeCluster) crash(op string, nth int, match string) {
	f.rules = append(f.rules, &fakeRule{op: op, match: match, left: nth})
}

// step is the first thing every operation does: it counts the call and
// applies an armed rule.
func (f *fakeCluster) step(op, target string) error {
	f.calls[op]++
	for i, r := range f.rules {
		if r.op != op || !strings.Contains(target, r.match) {
			continue
		}
		if r.left > 1 {
			r.left--
			continue
		}
		f.rules = append(f.rules[:i], f.rules[i+1:]...)
		switch {
		case r.run != nil:
			r.run()
			return nil
		case r.err == nil:
			panic(fakeCrash{op: op, target: target})
		}
		return r.err
	}
	return nil
}

// forgetHandles drops the handles of a crashed call: the dead process's
// connections and watches go with it.
func (f *fakeCluster) forgetHandles() {
	for h := range f.handles {
		if ih, ok := h.(*fakeImageHandle); ok && !ih.readOnly {
			ih.img.writers--
		}
		delete(f.handles, h)
	}
}

func (f *fakeCluster) tick() time.Time {
	f.clock = f.clock.Add(time.Second)
	return f.clock
}

func (f *fakeCluster) open(h any, what string) { f.handles[h] = what }

func (f *fakeCluster) close(h any) bool {
	if _, ok := f.handles[h]; !ok {
		f.misuse = append(f.misuse, fmt.Sprintf("%T closed twice", h))
		return false
	}
	delete(f.handles, h)
	return true
}

// connect is ControllerServer.connect on the fake.
func (f *fakeCluster) connect(clusterID string, _ cephconn.Credentials) (*config.Cluster, cluster, error) {
	if clusterID != fakeClusterID {
		return nil, nil, csierr.Errorf(csierr.ErrInvalid, "clusterID %q: %v", clusterID, config.ErrUnknownCluster)
	}
	cl := &config.Cluster{ClusterID: clusterID}
	cl.RBD.RadosNamespace = f.namespace
	c := &fakeConn{f: f}
	f.open(c, "connection")
	return cl, c, nil
}

func (f *fakeCluster) pool(name string) *fakePool {
	for _, p := range f.pools {
		if p.name == name {
			return p
		}
	}
	panic("fake: no pool " + name)
}

// children lists the clones of snapshot s, in all pools.
func (f *fakeCluster) children(s *fakeSnap) []*fakeImage {
	var out []*fakeImage
	for _, p := range f.pools {
		for _, img := range p.sortedImages() {
			if img.parent == s {
				out = append(out, img)
			}
		}
	}
	return out
}

// detach cuts img from its parent; a trash-namespace snapshot goes with its
// last clone, as librbd removes it then.
func (f *fakeCluster) detach(img *fakeImage) {
	s := img.parent
	img.parent = nil
	if s != nil && s.trash && len(f.children(s)) == 0 {
		s.image.dropSnap(s)
	}
}

func (f *fakeCluster) taskKey(p *fakePool, imageID string) string {
	return p.name + "/" + f.namespace + "/" + imageID
}

// fakeConn is one connection (cluster).
type fakeConn struct{ f *fakeCluster }

func (c *fakeConn) Close() { c.f.close(c) }

func (c *fakeConn) OpenPool(name string, id int64) (pool, error) {
	for _, p := range c.f.pools {
		if (name != "" && p.name == name) || (name == "" && p.id == id) {
			h := &fakePoolHandle{p: p}
			c.f.open(h, "pool "+p.name)
			return h, nil
		}
	}
	return nil, fmt.Errorf("%w: %q (ID %d)", errPoolNotFound, name, id)
}

// fakePool is the state of one pool (in the cluster's namespace).
type fakePool struct {
	f      *fakeCluster
	name   string
	id     int64
	images map[string]*fakeImage // by ID, trashed ones included
	store  *fakeStore
}

// live returns the image named name that is not in the trash.
func (p *fakePool) live(name string) *fakeImage {
	for _, img := range p.images {
		if img.name == name && !img.trashed {
			return img
		}
	}
	return nil
}

func (p *fakePool) sortedImages() []*fakeImage {
	out := make([]*fakeImage, 0, len(p.images))
	for _, img := range p.images {
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

func (p *fakePool) add(name string, size uint64, o imageOptions, parent *fakeSnap) *fakeImage {
	p.f.nextID++
	img := &fakeImage{pool: p, id: fmt.Sprintf("%012x", 0x5e1f00+p.f.nextID), name: name, size: size, opts: o,
		parent: parent, meta: map[string]string{}}
	p.images[img.id] = img
	return img
}

// remove deletes img as librbd's remove does: refused while a client
// watches it (EBUSY) or while it has snapshots, user ones or ones that
// clones still use (ENOTEMPTY).
func (p *fakePool) remove(img *fakeImage) error {
	if n := len(img.watchers) + img.writers; n > 0 {
		return errno(syscall.EBUSY, "image %s has %d watchers", img.name, n)
	}
	for _, s := range img.snaps {
		if !s.trash {
			return errno(syscall.ENOTEMPTY, "image %s has snapshots", img.name)
		}
		if len(p.f.children(s)) > 0 {
			return errno(syscall.ENOTEMPTY, "image %s has snapshots with linked clones", img.name)
		}
	}
	p.f.detach(img)
	img.gone = true
	delete(p.images, img.id)
	delete(p.f.tasks, p.f.taskKey(p, img.id))
	return nil
}

// fakePoolHandle is an open pool (IOContext).
type fakePoolHandle struct{ p *fakePool }

func (h *fakePoolHandle) Name() string           { return h.p.name }
func (h *fakePoolHandle) ID() int64              { return h.p.id }
func (h *fakePoolHandle) Namespace() string      { return h.p.f.namespace }
func (h *fakePoolHandle) Journal() journal.Store { return h.p.store }
func (h *fakePoolHandle) Close()                 { h.p.f.close(h) }

func (h *fakePoolHandle) HasPool(name string) (bool, error) {
	for _, p := range h.p.f.pools {
		if p.name == name {
			return true, nil
		}
	}
	return false, nil
}

func (h *fakePoolHandle) CreateImage(name string, size uint64, o imageOptions) error {
	if err := h.p.f.step("CreateImage", name); err != nil {
		return err
	}
	if h.p.live(name) != nil {
		return errno(syscall.EEXIST, "image %s exists", name)
	}
	h.p.add(name, size, o, nil)
	return nil
}

func (h *fakePoolHandle) CloneImage(from pool, parent, snap, dst string, o imageOptions) error {
	if err := h.p.f.step("CloneImage", dst); err != nil {
		return err
	}
	src, ok := from.(*fakePoolHandle)
	if !ok || src.p.f != h.p.f {
		return fmt.Errorf("cloning from a pool of another cluster")
	}
	pimg := src.p.live(parent)
	if pimg == nil {
		return errno(syscall.ENOENT, "parent image %s", parent)
	}
	s := pimg.userSnap(snap)
	if s == nil {
		return errno(syscall.ENOENT, "parent snapshot %s@%s", parent, snap)
	}
	if h.p.live(dst) != nil {
		return errno(syscall.EEXIST, "image %s exists", dst)
	}
	// librbd copies the parent's image metadata into a clone.
	maps.Copy(h.p.add(dst, s.size, o, s).meta, pimg.meta)
	return nil
}

func (h *fakePoolHandle) openImage(img *fakeImage, readOnly bool) image {
	ih := &fakeImageHandle{f: h.p.f, img: img, readOnly: readOnly}
	if !readOnly {
		img.writers++
	}
	h.p.f.open(ih, "image "+img.name)
	return ih
}

// stepLive is the start of an operation op on live image name: the step
// (an armed rule may fail it), then the image, ENOENT when it is missing.
func (h *fakePoolHandle) stepLive(op, name string) (*fakeImage, error) {
	if err := h.p.f.step(op, name); err != nil {
		return nil, err
	}
	img := h.p.live(name)
	if img == nil {
		return nil, errno(syscall.ENOENT, "image %s", name)
	}
	return img, nil
}

func (h *fakePoolHandle) OpenImage(name string, readOnly bool) (image, error) {
	img, err := h.stepLive("OpenImage", name)
	if err != nil {
		return nil, err
	}
	return h.openImage(img, readOnly), nil
}

func (h *fakePoolHandle) OpenImageByID(id string, readOnly bool) (image, error) {
	if err := h.p.f.step("OpenImageByID", id); err != nil {
		return nil, err
	}
	img := h.p.images[id]
	if img == nil {
		return nil, errno(syscall.ENOENT, "image ID %s", id)
	}
	return h.openImage(img, readOnly), nil
}

func (h *fakePoolHandle) RemoveImage(name string) error {
	img, err := h.stepLive("RemoveImage", name)
	if err != nil {
		return err
	}
	return h.p.remove(img)
}

func (h *fakePoolHandle) TrashImage(name string) error {
	img, err := h.stepLive("TrashImage", name)
	if err != nil {
		return err
	}
	img.trashed = true
	return nil
}

func (h *fakePoolHandle) RemoveTrashed(id string) error {
	img := h.p.images[id]
	name := id
	if img != nil {
		name = img.name
	}
	if err := h.p.f.step("RemoveTrashed", name); err != nil {
		return err
	}
	if img == nil || !img.trashed {
		return errno(syscall.ENOENT, "trash entry %s", id)
	}
	return h.p.remove(img)
}

func (h *fakePoolHandle) Trash() ([]trashEntry, error) {
	var out []trashEntry
	for _, img := range h.p.sortedImages() {
		if img.trashed {
			out = append(out, trashEntry{ID: img.id, Name: img.name})
		}
	}
	return out, nil
}

func (h *fakePoolHandle) SetImageMetadata(id string, kv map[string]string, drop []string) error {
	if err := h.p.f.step("SetImageMetadata", id); err != nil {
		return err
	}
	for _, img := range h.p.sortedImages() {
		if img.id == id {
			for _, k := range drop {
				delete(img.meta, k)
			}
			for k, v := range kv {
				img.meta[k] = v
			}
			return nil
		}
	}
	return errno(syscall.ENOENT, "image ID %s", id)
}

func (h *fakePoolHandle) ImageID(name string) (string, error) {
	img := h.p.live(name)
	if img == nil {
		return "", errno(syscall.ENOENT, "image %s", name)
	}
	return img.id, nil
}

// Header reads an image by ID, trashed or not, as its header object says.
func (h *fakePoolHandle) Header(imageID string) (*header, error) {
	if err := h.p.f.step("Header", imageID); err != nil {
		return nil, err
	}
	img := h.p.images[imageID]
	if img == nil {
		return nil, errno(syscall.ENOENT, "image ID %s", imageID)
	}
	out := &header{Parent: h.p.headerParent(img)}
	for _, s := range img.snaps {
		out.SnapIDs = append(out.SnapIDs, s.id)
	}
	return out, nil
}

// headerParent is img's parent as its header records it.
func (p *fakePool) headerParent(img *fakeImage) *headerParent {
	s := img.parent
	if s == nil {
		return nil
	}
	return &headerParent{PoolID: s.image.pool.id, Namespace: p.f.namespace, ImageID: s.image.id, SnapID: s.id}
}

func (h *fakePoolHandle) Describe(imageID string, metadata []string) (*imageFacts, error) {
	if err := h.p.f.step("Describe", imageID); err != nil {
		return nil, err
	}
	img := h.p.images[imageID]
	if img == nil {
		return nil, errno(syscall.ENOENT, "image ID %s", imageID)
	}
	f := &imageFacts{Parent: h.p.headerParent(img), Snapshots: img.snapshotInfos(), Metadata: map[string]string{}}
	for _, k := range metadata {
		f.Metadata[k] = img.meta[k]
	}
	return f, nil
}

func (h *fakePoolHandle) TrashMarked(imageID string) (bool, error) {
	if err := h.p.f.step("TrashMarked", imageID); err != nil {
		return false, err
	}
	img := h.p.images[imageID]
	if img == nil {
		return false, errno(syscall.ENOENT, "image ID %s", imageID)
	}
	return img.meta[trashedByUsKey] == "true", nil
}

// QueueFlatten behaves as `rbd task add flatten`: a task already queued for
// the image is fine; an image that is missing or has no parent is ENOENT.
func (h *fakePoolHandle) QueueFlatten(name string) error {
	img, err := h.stepLive("QueueFlatten", name)
	if err != nil {
		return err
	}
	key := h.p.f.taskKey(h.p, img.id)
	if h.p.f.tasks[key] {
		return nil
	}
	if img.parent == nil {
		return errno(syscall.ENOENT, "image %s does not have a parent", name)
	}
	h.p.f.tasks[key] = true
	return nil
}

func (h *fakePoolHandle) FlattenQueued(imageID string) (bool, error) {
	if err := h.p.f.step("FlattenQueued", imageID); err != nil {
		return false, err
	}
	return h.p.f.tasks[h.p.f.taskKey(h.p, imageID)], nil
}

// fakeImage is the state of one image.
type fakeImage struct {
	pool     *fakePool
	id, name string
	size     uint64
	opts     imageOptions
	parent   *fakeSnap
	snaps    []*fakeSnap
	meta     map[string]string
	trashed  bool
	gone     bool
	// watchers are clients other than the driver (a node's mapping, a
	// manager task); writers counts the driver's read-write opens.
	watchers []string
	writers  int
	// allocated is what the image's objects hold; zeroed the part of it
	// that is runs of zeros, which Sparsify gives back.
	allocated, zeroed uint64
}

type fakeSnap struct {
	image   *fakeImage
	id      uint64
	name    string
	size    uint64
	trash   bool
	created time.Time
}

func (img *fakeImage) userSnap(name string) *fakeSnap {
	for _, s := range img.snaps {
		if s.name == name && !s.trash {
			return s
		}
	}
	return nil
}

func (img *fakeImage) addSnap(name string) *fakeSnap {
	f := img.pool.f
	f.nextID++
	s := &fakeSnap{image: img, id: uint64(f.nextID), name: name, size: img.size, created: f.tick()}
	img.snaps = append(img.snaps, s)
	return s
}

func (img *fakeImage) dropSnap(s *fakeSnap) {
	for i, x := range img.snaps {
		if x == s {
			img.snaps = append(img.snaps[:i], img.snaps[i+1:]...)
			return
		}
	}
}

// fakeImageHandle is an open image.
type fakeImageHandle struct {
	f        *fakeCluster
	img      *fakeImage
	readOnly bool
}

func (h *fakeImageHandle) Close() {
	if h.f.close(h) && !h.readOnly {
		h.img.writers--
	}
}

// check fails a call on an image removed since it was opened, and a write
// through a read-only open (EROFS, as librbd).
func (h *fakeImageHandle) check(write bool) error {
	if _, ok := h.f.handles[h]; !ok {
		h.f.misuse = append(h.f.misuse, "use of a closed image "+h.img.name)
	}
	if h.img.gone {
		return errno(syscall.ENOENT, "image %s was removed", h.img.name)
	}
	if write && h.readOnly {
		return errno(syscall.EROFS, "image %s is open read-only", h.img.name)
	}
	return nil
}

func (h *fakeImageHandle) Name() string { return h.img.name }

func (h *fakeImageHandle) ID() (string, error) { return h.img.id, h.check(false) }

func (h *fakeImageHandle) Size() (uint64, error) { return h.img.size, h.check(false) }

func (h *fakeImageHandle) Features() (uint64, error) { return h.img.opts.Features, h.check(false) }

func (h *fakeImageHandle) DataPool() (string, error) { return h.img.opts.DataPool, h.check(false) }

func (h *fakeImageHandle) Parent() (*parentInfo, error) {
	if err := h.check(false); err != nil {
		return nil, err
	}
	s := h.img.parent
	if s == nil {
		return nil, nil
	}
	return &parentInfo{Pool: s.image.pool.name, Namespace: h.f.namespace, Image: s.image.name, ImageID: s.image.id,
		Snapshot: s.name, Trash: s.image.trashed}, nil
}

func (h *fakeImageHandle) Snapshots() ([]snapshotInfo, error) {
	if err := h.check(false); err != nil {
		return nil, err
	}
	return h.img.snapshotInfos(), nil
}

func (img *fakeImage) snapshotInfos() []snapshotInfo {
	out := make([]snapshotInfo, 0, len(img.snaps))
	for _, s := range img.snaps {
		out = append(out, snapshotInfo{ID: s.id, Name: s.name, Size: s.size, Trash: s.trash, Created: s.created})
	}
	return out
}

func (h *fakeImageHandle) CreateSnapshot(name string) error {
	if err := h.f.step("CreateSnapshot", h.img.name+"@"+name); err != nil {
		return err
	}
	if err := h.check(true); err != nil {
		return err
	}
	if h.img.userSnap(name) == nil {
		h.img.addSnap(name)
	}
	return nil
}

// RemoveSnapshot moves a snapshot that clones use to the trash namespace,
// under a new name, as librbd does.
func (h *fakeImageHandle) RemoveSnapshot(name string) error {
	if err := h.f.step("RemoveSnapshot", h.img.name+"@"+name); err != nil {
		return err
	}
	if err := h.check(true); err != nil {
		return err
	}
	s := h.img.userSnap(name)
	switch {
	case s == nil:
	case len(h.f.children(s)) > 0:
		s.trash, s.name = true, uuid.NewString()
	default:
		h.img.dropSnap(s)
	}
	return nil
}

func (h *fakeImageHandle) Resize(size uint64) error {
	if err := h.f.step("Resize", h.img.name); err != nil {
		return err
	}
	if err := h.check(true); err != nil {
		return err
	}
	h.img.size = size
	return nil
}

func (h *fakeImageHandle) Allocated() (uint64, error) {
	if err := h.f.step("Allocated", h.img.name); err != nil {
		return 0, err
	}
	return h.img.allocated, h.check(false)
}

func (h *fakeImageHandle) Sparsify() error {
	if err := h.f.step("Sparsify", h.img.name); err != nil {
		return err
	}
	if err := h.check(true); err != nil {
		return err
	}
	h.img.allocated -= h.img.zeroed
	h.img.zeroed = 0
	return nil
}

func (h *fakeImageHandle) Watchers() ([]string, error) {
	if err := h.check(false); err != nil {
		return nil, err
	}
	// The driver's own opens are not listed (radosImage.Watchers leaves
	// out its connection); librbd's remove still counts them (remove).
	return append([]string(nil), h.img.watchers...), nil
}

func (h *fakeImageHandle) Children() ([]childInfo, error) {
	if err := h.check(false); err != nil {
		return nil, err
	}
	var out []childInfo
	for _, s := range h.img.snaps {
		for _, c := range h.f.children(s) {
			out = append(out, childInfo{Pool: c.pool.name, Namespace: h.f.namespace, Image: c.name, Trash: c.trashed})
		}
	}
	return out, nil
}

func (h *fakeImageHandle) Metadata(key string) (string, error) {
	return h.img.meta[key], h.check(false)
}

func (h *fakeImageHandle) SetMetadata(key, value string) error {
	if err := h.f.step("SetMetadata", h.img.name); err != nil {
		return err
	}
	if err := h.check(true); err != nil {
		return err
	}
	h.img.meta[key] = value
	return nil
}

// fakeStore is a pool's omap objects, for the journal.
type fakeStore struct {
	f       *fakeCluster
	objects map[string]map[string]string
}

func (s *fakeStore) GetOmap(oid string, keys []string) (map[string]string, error) {
	if err := s.f.step("GetOmap", oid); err != nil {
		return nil, err
	}
	obj, ok := s.objects[oid]
	if !ok {
		return nil, journal.ErrNotFound
	}
	out := map[string]string{}
	for _, k := range keys {
		if v, ok := obj[k]; ok {
			out[k] = v
		}
	}
	return out, nil
}

func (s *fakeStore) SetOmap(oid string, kv map[string]string, exclusive bool) error {
	if err := s.f.step("SetOmap", oid); err != nil {
		return err
	}
	obj, ok := s.objects[oid]
	if ok && exclusive {
		return errno(syscall.EEXIST, "object %s exists", oid)
	}
	if !ok {
		obj = map[string]string{}
		s.objects[oid] = obj
	}
	for k, v := range kv {
		obj[k] = v
	}
	return nil
}

// SetOmapKeyIfAbsent counts as a SetOmap when the object exists (what a
// failure rule on SetOmap sees); a missing object writes nothing.
func (s *fakeStore) SetOmapKeyIfAbsent(oid, key, value string) error {
	obj, ok := s.objects[oid]
	if !ok {
		return journal.ErrNotFound
	}
	if err := s.f.step("SetOmap", oid); err != nil {
		return err
	}
	if obj[key] != "" {
		return journal.ErrKeyExists
	}
	obj[key] = value
	return nil
}

func (s *fakeStore) RemoveOmapKeyIfValue(oid, key, value string) error {
	if err := s.f.step("RemoveOmapKeyIfValue", oid); err != nil {
		return err
	}
	if obj, ok := s.objects[oid]; ok && obj[key] == value {
		delete(obj, key)
	}
	return nil
}

func (s *fakeStore) Remove(oid string) error {
	if err := s.f.step("RemoveObject", oid); err != nil {
		return err
	}
	delete(s.objects, oid)
	return nil
}

// What a user sees with the rbd and rados tools, and what an admin or the
// manager does behind the driver's back.

// images lists the pool's images (`rbd ls`).
func (f *fakeCluster) images(pool string) []string {
	var out []string
	for _, img := range f.pool(pool).sortedImages() {
		if !img.trashed {
			out = append(out, img.name)
		}
	}
	sort.Strings(out)
	return out
}

// trash lists the names in the pool's trash (`rbd trash ls`).
func (f *fakeCluster) trash(pool string) []string {
	var out []string
	for _, img := range f.pool(pool).sortedImages() {
		if img.trashed {
			out = append(out, img.name)
		}
	}
	sort.Strings(out)
	return out
}

// image returns the live image name, nil when there is none (`rbd info`).
func (f *fakeCluster) image(pool, name string) *fakeImage { return f.pool(pool).live(name) }

// trashed returns the trashed image named name, nil when there is none.
func (f *fakeCluster) trashed(pool, name string) *fakeImage {
	for _, img := range f.pool(pool).images {
		if img.name == name && img.trashed {
			return img
		}
	}
	return nil
}

// parentSpec is the image's parent as `rbd info` names it, "" when none.
func (img *fakeImage) parentSpec() string {
	if img == nil || img.parent == nil {
		return ""
	}
	return img.parent.image.name + "@" + img.parent.name
}

// parentImage is the name of the image's parent image, "" when none.
func (img *fakeImage) parentImage() string {
	if img == nil || img.parent == nil {
		return ""
	}
	return img.parent.image.name
}

// depth counts the image's ancestors.
func (img *fakeImage) depth() int {
	d := 0
	for s := img.parent; s != nil; s = s.image.parent {
		d++
	}
	return d
}

// userSnaps lists the user snapshots (`rbd snap ls`).
func (img *fakeImage) userSnaps() []string {
	var out []string
	for _, s := range img.snaps {
		if !s.trash {
			out = append(out, s.name)
		}
	}
	return out
}

// queuedImages names the images with a queued flatten in pool.
func (f *fakeCluster) queuedImages(pool string) []string {
	var out []string
	for _, img := range f.pool(pool).sortedImages() {
		if f.tasks[f.taskKey(img.pool, img.id)] {
			out = append(out, img.name)
		}
	}
	sort.Strings(out)
	return out
}

// runFlatten does the manager's queued flatten of the live image name.
func (f *fakeCluster) runFlatten(pool, name string) error {
	img := f.image(pool, name)
	if img == nil || !f.tasks[f.taskKey(img.pool, img.id)] {
		return fmt.Errorf("no flatten of %s/%s queued", pool, name)
	}
	delete(f.tasks, f.taskKey(img.pool, img.id))
	f.detach(img)
	return nil
}

// runFlattens does every queued flatten, as the manager eventually does.
func (f *fakeCluster) runFlattens() {
	for _, p := range f.pools {
		for _, img := range p.sortedImages() {
			if f.tasks[f.taskKey(p, img.id)] {
				delete(f.tasks, f.taskKey(p, img.id))
				f.detach(img)
			}
		}
	}
}

// omap returns a copy of an omap object's values, nil when it is missing
// (`rados listomapvals`).
func (f *fakeCluster) omap(pool, oid string) map[string]string {
	obj, ok := f.pool(pool).store.objects[oid]
	if !ok {
		return nil
	}
	out := make(map[string]string, len(obj))
	for k, v := range obj {
		out[k] = v
	}
	return out
}

// objects lists the omap objects of pool.
func (f *fakeCluster) objects(pool string) []string {
	var out []string
	for oid := range f.pool(pool).store.objects {
		out = append(out, oid)
	}
	sort.Strings(out)
	return out
}

// addImage makes an image as an admin would (`rbd create`).
func (f *fakeCluster) addImage(pool, name string, size uint64) *fakeImage {
	return f.pool(pool).add(name, size, imageOptions{Features: 1}, nil)
}

// trashByHand moves an image to the trash as an admin would (`rbd trash
// mv`): without the driver's mark.
func (f *fakeCluster) trashByHand(pool, name string) {
	f.image(pool, name).trashed = true
}

// queueByHand queues a flatten as an admin would (`rbd task add flatten`).
func (f *fakeCluster) queueByHand(pool, name string) {
	img := f.image(pool, name)
	f.tasks[f.taskKey(img.pool, img.id)] = true
}

// The librbd behaviour the controller tests rely on, pinned on the fake.
func TestFakeClusterBehavesAsLibrbd(t *testing.T) {
	f := newFakeCluster("rbd")
	_, c, err := f.connect(fakeClusterID, cephconn.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.OpenPool("rbd", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	errnoOf := func(err error) syscall.Errno { e, _ := csierr.Errno(err); return e }

	if err := p.CreateImage("parent", 1<<20, imageOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := p.CreateImage("parent", 1<<20, imageOptions{}); errnoOf(err) != syscall.EEXIST {
		t.Errorf("create of an existing name: %v, want EEXIST", err)
	}
	rw, _ := p.OpenImage("parent", false)
	ro, _ := p.OpenImage("parent", true)
	if err := ro.Resize(2 << 20); errnoOf(err) != syscall.EROFS {
		t.Errorf("resize through a read-only open: %v, want EROFS", err)
	}
	// The driver's own read-write open is no other client for Watchers,
	// but librbd's remove counts it.
	if w, _ := ro.Watchers(); len(w) != 0 {
		t.Errorf("watchers with the driver's own read-write open = %v, want none", w)
	}
	if err := p.RemoveImage("parent"); errnoOf(err) != syscall.EBUSY {
		t.Errorf("remove of an open image: %v, want EBUSY", err)
	}
	_ = rw.CreateSnapshot("s")
	if err := p.CloneImage(p, "parent", "s", "child", imageOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := p.QueueFlatten("parent"); errnoOf(err) != syscall.ENOENT {
		t.Errorf("flatten of an image without a parent: %v, want ENOENT", err)
	}
	// A snapshot a clone uses goes to the trash namespace, under a new name.
	_ = rw.RemoveSnapshot("s")
	if snaps, _ := ro.Snapshots(); len(snaps) != 1 || !snaps[0].Trash || snaps[0].Name == "s" {
		t.Errorf("snapshots after removing the one a clone uses = %+v", snaps)
	}
	rw.Close()
	ro.Close()
	if err := p.RemoveImage("parent"); errnoOf(err) != syscall.ENOTEMPTY {
		t.Errorf("remove of an image with a linked clone: %v, want ENOTEMPTY", err)
	}
	if err := p.TrashImage("parent"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.OpenImage("parent", true); !csierr.IsNotFound(err) {
		t.Errorf("open by name of a trashed image: %v, want ENOENT", err)
	}
	child, _ := p.OpenImage("child", true)
	parent, _ := child.Parent()
	child.Close()
	if parent == nil || parent.Image != "parent" || !parent.Trash {
		t.Fatalf("parent of the clone = %+v", parent)
	}
	if err := p.RemoveTrashed(parent.ImageID); errnoOf(err) != syscall.ENOTEMPTY {
		t.Errorf("trash remove of an image with a linked clone: %v, want ENOTEMPTY", err)
	}
	// The trash-namespace snapshot goes with its last clone.
	if err := p.RemoveImage("child"); err != nil {
		t.Fatal(err)
	}
	if img := f.trashed("rbd", "parent"); len(img.snaps) != 0 {
		t.Errorf("parent keeps %d snapshots after its last clone went", len(img.snaps))
	}
	if err := p.RemoveTrashed(parent.ImageID); err != nil {
		t.Errorf("trash remove once the clone is gone: %v", err)
	}
	if len(f.pool("rbd").images) != 0 {
		t.Errorf("images left: %v %v", f.images("rbd"), f.trash("rbd"))
	}
}
