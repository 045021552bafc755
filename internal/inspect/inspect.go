// Package inspect is `cephcsi inspect`: it reads what the driver keeps on
// Ceph (journal entries, RBD images, trash entries and snapshots, CephFS
// subvolumes and their snapshots) and, given a kubeconfig, the PVs, PVCs
// and VolumeSnapshotContents of our drivers, joins them, and reports what
// each side has that the other lacks. With --gc it removes the orphans
// that are ours (the journal knows them, or the driver marked them: the
// ownership rules of docs/safety.md) and older than a grace period, through
// the driver's own DeleteVolume and DeleteSnapshot wherever a journal entry
// is involved, so that every check of the driver (watchers, foreign
// snapshots, clones still depending on an image) applies.
package inspect

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/cephfs"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/rbd"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
	"github.com/leanceph/cephcsi/internal/volid"
)

// Options say what to inspect.
type Options struct {
	ConfigPath string
	// ClusterIDs limits the clusters of config.json looked at; empty for all.
	ClusterIDs []string
	// Drivers are "rbd", "cephfs" or both.
	Drivers          []string
	RBDDriverName    string
	CephFSDriverName string
	InstanceID       string
	// Pools are the RBD pools to look in; empty for every pool holding a
	// journal of --instanceid, and the pools our PVs name.
	Pools []string
	// Filesystems are the CephFS filesystems; empty for all.
	Filesystems          []string
	RadosNamespaceCephFS string
	// Secrets are the provisioner credentials (userID/userKey for RBD,
	// adminID/adminKey or userID/userKey for CephFS).
	Secrets map[string]string
	// Kubeconfig, when set, is read for PVs, PVCs and snapshots.
	Kubeconfig string
	// Grace is how old an orphan must be for gc to remove it.
	Grace time.Duration
	Now   func() time.Time
}

// session is one run: the connections, the driver's controllers (for gc),
// and what was read.
type session struct {
	opts   *Options
	deps   *service.Deps
	rbd    *rbd.ControllerServer
	cephfs *cephfs.ControllerServer
	kube   *Kube
	now    time.Time
	report *Report
	// found maps a CSI handle to the entry that answers it.
	found map[string]Entry
	// closers end what gc still needs after the reading.
	closers []func()
	// scanned are the locations read, by cluster and location ID, with
	// their pool or filesystem name.
	scanned map[scanKey]string
}

type scanKey struct {
	cluster, driver string
	location        int64
}

// clusterIDs lists the clusters of config.json (the driver's reader only
// looks one up).
func clusterIDs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "config.json: %v", err)
	}
	var list []struct {
		ClusterID string `json:"clusterID"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "config.json %s: %v", path, err)
	}
	var ids []string
	for _, c := range list {
		if c.ClusterID != "" && !slices.Contains(ids, c.ClusterID) {
			ids = append(ids, c.ClusterID)
		}
	}
	return ids, nil
}

// Inspect reads both sides and returns the report; its orphans carry what
// gc would do.
func Inspect(ctx context.Context, o *Options) (*Report, *session, error) {
	now := time.Now()
	if o.Now != nil {
		now = o.Now()
	}
	opts := &config.Options{Type: "rbd", ConfigPath: o.ConfigPath, InstanceID: o.InstanceID, RadosNSCephFS: o.RadosNamespaceCephFS,
		IsControllerSrv: true}
	s := &session{opts: o, now: now, report: &Report{Grace: o.Grace.String()}, found: map[string]Entry{}, scanned: map[scanKey]string{}}
	s.deps = &service.Deps{Options: opts, Clusters: config.NewClusters(o.ConfigPath),
		Conns: cephconn.NewPool(time.Minute, 30*time.Second), Locks: &locks.Set{}}
	s.rbd = rbd.NewControllerServer(s.deps)
	s.cephfs = cephfs.NewControllerServer(s.deps)

	ids, err := clusterIDs(o.ConfigPath)
	if err != nil {
		return nil, nil, err
	}
	if len(o.ClusterIDs) > 0 {
		for _, want := range o.ClusterIDs {
			if !slices.Contains(ids, want) {
				return nil, nil, csierr.Errorf(csierr.ErrInvalid, "--clusterid %q is not in %s", want, o.ConfigPath)
			}
		}
		ids = o.ClusterIDs
	}
	var names []string
	if slices.Contains(o.Drivers, "rbd") {
		names = append(names, o.RBDDriverName)
	}
	if slices.Contains(o.Drivers, "cephfs") {
		names = append(names, o.CephFSDriverName)
	}
	if o.Kubeconfig != "" {
		if s.kube, err = ReadKube(ctx, o.Kubeconfig, names); err != nil {
			return nil, nil, err
		}
		s.report.Kubernetes = true
	}
	for _, id := range ids {
		if slices.Contains(o.Drivers, "rbd") {
			s.inspectRBD(ctx, id)
		}
		if slices.Contains(o.Drivers, "cephfs") {
			s.inspectCephFS(ctx, id)
		}
	}
	s.kubeOrphans()
	s.report.sort()
	return s.report, s, nil
}

// Close ends the session's connections.
func (s *session) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.deps.Conns.Close()
}

// connect opens clusterID with the credentials of driver.
func (s *session) connect(clusterID, driver string) (*config.Cluster, *cephconn.Conn, error) {
	pairs := [][2]string{request.UserSecret}
	if driver == "cephfs" {
		pairs = [][2]string{request.AdminSecret, request.UserSecret}
	}
	creds, err := request.Credentials(s.opts.Secrets, pairs...)
	if err != nil {
		return nil, nil, err
	}
	return s.deps.Connect(clusterID, creds)
}

// orphan adds an orphan, deciding whether gc may remove it: it must be
// ours, older than the grace period, and removable.
func (s *session) orphan(o *Orphan) {
	switch {
	case o.Why != "":
		// decided by the caller
	case !o.Ours:
		o.Why = "not ours"
	case o.remove == nil:
		o.Why = "nothing gc may do"
	case o.Since.IsZero():
		o.Why = "age unknown"
	case s.now.Sub(o.Since) < s.opts.Grace:
		o.Why = "younger than the grace period"
	default:
		o.Collect = true
	}
	s.report.Orphans = append(s.report.Orphans, o)
}

// kubeOrphans reports the PVs and VolumeSnapshotContents of our drivers
// whose volume or snapshot is not on the cluster. They are never removed:
// Kubernetes objects are not the driver's to delete.
func (s *session) kubeOrphans() {
	if s.kube == nil {
		return
	}
	for _, pv := range s.kube.PVs {
		if pv.Static {
			continue // made outside the driver: nothing of ours to find
		}
		s.kubeOrphan(PVWithoutVolume, "pv/"+pv.Name, pv.Handle, pv.Driver)
	}
	for _, c := range s.kube.Contents {
		if c.Handle == "" {
			continue // not made yet
		}
		s.kubeOrphan(ContentWithoutSnapshot, "volumesnapshotcontent/"+c.Name, c.Handle, c.Driver)
	}
}

// kubeWhy is why gc keeps a Kubernetes object.
const kubeWhy = "a Kubernetes object, never removed"

func (s *session) kubeOrphan(kind, name, handle, driverName string) {
	driver := "rbd"
	if driverName == s.opts.CephFSDriverName {
		driver = "cephfs"
	}
	id, err := volid.Decode(handle)
	if err != nil {
		s.orphan(&Orphan{Kind: kind, Location: Location{Driver: driver}, Name: name, Handle: handle,
			Detail: "its handle is not a volume or snapshot ID of this driver", Why: kubeWhy})
		return
	}
	where, ok := s.scanned[scanKey{id.ClusterID, driver, id.LocationID}]
	if !ok {
		limited := (driver == "rbd" && len(s.opts.Pools) > 0) || (driver == "cephfs" && len(s.opts.Filesystems) > 0)
		if limited || !slices.Contains(s.opts.Drivers, driver) || (len(s.opts.ClusterIDs) > 0 && !slices.Contains(s.opts.ClusterIDs, id.ClusterID)) {
			return // outside what was asked for
		}
		s.orphan(&Orphan{Kind: kind, Location: Location{ClusterID: id.ClusterID, Driver: driver}, Name: name, UUID: id.UUID, Handle: handle,
			Detail: fmt.Sprintf("its pool or filesystem (ID %d) was not found or could not be read", id.LocationID), Why: kubeWhy})
		return
	}
	loc := Location{ClusterID: id.ClusterID, Driver: driver, Pool: where}
	e, ok := s.found[handle]
	switch {
	case !ok:
		s.orphan(&Orphan{Kind: kind, Location: loc, Name: name, UUID: id.UUID, Handle: handle,
			Detail: "the journal has no entry for it", Why: kubeWhy})
	case !e.Exists:
		s.orphan(&Orphan{Kind: kind, Location: loc, Name: name, UUID: id.UUID, Handle: handle,
			Detail: "its journal entry names " + e.Image + ", which does not exist", Why: kubeWhy})
	}
}

// deleteVolume and deleteSnapshot remove through the driver's controller.
func (s *session) deleteVolume(driver, handle string) func() error {
	return func() error {
		var err error
		req := &csi.DeleteVolumeRequest{VolumeId: handle, Secrets: s.opts.Secrets}
		if driver == "cephfs" {
			_, err = s.cephfs.DeleteVolume(context.Background(), req)
		} else {
			_, err = s.rbd.DeleteVolume(context.Background(), req)
		}
		return err
	}
}

func (s *session) deleteSnapshot(driver, handle string) func() error {
	return func() error {
		var err error
		req := &csi.DeleteSnapshotRequest{SnapshotId: handle, Secrets: s.opts.Secrets}
		if driver == "cephfs" {
			_, err = s.cephfs.DeleteSnapshot(context.Background(), req)
		} else {
			_, err = s.rbd.DeleteSnapshot(context.Background(), req)
		}
		return err
	}
}

// GC removes the orphans gc may remove (all of them listed, none removed,
// unless yes), then reads both sides again for the report.
func GC(ctx context.Context, o *Options, yes bool) (*Report, error) {
	rep, s, err := Inspect(ctx, o)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	removed := []Removed{}
	for _, or := range rep.Orphans {
		if !or.Collect {
			continue
		}
		d := Removed{Kind: or.Kind, Name: or.Name, Where: or.String()}
		if yes {
			if err := or.remove(); err != nil {
				d.Error = err.Error()
			}
		}
		removed = append(removed, d)
	}
	if !yes {
		rep.DryRun = true
		rep.Removed = removed
		return rep, nil
	}
	after, s2, err := Inspect(ctx, o)
	if err != nil {
		// What was removed is still worth printing.
		rep.Removed = removed
		rep.Errors = append(rep.Errors, fmt.Sprintf("reading again after gc: %v", err))
		return rep, nil
	}
	s2.Close()
	after.Removed = removed
	return after, nil
}

// ioNamespace opens a pool in a RADOS namespace.
func ioNamespace(conn *rados.Conn, pool, ns string) (*rados.IOContext, error) {
	io, err := conn.OpenIOContext(pool)
	if err != nil {
		return nil, err
	}
	io.SetNamespace(ns)
	return io, nil
}
