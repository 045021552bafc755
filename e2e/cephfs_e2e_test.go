//go:build e2e

package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs"
	fsadmin "github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"

	"github.com/leanceph/cephcsi/internal/testutil"
)

const (
	cephfsDriver   = "cephfs.csi.ceph.com"
	fsName         = "myfs"
	fsMetadataPool = "myfs-metadata"
	subvolumeGroup = "csi"
)

// TestCephFS runs the same flows as TestRBD on CephFS subvolumes. It is
// skipped, saying so, while the driver binary does not serve --type=cephfs.
func TestCephFS(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	pod, err := startControllerPod(t, e, c, "cephfs")
	if errors.Is(err, errNotServed) {
		t.Skipf("CephFS flows not run: _output/cephcsi does not serve --type=cephfs yet (%v)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cephfs: all %d sidecars hold their leases after %s", len(pod.sidecars), ms(pod.waitLeaders(t, e)))
	pod.checkLiveness(t)

	fsa := fsadmin.NewFromConn(c.Admin())
	journal := c.IOContext(t, fsMetadataPool)
	journal.SetNamespace("csi")
	files := mountFS(t, c)

	ns := "e2e-cephfs"
	e.mustKubectl(t, nil, "create", "namespace", ns)
	adminKey, userKey := c.Var("CEPH_FS_PROVISIONER_KEY"), c.Var("CEPH_FS_NODE_KEY")
	applyExample(t, e, "deploy/cephfs/secret.yaml", "<admin-id>", c.Var("CEPH_FS_PROVISIONER_ID"), "<admin-key>", adminKey,
		"<node-id>", c.Var("CEPH_FS_NODE_ID"), "<node-key>", userKey)
	const sc, vsc, rwx = "csi-cephfs-sc", "csi-cephfsplugin-snapclass", "ReadWriteMany"
	applyClasses(t, e, "cephfs", c.ClusterID, sc, vsc, "<fs-name>", fsName)
	cleanupOnFailure(t, e, ns)
	var ours []string

	// 1. PVC -> Bound; the subvolume with its quota and journal entries.
	d := provision(t, e, ns, "src", sc, "1Gi", rwx, nil)
	t.Logf("cephfs timing: PVC Bound in %s", ms(d))
	src := checkSubvolume(t, e, c, fsa, journal, ns, "src", gib)
	ours = append(ours, src.id.UUID)
	payload := make([]byte, 128<<10)
	_, _ = rand.Read(payload)
	writeFile(t, files, path.Join(src.attrs["subvolumePath"], "e2e-data"), payload)
	// --setmetadata: the names ceph-csi records on the subvolume.
	for k, want := range map[string]string{"csi.storage.k8s.io/pvc/name": "src", "csi.storage.k8s.io/pvc/namespace": ns,
		"csi.storage.k8s.io/pv/name": src.pv} {
		if got, err := fsa.GetMetadata(fsName, subvolumeGroup, src.attrs["subvolumeName"], k); err != nil || got != want {
			t.Errorf("subvolume %s metadata %s = %q, %v; want %q", src.attrs["subvolumeName"], k, got, err, want)
		}
	}

	// 2. VolumeSnapshot -> a subvolume snapshot of the source.
	sn := snapshotSrc(t, e, "cephfs", ns, vsc, cephfsDriver)
	ours = append(ours, sn.id.UUID)
	snapName := "csi-snap-" + sn.id.UUID
	if snaps := subvolumeSnaps(t, fsa, src.attrs["subvolumeName"]); !slices.Contains(snaps, snapName) {
		t.Errorf("subvolume %s has snapshots %v, want %s", src.attrs["subvolumeName"], snaps, snapName)
	}
	for k, want := range map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "snap",
		"csi.storage.k8s.io/volumesnapshot/namespace": ns, "csi.storage.k8s.io/volumesnapshotcontent/name": sn.content} {
		if got, err := fsa.GetSnapshotMetadata(fsName, subvolumeGroup, src.attrs["subvolumeName"], snapName, k); err != nil || got != want {
			t.Errorf("snapshot %s metadata %s = %q, %v; want %q", snapName, k, got, err, want)
		}
	}
	checkSnapJournal(t, journal, sn, snapName, src.attrs["subvolumeName"])

	// 3. Restore (a subvolume clone; Bound once the copy is complete).
	provisionRestores(t, e, "cephfs", ns, sc, rwx)
	for name, size := range map[string]int64{"restore": gib, "restore-big": 2 * gib} {
		v := checkSubvolume(t, e, c, fsa, journal, ns, name, size)
		ours = append(ours, v.id.UUID)
		if got := readFile(t, files, path.Join(v.attrs["subvolumePath"], "e2e-data"), len(payload)); !bytes.Equal(got, payload) {
			t.Errorf("%s does not hold the file written before the snapshot", name)
		}
	}

	// 4. PVC from PVC; the temporary snapshot on the source goes away.
	d = provision(t, e, ns, "clone", sc, "1Gi", rwx, fromPVC("src"))
	t.Logf("cephfs timing: clone Bound in %s", ms(d))
	clone := checkSubvolume(t, e, c, fsa, journal, ns, "clone", gib)
	ours = append(ours, clone.id.UUID)
	if got := readFile(t, files, path.Join(clone.attrs["subvolumePath"], "e2e-data"), len(payload)); !bytes.Equal(got, payload) {
		t.Error("clone does not hold the source's file")
	}
	eventually(t, 30*time.Second, func() string {
		if snaps := subvolumeSnaps(t, fsa, src.attrs["subvolumeName"]); !slices.Equal(snaps, []string{snapName}) {
			return fmt.Sprintf("source subvolume keeps snapshots %v, want only %s", snaps, snapName)
		}
		return ""
	})

	// 5. Expansion: the quota grows; no node step for CephFS, so the PVC
	// reports the new size at once.
	begin := time.Now()
	patch(t, e, `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`, "pvc/src", "-n", ns)
	e.wait(t, 2*time.Minute, "--for=jsonpath={.spec.capacity.storage}=2Gi", "pv/"+src.pv)
	e.wait(t, 2*time.Minute, "-n", ns, "--for=jsonpath={.status.capacity.storage}=2Gi", "pvc/src")
	t.Logf("cephfs timing: PV and PVC expanded in %s", ms(time.Since(begin)))
	if q := quota(t, fsa, src.attrs["subvolumeName"]); q != 2*gib {
		t.Errorf("expanded quota %d, want %d", q, 2*gib)
	}

	// 6a. Retain.
	kept := retainSnapshot(t, e, ns, "snap-retain", vsc+"-retain", "src", cephfsDriver)
	ours = append(ours, kept.id.UUID)
	if !slices.Contains(subvolumeSnaps(t, fsa, src.attrs["subvolumeName"]), "csi-snap-"+kept.id.UUID) {
		t.Errorf("csi-snap-%s went with its Retain snapshot", kept.id.UUID)
	}
	provision(t, e, ns, "keep", sc+"-retain", "1Gi", rwx, nil)
	keep := checkSubvolume(t, e, c, fsa, journal, ns, "keep", gib)
	ours = append(ours, keep.id.UUID)
	releasePVC(t, e, ns, keep)
	if !slices.Contains(subvolumes(t, fsa), keep.attrs["subvolumeName"]) {
		t.Errorf("%s went with its PVC under reclaimPolicy Retain", keep.attrs["subvolumeName"])
	}
	deleteRetained(t, e, kept.content, keep.pv)

	// 6b. Delete everything, the snapshot first.
	deleteSnapshotThenPVCs(t, e, "cephfs", ns, sn, "clone", "restore", "restore-big", "src")
	eventually(t, 2*time.Minute, func() string {
		if left := cephfsLeftovers(t, fsa, journal, ours...); len(left) > 0 {
			return fmt.Sprintf("left on Ceph: %v", left)
		}
		return ""
	})
	pod.checkRunning(t)
	pod.checkRBAC(t)
	checkNoSecretsInLogs(t, e, adminKey, userKey)
}

// checkSubvolume checks a Bound PVC's PV and its subvolume on Ceph.
func checkSubvolume(t *testing.T, e *env, c *testutil.Cluster, fsa *fsadmin.FSAdmin, journal *rados.IOContext,
	ns, pvc string, size int64) volume {
	t.Helper()
	v := boundVolume(t, e, ns, pvc, cephfsDriver)
	name := "csi-vol-" + v.id.UUID
	for k, w := range map[string]string{"clusterID": c.ClusterID, "fsName": fsName, "subvolumeName": name} {
		if got := v.attrs[k]; got != w {
			t.Errorf("PV %s: volumeAttributes[%s] = %q, want %q", v.pv, k, got, w)
		}
	}
	info, err := fsa.SubVolumeInfo(fsName, subvolumeGroup, name)
	if err != nil {
		t.Fatalf("PV %s: subvolume %s/%s/%s: %v", v.pv, fsName, subvolumeGroup, name, err)
	}
	if v.attrs["subvolumePath"] != info.Path {
		t.Errorf("PV %s: subvolumePath %q, Ceph says %q", v.pv, v.attrs["subvolumePath"], info.Path)
	}
	if q, ok := info.BytesQuota.(fsadmin.ByteCount); !ok || int64(q) != size {
		t.Errorf("PV %s: subvolume quota %v, want %d", v.pv, info.BytesQuota, size)
	}
	if got := testutil.Omap(t, journal, "csi.volumes.default")["csi.volume."+v.pv]; got != v.id.UUID {
		t.Errorf("journal: csi.volume.%s -> %q, want %s", v.pv, got, v.id.UUID)
	}
	if j := testutil.Omap(t, journal, "csi.volume."+v.id.UUID); j["csi.imagename"] != name || j["csi.volname"] != v.pv {
		t.Errorf("journal csi.volume.%s = %v", v.id.UUID, j)
	}
	return v
}

func subvolumes(t testing.TB, fsa *fsadmin.FSAdmin) []string {
	t.Helper()
	names, err := fsa.ListSubVolumes(fsName, subvolumeGroup)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func subvolumeSnaps(t testing.TB, fsa *fsadmin.FSAdmin, sub string) []string {
	t.Helper()
	snaps, err := fsa.ListSubVolumeSnapshots(fsName, subvolumeGroup, sub)
	if err != nil {
		t.Fatalf("snapshots of %s: %v", sub, err)
	}
	return snaps
}

func quota(t testing.TB, fsa *fsadmin.FSAdmin, sub string) int64 {
	t.Helper()
	info, err := fsa.SubVolumeInfo(fsName, subvolumeGroup, sub)
	if err != nil {
		t.Fatal(err)
	}
	q, ok := info.BytesQuota.(fsadmin.ByteCount)
	if !ok {
		return -1
	}
	return int64(q)
}

// mountFS mounts the filesystem in-process (libcephfs, as admin) to write
// and read files in subvolumes.
func mountFS(t testing.TB, c *testutil.Cluster) *cephfs.MountInfo {
	t.Helper()
	m, err := cephfs.CreateMountWithId("admin")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ReadConfigFile(c.Conf); err != nil {
		t.Fatal(err)
	}
	if err := m.SetConfigOption("keyring", c.Var("CEPH_ADMIN_KEYRING")); err != nil {
		t.Fatal(err)
	}
	if err := m.SelectFilesystem(fsName); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatalf("mount %s as admin: %v", fsName, err)
	}
	t.Cleanup(func() {
		_ = m.Unmount()
		_ = m.Release()
	})
	return m
}

func writeFile(t testing.TB, m *cephfs.MountInfo, p string, data []byte) {
	t.Helper()
	f, err := m.Open(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", p, err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Fsync(cephfs.SyncAll); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, m *cephfs.MountInfo, p string, n int) []byte {
	t.Helper()
	f, err := m.Open(p, os.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer f.Close()
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, 0)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return buf[:got]
}

// cephfsLeftovers lists subvolumes, journal objects and journal keys that
// carry one of the UUIDs.
func cephfsLeftovers(t testing.TB, fsa *fsadmin.FSAdmin, journal *rados.IOContext, uuids ...string) []string {
	t.Helper()
	ours := carriesOneOf(uuids)
	var left []string
	for _, n := range subvolumes(t, fsa) {
		if ours(n) {
			left = append(left, "subvolume "+n)
		}
	}
	return append(left, journalLeftovers(t, journal, ours)...)
}
