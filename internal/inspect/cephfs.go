package inspect

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	fsadmin "github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/volid"
)

// cephFSInfo is a filesystem as the FSMap names it.
type cephFSInfo struct {
	name         string
	id           int64
	metadataPool int64
}

func listFilesystems(conn *rados.Conn) ([]cephFSInfo, error) {
	out, _, err := conn.MonCommand([]byte(`{"prefix":"fs dump","format":"json"}`))
	if err != nil {
		return nil, fmt.Errorf("reading the FSMap: %w", err)
	}
	var dump struct {
		FileSystems []struct {
			ID     int64 `json:"id"`
			MDSMap struct {
				FSName       string `json:"fs_name"`
				MetadataPool int64  `json:"metadata_pool"`
			} `json:"mdsmap"`
		} `json:"filesystems"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		return nil, fmt.Errorf("parsing the FSMap: %w", err)
	}
	var list []cephFSInfo
	for _, f := range dump.FileSystems {
		list = append(list, cephFSInfo{name: f.MDSMap.FSName, id: f.ID, metadataPool: f.MDSMap.MetadataPool})
	}
	return list, nil
}

// inspectCephFS looks at the subvolume group of every filesystem asked for
// (all by default) of one cluster: the journal in the metadata pool's
// RADOS namespace, the subvolumes and their snapshots.
func (s *session) inspectCephFS(ctx context.Context, clusterID string) {
	cl, conn, err := s.connect(clusterID, "cephfs")
	if err != nil {
		s.report.Errors = append(s.report.Errors, fmt.Sprintf("cluster %s (cephfs): %v", clusterID, err))
		return
	}
	s.closers = append(s.closers, conn.Release)
	fss, err := listFilesystems(conn.Conn)
	if err != nil {
		s.report.Errors = append(s.report.Errors, fmt.Sprintf("cluster %s: %v", clusterID, err))
		return
	}
	ns := cl.CephFS.RadosNamespace
	if ns == "" {
		ns = s.opts.RadosNamespaceCephFS
	}
	fa := fsadmin.NewFromConn(conn.Conn)
	for _, f := range fss {
		if len(s.opts.Filesystems) > 0 && !contains(s.opts.Filesystems, f.name) {
			continue
		}
		s.inspectFilesystem(conn.Conn, fa, clusterID, f, cl.SubvolumeGroup(), ns)
	}
}

func (s *session) inspectFilesystem(conn *rados.Conn, fa *fsadmin.FSAdmin, clusterID string, f cephFSInfo, group, ns string) {
	loc := Location{ClusterID: clusterID, Driver: "cephfs", Pool: f.name, Namespace: ns, Group: group}
	rep := &Pool{Location: loc, Images: []string{}, Entries: []Entry{}}
	s.report.Pools = append(s.report.Pools, rep)
	fail := func(format string, a ...any) { rep.Errors = append(rep.Errors, fmt.Sprintf(format, a...)) }
	metaPool, err := conn.GetPoolByID(f.metadataPool)
	if err != nil {
		fail("metadata pool %d: %v", f.metadataPool, err)
		return
	}
	io, err := ioNamespace(conn, metaPool, ns)
	if err != nil {
		fail("opening %s: %v", metaPool, err)
		return
	}
	s.closers = append(s.closers, io.Destroy)
	subs, err := fa.ListSubVolumes(f.name, group)
	if err != nil && !csierr.IsNotFound(err) {
		fail("listing the subvolumes of group %s: %v", group, err)
		return
	}
	s.scanned[scanKey{clusterID, "cephfs", f.id}] = f.name
	exists := map[string]bool{}
	for _, sv := range subs {
		exists[sv] = true
		if _, ok := uuidOfName(sv); ok {
			rep.Images = append(rep.Images, sv)
		}
	}
	snapsOf := map[string]map[string]bool{}
	snapshots := func(sv string) map[string]bool {
		if m, ok := snapsOf[sv]; ok {
			return m
		}
		m := map[string]bool{}
		if exists[sv] {
			names, _ := fa.ListSubVolumeSnapshots(f.name, group, sv)
			for _, n := range names {
				m[n] = true
			}
		}
		snapsOf[sv] = m
		return m
	}
	known := map[string]bool{}
	// volumes are the volume entries by subvolume name, for the temporary
	// snapshots of PVC clones.
	volumes := map[string]bool{}
	s.journalEntries(io, loc, fail, func(jr rbdJournal, e *journal.Entry) {
		handle, _ := volid.ID{ClusterID: clusterID, LocationID: f.id, UUID: e.UUID}.Encode()
		en := Entry{Kind: jr.kind, UUID: e.UUID, Handle: handle, RequestName: e.RequestName, Image: e.ImageName, Linked: true, Source: e.Source}
		if jr.kind == "volume" {
			// A snapshot-backed volume has no subvolume of its own.
			en.Exists = exists[e.ImageName] || e.BackingSnapshotID != ""
			known[e.ImageName], volumes[e.ImageName] = true, true
		} else {
			en.Exists = snapshots(e.Source)[e.ImageName]
		}
		if st, err := io.Stat(jr.j.EntryObject(e.UUID)); err == nil {
			en.Modified = st.ModTime
		}
		s.join(&en)
		rep.Entries = append(rep.Entries, en)
		s.found[handle] = en
		s.entryOrphans(loc, &en)
	})
	s.cloneSnapshots(fa, loc, rep.Images, volumes, exists, snapshots)
	for _, sv := range rep.Images {
		if known[sv] {
			continue
		}
		since := time.Time{}
		if info, err := fa.SubVolumeInfo(f.name, group, sv); err == nil {
			since = info.CreatedAt.Time
		}
		s.orphan(&Orphan{Kind: ImageWithoutJournal, Location: loc, Name: sv, Since: since,
			Detail: "a subvolume named like one of this driver's, but no journal entry of instance " + s.opts.InstanceID + " knows it"})
	}
}

// cloneSnapshots finds the temporary snapshots of PVC clones left on their
// sources: a snapshot named after a volume of our journal (the driver
// names it so) whose clone never started, or has completed (the driver
// then removes it). One that a clone still copies from is left alone, and
// the mgr refuses to remove it anyway.
func (s *session) cloneSnapshots(fa *fsadmin.FSAdmin, loc Location, subs []string, volumes, exists map[string]bool,
	snapshots func(string) map[string]bool) {
	for _, sv := range subs {
		for snap := range snapshots(sv) {
			if !volumes[snap] || snap == sv {
				continue
			}
			if exists[snap] {
				st, err := fa.CloneStatus(loc.Pool, loc.Group, snap)
				if err != nil || st.State != fsadmin.CloneComplete {
					continue // still copying, or not a clone of it
				}
			}
			since := time.Time{}
			if info, err := fa.SubVolumeSnapshotInfo(loc.Pool, loc.Group, sv, snap); err == nil {
				since = info.CreatedAt.Time
			}
			sub, name := sv, snap
			s.orphan(&Orphan{Kind: LeftoverSnapshot, Location: loc, Name: sub + "@" + name, Ours: true, Since: since,
				Detail: "the temporary snapshot of a PVC clone, on its source",
				remove: func() error {
					err := fa.RemoveSubVolumeSnapshot(loc.Pool, loc.Group, sub, name)
					if csierr.IsNotFound(err) {
						return nil
					}
					return err
				}})
		}
	}
}
