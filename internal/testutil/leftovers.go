package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
)

// The pools and filesystem the local cluster provides.
var (
	RBDPools       = []string{"rbd", "rbd2"}
	FSName         = "myfs"
	FSGroup        = "csi"
	FSMetadataPool = "myfs-metadata"
)

// Leftovers lists, as admin, everything on the cluster whose name (or, for
// journal keys, value) contains one of marks: RBD images, trash entries,
// user snapshots of other images, RADOS objects and journal keys in the RBD
// pools; CephFS subvolumes, their snapshots, and objects and journal keys
// in the metadata pool's csi namespace.
func (c *Cluster) Leftovers(t testing.TB, marks ...string) []string {
	t.Helper()
	match := func(s string) bool {
		for _, m := range marks {
			if m != "" && strings.Contains(s, m) {
				return true
			}
		}
		return false
	}
	var left []string
	for _, p := range RBDPools {
		io, err := c.admin.OpenIOContext(p)
		if err != nil {
			t.Errorf("opening pool %s: %v", p, err)
			continue
		}
		left = append(left, rbdLeftovers(io, p, match)...)
		left = append(left, journalLeftovers(t, io, p, match)...)
		io.Destroy()
	}
	left = append(left, c.cephfsLeftovers(t, match)...)
	return left
}

func rbdLeftovers(io *rados.IOContext, pool string, match func(string) bool) []string {
	var left []string
	names, _ := rbd.GetImageNames(io)
	for _, n := range names {
		if match(n) {
			left = append(left, "image "+pool+"/"+n)
			continue
		}
		// Snapshots of ours left on someone else's image.
		img, err := rbd.OpenImageReadOnly(io, n, rbd.NoSnapshot)
		if err != nil {
			continue
		}
		snaps, _ := img.GetSnapshotNames()
		for _, s := range snaps {
			if match(s.Name) {
				left = append(left, "snapshot "+pool+"/"+n+"@"+s.Name)
			}
		}
		img.Close()
	}
	trash, _ := rbd.GetTrashList(io)
	for _, e := range trash {
		if match(e.Name) {
			left = append(left, "trash "+pool+"/"+e.Name)
		}
	}
	_ = io.ListObjects(func(oid string) {
		if match(oid) {
			left = append(left, "object "+pool+"/"+oid)
		}
	})
	return left
}

// journalLeftovers lists the directory keys of the default journals whose
// name or value matches.
func journalLeftovers(t testing.TB, io *rados.IOContext, where string, match func(string) bool) []string {
	var left []string
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		kv, err := omapValues(io, dir)
		if err != nil {
			t.Errorf("reading %s/%s: %v", where, dir, err)
			continue
		}
		for k, v := range kv {
			if match(k) || match(v) {
				left = append(left, "journal key "+where+"/"+dir+"/"+k)
			}
		}
	}
	return left
}

// omapValues reads all omap values of an object; a missing object has none.
func omapValues(io *rados.IOContext, oid string) (map[string]string, error) {
	out := map[string]string{}
	err := io.ListOmapValues(oid, "", "", 10000, func(k string, v []byte) { out[k] = string(v) })
	if err != nil && strings.Contains(err.Error(), "No such file") {
		return out, nil
	}
	return out, err
}

func (c *Cluster) cephfsLeftovers(t testing.TB, match func(string) bool) []string {
	var left []string
	fsa := admin.NewFromConn(c.admin)
	subs, err := fsa.ListSubVolumes(FSName, FSGroup)
	if err != nil && !strings.Contains(err.Error(), "ENOENT") && !strings.Contains(err.Error(), "No such file") {
		t.Errorf("listing subvolumes: %v", err)
	}
	for _, s := range subs {
		snaps, _ := fsa.ListSubVolumeSnapshots(FSName, FSGroup, s)
		for _, sn := range snaps {
			if match(sn) || match(s) {
				left = append(left, "subvolume snapshot "+s+"@"+sn)
			}
		}
		if match(s) {
			left = append(left, "subvolume "+s)
		}
	}
	io, err := c.admin.OpenIOContext(FSMetadataPool)
	if err != nil {
		t.Errorf("opening %s: %v", FSMetadataPool, err)
		return left
	}
	defer io.Destroy()
	io.SetNamespace("csi")
	_ = io.ListObjects(func(oid string) {
		if match(oid) {
			left = append(left, "object "+FSMetadataPool+"/csi/"+oid)
		}
	})
	return append(left, journalLeftovers(t, io, FSMetadataPool+"/csi", match)...)
}

// NodeLeftovers lists the mounts, loop devices and FUSE helper processes
// whose paths lie under dir (a plugin path of a test; a mount of dir itself
// is the test's own).
func NodeLeftovers(dir string) []string {
	var left []string
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) && f[4] != dir {
				left = append(left, "mount "+f[4])
			}
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, _ := os.ReadFile(l); strings.HasPrefix(strings.TrimSpace(string(b)), dir) {
			left = append(left, "loop device backed by "+strings.TrimSpace(string(b)))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, pc := range procs {
		if b, _ := os.ReadFile(pc); strings.Contains(string(b), dir) && strings.Contains(string(b), "rbd-fuse-helper") {
			left = append(left, "helper process "+filepath.Base(filepath.Dir(pc)))
		}
	}
	return left
}
