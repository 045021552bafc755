package cephfs

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/service"
)

// fsAdmin is the part of go-ceph's FSAdmin (the mgr "volumes" module) the
// controller uses; unit tests replace it with a fake.
type fsAdmin interface {
	CreateSubVolumeGroup(volume, name string, o *admin.SubVolumeGroupOptions) error
	CreateSubVolume(volume, group, name string, o *admin.SubVolumeOptions) error
	RemoveSubVolumeWithFlags(volume, group, name string, o admin.SubVolRmFlags) error
	ResizeSubVolume(volume, group, name string, newSize admin.QuotaSize, noShrink bool) (*admin.SubVolumeResizeResult, error)
	SubVolumeInfo(volume, group, name string) (*admin.SubVolumeInfo, error)
	SubVolumePath(volume, group, name string) (string, error)
	CreateSubVolumeSnapshot(volume, group, source, name string) error
	RemoveSubVolumeSnapshot(volume, group, subvolume, name string) error
	SubVolumeSnapshotInfo(volume, group, subvolume, name string) (*admin.SubVolumeSnapshotInfo, error)
	CloneSubVolumeSnapshot(volume, group, subvolume, snapshot, name string, o *admin.CloneOptions) error
	CloneStatus(volume, group, clone string) (*admin.CloneStatus, error)
	CancelClone(volume, group, clone string) error
	SetMetadata(volume, group, subvolume, key, value string) error
	SetSnapshotMetadata(volume, group, subvolume, snapname, key, value string) error
}

// filesystem is one CephFS as the FSMap describes it.
type filesystem struct {
	Name         string
	ID           int64
	MetadataPool string
	DataPools    []string
}

// errFSNotFound marks a filesystem the FSMap does not have.
var errFSNotFound = errors.New("filesystem not found")

// monCommander runs monitor commands; *rados.Conn implements it.
type monCommander interface {
	MonCommand(args []byte) ([]byte, string, error)
	GetPoolByID(id int64) (string, error)
}

// fsDump is the part of `fs dump` we read.
type fsDump struct {
	FileSystems []struct {
		ID     int64 `json:"id"`
		MDSMap struct {
			FSName       string  `json:"fs_name"`
			MetadataPool int64   `json:"metadata_pool"`
			DataPools    []int64 `json:"data_pools"`
		} `json:"mdsmap"`
	} `json:"filesystems"`
}

// findFilesystem reads the FSMap (one monitor command, allowed by
// `mon 'allow r'`) and returns the filesystem named name, or with ID id when
// name is empty. Pool names come from the client's own OSD map.
func findFilesystem(c monCommander, name string, id int64) (*filesystem, error) {
	out, _, err := c.MonCommand([]byte(`{"prefix":"fs dump","format":"json"}`))
	if err != nil {
		return nil, fmt.Errorf("reading the FSMap: %w", err)
	}
	var dump fsDump
	if err := json.Unmarshal(out, &dump); err != nil {
		return nil, fmt.Errorf("parsing the FSMap: %w", err)
	}
	for _, f := range dump.FileSystems {
		if (name != "" && f.MDSMap.FSName != name) || (name == "" && f.ID != id) {
			continue
		}
		fs := &filesystem{Name: f.MDSMap.FSName, ID: f.ID}
		if fs.MetadataPool, err = c.GetPoolByID(f.MDSMap.MetadataPool); err != nil {
			return nil, fmt.Errorf("metadata pool %d of filesystem %s: %w", f.MDSMap.MetadataPool, fs.Name, err)
		}
		for _, p := range f.MDSMap.DataPools {
			pn, err := c.GetPoolByID(p)
			if err != nil {
				return nil, fmt.Errorf("data pool %d of filesystem %s: %w", p, fs.Name, err)
			}
			fs.DataPools = append(fs.DataPools, pn)
		}
		return fs, nil
	}
	if name != "" {
		return nil, fmt.Errorf("%w: %q", errFSNotFound, name)
	}
	return nil, fmt.Errorf("%w: ID %d", errFSNotFound, id)
}

// fsConn is one filesystem opened for a request: the mgr volumes interface,
// and the journal in the metadata pool's RADOS namespace.
type fsConn struct {
	cluster *config.Cluster
	conn    *cephconn.Conn
	admin   fsAdmin
	fs      *filesystem
	io      *rados.IOContext
	group   string
}

func (f *fsConn) close() {
	f.io.Destroy()
	f.conn.Release()
}

func (f *fsConn) store() journal.Store { return journal.RadosStore{IO: f.io} }

// journalNamespace is the RADOS namespace of the CephFS journal: config.json's
// cephFS.radosNamespace, else --radosnamespacecephfs.
func journalNamespace(d *service.Deps, cl *config.Cluster) string {
	if cl.CephFS.RadosNamespace != "" {
		return cl.CephFS.RadosNamespace
	}
	return d.Options.RadosNSCephFS
}

// openFS connects to clusterID and opens the filesystem named fsName (or with
// ID fsID when fsName is empty). A missing filesystem is errFSNotFound.
func openFS(d *service.Deps, clusterID, fsName string, fsID int64, creds cephconn.Credentials) (*fsConn, error) {
	cl, conn, err := d.Connect(clusterID, creds)
	if err != nil {
		return nil, err
	}
	fs, err := findFilesystem(conn.Conn, fsName, fsID)
	if err != nil {
		conn.Release()
		return nil, err
	}
	io, err := conn.OpenIOContext(fs.MetadataPool)
	if err != nil {
		conn.Release()
		return nil, fmt.Errorf("opening metadata pool %s: %w", fs.MetadataPool, err)
	}
	io.SetNamespace(journalNamespace(d, cl))
	return &fsConn{cluster: cl, conn: conn, admin: admin.NewFromConn(conn.Conn), fs: fs, io: io,
		group: cl.SubvolumeGroup()}, nil
}

// openFSByName is openFS for a StorageClass's fsName; a missing filesystem
// is InvalidArgument naming the parameter.
func openFSByName(d *service.Deps, clusterID, fsName string, creds cephconn.Credentials) (*fsConn, error) {
	f, err := openFS(d, clusterID, fsName, 0, creds)
	if errors.Is(err, errFSNotFound) {
		return nil, csierr.Param("fsName", "no filesystem %q in cluster %q", fsName, clusterID)
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

// hasDataPool reports whether pool is one of the filesystem's data pools.
func (f *filesystem) hasDataPool(pool string) bool {
	for _, p := range f.DataPools {
		if p == pool {
			return true
		}
	}
	return false
}

// subvolumeInfo returns a subvolume's info; a missing or only-retained
// subvolume is csierr.ErrNotFound.
func (f *fsConn) subvolumeInfo(name string) (*admin.SubVolumeInfo, error) {
	info, err := f.admin.SubVolumeInfo(f.fs.Name, f.group, name)
	if csierr.IsNotFound(err) {
		return nil, fmt.Errorf("subvolume %s in group %s of %s: %w", name, f.group, f.fs.Name, csierr.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading subvolume %s: %w", name, err)
	}
	if info.State == admin.StateSnapRetained {
		return nil, fmt.Errorf("subvolume %s was deleted (only its snapshots remain): %w", name, csierr.ErrNotFound)
	}
	return info, nil
}

// quotaBytes returns a subvolume's quota, 0 when it has none.
func quotaBytes(info *admin.SubVolumeInfo) int64 {
	if q, ok := info.BytesQuota.(admin.ByteCount); ok {
		return int64(q)
	}
	return 0
}
