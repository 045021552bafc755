//go:build e2e

package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/testutil"
)

const (
	rbdDriver = "rbd.csi.ceph.com"
	rbdPool   = "rbd"
	gib       = int64(1) << 30
)

// TestRBD runs the user's flows through Kubernetes and checks each on both
// sides: the objects kubectl shows and the images, snapshots and journal
// entries on Ceph.
func TestRBD(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, rbdPool)
	pod, err := startControllerPod(t, e, c, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rbd: all %d sidecars hold their leases after %s", len(pod.sidecars), ms(pod.waitLeaders(t, e)))
	pod.checkLiveness(t)

	ns := "e2e-rbd"
	e.mustKubectl(t, nil, "create", "namespace", ns)
	provKey := c.Var("CEPH_RBD_PROVISIONER_KEY")
	applyExample(t, e, "deploy/rbd/secret.yaml", "<user-id>", c.Var("CEPH_RBD_PROVISIONER_ID"), "<user-key>", provKey)
	const sc, vsc, rwo = "csi-rbd-sc", "csi-rbdplugin-snapclass", "ReadWriteOnce"
	applyClasses(t, e, "rbd", c.ClusterID, sc, vsc, "<pool>", rbdPool)
	cleanupOnFailure(t, e, ns)

	// Every UUID this test makes, for the leak check at the end.
	var ours []string

	// 1. StorageClass + PVC -> Bound, and the image with its journal entries.
	d := provision(t, e, ns, "src", sc, "1Gi", rwo, nil)
	t.Logf("rbd timing: PVC Bound in %s", ms(d))
	src := checkRBDVolume(t, e, c, io, ns, "src")
	ours = append(ours, src.id.UUID)
	payload := make([]byte, 256<<10)
	_, _ = rand.Read(payload)
	testutil.WriteImage(t, io, src.attrs["imageName"], payload, 0)
	// --setmetadata (the deploy's controller) with the provisioner's
	// --extra-create-metadata: the names ceph-csi records on the image.
	checkImageMetadata(t, io, src.attrs["imageName"], map[string]string{
		"csi.storage.k8s.io/pvc/name": "src", "csi.storage.k8s.io/pvc/namespace": ns, "csi.storage.k8s.io/pv/name": src.pv})

	// The attacher marks a VolumeAttachment attached (our controller has no
	// ControllerPublish, as ceph-csi's) and detaches it again.
	va := fmt.Sprintf(`{"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": "e2e-va"},
 "spec": {"attacher": %q, "nodeName": %q, "source": {"persistentVolumeName": %q}}}`, rbdDriver, e2eNode, src.pv)
	e.mustKubectl(t, []byte(va), "create", "-f", "-")
	d = e.wait(t, time.Minute, "--for=jsonpath={.status.attached}=true", "volumeattachment/e2e-va")
	t.Logf("rbd timing: VolumeAttachment attached in %s", ms(d))
	t.Logf("rbd timing: VolumeAttachment detached and gone in %s", ms(deleteAndWait(t, e, "volumeattachment/e2e-va")))

	// 2. VolumeSnapshot -> readyToUse; csi-snap-<uuid> cloned from the source,
	// no snapshot left on the source.
	sn := snapshotSrc(t, e, "rbd", ns, vsc, rbdDriver)
	ours = append(ours, sn.id.UUID)
	if sn.id.ClusterID != c.ClusterID {
		t.Errorf("snapshot ID names cluster %q, want %q", sn.id.ClusterID, c.ClusterID)
	}
	snapImage := "csi-snap-" + sn.id.UUID
	if !testutil.ImageExists(t, io, snapImage) {
		t.Fatalf("%s does not exist", snapImage)
	}
	if p := testutil.ImageParent(t, io, snapImage); !strings.HasPrefix(p, src.attrs["imageName"]+"@") {
		t.Errorf("parent of %s is %q, want %s@...", snapImage, p, src.attrs["imageName"])
	}
	checkImageMetadata(t, io, snapImage, map[string]string{
		"csi.storage.k8s.io/volumesnapshot/name": "snap", "csi.storage.k8s.io/volumesnapshot/namespace": ns,
		"csi.storage.k8s.io/volumesnapshotcontent/name": sn.content,
		// The source's names are not inherited by the snapshot's image.
		"csi.storage.k8s.io/pvc/name": "", "csi.storage.k8s.io/pv/name": ""})
	if s := testutil.ImageUserSnaps(t, io, src.attrs["imageName"]); len(s) != 0 {
		t.Errorf("source image keeps snapshots %v", s)
	}
	checkSnapJournal(t, io, sn, snapImage, src.attrs["imageName"])

	// 3. PVC from the snapshot, same size and larger; the bytes written
	// before the snapshot read back.
	provisionRestores(t, e, "rbd", ns, sc, rwo)
	for _, name := range []string{"restore", "restore-big"} {
		v := checkRBDVolume(t, e, c, io, ns, name)
		ours = append(ours, v.id.UUID)
		img := v.attrs["imageName"]
		if p := testutil.ImageParent(t, io, img); !strings.HasPrefix(p, snapImage+"@") {
			t.Errorf("%s: parent of %s is %q, want %s@...", name, img, p, snapImage)
		}
		if got := testutil.ReadImage(t, io, img, len(payload), 0); !bytes.Equal(got, payload) {
			t.Errorf("%s: %s does not hold the bytes written before the snapshot", name, img)
		}
		checkImageMetadata(t, io, img, map[string]string{"csi.storage.k8s.io/pvc/name": name, "csi.storage.k8s.io/pv/name": v.pv,
			"csi.storage.k8s.io/volumesnapshot/name": ""})
		want := gib
		if name == "restore-big" {
			want = 2 * gib
		}
		if size := testutil.ImageSize(t, io, img); size != uint64(want) {
			t.Errorf("%s: image size %d, want %d", name, size, want)
		}
	}

	// 4. PVC from PVC: cloned through csi-vol-<uuid>-temp.
	d = provision(t, e, ns, "clone", sc, "1Gi", rwo, fromPVC("src"))
	t.Logf("rbd timing: clone Bound in %s", ms(d))
	clone := checkRBDVolume(t, e, c, io, ns, "clone")
	ours = append(ours, clone.id.UUID)
	if p := testutil.ImageParent(t, io, clone.attrs["imageName"]); !strings.HasPrefix(p, clone.attrs["imageName"]+"-temp@") {
		t.Errorf("parent of clone %s is %q, want %s-temp@...", clone.attrs["imageName"], p, clone.attrs["imageName"])
	}
	if got := testutil.ReadImage(t, io, clone.attrs["imageName"], len(payload), 0); !bytes.Equal(got, payload) {
		t.Errorf("clone %s does not hold the source's bytes", clone.attrs["imageName"])
	}

	// 5. Expansion: the PV and the image grow; the PVC waits for the node
	// (no kubelet here), as RBD filesystems are grown on the node.
	begin := time.Now()
	patch(t, e, `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`, "pvc/src", "-n", ns)
	e.wait(t, 2*time.Minute, "--for=jsonpath={.spec.capacity.storage}=2Gi", "pv/"+src.pv)
	t.Logf("rbd timing: PV expanded in %s", ms(time.Since(begin)))
	e.wait(t, time.Minute, "-n", ns, "--for=condition=FileSystemResizePending", "pvc/src")
	if size := testutil.ImageSize(t, io, src.attrs["imageName"]); size != uint64(2*gib) {
		t.Errorf("expanded image size %d, want %d", size, 2*gib)
	}
	claim := e.getJSON(t, "pvc", "src", "-n", ns)
	if got := claim.str("status.allocatedResources.storage"); got != "" && got != "2Gi" {
		t.Errorf("PVC allocatedResources %q, want 2Gi", got)
	}
	t.Logf("rbd: PVC after expansion: capacity %s, allocated %q, node expansion pending",
		claim.str("status.capacity.storage"), claim.str("status.allocatedResources.storage"))

	// 6a. Retain: a snapshot and a volume whose Kubernetes objects go while
	// the Ceph objects stay; then handed back to Delete to clean up.
	kept := retainSnapshot(t, e, ns, "snap-retain", vsc+"-retain", "src", rbdDriver)
	ours = append(ours, kept.id.UUID)
	if !testutil.ImageExists(t, io, "csi-snap-"+kept.id.UUID) {
		t.Errorf("csi-snap-%s went with its Retain snapshot", kept.id.UUID)
	}
	provision(t, e, ns, "keep", sc+"-retain", "1Gi", rwo, nil)
	keep := checkRBDVolume(t, e, c, io, ns, "keep")
	ours = append(ours, keep.id.UUID)
	releasePVC(t, e, ns, keep)
	if !testutil.ImageExists(t, io, keep.attrs["imageName"]) {
		t.Errorf("%s went with its PVC under reclaimPolicy Retain", keep.attrs["imageName"])
	}
	if testutil.Omap(t, io, "csi.volumes.default")["csi.volume."+keep.pv] != keep.id.UUID {
		t.Errorf("journal entry of retained %s is gone", keep.pv)
	}
	deleteRetained(t, e, kept.content, keep.pv)

	// 6b. Delete everything, the snapshot first: nothing of ours stays on
	// Ceph, not in the trash, not in the journal.
	deleteSnapshotThenPVCs(t, e, "rbd", ns, sn, "clone", "restore", "restore-big", "src")
	awaitNoRBDLeftovers(t, io, ours...)
	pod.checkRunning(t)
	pod.checkRBAC(t)
	checkNoSecretsInLogs(t, e, provKey, c.Var("CEPH_RBD_NODE_KEY"))
}

// checkRBDVolume checks a Bound PVC's PV and its image on Ceph.
func checkRBDVolume(t *testing.T, e *env, c *testutil.Cluster, io *rados.IOContext, ns, pvc string) volume {
	t.Helper()
	v := boundVolume(t, e, ns, pvc, rbdDriver)
	want := map[string]string{"clusterID": c.ClusterID, "pool": rbdPool, "journalPool": rbdPool,
		"imageFeatures": "layering", "imageName": "csi-vol-" + v.id.UUID}
	for k, w := range want {
		if got := v.attrs[k]; got != w {
			t.Errorf("PV %s: volumeAttributes[%s] = %q, want %q", v.pv, k, got, w)
		}
	}
	if v.id.ClusterID != c.ClusterID {
		t.Errorf("PV %s: volume ID names cluster %q", v.pv, v.id.ClusterID)
	}
	img := "csi-vol-" + v.id.UUID
	if !testutil.ImageExists(t, io, img) {
		t.Fatalf("PV %s: image %s/%s does not exist", v.pv, rbdPool, img)
	}
	// The provisioner names the CSI request after the PV.
	if got := testutil.Omap(t, io, "csi.volumes.default")["csi.volume."+v.pv]; got != v.id.UUID {
		t.Errorf("journal: csi.volume.%s -> %q, want %s", v.pv, got, v.id.UUID)
	}
	if j := testutil.Omap(t, io, "csi.volume."+v.id.UUID); j["csi.imagename"] != img || j["csi.volname"] != v.pv {
		t.Errorf("journal csi.volume.%s = %v", v.id.UUID, j)
	}
	return v
}

// checkSnapJournal checks the journal of snapshot sn: its directory names
// it after its VolumeSnapshot (as the snapshotter names the request), its
// entry the image (or subvolume snapshot) and the source.
func checkSnapJournal(t testing.TB, io *rados.IOContext, sn snap, image, source string) {
	t.Helper()
	if got := testutil.Omap(t, io, "csi.snaps.default")["csi.snap.snapshot-"+sn.uid]; got != sn.id.UUID {
		t.Errorf("journal: csi.snap.snapshot-%s -> %q, want %s", sn.uid, got, sn.id.UUID)
	}
	if j := testutil.Omap(t, io, "csi.snap."+sn.id.UUID); j["csi.imagename"] != image || j["csi.source"] != source {
		t.Errorf("journal csi.snap.%s = %v", sn.id.UUID, j)
	}
}

// awaitNoRBDLeftovers waits up to two minutes for nothing carrying one of
// the UUIDs to be left on Ceph (deletes finish after the PV is gone).
func awaitNoRBDLeftovers(t testing.TB, io *rados.IOContext, uuids ...string) {
	t.Helper()
	eventually(t, 2*time.Minute, func() string {
		if left := rbdLeftovers(t, io, uuids...); len(left) > 0 {
			return fmt.Sprintf("left on Ceph: %v", left)
		}
		return ""
	})
}

// rbdLeftovers lists images, trash entries, RADOS objects and journal keys
// that carry one of the UUIDs.
func rbdLeftovers(t testing.TB, io *rados.IOContext, uuids ...string) []string {
	t.Helper()
	ours := carriesOneOf(uuids)
	var left []string
	names, err := rbd.GetImageNames(io)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if ours(n) {
			left = append(left, "image "+n)
		}
	}
	trash, err := rbd.GetTrashList(io)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range trash {
		if ours(e.Name) {
			left = append(left, "trash "+e.Name)
		}
	}
	return append(left, journalLeftovers(t, io, ours)...)
}

// carriesOneOf says whether a name holds one of the UUIDs.
func carriesOneOf(uuids []string) func(string) bool {
	return func(s string) bool {
		for _, u := range uuids {
			if strings.Contains(s, u) {
				return true
			}
		}
		return false
	}
}

// journalLeftovers lists the objects of io and the keys of its journal
// directories that ours matches (by object name, by key value).
func journalLeftovers(t testing.TB, io *rados.IOContext, ours func(string) bool) []string {
	t.Helper()
	var left []string
	if err := io.ListObjects(func(oid string) {
		if ours(oid) {
			left = append(left, "object "+oid)
		}
	}); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		for k, v := range testutil.Omap(t, io, dir) {
			if ours(v) {
				left = append(left, "journal "+dir+": "+k)
			}
		}
	}
	return left
}

// checkImageMetadata checks image metadata keys; "" wants the key absent.
func checkImageMetadata(t testing.TB, io *rados.IOContext, name string, want map[string]string) {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open image %s: %v", name, err)
	}
	defer img.Close()
	for k, v := range want {
		got, err := img.GetMetadata(k)
		if errors.Is(err, rbd.ErrNotFound) {
			got, err = "", nil
		}
		if err != nil || got != v {
			t.Errorf("image %s metadata %s = %q, %v; want %q", name, k, got, err, v)
		}
	}
}
