//go:build integration

package kms

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/testutil/kmiptest"
)

// The KMIP KMS against a real KMIP server: PyKMIP's pykmip-server (Debian's
// python3-pykmip, in the dev root), with mutual TLS, an AES key made by
// PyKMIP's own client, and the credentials in a (fake) Kubernetes Secret as
// ceph-csi reads them. PyKMIP's client also decrypts what the driver sealed,
// with the parameters ceph-csi uses.

func TestKMIPWithPyKMIP(t *testing.T) {
	p := kmiptest.NewPKI(t)
	srv := kmiptest.Start(t, p)
	uid := srv.CreateKey(t)
	kube := &fakeKube{secrets: map[string]map[string][]byte{"ceph/ceph-csi-kmip-credentials": {
		"CA_CERT": p.CA, "CLIENT_CERT": p.Cert, "CLIENT_KEY": p.Key, "UNIQUE_IDENTIFIER": []byte(uid)}}}
	cfg := writeConfig(t, fmt.Sprintf(`{
		"kmip-rpc":   {"KMS_PROVIDER": "kmip", "KMIP_ENDPOINT": %q, "TLS_SERVER_NAME": %q, "READ_TIMEOUT": 10, "WRITE_TIMEOUT": 10},
		"kmip-local": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": %q, "USE_CRYPTO_RPC": false}}`, srv.Addr, kmiptest.ServerName, srv.Addr))
	env := Env{ConfigPath: cfg, Kube: kube, Namespace: "ceph"}
	ctx := context.Background()
	dek, err := NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"kmip-rpc", "kmip-local"} {
		k, err := Get(ctx, id, env)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		sealed, err := k.Seal(ctx, testVolID, dek)
		if err != nil {
			t.Fatalf("%s: Seal: %v", id, err)
		}
		if strings.Contains(sealed, string(dek)) {
			t.Fatalf("%s: the sealed form shows the DEK", id)
		}
		got, err := k.Open(ctx, testVolID, sealed)
		if err != nil || string(got) != string(dek) {
			t.Fatalf("%s: Open gives %q, %v", id, got, err)
		}
		if id != "kmip-rpc" {
			continue
		}
		// ceph-csi's form: {"dek","nonce"} with the CBC IV as the nonce;
		// PyKMIP's client decrypts it with the parameters ceph-csi uses.
		if plain := srv.Decrypt(t, uid, sealed); plain != string(dek) {
			t.Fatalf("PyKMIP decrypts the sealed DEK to %q", plain)
		}
	}
	// A key the server does not have.
	kube.secrets["ceph/ceph-csi-kmip-credentials"]["UNIQUE_IDENTIFIER"] = []byte("9999")
	k, err := Get(ctx, "kmip-rpc", env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Seal(ctx, testVolID, dek); err == nil {
		t.Fatal("sealed with a key the server does not have")
	}
}
