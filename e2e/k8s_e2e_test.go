//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/volid"
)

// Kubernetes-side steps of the flows, done with kubectl as a user would.

// applyExample applies a file of deploy/ with literal replacements (pairs
// of old, new), failing when the file lacks one: the examples are what the
// test uses, so a renamed placeholder breaks it.
func applyExample(t testing.TB, e *env, rel string, pairs ...string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, rel))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(text, pairs[i]) {
			t.Fatalf("%s has no %q", rel, pairs[i])
		}
		text = strings.ReplaceAll(text, pairs[i], pairs[i+1])
	}
	e.mustKubectl(t, []byte(text), "apply", "-f", "-")
	// Gone at the end, so that later tests (the dry runs of the examples)
	// find a clean API server. Registered before cleanupOnFailure, so it
	// runs after it: deleting volumes needs the secret.
	t.Cleanup(func() {
		if out, err := e.kubectl([]byte(text), "delete", "--ignore-not-found", "-f", "-"); err != nil {
			t.Logf("delete %s: %v\n%s", rel, err, out)
		}
	})
}

// applyClasses applies the StorageClass sc and the VolumeSnapshotClass vsc
// of deploy/<kind>/ for clusterID (the StorageClass with scPairs replaced
// too), and each again as <name>-retain with the Retain policy.
func applyClasses(t testing.TB, e *env, kind, clusterID, sc, vsc string, scPairs ...string) {
	t.Helper()
	scPairs = append([]string{"<cluster-id>", clusterID}, scPairs...)
	applyExample(t, e, "deploy/"+kind+"/storageclass.yaml", scPairs...)
	applyExample(t, e, "deploy/"+kind+"/storageclass.yaml", slices.Concat(scPairs,
		[]string{"name: " + sc, "name: " + sc + "-retain", "reclaimPolicy: Delete", "reclaimPolicy: Retain"})...)
	applyExample(t, e, "deploy/"+kind+"/snapshotclass.yaml", "<cluster-id>", clusterID)
	applyExample(t, e, "deploy/"+kind+"/snapshotclass.yaml", "<cluster-id>", clusterID,
		"name: "+vsc, "name: "+vsc+"-retain", "deletionPolicy: Delete", "deletionPolicy: Retain")
}

// source is a PVC's dataSource.
type source struct{ kind, group, name string }

var (
	fromSnapshot = func(name string) *source { return &source{"VolumeSnapshot", "snapshot.storage.k8s.io", name} }
	fromPVC      = func(name string) *source { return &source{"PersistentVolumeClaim", "", name} }
)

func createPVC(t testing.TB, e *env, ns, name, class, size, mode string, src *source) {
	t.Helper()
	ds := ""
	if src != nil {
		group := ""
		if src.group != "" {
			group = fmt.Sprintf(`"apiGroup": %q, `, src.group)
		}
		ds = fmt.Sprintf(`, "dataSource": {%s"kind": %q, "name": %q}`, group, src.kind, src.name)
	}
	manifest := fmt.Sprintf(`{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
 "metadata": {"name": %q, "namespace": %q},
 "spec": {"storageClassName": %q, "accessModes": [%q], "resources": {"requests": {"storage": %q}}%s}}`,
		name, ns, class, mode, size, ds)
	e.mustKubectl(t, []byte(manifest), "create", "-f", "-")
}

// provision creates a PVC and waits until it is Bound; it returns the time
// from the request to Bound.
func provision(t testing.TB, e *env, ns, name, class, size, mode string, src *source) time.Duration {
	t.Helper()
	begin := time.Now()
	createPVC(t, e, ns, name, class, size, mode, src)
	e.wait(t, 3*time.Minute, "-n", ns, "--for=jsonpath={.status.phase}=Bound", "pvc/"+name)
	return time.Since(begin)
}

func createSnapshot(t testing.TB, e *env, ns, name, class, pvc string) {
	t.Helper()
	manifest := fmt.Sprintf(`{"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
 "metadata": {"name": %q, "namespace": %q},
 "spec": {"volumeSnapshotClassName": %q, "source": {"persistentVolumeClaimName": %q}}}`, name, ns, class, pvc)
	e.mustKubectl(t, []byte(manifest), "create", "-f", "-")
}

// snapshot creates a VolumeSnapshot and waits for readyToUse.
func snapshot(t testing.TB, e *env, ns, name, class, pvc string) time.Duration {
	t.Helper()
	begin := time.Now()
	createSnapshot(t, e, ns, name, class, pvc)
	e.wait(t, 3*time.Minute, "-n", ns, "--for=jsonpath={.status.readyToUse}=true", "volumesnapshot/"+name)
	return time.Since(begin)
}

// volume is a provisioned PVC as Kubernetes shows it.
type volume struct {
	pvc, pv string
	handle  string
	id      volid.ID
	attrs   map[string]string
	pvObj   obj
}

func boundVolume(t testing.TB, e *env, ns, pvc, driver string) volume {
	t.Helper()
	claim := e.getJSON(t, "pvc", pvc, "-n", ns)
	pvName := claim.str("spec.volumeName")
	if pvName == "" {
		t.Fatalf("PVC %s has no volume", pvc)
	}
	pv := e.getJSON(t, "pv", pvName)
	if got := pv.str("spec.csi.driver"); got != driver {
		t.Errorf("PV %s: driver %q, want %q", pvName, got, driver)
	}
	if got := pv.str("spec.claimRef.name"); got != pvc {
		t.Errorf("PV %s is bound to %q, want %q", pvName, got, pvc)
	}
	v := volume{pvc: pvc, pv: pvName, handle: pv.str("spec.csi.volumeHandle"),
		attrs: pv.strMap("spec.csi.volumeAttributes"), pvObj: pv}
	var err error
	if v.id, err = volid.Decode(v.handle); err != nil {
		t.Fatalf("PV %s: volumeHandle %q: %v", pvName, v.handle, err)
	}
	return v
}

// snap is a ready VolumeSnapshot and its content.
type snap struct {
	name, uid, content, handle, restoreSize string
	id                                      volid.ID
	contentObj                              obj
}

func readySnapshot(t testing.TB, e *env, ns, name, driver string) snap {
	t.Helper()
	vs := e.getJSON(t, "volumesnapshot", name, "-n", ns)
	s := snap{name: name, uid: vs.str("metadata.uid"), content: vs.str("status.boundVolumeSnapshotContentName"),
		restoreSize: vs.str("status.restoreSize")}
	if s.content == "" {
		t.Fatalf("VolumeSnapshot %s has no content", name)
	}
	if s.restoreSize == "" {
		t.Errorf("VolumeSnapshot %s: restoreSize not set", name)
	}
	s.contentObj = e.getJSON(t, "volumesnapshotcontent", s.content)
	if got := s.contentObj.str("spec.driver"); got != driver {
		t.Errorf("VolumeSnapshotContent %s: driver %q, want %q", s.content, got, driver)
	}
	s.handle = s.contentObj.str("status.snapshotHandle")
	var err error
	if s.id, err = volid.Decode(s.handle); err != nil {
		t.Fatalf("VolumeSnapshotContent %s: snapshotHandle %q is not our snapshot ID: %v", s.content, s.handle, err)
	}
	return s
}

// snapshotSrc takes VolumeSnapshot "snap" of the 1Gi PVC "src" with class
// vsc and returns it once ready; kind names the driver in the timing it
// logs.
func snapshotSrc(t testing.TB, e *env, kind, ns, vsc, driver string) snap {
	t.Helper()
	d := snapshot(t, e, ns, "snap", vsc, "src")
	t.Logf("%s timing: snapshot ready in %s", kind, ms(d))
	sn := readySnapshot(t, e, ns, "snap", driver)
	if sn.restoreSize != "1Gi" {
		t.Errorf("restoreSize %q, want 1Gi", sn.restoreSize)
	}
	return sn
}

// provisionRestores provisions the PVCs "restore" (1Gi) and "restore-big"
// (2Gi) of class sc from VolumeSnapshot "snap".
func provisionRestores(t testing.TB, e *env, kind, ns, sc, mode string) {
	t.Helper()
	d := provision(t, e, ns, "restore", sc, "1Gi", mode, fromSnapshot("snap"))
	t.Logf("%s timing: restore Bound in %s", kind, ms(d))
	d = provision(t, e, ns, "restore-big", sc, "2Gi", mode, fromSnapshot("snap"))
	t.Logf("%s timing: restore into 2Gi Bound in %s", kind, ms(d))
}

// retainSnapshot takes VolumeSnapshot name of pvc with a class of
// deletionPolicy Retain and deletes it again: its content must stay.
func retainSnapshot(t testing.TB, e *env, ns, name, class, pvc, driver string) snap {
	t.Helper()
	snapshot(t, e, ns, name, class, pvc)
	kept := readySnapshot(t, e, ns, name, driver)
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/"+name)
	if !e.exists(t, "volumesnapshotcontent/"+kept.content) {
		t.Errorf("VolumeSnapshotContent %s went with its Retain snapshot", kept.content)
	}
	return kept
}

// releasePVC deletes PVC v, bound to a PV of reclaimPolicy Retain, and
// waits for the PV to be Released.
func releasePVC(t testing.TB, e *env, ns string, v volume) {
	t.Helper()
	deleteAndWait(t, e, "-n", ns, "pvc/"+v.pvc)
	e.wait(t, time.Minute, "--for=jsonpath={.status.phase}=Released", "pv/"+v.pv)
}

// deleteRetained hands a retained snapshot content and PV back to Delete
// and waits until both are gone.
func deleteRetained(t testing.TB, e *env, content, pv string) {
	t.Helper()
	patch(t, e, `{"spec":{"deletionPolicy":"Delete"}}`, "volumesnapshotcontent/"+content)
	deleteAndWait(t, e, "volumesnapshotcontent/"+content)
	patch(t, e, `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`, "pv/"+pv)
	e.wait(t, 2*time.Minute, "--for=delete", "pv/"+pv)
}

// deleteSnapshotThenPVCs deletes VolumeSnapshot sn (its content must go
// with it), then the PVCs and waits until their PVs are gone too; kind
// names the driver in the timing it logs.
func deleteSnapshotThenPVCs(t testing.TB, e *env, kind, ns string, sn snap, pvcs ...string) {
	t.Helper()
	deleteAndWait(t, e, "-n", ns, "volumesnapshot/"+sn.name)
	if e.exists(t, "volumesnapshotcontent/"+sn.content) {
		t.Errorf("VolumeSnapshotContent %s stays after its snapshot was deleted", sn.content)
	}
	var pvs, claims []string
	for _, name := range pvcs {
		pvs = append(pvs, "pv/"+e.getJSON(t, "pvc", name, "-n", ns).str("spec.volumeName"))
		claims = append(claims, "pvc/"+name)
	}
	begin := time.Now()
	deleteAndWait(t, e, append([]string{"-n", ns}, claims...)...)
	e.wait(t, 3*time.Minute, append([]string{"--for=delete"}, pvs...)...)
	t.Logf("%s timing: %d PVCs and their PVs deleted in %s", kind, len(pvcs), ms(time.Since(begin)))
}

func patch(t testing.TB, e *env, patchJSON string, args ...string) {
	t.Helper()
	e.mustKubectl(t, nil, append([]string{"patch", "--type=merge", "-p", patchJSON}, args...)...)
}

// deleteAndWait deletes objects and waits until they are gone.
func deleteAndWait(t testing.TB, e *env, args ...string) time.Duration {
	t.Helper()
	begin := time.Now()
	e.mustKubectl(t, nil, append([]string{"delete", "--wait=false"}, args...)...)
	e.wait(t, 3*time.Minute, append([]string{"--for=delete"}, args...)...)
	return time.Since(begin)
}

// eventually polls cond until it returns "" (nothing wrong) or the timeout
// passes, then fails with the last complaint.
func eventually(t testing.TB, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// cleanupOnFailure, registered after the controller pod started and the
// examples were applied (so it runs while the driver, the sidecars and the
// secrets are still there), deletes what a failed test left
// in ns through the driver: the Ceph cluster is shared and must not keep
// our images or subvolumes. Retained objects are handed back to Delete.
func cleanupOnFailure(t *testing.T, e *env, ns string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("cleaning up %s after the failure", ns)
		run := func(args ...string) {
			if out, err := e.kubectl(nil, args...); err != nil {
				t.Logf("cleanup: %v\n%s", err, out)
			}
		}
		run("delete", "volumeattachment", "--all", "--wait=false")
		run("delete", "volumesnapshot", "--all", "-n", ns, "--wait=false")
		run("delete", "pvc", "--all", "-n", ns, "--wait=false")
		for _, kind := range []string{"volumesnapshotcontent", "pv"} {
			out, err := e.kubectl(nil, "get", kind, "-o", "name")
			if err != nil {
				continue
			}
			for _, name := range strings.Fields(string(out)) {
				if kind == "pv" {
					run("patch", name, "--type=merge", "-p", `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`)
				} else {
					run("patch", name, "--type=merge", "-p", `{"spec":{"deletionPolicy":"Delete"}}`)
					run("delete", name, "--wait=false")
				}
			}
		}
		run("wait", "--for=delete", "volumesnapshotcontent", "--all", "--timeout=120s")
		run("wait", "--for=delete", "pv", "--all", "--timeout=120s")
	})
}
