//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
	"github.com/leanceph/cephcsi/internal/kube"
	"github.com/leanceph/cephcsi/internal/testutil"
	"github.com/leanceph/cephcsi/internal/testutil/kmiptest"
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
	buf := make([]byte, 16)
	_, _ = rand.Read(buf)
	passphrase := hex.EncodeToString(buf)
	s := startEncryptedRBD(t, "e2e-kms", []kmsEntry{
		{"e2e-secrets", `{"encryptionKMSType": "metadata", "secretName": "e2e-kms-passphrase"}`, "e2e-kms-sc"},
		{"e2e-missing-secret", `{"encryptionKMSType": "metadata", "secretName": "no-such-secret"}`, "e2e-kms-missing-sc"},
	}, func(s *encryptedRBD) {
		s.e.mustKubectl(t, nil, "create", "secret", "generic", "e2e-kms-passphrase", "-n", s.ns, "--from-literal=encryptionPassphrase="+passphrase)
	})
	sn, ours, images := s.provisionSnapshotRestore(t, "e2e-kms-sc")
	deks := checkSameDEK(t, s.io, images, func(image, volumeID, sealed string) []byte {
		return openMetadataDEK(t, image, volumeID, sealed, passphrase)
	})
	s.checkRefused(t, "missing", "e2e-kms-missing-sc", "no-such-secret")
	s.finish(t, sn, ours, append(deks, passphrase)...)
}

// TestKMIPThroughKubernetes is TestEncryptedRBDThroughKubernetes with a KMS
// of type kmip: a KMIP server (PyKMIP) seals the DEKs, and its TLS
// credentials and key ID are in a Secret of the driver's namespace
// (KMIP_SECRET_NAME) that the controller reads through the API server
// under the deploy/ RBAC. Each image's sealed DEK must decrypt with
// PyKMIP's own client, to the DEK our kms package opens; a KMS naming a
// credentials Secret that does not exist leaves the PVC Pending.
func TestKMIPThroughKubernetes(t *testing.T) {
	p := kmiptest.NewPKI(t)
	srv := kmiptest.Start(t, p)
	uid := srv.CreateKey(t)
	const creds = "e2e-kmip-credentials"
	section := func(typeKey, secret string) string {
		b, err := json.Marshal(map[string]string{typeKey: kms.TypeKMIP, "KMIP_ENDPOINT": srv.Addr,
			"KMIP_SECRET_NAME": secret, "TLS_SERVER_NAME": kmiptest.ServerName})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Both spellings of the type ceph-csi accepts.
	s := startEncryptedRBD(t, "e2e-kmip", []kmsEntry{
		{"e2e-kmip", section("KMS_PROVIDER", creds), "e2e-kmip-sc"},
		{"e2e-kmip-missing", section("encryptionKMSType", "no-such-kmip-secret"), "e2e-kmip-missing-sc"},
	}, func(s *encryptedRBD) {
		// The credentials as a user creates them, through kubectl (on
		// stdin: never in argv or a file).
		secret, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Secret",
			"metadata": map[string]string{"name": creds, "namespace": s.driverNS},
			"stringData": map[string]string{"CA_CERT": string(p.CA), "CLIENT_CERT": string(p.Cert),
				"CLIENT_KEY": string(p.Key), "UNIQUE_IDENTIFIER": uid}})
		if err != nil {
			t.Fatal(err)
		}
		s.e.mustKubectl(t, secret, "create", "-f", "-")
		t.Cleanup(func() {
			_, _ = s.e.kubectl(nil, "delete", "--ignore-not-found", "-n", s.driverNS, "secret/"+creds)
		})
	})
	// Our kms package, reading the same Secret as the driver's service
	// account.
	cfg := filepath.Join(t.TempDir(), "kms.json")
	if err := os.WriteFile(cfg, []byte(`{"check": `+section("KMS_PROVIDER", creds)+`}`), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := kms.Get(context.Background(), "check", kms.Env{ConfigPath: cfg, Kube: &kube.Client{Kubeconfig: s.kubeconfig}, Namespace: s.driverNS})
	if err != nil {
		t.Fatal(err)
	}

	sn, ours, images := s.provisionSnapshotRestore(t, "e2e-kmip-sc")
	deks := checkSameDEK(t, s.io, images, func(image, volumeID, sealed string) []byte {
		plain := srv.Decrypt(t, uid, sealed)
		dek, err := k.Open(context.Background(), volumeID, sealed)
		if err != nil {
			t.Errorf("%s: our kms package does not open the sealed DEK: %v", image, err)
			return nil
		}
		if string(dek) != plain {
			t.Errorf("%s: PyKMIP and our kms package open the sealed DEK to different DEKs", image)
		}
		if strings.Contains(sealed, plain) {
			t.Errorf("%s: the DEK is in plain in the image metadata", image)
		}
		return dek
	})
	s.checkRefused(t, "missing", "e2e-kmip-missing-sc", "no-such-kmip-secret")
	// The client key's first base64 line stands for the whole key.
	s.finish(t, sn, ours, append(deks, strings.Split(string(p.Key), "\n")[1])...)
}

// kmsEntry is a KMS of the csi-kms-connection-details ConfigMap (its ID
// and JSON section) and the StorageClass of encrypted volumes naming it.
type kmsEntry struct{ id, section, class string }

// encryptedRBD is the controller pod of deploy/rbd that finds its KMSs
// through the API server, and a namespace ns to provision in.
type encryptedRBD struct {
	e        *env
	c        *testutil.Cluster
	io       *rados.IOContext
	pod      *controllerPod
	driverNS string
	ns       string
	// kubeconfig authenticates as the controller's service account.
	kubeconfig string
	provKey    string
}

const kmsSnapClass = "csi-rbdplugin-snapclass"

// startEncryptedRBD puts entries in the csi-kms-connection-details
// ConfigMap of the driver's namespace, starts the controller pod with a
// kubeconfig of its service account and no KMS configuration file,
// creates namespace ns with the provisioner secret, calls prepare for the
// Secrets the KMSs read, then applies a StorageClass per entry and the
// snapshot class.
func startEncryptedRBD(t *testing.T, ns string, entries []kmsEntry, prepare func(*encryptedRBD)) *encryptedRBD {
	t.Helper()
	s := &encryptedRBD{e: theEnv, c: testutil.RequireCluster(t), ns: ns}
	e, c := s.e, s.c
	s.io = c.IOContext(t, rbdPool)
	dep := readDeployment(t, e, "rbd", "csi-rbdplugin-provisioner.yaml")
	s.driverNS = dep.Metadata.Namespace
	for _, f := range []string{"namespace.yaml", "csi-provisioner-rbac.yaml"} {
		e.mustKubectl(t, nil, "apply", "-f", filepath.Join(e.root, "deploy", "rbd", f))
	}
	s.kubeconfig = filepath.Join(e.dir, "rbd-driver.kubeconfig")
	if err := e.serviceAccountKubeconfig(s.kubeconfig, s.driverNS, dep.Spec.Template.Spec.ServiceAccountName); err != nil {
		t.Fatal(err)
	}
	// What the manifests' fieldRef gives the driver container.
	t.Setenv("POD_NAMESPACE", s.driverNS)
	data := map[string]string{}
	for _, en := range entries {
		data[en.id] = en.section
	}
	cm, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]string{"name": "csi-kms-connection-details", "namespace": s.driverNS}, "data": data})
	if err != nil {
		t.Fatal(err)
	}
	e.mustKubectl(t, cm, "apply", "-f", "-")
	t.Cleanup(func() {
		_, _ = e.kubectl(nil, "delete", "--ignore-not-found", "-n", s.driverNS, "configmap/csi-kms-connection-details")
	})
	if s.pod, err = startControllerPod(t, e, c, "rbd", "--kubeconfig="+s.kubeconfig, "--kmsconfigpath="+filepath.Join(e.dir, "no-kms-config.json")); err != nil {
		t.Fatal(err)
	}
	s.pod.waitLeaders(t, e)

	e.mustKubectl(t, nil, "create", "namespace", ns)
	s.provKey = c.Var("CEPH_RBD_PROVISIONER_KEY")
	applyExample(t, e, "deploy/rbd/secret.yaml", "<user-id>", c.Var("CEPH_RBD_PROVISIONER_ID"), "<user-key>", s.provKey)
	prepare(s)
	for _, en := range entries {
		applyExample(t, e, "deploy/rbd/storageclass.yaml", "<cluster-id>", c.ClusterID, "<pool>", rbdPool, "name: csi-rbd-sc", "name: "+en.class,
			"  imageFeatures: layering\n", "  imageFeatures: layering\n  encrypted: \"true\"\n  encryptionKMSID: "+en.id+"\n")
	}
	applyExample(t, e, "deploy/rbd/snapshotclass.yaml", "<cluster-id>", c.ClusterID)
	cleanupOnFailure(t, e, ns)
	return s
}

// sealedImage is an image and the CSI ID its DEK is sealed for.
type sealedImage struct{ image, id string }

// provisionSnapshotRestore provisions PVC "src" of class, takes snapshot
// "snap" of it and restores PVC "restore" from that. It returns the
// snapshot, the UUIDs of the three, and their images.
func (s *encryptedRBD) provisionSnapshotRestore(t *testing.T, class string) (snap, []string, []sealedImage) {
	t.Helper()
	e := s.e
	d := provision(t, e, s.ns, "src", class, "1Gi", "ReadWriteOnce", nil)
	t.Logf("kms timing: encrypted PVC Bound in %s", ms(d))
	src := checkRBDVolume(t, e, s.c, s.io, s.ns, "src")
	sn := snapshotSrc(t, e, "kms", s.ns, kmsSnapClass, rbdDriver)
	d = provision(t, e, s.ns, "restore", class, "1Gi", "ReadWriteOnce", fromSnapshot("snap"))
	t.Logf("kms timing: encrypted restore Bound in %s", ms(d))
	restore := checkRBDVolume(t, e, s.c, s.io, s.ns, "restore")
	return sn, []string{src.id.UUID, sn.id.UUID, restore.id.UUID}, []sealedImage{
		{src.attrs["imageName"], src.handle},
		{"csi-snap-" + sn.id.UUID, sn.handle},
		{restore.attrs["imageName"], restore.handle},
	}
}

// checkSameDEK checks that each image is encrypted ("prepared") with a
// sealed DEK of its own that open opens, and that all open to the same DEK:
// the snapshot and the restore carry the LUKS header of the source. It
// returns the DEKs.
func checkSameDEK(t *testing.T, io *rados.IOContext, images []sealedImage, open func(image, volumeID, sealed string) []byte) []string {
	t.Helper()
	var deks []string
	seen := map[string]string{}
	for _, im := range images {
		sealed := sealedDEKOf(t, io, im.image)
		if sealed == "" {
			continue
		}
		if other, ok := seen[sealed]; ok {
			t.Errorf("%s carries the same sealed DEK as %s, not one sealed for itself", im.image, other)
		}
		seen[sealed] = im.image
		dek := open(im.image, im.id, sealed)
		if dek == nil {
			continue
		}
		if len(deks) > 0 && string(dek) != deks[0] {
			t.Errorf("%s opens to another DEK than %s", im.image, images[0].image)
		}
		deks = append(deks, string(dek))
		clear(dek)
	}
	if len(deks) != len(images) {
		t.Errorf("%d of %d images have a sealed DEK that opens", len(deks), len(images))
	}
	return deks
}

// sealedDEKOf returns the sealed DEK of image, failing the test (and
// returning "") unless the image is in the "prepared" state and has one.
func sealedDEKOf(t *testing.T, io *rados.IOContext, image string) string {
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
		return ""
	}
	return sealed
}

// openMetadataDEK opens a DEK the metadata KMS sealed with passphrase for
// volumeID, and checks that another passphrase does not open it.
func openMetadataDEK(t *testing.T, image, volumeID, sealed, passphrase string) []byte {
	t.Helper()
	if strings.Contains(sealed, passphrase) {
		t.Errorf("%s: the passphrase is in the image metadata", image)
	}
	cfg := filepath.Join(t.TempDir(), "kms.json")
	if err := os.WriteFile(cfg, []byte(`{"check": {"encryptionKMSType": "metadata"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(p string) ([]byte, error) {
		k, err := kms.Get(context.Background(), "check", kms.Env{ConfigPath: cfg, Secrets: map[string]string{kms.PassphraseKey: p}})
		if err != nil {
			return nil, err
		}
		return k.Open(context.Background(), volumeID, sealed)
	}
	if other, err := open(passphrase + "x"); !errors.Is(err, kms.ErrWrongKey) {
		clear(other)
		t.Errorf("%s: the sealed DEK opened with another passphrase (%v)", image, err)
	}
	dek, err := open(passphrase)
	if err != nil {
		t.Errorf("%s: the sealed DEK does not open with the Secret's passphrase: %v", image, err)
		return nil
	}
	return dek
}

// checkRefused creates PVC pvc of class, whose KMS names the Secret secret
// that does not exist: the PVC must stay Pending with an event naming the
// Secret, and leave nothing on Ceph once deleted.
func (s *encryptedRBD) checkRefused(t *testing.T, pvc, class, secret string) {
	t.Helper()
	e := s.e
	createPVC(t, e, s.ns, pvc, class, "1Gi", "ReadWriteOnce", nil)
	uid := e.getJSON(t, "pvc", pvc, "-n", s.ns).str("metadata.uid")
	eventually(t, time.Minute, func() string {
		ev, err := e.kubectl(nil, "get", "events", "-n", s.ns, "--field-selector", "involvedObject.name="+pvc, "-o", "jsonpath={.items[*].message}")
		if err != nil || !strings.Contains(string(ev), secret) || !strings.Contains(string(ev), "not found") {
			return fmt.Sprintf("no event naming the missing Secret %s yet: %s %v", secret, ev, err)
		}
		return ""
	})
	if phase := e.getJSON(t, "pvc", pvc, "-n", s.ns).str("status.phase"); phase != "Pending" {
		t.Errorf("PVC with a missing KMS Secret is %s, want Pending", phase)
	}
	deleteAndWait(t, e, "-n", s.ns, "pvc/"+pvc)
	if j := testutil.Omap(t, s.io, "csi.volumes.default")["csi.volume.pvc-"+uid]; j != "" {
		t.Errorf("the refused PVC left journal entry %s: %v", j, rbdLeftovers(t, s.io, j))
	}
}

// finish deletes the snapshot and the PVCs of provisionSnapshotRestore,
// waits for nothing of ours to be left on Ceph, and checks that the pod
// still runs, was refused nothing by the API server, and logged none of
// secrets.
func (s *encryptedRBD) finish(t *testing.T, sn snap, ours []string, secrets ...string) {
	t.Helper()
	deleteSnapshotThenPVCs(t, s.e, "kms", s.ns, sn, "restore", "src")
	awaitNoRBDLeftovers(t, s.io, ours...)
	s.pod.checkRunning(t)
	s.pod.checkRBAC(t)
	if log, err := os.ReadFile(s.pod.driver.log); err != nil || strings.Contains(string(log), "forbidden") {
		t.Errorf("the driver was refused by the API server (deploy/rbd is missing a rule) or its log is unreadable: %v", err)
	}
	checkNoSecretsInLogs(t, s.e, append([]string{s.provKey}, secrets...)...)
}
