//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	fsadmin "github.com/ceph/go-ceph/cephfs/admin"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// The upgrade as a user does it: the chart installed with the image of an
// earlier commit (make e2e builds it: E2E_UPGRADE_FROM,
// scripts/build-upgrade-image.sh), a volume mounted through it by a pod
// that probes it throughout, helm upgrade to the current image rolling
// every pod, the FUSE daemon the old node plugin started serving on, and the
// volume snapshotted, restored and deleted by the new driver afterwards.
// For RBD (the rbd-fuse mapper) and CephFS (ceph-fuse).

// importUpgradeFrom imports the image of the earlier commit.
func importUpgradeFrom(t testing.TB, e *env) deployImage {
	t.Helper()
	dir := filepath.Join(e.root, "_output", "upgrade-from")
	begin := time.Now()
	defer func() { t.Logf("upgrade timing: image of the earlier commit imported in %s", ms(time.Since(begin))) }()
	img, err := e.node.importCephcsi(filepath.Join(dir, "cephcsi-image.tar"), filepath.Join(dir, "cephcsi"))
	if err != nil {
		t.Fatalf("the image of the earlier commit (make e2e builds it with scripts/build-upgrade-image.sh): %v", err)
	}
	return img
}

// checkDriverImage: every container of the release that runs cephcsi runs
// the image want.
func checkDriverImage(t testing.TB, e *env, r *release, want deployImage) {
	t.Helper()
	n := 0
	for _, p := range releasePods(t, e, r) {
		cs, _ := p.get("spec.containers").([]any)
		for _, c := range cs {
			m, _ := c.(map[string]any)
			image, _ := m["image"].(string)
			if !strings.HasPrefix(image, want.repository+":") {
				continue
			}
			n++
			if image != want.ref() {
				t.Errorf("pod %s container %v runs %s, want %s", p.str("metadata.name"), m["name"], image, want.ref())
			}
		}
	}
	if n == 0 {
		t.Errorf("no container of %s runs %s", r.name, want.repository)
	}
}

func TestHelmUpgradeImageRBD(t *testing.T)    { upgradeImage(t, "rbd") }
func TestHelmUpgradeImageCephFS(t *testing.T) { upgradeImage(t, "cephfs") }

// cephOf is what a test looks at in Ceph for a release of a kind.
type cephOf struct {
	check    func(t testing.TB, v volume) // the volume's image or subvolume exists
	ours     func(t testing.TB) []string  // the release's images or subvolumes
	deep     func(t testing.TB, uuids ...string) []string
	keys     []string // the keys that must not reach a log
	directIO bool     // the probes bypass the page cache (RBD)
}

func cephFor(t testing.TB, c *testutil.Cluster, r *release) cephOf {
	t.Helper()
	switch r.kind {
	case "rbd":
		io := c.IOContext(t, rbdPool)
		return cephOf{
			check: func(t testing.TB, v volume) {
				t.Helper()
				if name := v.attrs["imageName"]; !strings.HasPrefix(name, r.prefix) || !testutil.ImageExists(t, io, name) {
					t.Fatalf("PVC %s: image %q (attributes %v) not in the pool", v.pvc, name, v.attrs)
				}
			},
			ours: func(t testing.TB) []string { return rbdOurs(t, io, r.prefix) },
			deep: func(t testing.TB, uuids ...string) []string { return rbdLeftovers(t, io, uuids...) },
			keys: []string{c.Var("CEPH_RBD_PROVISIONER_KEY")}, directIO: true,
		}
	default:
		fsa := fsadmin.NewFromConn(c.Admin())
		journal := c.IOContext(t, fsMetadataPool)
		ours := func(t testing.TB) []string { return prefixed(subvolumes(t, fsa), r.prefix) }
		return cephOf{
			check: func(t testing.TB, v volume) {
				t.Helper()
				if name := v.attrs["subvolumeName"]; !strings.HasPrefix(name, r.prefix) || !slices.Contains(ours(t), name) {
					t.Fatalf("PVC %s: subvolume %q (attributes %v) not in the filesystem", v.pvc, name, v.attrs)
				}
			},
			ours: ours,
			deep: func(t testing.TB, uuids ...string) []string { return cephfsLeftovers(t, fsa, journal, uuids...) },
			keys: []string{c.Var("CEPH_FS_PROVISIONER_KEY"), c.Var("CEPH_FS_NODE_KEY")},
		}
	}
}

func upgradeImage(t *testing.T, kind string) {
	e := theEnv
	c := testutil.RequireCluster(t)
	r := &release{kind: kind, name: "upg-" + kind, ns: "upg-" + kind, driver: "upg." + kind + ".csi.ceph.com",
		apps: "e2e-upg-" + kind, sc: "upg-" + kind + "-sc", vsc: "upg-" + kind + "-snap", prefix: "upg-"}
	ceph := cephFor(t, c, r)
	img := importDeployImages(t, e)
	old := importUpgradeFrom(t, e)
	if old.ref() == img.cephcsi.ref() {
		t.Fatalf("the earlier commit's image is the current one (%s)", old.ref())
	}
	t.Logf("upgrade from %s to %s", old.ref(), img.cephcsi.ref())
	if kind == "rbd" {
		// The chart values turn topology on (as TestHelmRBD): the node's zone.
		e.mustKubectl(t, nil, "label", "node", e2eNode, zoneLabel+"=zone-a", "--overwrite")
		t.Cleanup(func() {
			_, _ = e.kubectl(nil, "label", "node", e2eNode, zoneLabel+"-", "topology."+r.driver+"/zone-")
		})
	}
	startReleaseOf(t, e, c, r, img, old)
	checkDriverImage(t, e, r, old)
	ns := r.apps
	app := &appPods{e: e, ns: ns, directIO: ceph.directIO, timing: "upgrade"}
	ourVolume := func(pvc string) volume {
		t.Helper()
		v := boundVolume(t, e, ns, pvc, r.driver)
		ceph.check(t, v)
		return v
	}

	// Through the old driver: a volume, mounted and written.
	d := provision(t, e, ns, "data", r.sc, "1Gi", "ReadWriteOnce", nil)
	t.Logf("upgrade timing: PVC Bound (old driver) in %s", ms(d))
	data := ourVolume("data")
	app.run(t, "writer", "data")
	payload, sum := randomData(4 << 20)
	upload(t, e, ns, "writer", "/data/file.bin", payload)
	helpers := helperPIDs(e, r.driver)
	if len(helpers) != 1 {
		t.Errorf("%d FUSE helpers for 1 staged volume: %v", len(helpers), helpers)
	}

	// helm upgrade to the current image: every pod rolls, the FUSE daemon
	// started by the old node plugin serves on, the pod keeps reading.
	from, to := upgrade(t, e, r, "--set", "nodeplugin.plugin.image.tag="+img.cephcsi.tag)
	checkDriverImage(t, e, r, img.cephcsi)
	checkUpgradeKeepsVolumes(t, e, r, from, to, helpers, []string{"writer"}, func() {
		if got := podSHA256(t, e, ns, "writer", "/data/file.bin", 0, 0); got != sum {
			t.Errorf("after the upgrade the writer reads file.bin as %s, want %s", got, sum)
		}
	})

	// The new driver snapshots the old one's volume, restores it, deletes.
	d = snapshot(t, e, ns, "data-snap", r.vsc, "data")
	t.Logf("upgrade timing: snapshot (new driver) ready in %s", ms(d))
	sn := readySnapshot(t, e, ns, "data-snap", r.driver)
	d = provision(t, e, ns, "restored", r.sc, "1Gi", "ReadWriteOnce", fromSnapshot("data-snap"))
	t.Logf("upgrade timing: restore Bound in %s", ms(d))
	restored := ourVolume("restored")
	app.run(t, "reader", "restored")
	if got := podSHA256(t, e, ns, "reader", "/data/file.bin", 0, 0); got != sum {
		t.Errorf("the restore holds file.bin as %s, the writer wrote %s", got, sum)
	}
	d = deletePods(t, e, ns, "writer", "reader")
	t.Logf("upgrade timing: pods deleted in %s", ms(d))
	begin := time.Now()
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/data-snap", "pvc/restored", "pvc/data")
	e.wait(t, 3*time.Minute, "--for=delete", "pv/"+data.pv, "pv/"+restored.pv)
	eventually(t, 3*time.Minute, func() string {
		if left := append(driverLeftovers(e, r.driver, app.uids...), ceph.ours(t)...); len(left) > 0 {
			return fmt.Sprintf("left: %v", left)
		}
		return ""
	})
	t.Logf("upgrade timing: snapshot and PVCs deleted by the new driver, nothing left, in %s", ms(time.Since(begin)))
	if left := ceph.deep(t, data.id.UUID, sn.id.UUID, restored.id.UUID); len(left) > 0 {
		t.Errorf("left of the deleted volumes: %v", left)
	}
	uninstall(t, e, r)
	checkNoSecretsInLogs(t, e, ceph.keys...)
}
