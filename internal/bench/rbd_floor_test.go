//go:build integration

package bench

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/bench/rbdopts"
	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// What each RBD floor consists of, as printed under the table.
const (
	floorCreate   = "CreateImage + 3 omap writes (journal reserve: directory key, entry object; then image ID)"
	floorDelete   = "RemoveImage + 2 omap ops (directory key removal, entry object delete)"
	floorSnapshot = "open source, snap, clone (format 2), snap remove, close, open clone, snap, close + 3 omap writes"
	floorRestore  = "one clone (format 2) of the snapshot image + 3 omap writes"
	floorClone    = "open source, snap, clone, snap remove, close, open temp, snap, close, clone + 3 omap writes"
	floorDelSnap  = "open, snap remove, close, RemoveImage + 2 omap ops"
)

// rbdFloor makes the raw go-ceph calls a driver operation needs at the
// least. It connects as the RBD provisioner user with the driver's own
// connection settings (internal/cephconn), so the two differ only in what
// the driver does beyond these calls.
type rbdFloor struct {
	io   *rados.IOContext
	dir  string // scratch stand-in for csi.volumes.default
	run  string
	size uint64
}

func newRBDFloor(b *testing.B, c *testutil.Cluster, pool, runID string, size uint64) (*rbdFloor, asoks) {
	b.Helper()
	conns := cephconn.NewPool(time.Hour, 30*time.Second)
	creds := cephconn.Credentials{ID: c.Var("CEPH_RBD_PROVISIONER_ID"), Key: c.Var("CEPH_RBD_PROVISIONER_KEY")}
	var conn *cephconn.Conn
	asok, err := connectCounted(b, func() (err error) {
		conn, err = conns.Get([]string{c.Monitors}, creds)
		return err
	})
	if err != nil {
		conns.Close()
		b.Fatalf("floor connection as %s: %v", creds, err)
	}
	io, err := conn.OpenIOContext(pool)
	if err != nil {
		conn.Release()
		conns.Close()
		b.Fatalf("floor: opening pool %s: %v", pool, err)
	}
	b.Cleanup(func() {
		io.Destroy()
		conn.Release()
		conns.Close()
	})
	return &rbdFloor{io: io, dir: "bench." + runID + ".dir", run: runID, size: size}, asok
}

func (f *rbdFloor) entryObject(name string) string { return "bench." + f.run + ".entry." + name }

func writeOp(io *rados.IOContext, oid string, build func(*rados.WriteOp)) error {
	op := rados.CreateWriteOp()
	defer op.Release()
	build(op)
	return op.Operate(io, oid, rados.OperationNoFlag)
}

// journalReserve makes the two writes of a reservation: the name key in
// the directory object and the entry object, created exclusively.
func (f *rbdFloor) journalReserve(name string) error {
	id := uuid.NewString()
	if err := writeOp(f.io, f.dir, func(op *rados.WriteOp) {
		op.SetOmap(map[string][]byte{"csi.volume." + name: []byte(id)})
	}); err != nil {
		return fmt.Errorf("floor journal directory: %w", err)
	}
	err := writeOp(f.io, f.entryObject(name), func(op *rados.WriteOp) {
		op.Create(rados.CreateExclusive)
		op.SetOmap(map[string][]byte{"csi.volname": []byte(name), "csi.imagename": []byte(name)})
	})
	if err != nil {
		return fmt.Errorf("floor journal entry: %w", err)
	}
	return nil
}

// journalSetID is the third write: the image ID into the entry object.
func (f *rbdFloor) journalSetID(name string) error {
	return writeOp(f.io, f.entryObject(name), func(op *rados.WriteOp) {
		op.SetOmap(map[string][]byte{"csi.imageid": []byte("0123456789ab")})
	})
}

// journalRelease removes the name key and the entry object.
func (f *rbdFloor) journalRelease(name string) error {
	if err := writeOp(f.io, f.dir, func(op *rados.WriteOp) {
		op.RmOmapKeys([]string{"csi.volume." + name})
	}); err != nil {
		return fmt.Errorf("floor journal directory: %w", err)
	}
	return f.io.Delete(f.entryObject(name))
}

// clone makes parent@snap -> dst with the given features (format 2).
func (f *rbdFloor) clone(parent, snap, dst string, features uint64) error {
	opts, err := rbdopts.New(features, true)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	if err := rbd.CloneImage(f.io, parent, snap, f.io, dst, opts); err != nil {
		return fmt.Errorf("floor clone %s@%s -> %s: %w", parent, snap, dst, err)
	}
	return nil
}

// snapCloneDrop snapshots src as snap, clones that into dst (layering +
// deep-flatten, the driver's intermediate images) and drops the snapshot
// from src again.
func (f *rbdFloor) snapCloneDrop(src, snap, dst string) error {
	img, err := rbd.OpenImage(f.io, src, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	defer img.Close()
	if _, err := img.CreateSnapshot(snap); err != nil {
		return err
	}
	if err := f.clone(src, snap, dst, rbd.FeatureLayering|rbd.FeatureDeepFlatten); err != nil {
		return err
	}
	return img.GetSnapshot(snap).Remove()
}

func (f *rbdFloor) snapshotOf(image, snap string) error {
	img, err := rbd.OpenImage(f.io, image, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	defer img.Close()
	_, err = img.CreateSnapshot(snap)
	return err
}

// createVolume is the floor of CreateVolume.
func (f *rbdFloor) createVolume(name string) error {
	if err := f.journalReserve(name); err != nil {
		return err
	}
	opts, err := rbdopts.New(rbd.FeatureLayering, false)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	if err := rbd.CreateImage(f.io, name, f.size, opts); err != nil {
		return err
	}
	return f.journalSetID(name)
}

// deleteVolume is the floor of DeleteVolume of a plain volume.
func (f *rbdFloor) deleteVolume(name string) error {
	if err := rbd.RemoveImage(f.io, name); err != nil {
		return err
	}
	return f.journalRelease(name)
}

// snapshot is the floor of CreateSnapshot: src@snap cloned into the image
// snap, the snapshot dropped from src, and snap@snap to restore from.
func (f *rbdFloor) snapshot(src, snap string) error {
	if err := f.journalReserve(snap); err != nil {
		return err
	}
	if err := f.snapCloneDrop(src, snap, snap); err != nil {
		return err
	}
	if err := f.snapshotOf(snap, snap); err != nil {
		return err
	}
	return f.journalSetID(snap)
}

// restore is the floor of CreateVolume from a snapshot: one clone.
func (f *rbdFloor) restore(snap, dst string) error {
	if err := f.journalReserve(dst); err != nil {
		return err
	}
	if err := f.clone(snap, snap, dst, rbd.FeatureLayering); err != nil {
		return err
	}
	return f.journalSetID(dst)
}

// pvcClone is the floor of CreateVolume from a volume: src@temp -> temp,
// drop src@temp, temp@dst -> dst.
func (f *rbdFloor) pvcClone(src, dst string) error {
	temp := dst + "-temp"
	if err := f.journalReserve(dst); err != nil {
		return err
	}
	if err := f.snapCloneDrop(src, temp, temp); err != nil {
		return err
	}
	if err := f.snapshotOf(temp, dst); err != nil {
		return err
	}
	if err := f.clone(temp, dst, dst, rbd.FeatureLayering); err != nil {
		return err
	}
	return f.journalSetID(dst)
}

// deleteSnapshot is the floor of DeleteSnapshot (no clones left).
func (f *rbdFloor) deleteSnapshot(snap string) error {
	img, err := rbd.OpenImage(f.io, snap, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	err = img.GetSnapshot(snap).Remove()
	img.Close()
	if err != nil {
		return err
	}
	if err := rbd.RemoveImage(f.io, snap); err != nil {
		return err
	}
	return f.journalRelease(snap)
}

// removeAll deletes an image with its snapshots and its journal stand-in;
// for cleanup, not timed. A missing image is fine.
func (f *rbdFloor) removeAll(name string) error {
	img, err := rbd.OpenImage(f.io, name, rbd.NoSnapshot)
	switch {
	case errors.Is(err, rbd.ErrNotFound):
	case err != nil:
		return err
	default:
		snaps, err := img.GetSnapshotNames()
		for _, s := range snaps {
			if err == nil {
				err = img.GetSnapshot(s.Name).Remove()
			}
		}
		img.Close()
		if err != nil {
			return fmt.Errorf("removing the snapshots of %s: %w", name, err)
		}
		if err := rbd.RemoveImage(f.io, name); err != nil && !errors.Is(err, rbd.ErrNotFound) {
			return fmt.Errorf("removing %s: %w", name, err)
		}
	}
	if err := f.journalRelease(name); err != nil && !errors.Is(err, rados.ErrNotFound) {
		return err
	}
	return nil
}

// removeDir deletes the scratch directory object at the end of a run.
func (f *rbdFloor) removeDir() error {
	if err := f.io.Delete(f.dir); err != nil && !errors.Is(err, rados.ErrNotFound) && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return nil
}
