package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/scrypt"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

const testVolID = "0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4"

type fakeKube struct {
	secrets    map[string]map[string][]byte // "ns/name"
	configMaps map[string]map[string]string
	reads      []string
}

func (f *fakeKube) SecretData(_ context.Context, ns, name string) (map[string][]byte, error) {
	f.reads = append(f.reads, "secret "+ns+"/"+name)
	d, ok := f.secrets[ns+"/"+name]
	if !ok {
		return nil, errors.New("secrets \"" + name + "\" not found")
	}
	return d, nil
}

func (f *fakeKube) ConfigMapData(_ context.Context, ns, name string) (map[string]string, error) {
	f.reads = append(f.reads, "configmap "+ns+"/"+name)
	d, ok := f.configMaps[ns+"/"+name]
	if !ok {
		return nil, errors.New("configmaps \"" + name + "\" not found")
	}
	return d, nil
}

func writeConfig(t *testing.T, js string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// cephCSISeal seals a DEK the way ceph-csi's secrets-metadata KMS does,
// written from its format (scrypt N=32768 r=8 p=1 over the volume ID as
// salt, AES-256-GCM, JSON {"dek","nonce"} of base64), independently of the
// code under test.
func cephCSISeal(t *testing.T, passphrase, volumeID, dek string) string {
	t.Helper()
	key, err := scrypt.Key([]byte(passphrase), []byte(volumeID), 32768, 8, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	nonce := []byte("0123456789ab")
	ct := g.Seal(nil, nonce, []byte(dek), nil)
	return `{"dek":"` + base64.StdEncoding.EncodeToString(ct) + `","nonce":"` + base64.StdEncoding.EncodeToString(nonce) + `"}`
}

func TestMetadataOpensCephCSIFormat(t *testing.T) {
	path := writeConfig(t, `{"secrets-metadata-test": {"encryptionKMSType": "metadata"}}`)
	env := Env{ConfigPath: path, Secrets: map[string]string{PassphraseKey: "test-passphrase"}}
	k, err := Get(context.Background(), "secrets-metadata-test", env)
	if err != nil {
		t.Fatal(err)
	}
	sealed := cephCSISeal(t, "test-passphrase", testVolID, "bXktZGVrLWJ5dGVzLTIwYnl0ZXM=")
	dek, err := k.Open(context.Background(), testVolID, sealed)
	if err != nil {
		t.Fatal(err)
	}
	if string(dek) != "bXktZGVrLWJ5dGVzLTIwYnl0ZXM=" {
		t.Fatalf("opened %q", dek)
	}
	// Another volume's ID (the salt) or another passphrase does not open it.
	if _, err := k.Open(context.Background(), testVolID+"x", sealed); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("other volume ID: %v, want ErrWrongKey", err)
	}
	other, _ := Get(context.Background(), "secrets-metadata-test", Env{ConfigPath: path, Secrets: map[string]string{PassphraseKey: "wrong-passphrase-xyz"}})
	_, err = other.Open(context.Background(), testVolID, sealed)
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("other passphrase: %v, want ErrWrongKey", err)
	}
	if strings.Contains(err.Error(), "test-passphrase") || strings.Contains(err.Error(), "wrong-passphrase-xyz") {
		t.Fatalf("error shows key material: %v", err)
	}
}

func TestMetadataSealIsCephCSIFormat(t *testing.T) {
	path := writeConfig(t, `{"m": {"encryptionKMSType": "metadata"}}`)
	k, err := Get(context.Background(), "m", Env{ConfigPath: path, Secrets: map[string]string{PassphraseKey: "pp"}})
	if err != nil {
		t.Fatal(err)
	}
	dek, err := NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	if len(dek) != 28 {
		t.Fatalf("DEK of %d bytes, want 28 (base64 of 20)", len(dek))
	}
	if _, err := base64.URLEncoding.DecodeString(string(dek)); err != nil {
		t.Fatalf("DEK %q is not URL-safe base64: %v", dek, err)
	}
	sealed, err := k.Seal(context.Background(), testVolID, dek)
	if err != nil {
		t.Fatal(err)
	}
	// Decode as ceph-csi would.
	var got struct {
		DEK   []byte `json:"dek"`
		Nonce []byte `json:"nonce"`
	}
	if err := json.Unmarshal([]byte(sealed), &got); err != nil {
		t.Fatalf("sealed %q: %v", sealed, err)
	}
	key, _ := scrypt.Key([]byte("pp"), []byte(testVolID), 32768, 8, 1, 32)
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	plain, err := g.Open(nil, got.Nonce, got.DEK, nil)
	if err != nil || string(plain) != string(dek) {
		t.Fatalf("ceph-csi's decryption gives %q, %v; want %q", plain, err, dek)
	}
	if strings.Contains(sealed, string(dek)) {
		t.Fatal("the sealed form shows the DEK")
	}
}

func TestMetadataKubernetesSecret(t *testing.T) {
	path := writeConfig(t, `{
		"ns":     {"encryptionKMSType": "metadata", "secretName": "enc", "secretNamespace": "vault"},
		"tenant": {"encryptionKMSType": "metadata", "secretName": "enc"}}`)
	kube := &fakeKube{secrets: map[string]map[string][]byte{
		"vault/enc": {PassphraseKey: []byte("from-vault-ns")},
		"app/enc":   {PassphraseKey: []byte("from-tenant")},
	}}
	ctx := context.Background()
	for _, tc := range []struct{ id, tenant, pass string }{{"ns", "app", "from-vault-ns"}, {"tenant", "app", "from-tenant"}} {
		k, err := Get(ctx, tc.id, Env{ConfigPath: path, Tenant: tc.tenant, Kube: kube})
		if err != nil {
			t.Fatalf("%s: %v", tc.id, err)
		}
		dek, err := k.Open(ctx, testVolID, cephCSISeal(t, tc.pass, testVolID, "dek-"+tc.id))
		if err != nil || string(dek) != "dek-"+tc.id {
			t.Fatalf("%s: opened %q, %v", tc.id, dek, err)
		}
	}
	// No PVC namespace known and none configured: a configuration error.
	if _, err := Get(ctx, "tenant", Env{ConfigPath: path, Kube: kube}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no tenant: %v, want ErrConfig", err)
	}
	// A Secret without the passphrase.
	kube.secrets["app/enc"] = map[string][]byte{"other": []byte("x")}
	if _, err := Get(ctx, "tenant", Env{ConfigPath: path, Tenant: "app", Kube: kube}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no passphrase in Secret: %v, want ErrConfig", err)
	}
}

func TestDefaultKMS(t *testing.T) {
	ctx := context.Background()
	k, err := Get(ctx, "", Env{Secrets: map[string]string{PassphraseKey: "same-for-all"}})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.Seal(ctx, testVolID, []byte("ignored"))
	if err != nil || sealed != "" {
		t.Fatalf("default KMS stores %q, %v; want nothing", sealed, err)
	}
	p, err := k.Open(ctx, testVolID, "")
	if err != nil || string(p) != "same-for-all" {
		t.Fatalf("default passphrase %q, %v", p, err)
	}
	if _, err := Get(ctx, "default", Env{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no passphrase: %v, want ErrConfig", err)
	}
}

func TestConfigErrors(t *testing.T) {
	ctx := context.Background()
	path := writeConfig(t, `{
		"vault-test": {"encryptionKMSType": "vault", "vaultAddress": "http://vault:8200"},
		"weird": {"encryptionKMSType": "no-such"},
		"untyped": {"secretName": "x"},
		"kmip-noendpoint": {"KMS_PROVIDER": "kmip"}}`)
	env := Env{ConfigPath: path, Secrets: map[string]string{PassphraseKey: "p"}, Kube: &fakeKube{}, Namespace: "ceph"}
	for id, want := range map[string]error{"vault-test": ErrUnsupported, "weird": ErrUnsupported, "untyped": ErrConfig,
		"missing": ErrConfig, "kmip-noendpoint": ErrConfig} {
		_, err := Get(ctx, id, env)
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", id, err, want)
		}
	}
	if _, err := Get(ctx, "vault-test", env); err == nil || !strings.Contains(err.Error(), "HashiCorp Vault") {
		t.Errorf("vault refusal does not say what it is: %v", err)
	}
}

func TestConfigMapFallback(t *testing.T) {
	ctx := context.Background()
	kube := &fakeKube{configMaps: map[string]map[string]string{
		"ceph/csi-kms-connection-details": {"m": `{"encryptionKMSType": "metadata"}`},
	}}
	env := Env{ConfigPath: filepath.Join(t.TempDir(), "none.json"), Kube: kube, Namespace: "ceph",
		Secrets: map[string]string{PassphraseKey: "p"}}
	k, err := Get(ctx, "m", env)
	if err != nil {
		t.Fatal(err)
	}
	if k.Type() != TypeMetadata {
		t.Fatalf("type %s", k.Type())
	}
	if len(kube.reads) != 1 || kube.reads[0] != "configmap ceph/csi-kms-connection-details" {
		t.Fatalf("reads %v", kube.reads)
	}
}

// CephFS fscrypt takes the KMS's own secret: the default KMS's passphrase
// as a raw key, the metadata KMS's as a passphrase; KMIP has none.
func TestFileSecret(t *testing.T) {
	path := writeConfig(t, `{"meta": {"encryptionKMSType": "metadata", "secretName": "enc", "secretNamespace": "ns"}}`)
	kube := &fakeKube{secrets: map[string]map[string][]byte{"ns/enc": {PassphraseKey: []byte("from-secret")}}}
	ctx := context.Background()
	for _, tc := range []struct {
		id, want string
		raw      bool
	}{{"", "request-pass", true}, {"meta", "from-secret", false}} {
		k, err := Get(ctx, tc.id, Env{ConfigPath: path, Kube: kube, Secrets: map[string]string{PassphraseKey: "request-pass"}})
		if err != nil {
			t.Fatalf("%q: %v", tc.id, err)
		}
		s, raw, err := FileSecret(k)
		if err != nil || string(s) != tc.want || raw != tc.raw {
			t.Fatalf("%q: secret %q raw %v, %v; want %q raw %v", tc.id, s, raw, err, tc.want, tc.raw)
		}
	}
	if _, _, err := FileSecret(&kmipKMS{id: "hsm"}); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("KMIP: %v, want ErrNoSecret", err)
	}
	if err := CSIError(fmt.Errorf("x: %w", ErrNoSecret), true); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "encryptionKMSID") {
		t.Fatalf("ErrNoSecret at create: %v, want InvalidArgument naming encryptionKMSID", err)
	}
}

// The default KMS is "" in the driver and "default" in the journal, as
// ceph-csi records it, whether a StorageClass names it or not.
func TestParamAndJournalID(t *testing.T) {
	for param, want := range map[string]string{"": "", "default": "", " default ": "", "vault-1": "vault-1", " kmip ": "kmip"} {
		if got := ParamID(param); got != want {
			t.Errorf("ParamID(%q) = %q, want %q", param, got, want)
		}
	}
	if got := JournalID(""); got != "default" {
		t.Errorf("the default KMS is journaled as %q, want \"default\" as ceph-csi", got)
	}
	if got := JournalID("kmip"); got != "kmip" {
		t.Errorf("JournalID(kmip) = %q", got)
	}
}
