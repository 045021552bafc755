package rbd

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/crypto/scrypt"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
)

// Encryption on the fake cluster: what the controller records for an
// encrypted volume, its snapshots, restores and clones, read back the way
// ceph-csi reads it.

const testPassphrase = "unit-test-passphrase"

// encCtl is a controller whose KMS configuration has a secrets-metadata
// KMS "sm" and a Vault one "vault" (not served).
func encCtl(t *testing.T) *ctl {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms.json")
	cfg := `{"sm": {"encryptionKMSType": "metadata"}, "vault": {"encryptionKMSType": "vault", "vaultAddress": "http://v:8200"}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCtl(t, func(o *config.Options) { o.KMSConfigPath = path })
	return c
}

var encSecrets = map[string]string{"userID": "csi-rbd-provisioner", "userKey": unitKey, "encryptionPassphrase": testPassphrase}

// openSealed decrypts a sealed DEK as ceph-csi's secrets-metadata KMS does.
func openSealed(t *testing.T, sealed, volumeID string) string {
	t.Helper()
	var s struct {
		DEK   []byte `json:"dek"`
		Nonce []byte `json:"nonce"`
	}
	if err := json.Unmarshal([]byte(sealed), &s); err != nil {
		t.Fatalf("sealed DEK %q: %v", sealed, err)
	}
	key, err := scrypt.Key([]byte(testPassphrase), []byte(volumeID), 32768, 8, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	dek, err := g.Open(nil, s.Nonce, s.DEK, nil)
	if err != nil {
		t.Fatalf("the DEK sealed on the image does not open for %s: %v", volumeID, err)
	}
	return string(dek)
}

func TestEncryptedVolumeLifecycle(t *testing.T) {
	c := encCtl(t)
	req := c.volReq("enc", 8<<20, nil, "encrypted", "true", "encryptionKMSID", "sm",
		"csi.storage.k8s.io/pvc/namespace", "apps", "encryptionCipher", "aes-xts-plain64")
	req.Secrets = encSecrets
	vol, err := c.create(req)
	if err != nil {
		t.Fatal(err)
	}
	img := c.f.image("rbd", volImage(vol))
	if img.meta[metaEncrypted] != statePrepared {
		t.Fatalf("state %q, want %q", img.meta[metaEncrypted], statePrepared)
	}
	dek := openSealed(t, img.meta[metaDEK], vol.GetVolumeId())
	if len(dek) != 28 {
		t.Fatalf("DEK %d bytes", len(dek))
	}
	entry := c.f.omap("rbd", "csi.volume."+uuidOfID(t, vol.GetVolumeId()))
	if entry["csi.volume.encryptKMS"] != "sm" || entry["csi.volume.encryptionType"] != "block" || entry["csi.volume.owner"] != "apps" {
		t.Fatalf("journal entry %v", entry)
	}
	vc := vol.GetVolumeContext()
	if vc["encrypted"] != "true" || vc["encryptionKMSID"] != "sm" || vc["encryptionCipher"] != "aes-xts-plain64" {
		t.Fatalf("volume context %v lacks the encryption parameters the node needs", vc)
	}
	// A repeated request keeps the DEK (a new one would lose the data).
	if _, err := c.create(req); err != nil {
		t.Fatal(err)
	}
	if again := openSealed(t, c.f.image("rbd", volImage(vol)).meta[metaDEK], vol.GetVolumeId()); again != dek {
		t.Fatal("a repeated CreateVolume replaced the DEK")
	}
	// Formatted by a node: the state moves on and snapshots copy it.
	img.meta[metaEncrypted] = stateEncrypted

	snapReq := c.snapReq("snap", vol.GetVolumeId())
	snapReq.Secrets = encSecrets
	snap, err := c.createSnap(snapReq)
	if err != nil {
		t.Fatal(err)
	}
	simg := c.f.image("rbd", "csi-snap-"+uuidOfID(t, snap.GetSnapshotId()))
	if simg.meta[metaEncrypted] != stateEncrypted || openSealed(t, simg.meta[metaDEK], snap.GetSnapshotId()) != dek {
		t.Fatalf("snapshot image: state %q, DEK not the volume's sealed for the snapshot ID", simg.meta[metaEncrypted])
	}
	sentry := c.f.omap("rbd", "csi.snap."+uuidOfID(t, snap.GetSnapshotId()))
	if sentry["csi.volume.encryptKMS"] != "sm" || sentry["csi.volume.owner"] != "apps" {
		t.Fatalf("snapshot journal entry %v", sentry)
	}

	for _, tc := range []struct {
		name string
		src  func() *csi.VolumeContentSource
	}{
		{"restored", func() *csi.VolumeContentSource { return fromSnapshot(snap.GetSnapshotId()) }},
		{"cloned", func() *csi.VolumeContentSource { return fromVolume(vol.GetVolumeId()) }},
	} {
		r := c.volReq(tc.name, 16<<20, tc.src(), "encrypted", "true", "encryptionKMSID", "sm")
		r.Secrets = encSecrets
		nv, err := c.create(r)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		nimg := c.f.image("rbd", volImage(nv))
		if nimg.meta[metaEncrypted] != stateEncrypted || openSealed(t, nimg.meta[metaDEK], nv.GetVolumeId()) != dek {
			t.Fatalf("%s: state %q, and the DEK is not the source's sealed for the new ID", tc.name, nimg.meta[metaEncrypted])
		}
		// Into a StorageClass without encryption: refused, nothing made.
		plain := c.volReq(tc.name+"-plain", 16<<20, tc.src())
		plain.Secrets = encSecrets
		if _, err := c.create(plain); csierr.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s into a plain StorageClass: %v, want InvalidArgument", tc.name, err)
		}
	}
	if ids := c.f.images("rbd"); len(ids) != 5 { // enc, csi-snap, restored, cloned, cloned-temp
		t.Fatalf("images %v", ids)
	}
	// Expansion of an encrypted block volume needs the node.
	resp, err := c.s.ControllerExpandVolume(c.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, Secrets: encSecrets,
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}})
	if err != nil || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand encrypted block: %v, node expansion %v", err, resp.GetNodeExpansionRequired())
	}
}

func TestEncryptionRefusals(t *testing.T) {
	c := encCtl(t)
	for _, tc := range []struct {
		kv    []string
		param string
	}{
		{[]string{"encrypted", "yes please"}, "encrypted"},
		{[]string{"encryptionKMSID", "sm"}, "encryptionKMSID"},
		{[]string{"encrypted", " ", "encryptionCipher", "aes-xts-plain64"}, "encryptionCipher"},
		{[]string{"encrypted", "true", "encryptionType", "file"}, "encryptionType"},
		{[]string{"encrypted", "true", "encryptionKMSID", "vault"}, "encryptionKMSID"},
		{[]string{"encrypted", "true", "encryptionKMSID", "nope"}, "encryptionKMSID"},
		{[]string{"encrypted", "true", "encryptionCipher", "aes-cbc-plain"}, "encryptionCipher"},
		{[]string{"encrypted", "true", "encryptionKeySize", "1024"}, "encryptionKeySize"},
		{[]string{"encrypted", "true", "encryptionSectorSize", "3000"}, "encryptionSectorSize"},
		{[]string{"encrypted", "true", "integrityMode", "hmac-sha256"}, "integrityMode"},
	} {
		r := c.volReq("bad", 8<<20, nil, tc.kv...)
		r.Secrets = encSecrets
		_, err := c.create(r)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.param) {
			t.Errorf("%v: %v, want InvalidArgument naming %s", tc.kv, err, tc.param)
		}
	}
	// The default KMS needs the passphrase in the secrets.
	r := c.volReq("nopass", 8<<20, nil, "encrypted", "true")
	if _, err := c.create(r); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("default KMS without encryptionPassphrase: %v", err)
	}
	if ids := c.f.images("rbd"); len(ids) != 0 {
		t.Fatalf("refused requests left images %v", ids)
	}
	if m := c.f.omap("rbd", "csi.volumes.default"); len(m) != 0 {
		t.Fatalf("refused requests left journal keys %v", m)
	}
	// A plain source into an encrypted StorageClass.
	plain := c.volume("plain", 8<<20, nil)
	r = c.volReq("enc-from-plain", 8<<20, fromVolume(plain.GetVolumeId()), "encrypted", "true", "encryptionKMSID", "sm")
	r.Secrets = encSecrets
	if _, err := c.create(r); csierr.Code(err) != codes.InvalidArgument {
		t.Fatalf("plain source into encrypted: %v", err)
	}
}

func TestDefaultKMSStoresNoDEK(t *testing.T) {
	c := encCtl(t)
	r := c.volReq("d", 8<<20, nil, "encrypted", "true")
	r.Secrets = encSecrets
	vol, err := c.create(r)
	if err != nil {
		t.Fatal(err)
	}
	img := c.f.image("rbd", volImage(vol))
	if img.meta[metaEncrypted] != statePrepared || img.meta[metaDEK] != "" {
		t.Fatalf("metadata %v: the default KMS's passphrase is the secret's, nothing is stored", img.meta)
	}
	if e := c.f.omap("rbd", "csi.volume."+uuidOfID(t, vol.GetVolumeId())); e["csi.volume.encryptKMS"] != "default" {
		t.Fatalf("journal %v", e)
	}
}

// encrypted="false" is an explicit choice: the KMS a shared StorageClass
// template names is then not used, and the volume is plain.
func TestExplicitlyPlainVolumeIgnoresItsKMS(t *testing.T) {
	c := encCtl(t)
	vol := c.volume("plain", 8<<20, nil, "encrypted", "false", "encryptionKMSID", "sm")
	if img := c.f.image("rbd", volImage(vol)); img.meta[metaEncrypted] != "" {
		t.Fatalf("metadata %v: a volume with encrypted=false is plain", img.meta)
	}
	if e := c.f.omap("rbd", "csi.volume."+uuidOfID(t, vol.GetVolumeId())); e["csi.volume.encryptKMS"] != "" {
		t.Fatalf("journal %v: no KMS for a plain volume", e)
	}
}
