//go:build integration

package kms

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The KMIP KMS against a real KMIP server: PyKMIP's pykmip-server (Debian's
// python3-pykmip, in the dev root), with mutual TLS, an AES key made by
// PyKMIP's own client, and the credentials in a (fake) Kubernetes Secret as
// ceph-csi reads them. PyKMIP's client also decrypts what the driver sealed,
// with the parameters ceph-csi uses.

type pki struct {
	dir                string
	ca, cert, key      []byte // client
	caPath, srvC, srvK string
	cliCPath, cliKPath string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kt-kmip-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := &pki{dir: dir, ca: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	p.caPath = filepath.Join(dir, "ca.crt")
	write(t, p.caPath, p.ca)
	leaf := func(name string, serial int64) ([]byte, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalPKCS8PrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
	}
	sc, sk := leaf("server", 2)
	p.srvC, p.srvK = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	write(t, p.srvC, sc)
	write(t, p.srvK, sk)
	p.cert, p.key = leaf("client", 3)
	p.cliCPath, p.cliKPath = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	write(t, p.cliCPath, p.cert)
	write(t, p.cliKPath, p.key)
	return p
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPyKMIP runs pykmip-server on 127.0.0.1 and returns its address and
// a PyKMIP client configuration file.
func startPyKMIP(t *testing.T, p *pki) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("pykmip-server"); err != nil {
		t.Fatalf("no pykmip-server (python3-pykmip is in build.env's ROOT_TOOL_PACKAGES; run in the dev root): %v", err)
	}
	port := freePort(t)
	conf := filepath.Join(p.dir, "server.conf")
	write(t, conf, []byte(fmt.Sprintf(`[server]
hostname=127.0.0.1
port=%d
certificate_path=%s
key_path=%s
ca_path=%s
auth_suite=TLS1.2
enable_tls_client_auth=True
logging_level=INFO
database_path=%s
`, port, p.srvC, p.srvK, p.caPath, filepath.Join(p.dir, "pykmip.sqlite"))))
	client := filepath.Join(p.dir, "client.conf")
	write(t, client, []byte(fmt.Sprintf(`[client]
host=127.0.0.1
port=%d
certfile=%s
keyfile=%s
ca_certs=%s
cert_reqs=CERT_REQUIRED
ssl_version=PROTOCOL_TLSv1_2
do_handshake_on_connect=True
suppress_ragged_eofs=True
`, port, p.cliCPath, p.cliKPath, p.caPath)))
	cmd := exec.Command("pykmip-server", "-f", conf, "-l", filepath.Join(p.dir, "server.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(p.dir, "server.log"))
			t.Fatalf("pykmip-server does not listen on %s:\n%s", addr, log)
		}
	}
	return addr, client
}

// pykmip runs a PyKMIP client script and returns what it prints.
func pykmip(t *testing.T, clientConf, script string) string {
	t.Helper()
	full := "from kmip.pie.client import ProxyKmipClient\nfrom kmip.core import enums\nimport base64, sys, warnings\n" +
		"warnings.simplefilter('ignore')\nc = ProxyKmipClient(config_file=" + fmt.Sprintf("%q", clientConf) + ")\nwith c:\n" + script
	out, err := exec.Command("python3", "-c", full).Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("PyKMIP client: %v: %s", err, stderr)
	}
	return strings.TrimSpace(string(out))
}

func TestKMIPWithPyKMIP(t *testing.T) {
	p := newPKI(t)
	addr, client := startPyKMIP(t, p)
	uid := pykmip(t, client, `    uid = c.create(enums.CryptographicAlgorithm.AES, 256, cryptographic_usage_mask=[
        enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT])
    c.activate(uid)
    print(uid)
`)
	kube := &fakeKube{secrets: map[string]map[string][]byte{"ceph/ceph-csi-kmip-credentials": {
		"CA_CERT": p.ca, "CLIENT_CERT": p.cert, "CLIENT_KEY": p.key, "UNIQUE_IDENTIFIER": []byte(uid)}}}
	cfg := writeConfig(t, fmt.Sprintf(`{
		"kmip-rpc":   {"KMS_PROVIDER": "kmip", "KMIP_ENDPOINT": %q, "TLS_SERVER_NAME": "localhost", "READ_TIMEOUT": 10, "WRITE_TIMEOUT": 10},
		"kmip-local": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": %q, "USE_CRYPTO_RPC": false}}`, addr, addr))
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
		var s struct{ DEK, Nonce []byte }
		if err := json.Unmarshal([]byte(sealed), &s); err != nil || len(s.Nonce) != 16 {
			t.Fatalf("sealed %q: %v (nonce %d bytes, want 16)", sealed, err, len(s.Nonce))
		}
		plain := pykmip(t, client, fmt.Sprintf(`    p = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
         "block_cipher_mode": enums.BlockCipherMode.CBC, "padding_method": enums.PaddingMethod.PKCS5}
    sys.stdout.write(c.decrypt(base64.b64decode(%q), uid=%q, cryptographic_parameters=p,
        iv_counter_nonce=base64.b64decode(%q)).decode())
`, base64.StdEncoding.EncodeToString(s.DEK), uid, base64.StdEncoding.EncodeToString(s.Nonce)))
		if plain != string(dek) {
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
