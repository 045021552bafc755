// Package kmiptest runs PyKMIP's pykmip-server (Debian's python3-pykmip, in
// the dev root) with mutual TLS for the tests of the KMIP KMS, and PyKMIP's
// own client against it: to make the AES key the driver uses, and to check
// that what the driver sealed decrypts with the parameters ceph-csi uses.
// It imports no driver package, so that the kms package's tests can use it.
package kmiptest

import (
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
	"syscall"
	"testing"
	"time"

	"github.com/leanceph/cephcsi/internal/testutil/ports"
)

// ServerName is the name (and 127.0.0.1 the address) the server's
// certificate is valid for: the KMS's TLS_SERVER_NAME.
const ServerName = "localhost"

// PKI is a CA with a server and a client certificate, in a test's
// temporary directory.
type PKI struct {
	// CA, Cert and Key are the client's credentials in PEM: the CA_CERT,
	// CLIENT_CERT and CLIENT_KEY of the KMS's Secret.
	CA, Cert, Key []byte

	dir                string
	caPath, srvC, srvK string
	cliCPath, cliKPath string
}

// NewPKI makes a fresh CA and its two leaf certificates (P-256, one day).
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kt-kmip-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{dir: dir, CA: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	p.caPath = filepath.Join(dir, "ca.crt")
	write(t, p.caPath, p.CA)
	leaf := func(name string, serial int64) ([]byte, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{ServerName}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
	}
	sc, sk := leaf("server", 2)
	p.srvC, p.srvK = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	write(t, p.srvC, sc)
	write(t, p.srvK, sk)
	p.Cert, p.Key = leaf("client", 3)
	p.cliCPath, p.cliKPath = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	write(t, p.cliCPath, p.Cert)
	write(t, p.cliKPath, p.Key)
	return p
}

// write writes a file only its owner reads.
func write(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Server is a running pykmip-server.
type Server struct {
	// Addr is host:port, the KMS's KMIP_ENDPOINT.
	Addr string
	// ClientConf is a PyKMIP client configuration with the client's
	// certificate.
	ClientConf string
}

// Start runs pykmip-server on 127.0.0.1, requiring client certificates of
// p's CA, until the test ends.
func Start(t testing.TB, p *PKI) *Server {
	t.Helper()
	if _, err := exec.LookPath("pykmip-server"); err != nil {
		t.Fatalf("no pykmip-server (python3-pykmip is in build.env's ROOT_TOOL_PACKAGES; run in the dev root): %v", err)
	}
	port := ports.Free(t)
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
	serverLog := filepath.Join(p.dir, "server.log")
	cmd := exec.Command("pykmip-server", "-f", conf, "-l", serverLog)
	// A process group of its own: the server's multiprocessing forkserver
	// and resource tracker outlive a kill of the server alone. Pdeathsig
	// ends the server with the test binary even without the cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(serverLog)
			t.Fatalf("pykmip-server does not listen on %s:\n%s", addr, log)
		}
	}
	return &Server{Addr: addr, ClientConf: client}
}

// Run runs a PyKMIP client script, indented inside `with c:` where c is a
// connected ProxyKmipClient, and returns what it prints.
func (s *Server) Run(t testing.TB, script string) string {
	t.Helper()
	full := "from kmip.pie.client import ProxyKmipClient\nfrom kmip.core import enums\nimport base64, sys, warnings\n" +
		"warnings.simplefilter('ignore')\nc = ProxyKmipClient(config_file=" + fmt.Sprintf("%q", s.ClientConf) + ")\nwith c:\n" + script
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

// CreateKey makes an active AES-256 key for encryption and decryption and
// returns its unique identifier (the Secret's UNIQUE_IDENTIFIER).
func (s *Server) CreateKey(t testing.TB) string {
	t.Helper()
	return s.Run(t, `    uid = c.create(enums.CryptographicAlgorithm.AES, 256, cryptographic_usage_mask=[
        enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT])
    c.activate(uid)
    print(uid)
`)
}

// Decrypt decrypts a DEK sealed by the server's Encrypt in ceph-csi's form
// ({"dek","nonce"}, the nonce the AES-CBC IV) with key uid, as ceph-csi's
// parameters say (AES-CBC, PKCS#5 padding), and returns the plain DEK.
func (s *Server) Decrypt(t testing.TB, uid, sealed string) string {
	t.Helper()
	var sd struct{ DEK, Nonce []byte }
	if err := json.Unmarshal([]byte(sealed), &sd); err != nil || len(sd.Nonce) != 16 {
		t.Fatalf("sealed %q: %v (nonce %d bytes, want 16)", sealed, err, len(sd.Nonce))
	}
	return s.Run(t, fmt.Sprintf(`    p = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
         "block_cipher_mode": enums.BlockCipherMode.CBC, "padding_method": enums.PaddingMethod.PKCS5}
    sys.stdout.write(c.decrypt(base64.b64decode(%q), uid=%q, cryptographic_parameters=p,
        iv_counter_nonce=base64.b64decode(%q)).decode())
`, base64.StdEncoding.EncodeToString(sd.DEK), uid, base64.StdEncoding.EncodeToString(sd.Nonce)))
}
