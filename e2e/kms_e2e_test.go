//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// TestEncryptedRBDThroughKubernetes provisions, snapshots and restores
// encrypted RBD volumes whose KMS the controller finds through the API
// server, under the deploy/ RBAC and its service account's token: the
// csi-kms-connection-details ConfigMap in its namespace (no configuration
// file mounted) and the passphrase in a Secret of the PVC's namespace
// (secrets-metadata with secretName). Each image's sealed DEK must open
// with that passphrase, and a KMS naming a Secret that does not exist
// leaves the PVC Pending with the reason and nothing on Ceph.
func TestEncryptedRBDThroughKubernetes(t *testing.T) {
	e := theEnv
	c := testutil.RequireCluster(t)
	io := c.IOContext(t, rbdPool)
	dep := readDeployment(t, e, "rbd", "csi-rbdplugin-provisioner.yaml")
	driverNS, sa := dep.Metadata.Namespace, dep.Spec.Template.Spec.ServiceAccountName
	for _, f := range []string{"namespace.yaml", "csi-provisioner-rbac.yaml"} {
		e.mustKubectl(t, nil, "apply", "-f", filepath.Join(e.root, "deploy", "rbd", f))
	}
	kc := filepath.Join(e.dir, "rbd-driver.kubeconfig")
	if err := e.serviceAccountKubeconfig(kc, driverNS, sa); err != nil {
		t.Fatal(err)
	}
	// What the manifests' fieldRef gives the driver container.
	t.Setenv("POD_NAMESPACE", driverNS)
	const kmsID, kmsMissing = "e2e-secrets", "e2e-missing-secret"
	cm := fmt.Sprintf(`{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "csi-kms-connection-details", "namespace": %q},
 "data": {%q: "{\"encryptionKMSType\": \"metadata\", \"secretName\": \"e2e-kms-passphrase\"}",
          %q: "{\"encryptionKMSType\": \"metadata\", \"secretName\": \"no-such-secret\"}"}}`, driverNS, kmsID, kmsMissing)
	e.mustKubectl(t, []byte(cm), "apply", "-f", "-")
	t.Cleanup(func() {
		_, _ = e.kubectl(nil, "delete", "--ignore-not-found", "-n", driverNS, "configmap/csi-kms-connection-details")
	})
	pod, err := startControllerPod(t, e, c, "rbd", "--kubeconfig="+kc, "--kmsconfigpath="+filepath.Join(e.dir, "no-kms-config.json"))
	if err != nil {
		t.Fatal(err)
	}
	pod.waitLeaders(t, e)

	ns := "e2e-kms"
	e.mustKubectl(t, nil, "create", "namespace", ns)
	provKey := c.Var("CEPH_RBD_PROVISIONER_KEY")
	applyExample(t, e, "deploy/rbd/secret.yaml", "<user-id>", c.Var("CEPH_RBD_PROVISIONER_ID"), "<user-key>", provKey)
	buf := make([]byte, 16)
	_, _ = rand.Read(buf)
	passphrase := hex.EncodeToString(buf)
	e.mustKubectl(t, nil, "create", "secret", "generic", "e2e-kms-passphrase", "-n", ns, "--from-literal=encryptionPassphrase="+passphrase)
	encrypted := func(class, id string) []string {
		return []string{"<cluster-id>", c.ClusterID, "<pool>", rbdPool, "name: csi-rbd-sc", "name: " + class,
			"  imageFeatures: layering\n", "  imageFeatures: layering\n  encrypted: \"true\"\n  encryptionKMSID: " + id + "\n"}
	}
	applyExample(t, e, "deploy/rbd/storageclass.yaml", encrypted("e2e-kms-sc", kmsID)...)
	applyExample(t, e, "deploy/rbd/storageclass.yaml", encrypted("e2e-kms-missing-sc", kmsMissing)...)
	const vsc = "csi-rbdplugin-snapclass"
	applyExample(t, e, "deploy/rbd/snapshotclass.yaml", "<cluster-id>", c.ClusterID)
	cleanupOnFailure(t, e, ns)
	var ours []string

	// Create, snapshot, restore: each image carries a DEK sealed under the
	// Secret's passphrase and its own volume ID.
	d := provision(t, e, ns, "src", "e2e-kms-sc", "1Gi", "ReadWriteOnce", nil)
	t.Logf("kms timing: encrypted PVC Bound in %s", ms(d))
	src := checkRBDVolume(t, e, c, io, ns, "src")
	ours = append(ours, src.id.UUID)
	sn := snapshotSrc(t, e, "kms", ns, vsc, rbdDriver)
	ours = append(ours, sn.id.UUID)
	d = provision(t, e, ns, "restore", "e2e-kms-sc", "1Gi", "ReadWriteOnce", fromSnapshot("snap"))
	t.Logf("kms timing: encrypted restore Bound in %s", ms(d))
	restore := checkRBDVolume(t, e, c, io, ns, "restore")
	ours = append(ours, restore.id.UUID)
	for _, v := range []struct{ image, id string }{
		{src.attrs["imageName"], src.handle},
		{"csi-snap-" + sn.id.UUID, sn.handle},
		{restore.attrs["imageName"], restore.handle},
	} {
		checkSealedDEK(t, io, v.image, v.id, passphrase)
	}

	// A KMS whose Secret is missing: the PVC stays Pending saying so, and
	// nothing is left on Ceph.
	createPVC(t, e, ns, "missing", "e2e-kms-missing-sc", "1Gi", "ReadWriteOnce", nil)
	uid := e.getJSON(t, "pvc", "missing", "-n", ns).str("metadata.uid")
	eventually(t, time.Minute, func() string {
		ev, err := e.kubectl(nil, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=missing", "-o", "jsonpath={.items[*].message}")
		if err != nil || !strings.Contains(string(ev), "no-such-secret") || !strings.Contains(string(ev), "not found") {
			return fmt.Sprintf("no event naming the missing Secret yet: %s %v", ev, err)
		}
		return ""
	})
	if phase := e.getJSON(t, "pvc", "missing", "-n", ns).str("status.phase"); phase != "Pending" {
		t.Errorf("PVC with a missing KMS Secret is %s, want Pending", phase)
	}
	deleteAndWait(t, e, "-n", ns, "pvc/missing")
	if j := testutil.Omap(t, io, "csi.volumes.default")["csi.volume.pvc-"+uid]; j != "" {
		t.Errorf("the refused PVC left journal entry %s: %v", j, rbdLeftovers(t, io, j))
	}

	deleteSnapshotThenPVCs(t, e, "kms", ns, sn, "restore", "src")
	awaitNoRBDLeftovers(t, io, ours...)
	pod.checkRunning(t)
	pod.checkRBAC(t)
	if log, err := os.ReadFile(pod.driver.log); err != nil || strings.Contains(string(log), "forbidden") {
		t.Errorf("the driver was refused by the API server (deploy/rbd is missing a rule) or its log is unreadable: %v", err)
	}
	checkNoSecretsInLogs(t, e, provKey, passphrase)
}

// checkSealedDEK checks that image holds the "prepared" state and a sealed
// DEK that opens with passphrase under volumeID, and not with another one.
func checkSealedDEK(t *testing.T, io *rados.IOContext, image, volumeID, passphrase string) {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, image, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open %s: %v", image, err)
	}
	defer img.Close()
	state, _ := img.GetMetadata("rbd.csi.ceph.com/encrypted")
	sealed, err := img.GetMetadata("rbd.csi.ceph.com/dek")
	if state != "encryptionPrepared" || err != nil || sealed == "" {
		t.Errorf("%s: encryption state %q, sealed DEK %q (%v); want encryptionPrepared and a DEK", image, state, sealed, err)
		return
	}
	if strings.Contains(sealed, passphrase) {
		t.Errorf("%s: the passphrase is in the image metadata", image)
	}
	cfg := filepath.Join(t.TempDir(), "kms.json")
	if err := os.WriteFile(cfg, []byte(`{"check": {"encryptionKMSType": "metadata"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(p string) error {
		k, err := kms.Get(context.Background(), "check", kms.Env{ConfigPath: cfg, Secrets: map[string]string{kms.PassphraseKey: p}})
		if err != nil {
			return err
		}
		dek, err := k.Open(context.Background(), volumeID, sealed)
		clear(dek)
		return err
	}
	if err := open(passphrase); err != nil {
		t.Errorf("%s: the sealed DEK does not open with the Secret's passphrase: %v", image, err)
	}
	if err := open(passphrase + "x"); !errors.Is(err, kms.ErrWrongKey) {
		t.Errorf("%s: the sealed DEK opened with another passphrase (%v)", image, err)
	}
}
