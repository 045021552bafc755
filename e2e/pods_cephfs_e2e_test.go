//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	fsadmin "github.com/ceph/go-ceph/cephfs/admin"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// TestPodsCephFS: a ReadWriteMany CephFS volume in two pods at once, its
// snapshot restored into a third pod, a pod recreated on the same volume,
// and the node plugin killed and restarted under a running pod; then
// everything deleted and nothing left on Ceph or on the node.
func TestPodsCephFS(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	ctrl, err := startControllerPod(t, e, c, "cephfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cephfs: all %d sidecars hold their leases after %s", len(ctrl.sidecars), ms(ctrl.waitLeaders(t, e)))
	plugin := startNodePlugin(t, e, c, "cephfs", cephfsDriver)
	fsa := fsadmin.NewFromConn(c.Admin())
	journal := c.IOContext(t, fsMetadataPool)
	journal.SetNamespace("csi")

	ns := "e2e-pods-cephfs"
	e.mustKubectl(t, nil, "create", "namespace", ns)
	adminKey, userKey := c.Var("CEPH_FS_PROVISIONER_KEY"), c.Var("CEPH_FS_NODE_KEY")
	// Two secrets as under Rook: the node stages with the node user (the
	// provisioner's OSD caps reach the metadata pool only, so its mounts
	// could not write file data).
	applyExample(t, e, "deploy/cephfs/secret.yaml", "<admin-id>", c.Var("CEPH_FS_PROVISIONER_ID"), "<admin-key>", adminKey,
		"<node-id>", c.Var("CEPH_FS_NODE_ID"), "<node-key>", userKey)
	applyExample(t, e, "deploy/cephfs/storageclass.yaml", "<cluster-id>", c.ClusterID, "<fs-name>", fsName)
	applyExample(t, e, "deploy/cephfs/snapshotclass.yaml", "<cluster-id>", c.ClusterID)
	const sc, vsc, rwx, fsGroup = "csi-cephfs-sc", "csi-cephfsplugin-snapclass", "ReadWriteMany", 2000
	cleanupOnFailure(t, e, ns)
	cleanupPods(t, e, ns)
	var ours, uids []string

	// 4. RWX: two pods on one PVC, each writes a file, each reads the
	// other's.
	d := provision(t, e, ns, "shared", sc, "1Gi", rwx, nil)
	t.Logf("cephfs pods timing: PVC Bound in %s", ms(d))
	shared := checkSubvolume(t, e, c, fsa, journal, ns, "shared", gib)
	ours = append(ours, shared.id.UUID)
	for _, p := range []string{"pod-a", "pod-b"} {
		d = runPod(t, e, ns, podSpec{name: p, pvc: "shared", fsGroup: fsGroup})
		t.Logf("cephfs pods timing: %s Running in %s", p, ms(d))
		uids = append(uids, podUID(t, e, ns, p))
	}
	dataA, sumA := randomData(1 << 20)
	dataB, sumB := randomData(1 << 20)
	upload(t, e, ns, "pod-a", "/data/a.bin", dataA)
	upload(t, e, ns, "pod-b", "/data/b.bin", dataB)
	if got := podSHA256(t, e, ns, "pod-b", "/data/a.bin", 0, 0); got != sumA {
		t.Errorf("pod-b reads a.bin as %s, pod-a wrote %s", got, sumA)
	}
	if got := podSHA256(t, e, ns, "pod-a", "/data/b.bin", 0, 0); got != sumB {
		t.Errorf("pod-a reads b.bin as %s, pod-b wrote %s", got, sumB)
	}
	// fsGroupPolicy File (deploy/cephfs/csidriver.yaml): the kubelet gives
	// the volume the pods' fsGroup, and new files inherit it.
	if got := inPod(t, e, ns, "pod-a", nil, "stat -c %g /data /data/b.bin"); got != fmt.Sprintf("%d\n%d", fsGroup, fsGroup) {
		t.Errorf("group of /data and /data/b.bin: %q, want %d (fsGroup)", got, fsGroup)
	}
	// The subvolume's quota is the filesystem size the pods see.
	if size := podFSSize(t, e, ns, "pod-a", "/data"); size != gib {
		t.Errorf("pod-a sees a filesystem of %d bytes, want the 1Gi quota", size)
	}
	// Both pods use one staging mount (ceph-fuse) and one publish each.
	if m := volumeMounts(e, cephfsDriver, shared.pv); len(m) != 3 {
		t.Errorf("mounts of %s on the node: %v, want the staging mount and two publishes", shared.pv, m)
	}

	// Snapshot, restore into a larger PVC, read in a third pod.
	d = snapshot(t, e, ns, "snap", vsc, "shared")
	t.Logf("cephfs pods timing: snapshot ready in %s", ms(d))
	sn := readySnapshot(t, e, ns, "snap", cephfsDriver)
	ours = append(ours, sn.id.UUID)
	// Written after the snapshot: must not be in the restore.
	inPod(t, e, ns, "pod-a", nil, "echo late >/data/late.txt && sync")
	begin := time.Now()
	createPVC(t, e, ns, "restored", sc, "2Gi", rwx, fromSnapshot("snap"))
	d = e.wait(t, 3*time.Minute, "-n", ns, "--for=jsonpath={.status.phase}=Bound", "pvc/restored")
	t.Logf("cephfs pods timing: restore Bound in %s", ms(d))
	restored := checkSubvolume(t, e, c, fsa, journal, ns, "restored", 2*gib)
	ours = append(ours, restored.id.UUID)
	d = runPod(t, e, ns, podSpec{name: "pod-c", pvc: "restored"})
	uids = append(uids, podUID(t, e, ns, "pod-c"))
	t.Logf("cephfs pods timing: pod-c Running in %s (restore requested to Running %s)", ms(d), ms(time.Since(begin)))
	for file, want := range map[string]string{"a.bin": sumA, "b.bin": sumB} {
		if got := podSHA256(t, e, ns, "pod-c", "/data/"+file, 0, 0); got != want {
			t.Errorf("pod-c reads the restored %s as %s, want %s", file, got, want)
		}
	}
	if got := inPod(t, e, ns, "pod-c", nil, "ls /data"); strings.Contains(got, "late.txt") {
		t.Errorf("the restore holds a file written after the snapshot: %q", got)
	}
	if size := podFSSize(t, e, ns, "pod-c", "/data"); size != 2*gib {
		t.Errorf("pod-c sees a filesystem of %d bytes, want the 2Gi of the restored PVC", size)
	}

	// 5a. A pod deleted and recreated on the same PVC finds its data.
	deletePods(t, e, ns, "pod-a")
	d = runPod(t, e, ns, podSpec{name: "pod-a", pvc: "shared", fsGroup: fsGroup})
	t.Logf("cephfs pods timing: pod-a recreated, Running in %s", ms(d))
	uids = append(uids, podUID(t, e, ns, "pod-a"))
	if got := podSHA256(t, e, ns, "pod-a", "/data/a.bin", 0, 0); got != sumA {
		t.Errorf("recreated pod-a reads a.bin as %s, want %s", got, sumA)
	}

	// 5b. The node plugin killed under running pods: the ceph-fuse mounts
	// it made outlive it, the pods keep reading and writing; restarted, it
	// registers again and serves the next unstage.
	plugin.kill()
	t.Log("cephfs: node plugin killed (SIGKILL)")
	if got := podSHA256(t, e, ns, "pod-a", "/data/b.bin", 0, 0); got != sumB {
		t.Errorf("with the node plugin dead, pod-a reads b.bin as %s, want %s", got, sumB)
	}
	dataD, sumD := randomData(256 << 10)
	upload(t, e, ns, "pod-b", "/data/d.bin", dataD)
	plugin.start(t, e)
	if got := podSHA256(t, e, ns, "pod-a", "/data/d.bin", 0, 0); got != sumD {
		t.Errorf("pod-a reads d.bin (written by pod-b while the plugin was down) as %s, want %s", got, sumD)
	}

	// 6. Teardown: the pods, the snapshot, the PVCs; nothing left on the
	// node (mounts, ceph-fuse, staging and pod directories) or on Ceph.
	d = deletePods(t, e, ns, "pod-a", "pod-b", "pod-c")
	t.Logf("cephfs pods timing: 3 pods deleted in %s", ms(d))
	eventually(t, 2*time.Minute, func() string {
		if left := nodeLeftovers(e, cephfsDriver, uids...); len(left) > 0 {
			return fmt.Sprintf("left on the node: %v", left)
		}
		return ""
	})
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/snap")
	pvs := []string{"pv/" + shared.pv, "pv/" + restored.pv}
	deleteAndWait(t, e, "-n", ns, "pvc/shared", "pvc/restored")
	e.wait(t, 3*time.Minute, append([]string{"--for=delete"}, pvs...)...)
	eventually(t, 2*time.Minute, func() string {
		if left := cephfsLeftovers(t, fsa, journal, ours...); len(left) > 0 {
			return fmt.Sprintf("left on Ceph: %v", left)
		}
		return ""
	})
	ctrl.checkRunning(t)
	ctrl.checkRBAC(t)
	checkNoSecretsInLogs(t, e, adminKey, userKey)
}
