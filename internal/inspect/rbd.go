package inspect

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// The names the driver gives images and its snapshots, and the marks it
// leaves (internal/rbd keeps the same).
var ourName = regexp.MustCompile(`^(.*)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(-temp)?$`)

const (
	tempSuffix     = "-temp"
	trashedByUsKey = "cephcsi.trashed"
)

func uuidOfName(name string) (string, bool) {
	m := ourName.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	return m[2], true
}

// rbdJournals are the two journals of a pool.
type rbdJournal struct {
	kind string // volume or snapshot
	j    *journal.Journal
	// keyPrefix is the directory's key prefix (csi.volume., csi.snap.).
	keyPrefix string
}

func (s *session) rbdJournals() []rbdJournal {
	return []rbdJournal{
		{"volume", journal.Volumes(s.opts.InstanceID), "csi.volume."},
		{"snapshot", journal.Snapshots(s.opts.InstanceID), "csi.snap."},
	}
}

// journalEntries walks the directory keys of both journals (volumes and
// snapshots) in io and hands each entry they name to add. A key whose
// entry object is missing (Reserve writes the key, then the entry: a crash
// between) is an orphan, removed by a Lookup of its name, which drops a
// stale key.
func (s *session) journalEntries(io *rados.IOContext, loc Location, fail func(string, ...any), add func(rbdJournal, *journal.Entry)) {
	store := journal.RadosStore{IO: io}
	for _, jr := range s.rbdJournals() {
		dirMod := time.Time{}
		if st, err := io.Stat(jr.j.Directory()); err == nil {
			dirMod = st.ModTime
		}
		keys, err := io.GetAllOmapValues(jr.j.Directory(), "", jr.keyPrefix, 1000)
		if err != nil && !errors.Is(err, rados.ErrNotFound) {
			fail("reading %s: %v", jr.j.Directory(), err)
			continue
		}
		for key, val := range keys {
			reqName, uuid := strings.TrimPrefix(key, jr.keyPrefix), string(val)
			e, err := jr.j.Get(store, uuid)
			if errors.Is(err, journal.ErrNotFound) {
				o := &Orphan{Kind: JournalWithoutImage, Location: loc, Name: jr.kind + " " + reqName, UUID: uuid, Ours: true, Since: dirMod,
					Detail: fmt.Sprintf("directory key %s%s names %s, which has no entry object", jr.keyPrefix, reqName, jr.j.EntryObject(uuid))}
				j := jr.j
				o.remove = func() error { _, err := j.Lookup(store, reqName); return err }
				s.orphan(o)
				continue
			}
			if err != nil {
				fail("reading %s: %v", jr.j.EntryObject(uuid), err)
				continue
			}
			add(jr, e)
		}
	}
}

// inspectRBD looks at every RBD pool of one cluster asked for, or holding a
// journal of our instance, or named by one of our PVs.
func (s *session) inspectRBD(ctx context.Context, clusterID string) {
	cl, conn, err := s.connect(clusterID, "rbd")
	if err != nil {
		s.report.Errors = append(s.report.Errors, fmt.Sprintf("cluster %s (rbd): %v", clusterID, err))
		return
	}
	s.closers = append(s.closers, conn.Release)
	ns := cl.RBD.RadosNamespace
	pools := s.opts.Pools
	if len(pools) == 0 {
		all, err := conn.ListPools()
		if err != nil {
			s.report.Errors = append(s.report.Errors, fmt.Sprintf("cluster %s: listing pools: %v", clusterID, err))
			return
		}
		for _, p := range all {
			if s.hasJournal(conn.Conn, p, ns) {
				pools = append(pools, p)
			}
		}
		// Pools our PVs name, whether or not a journal is left there.
		if s.kube != nil {
			for _, pv := range s.kube.PVs {
				id, err := volid.Decode(pv.Handle)
				if err != nil || id.ClusterID != clusterID || pv.Driver != s.opts.RBDDriverName {
					continue
				}
				if name, err := conn.GetPoolByID(id.LocationID); err == nil && !contains(pools, name) {
					pools = append(pools, name)
				}
			}
		}
	}
	for _, p := range pools {
		s.inspectPool(ctx, conn.Conn, clusterID, p, ns)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// hasJournal reports whether a pool holds a journal directory of ours.
func (s *session) hasJournal(conn *rados.Conn, pool, ns string) bool {
	io, err := ioNamespace(conn, pool, ns)
	if err != nil {
		return false
	}
	defer io.Destroy()
	for _, j := range s.rbdJournals() {
		if _, err := io.Stat(j.j.Directory()); err == nil {
			return true
		}
	}
	return false
}

// rbdPool is what one pool holds.
type rbdPool struct {
	io     *rados.IOContext
	images map[string]bool
	// known are the images the journal knows (with their -temp).
	known map[string]bool
}

func (s *session) inspectPool(ctx context.Context, conn *rados.Conn, clusterID, pool, ns string) {
	loc := Location{ClusterID: clusterID, Driver: "rbd", Pool: pool, Namespace: ns}
	rep := &Pool{Location: loc, Images: []string{}, Entries: []Entry{}}
	s.report.Pools = append(s.report.Pools, rep)
	fail := func(format string, a ...any) { rep.Errors = append(rep.Errors, fmt.Sprintf(format, a...)) }
	poolID, err := conn.GetPoolByName(pool)
	if err != nil {
		fail("pool %s: %v", pool, err)
		return
	}
	io, err := ioNamespace(conn, pool, ns)
	if err != nil {
		fail("opening pool %s: %v", pool, err)
		return
	}
	s.closers = append(s.closers, io.Destroy) // gc removes through it
	names, err := rbd.GetImageNames(io)
	if err != nil {
		fail("listing images: %v", err)
		return
	}
	s.scanned[scanKey{clusterID, "rbd", poolID}] = pool
	p := &rbdPool{io: io, images: map[string]bool{}, known: map[string]bool{}}
	for _, n := range names {
		p.images[n] = true
		if _, ok := uuidOfName(n); ok {
			rep.Images = append(rep.Images, n)
		}
	}
	store := journal.RadosStore{IO: io}

	// The entries the directories name, then those of our images the
	// directories lack.
	seen := map[string]bool{}
	s.journalEntries(io, loc, fail, func(jr rbdJournal, e *journal.Entry) {
		seen[e.UUID] = true
		s.rbdEntry(rep, p, jr, e, poolID, true)
	})
	for _, n := range names {
		uuid, ok := uuidOfName(n)
		if !ok || seen[uuid] {
			continue
		}
		for _, jr := range s.rbdJournals() {
			e, err := jr.j.Find(store, uuid)
			if err != nil {
				fail("reading %s: %v", jr.j.EntryObject(uuid), err)
				continue
			}
			if e != nil && (e.ImageName == n || e.ImageName+tempSuffix == n) {
				seen[uuid] = true
				s.rbdEntry(rep, p, jr, e, poolID, false)
			}
		}
	}

	// Images named like ours that no entry knows.
	for _, n := range rep.Images {
		if p.known[n] {
			continue
		}
		created := imageCreated(io, n)
		s.orphan(&Orphan{Kind: ImageWithoutJournal, Location: loc, Name: n, Ours: false, Since: created,
			Detail: "named like an image of this driver, but no journal entry of instance " + s.opts.InstanceID + " knows it"})
	}
	s.leftoverSnapshots(loc, p, store)
	s.trash(loc, rep, io)
}

// imageCreated is an image's creation time, zero when unknown.
func imageCreated(io *rados.IOContext, name string) time.Time {
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		return time.Time{}
	}
	defer func() { _ = img.Close() }()
	ts, err := img.GetCreateTimestamp()
	if err != nil {
		return time.Time{}
	}
	return time.Unix(ts.Sec, ts.Nsec)
}

// rbdEntry records one journal entry and the orphans it makes.
func (s *session) rbdEntry(rep *Pool, p *rbdPool, jr rbdJournal, e *journal.Entry, poolID int64, linked bool) {
	handle, _ := volid.ID{ClusterID: rep.ClusterID, LocationID: poolID, UUID: e.UUID}.Encode()
	en := Entry{Kind: jr.kind, UUID: e.UUID, Handle: handle, RequestName: e.RequestName, Image: e.ImageName,
		Exists: p.images[e.ImageName], Temp: p.images[e.ImageName+tempSuffix], Linked: linked, Source: e.Source}
	if st, err := p.io.Stat(jr.j.EntryObject(e.UUID)); err == nil {
		en.Modified = st.ModTime
	}
	p.known[e.ImageName], p.known[e.ImageName+tempSuffix] = true, true
	if jr.kind == "snapshot" && en.Exists {
		en.Complete = hasSnapshot(p.io, e.ImageName, e.ImageName)
	}
	s.join(&en)
	rep.Entries = append(rep.Entries, en)
	s.found[handle] = en
	s.entryOrphans(rep.Location, &en)
}

// join fills in the Kubernetes objects that name the entry.
func (s *session) join(en *Entry) {
	if s.kube == nil {
		return
	}
	if en.Kind == "volume" {
		for _, pv := range s.kube.PVs {
			if pv.Handle == en.Handle {
				en.PV, en.PVPhase, en.Claim = pv.Name, pv.Phase, pv.Claim
			}
		}
		return
	}
	for _, c := range s.kube.Contents {
		if c.Handle == en.Handle {
			en.Content, en.SnapshotRef = c.Name, c.Snapshot
		}
	}
}

// entryOrphans decides what a journal entry is short of. RBD and CephFS
// alike: a volume or snapshot is removed through the driver's delete.
func (s *session) entryOrphans(loc Location, en *Entry) {
	what := en.Kind + " " + dash(en.RequestName)
	del := s.deleteVolume(loc.Driver, en.Handle)
	if en.Kind == "snapshot" {
		del = s.deleteSnapshot(loc.Driver, en.Handle)
	}
	named := en.PV != "" || en.Content != ""
	pending := s.kube != nil && s.kube.pending(en.RequestName)
	other := ""
	if s.kube != nil {
		other = s.kube.Named[en.Handle]
	}
	add := func(kind, name, detail string) {
		o := &Orphan{Kind: kind, Location: loc, Name: name, UUID: en.UUID, Handle: en.Handle, Ours: true, Since: en.Modified,
			Detail: detail, remove: del}
		switch {
		case !en.Linked:
			// Entry objects are not per instance: without our directory's
			// key it may be another --instanceid's volume.
			o.Why = "no directory key of instance " + s.opts.InstanceID + " names it (it may be another instance's)"
		case pending:
			o.Why = "its PVC or VolumeSnapshot still exists"
		}
		s.orphan(o)
	}
	switch {
	case named:
		// Kubernetes has it; a missing image shows on the PV's side.
	case other != "":
		// Named by a PV or content of another driver name: not an orphan,
		// but --rbd-drivername or --cephfs-drivername is likely wrong.
		s.report.Errors = append(s.report.Errors, fmt.Sprintf("%s %s is named by %s, not by a driver inspected (check --rbd-drivername and --cephfs-drivername)",
			en.Kind, en.Handle, other))
	case !en.Exists:
		add(JournalWithoutImage, what, fmt.Sprintf("the journal names %s, which does not exist", en.Image))
		if en.Temp {
			add(LeftoverTemp, en.Image+tempSuffix, "the intermediate image of a PVC clone whose volume image was never made")
		}
	case s.kube == nil:
		// Without Kubernetes nothing says whether it is still used.
	case en.Kind == "volume":
		add(VolumeWithoutPV, what, fmt.Sprintf("%s exists, and no PersistentVolume of %s names %s", en.Image, s.opts.driverName(loc.Driver), en.Handle))
	default:
		add(SnapshotWithoutContent, what, fmt.Sprintf("%s exists, and no VolumeSnapshotContent of %s names %s", en.Image, s.opts.driverName(loc.Driver), en.Handle))
	}
}

func (o *Options) driverName(driver string) string {
	if driver == "cephfs" {
		return o.CephFSDriverName
	}
	return o.RBDDriverName
}

// hasSnapshot reports whether image has a snapshot named snap.
func hasSnapshot(io *rados.IOContext, image, snap string) bool {
	img, err := rbd.OpenImageReadOnly(io, image, rbd.NoSnapshot)
	if err != nil {
		return false
	}
	defer func() { _ = img.Close() }()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return false
	}
	for _, sn := range snaps {
		if sn.Name == snap {
			return true
		}
	}
	return false
}

// leftoverSnapshots finds the snapshots the driver takes for the time of
// one call (on the source of a snapshot or PVC clone, named after the new
// image) still in the user namespace of an image of ours. Such a snapshot
// is ours only when the journal has an entry of that name (the rule the
// driver's delete uses); every other snapshot is someone's.
func (s *session) leftoverSnapshots(loc Location, p *rbdPool, store journal.Store) {
	for n := range p.images {
		if !p.known[n] {
			continue
		}
		img, err := rbd.OpenImageReadOnly(p.io, n, rbd.NoSnapshot)
		if err != nil {
			continue
		}
		snaps, _ := img.GetSnapshotNames()
		type found struct {
			name string
			at   time.Time
		}
		var left []found
		for _, sn := range snaps {
			if nsType, err := img.GetSnapNamespaceType(sn.Id); err != nil || nsType != rbd.SnapNamespaceTypeUser {
				continue
			}
			// Kept for good: a snapshot image's restore snapshot, and the
			// snapshot of a -temp image its clone hangs from.
			if sn.Name == n || sn.Name+tempSuffix == n {
				continue
			}
			if !s.ownSnapshot(store, sn.Name) {
				continue
			}
			at := time.Time{}
			if ts, err := img.GetSnapTimestamp(sn.Id); err == nil {
				at = time.Unix(ts.Sec, ts.Nsec)
			}
			left = append(left, found{sn.Name, at})
		}
		_ = img.Close()
		for _, f := range left {
			image, snap := n, f.name
			io := p.io
			s.orphan(&Orphan{Kind: LeftoverSnapshot, Location: loc, Name: image + "@" + snap, Ours: true, Since: f.at,
				Detail: "a temporary snapshot of a snapshot or clone call that did not finish",
				remove: func() error { return removeSnapshot(io, image, snap) }})
		}
	}
}

// ownSnapshot is the driver's rule: the name is that of a journal entry's
// image or its -temp.
func (s *session) ownSnapshot(store journal.Store, snap string) bool {
	uuid, ok := uuidOfName(snap)
	if !ok {
		return false
	}
	for _, jr := range s.rbdJournals() {
		e, err := jr.j.Find(store, uuid)
		if err == nil && e != nil && (snap == e.ImageName || snap == e.ImageName+tempSuffix) {
			return true
		}
	}
	return false
}

// removeSnapshot removes one snapshot; with clones depending on it librbd
// keeps it in the trash namespace for them.
func removeSnapshot(io *rados.IOContext, image, snap string) error {
	img, err := rbd.OpenImage(io, image, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("opening %s: %w", image, err)
	}
	defer func() { _ = img.Close() }()
	if err := img.GetSnapshot(snap).Remove(); err != nil && !csierr.IsNotFound(err) {
		return fmt.Errorf("removing %s@%s: %w", image, snap, err)
	}
	return nil
}

// trash lists the pool's trash: entries named like ours are opened to read
// the driver's mark and count their clones; others are never opened.
func (s *session) trash(loc Location, rep *Pool, io *rados.IOContext) {
	list, err := rbd.GetTrashList(io)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("listing the trash: %v", err))
		return
	}
	for _, t := range list {
		e := Trashed{ID: t.Id, Name: t.Name, Deleted: t.DeletionTime}
		if _, ok := uuidOfName(t.Name); ok {
			if img, err := rbd.OpenImageByIdReadOnly(io, t.Id, rbd.NoSnapshot); err == nil {
				mark, _ := img.GetMetadata(trashedByUsKey)
				e.Ours = mark == "true"
				children, err := img.ListChildrenAttributes()
				e.Children = len(children)
				if err != nil {
					e.Children = -1 // unknown: treated as needed
				}
				_ = img.Close()
			}
		}
		rep.Trash = append(rep.Trash, e)
		if e.Ours && e.Children == 0 {
			id := t.Id
			s.orphan(&Orphan{Kind: TrashUnneeded, Location: loc, Name: t.Name + " (trash " + t.Id + ")", Ours: true, Since: t.DeletionTime,
				Detail: "moved to the trash by the driver for its clones; none is left",
				remove: func() error {
					err := rbd.TrashRemove(io, id, false)
					if csierr.IsNotFound(err) {
						return nil // purged by an earlier removal
					}
					return err
				}})
		}
	}
}
