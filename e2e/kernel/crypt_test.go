//go:build kernel

package kernel

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/crypto/scrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// Encrypted volumes (LUKS2 on the image) in the guest: the node formats and
// opens them with the real cryptsetup and dm-crypt; the checks read the raw
// image from the cluster (rbd export) and the image metadata as admin.

const (
	// kmsID is the secrets-metadata KMS of the test's KMS configuration.
	kmsID = "secrets-metadata-test"
	// passphrase is the secrets-metadata passphrase, in the node-stage
	// and provisioner secrets as ceph-csi's users put it.
	passphrase = "kt-luks-passphrase-0f8a7d"
	// marker is plain text written through the encrypted device; the raw
	// image must not show it.
	marker = "CEPHCSI-LUKS-PLAINTEXT-MARKER-7d1c"
)

// writeKMSConfig writes the KMS configuration (ceph-csi's config.json of
// the ceph-csi-encryption-kms-config ConfigMap) below _output, where the
// guest sees it too.
func writeKMSConfig(t *testing.T, output string) string {
	t.Helper()
	dir := filepath.Join(output, "kernel-kms")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.json")
	if err := os.WriteFile(p, []byte(`{"`+kmsID+`": {"encryptionKMSType": "metadata"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func withPassphrase(s map[string]string, pass string) map[string]string {
	out := maps.Clone(s)
	out["encryptionPassphrase"] = pass
	return out
}

func (e *env) rbdSecrets() map[string]string { return withPassphrase(e.c.RBDSecrets(), passphrase) }
func (e *env) rbdNodeSecrets() map[string]string {
	return withPassphrase(e.c.RBDNodeSecrets(), passphrase)
}

var encParams = map[string]string{"encrypted": "true", "encryptionKMSID": kmsID}

func params(kv ...string) map[string]string {
	p := maps.Clone(encParams)
	for i := 0; i+1 < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return p
}

// imageMeta reads an image metadata key as admin ("" when unset).
func (e *env) imageMeta(t *testing.T, image, key string) string {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(e.c.IOContext(t, "rbd"), image, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("opening %s: %v", image, err)
	}
	defer img.Close()
	v, err := img.GetMetadata(key)
	if err != nil {
		return ""
	}
	return v
}

// cephCSIOpenDEK opens a DEK sealed by the secrets-metadata KMS the way
// ceph-csi does (scrypt(passphrase, volume ID), AES-GCM), written here
// apart from the driver's code.
func cephCSIOpenDEK(t *testing.T, sealed, volumeID string) string {
	t.Helper()
	var s struct {
		DEK   []byte `json:"dek"`
		Nonce []byte `json:"nonce"`
	}
	if err := json.Unmarshal([]byte(sealed), &s); err != nil {
		t.Fatalf("sealed DEK %q: %v", sealed, err)
	}
	g := cephCSIGCM(t, volumeID)
	dek, err := g.Open(nil, s.Nonce, s.DEK, nil)
	if err != nil {
		t.Fatalf("the DEK in the image metadata does not open for %s: %v", volumeID, err)
	}
	return string(dek)
}

func cephCSIGCM(t *testing.T, volumeID string) cipher.AEAD {
	t.Helper()
	key, err := scrypt.Key([]byte(passphrase), []byte(volumeID), 32768, 8, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	return g
}

// cephCSISealDEK seals a DEK as ceph-csi's secrets-metadata KMS does.
func cephCSISealDEK(t *testing.T, dek, volumeID string) string {
	t.Helper()
	g := cephCSIGCM(t, volumeID)
	nonce := make([]byte, g.NonceSize())
	_, _ = rand.Read(nonce)
	b, _ := json.Marshal(struct {
		DEK   []byte `json:"dek"`
		Nonce []byte `json:"nonce"`
	}{g.Seal(nil, nonce, []byte(dek), nil), nonce})
	return string(b)
}

// exportHas streams `rbd export` of the image (as admin) and reports
// whether the raw image holds needle, and its first bytes.
func (e *env) exportHas(t *testing.T, image, needle string) (found bool, head []byte) {
	t.Helper()
	step(t, "rbd export "+image, func() {
		cmd := exec.Command("rbd", "-c", e.c.Conf, "--id", "admin", "--keyring", e.c.Var("CEPH_ADMIN_KEYRING"),
			"export", "rbd/"+image, "-")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		found, head = scanFor(bufio.NewReaderSize(out, 1<<20), []byte(needle))
		if err := cmd.Wait(); err != nil {
			t.Fatalf("rbd export: %v: %s", err, stderr.String())
		}
	})
	return found, head
}

// scanFor reads r to its end and reports whether needle occurs (also
// across read boundaries), with the first 4096 bytes.
func scanFor(r io.Reader, needle []byte) (bool, []byte) {
	var head []byte
	buf := make([]byte, 1<<20)
	var tail []byte
	found := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if len(head) < 4096 {
				head = append(head, buf[:min(n, 4096-len(head))]...)
			}
			chunk := append(tail, buf[:n]...)
			found = found || bytes.Contains(chunk, needle)
			tail = append([]byte(nil), chunk[max(0, len(chunk)-len(needle)):]...)
		}
		if err != nil {
			return found, head
		}
	}
}

// TestScanFor shows the export check finds a marker split across reads.
func TestScanFor(t *testing.T) {
	data := append(bytes.Repeat([]byte{0}, (1<<20)-5), []byte(marker)...)
	if found, _ := scanFor(&onebyte{data: data, chunk: 1 << 20}, []byte(marker)); !found {
		t.Fatal("a marker across a read boundary was not found")
	}
	if found, _ := scanFor(bytes.NewReader(bytes.Repeat([]byte("x"), 3<<20)), []byte(marker)); found {
		t.Fatal("found a marker that is not there")
	}
}

type onebyte struct {
	data  []byte
	chunk int
}

func (o *onebyte) Read(p []byte) (int, error) {
	if len(o.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), o.chunk)], o.data)
	o.data = o.data[n:]
	return n, nil
}

// writeMarker writes n MiB of the marker text to file and returns its sum.
func (e *env) writeMarker(t *testing.T, file string, n int) string {
	t.Helper()
	var sum string
	step(t, fmt.Sprintf("write %d MiB of plain text", n), func() {
		out := e.g.sh(t, fmt.Sprintf("yes %s | head -c %d > %s && sync %s && sha256sum < %s", marker, int64(n)*mib,
			quote(file), quote(file), quote(file)))
		sum = strings.Fields(out)[0]
	})
	return sum
}

// assertRawEncrypted checks the raw image: a LUKS header first, the
// marker nowhere, the state "encrypted".
func (e *env) assertRawEncrypted(t *testing.T, image string) {
	t.Helper()
	found, head := e.exportHas(t, image, marker)
	if found {
		t.Fatalf("the raw image %s holds the plain text written through the encrypted device", image)
	}
	if !bytes.HasPrefix(head, []byte("LUKS\xba\xbe\x00\x02")) {
		t.Fatalf("the raw image %s does not start with a LUKS2 header: % x", image, head[:8])
	}
	if st := e.imageMeta(t, image, "rbd.csi.ceph.com/encrypted"); st != "encrypted" {
		t.Fatalf("image %s: rbd.csi.ceph.com/encrypted = %q, want encrypted", image, st)
	}
}

// mapping is the LUKS mapping of a volume in the guest.
func mapping(v *volume) string { return "/dev/mapper/luks-rbd-" + v.id() }

// assertSecretsNotOnGuest searches the guest's writable filesystems (the
// plugins' --v=5 logs included) for the passphrase and the DEKs, and the
// kernel keyrings for cryptsetup's volume keys (mappings are opened with
// --disable-keyring: there must be none).
func (e *env) assertSecretsNotOnGuest(t *testing.T, deks ...string) {
	t.Helper()
	step(t, "passphrase and DEK check", func() {
		enc := base64.StdEncoding.EncodeToString([]byte(strings.Join(append([]string{passphrase}, deks...), "\n")))
		out, _ := e.g.try(t, fmt.Sprintf(`for k in $(echo %s | base64 -d); do grep -rlF -D skip -e "$k" %s 2>/dev/null; done
awk '$9 ~ /^cryptsetup/ { print "kernel keyring: " $0 }' /proc/keys; true`, enc, guestWritable))
		if s := strings.TrimSpace(out); s != "" {
			t.Errorf("the passphrase or a DEK on the guest:\n%s", s)
		}
	})
}

// testLUKSFilesystem: ext4 on an encrypted krbd volume (secrets-metadata
// KMS): formatted on the first stage; the raw image shows no plain text; a
// wrong passphrase is refused clearly and leaves nothing mapped; restage
// reads back; a snapshot restored larger opens with the same DEK and
// grows; online expansion grows the LUKS mapping and ext4.
func (e *env) testLUKSFilesystem(t *testing.T) {
	v := e.createRBD(t, 128*mib, testutil.FSCap("ext4"), params("mounter", "krbd"), nil)
	image := v.vol.GetVolumeContext()["imageName"]
	if st := e.imageMeta(t, image, "rbd.csi.ceph.com/encrypted"); st != "encryptionPrepared" {
		t.Fatalf("new encrypted image: state %q, want encryptionPrepared", st)
	}
	v.stage(t)
	dev := e.rbdDevice(t, image)
	if typ := strings.TrimSpace(e.g.sh(t, "blkid -p -o value -s TYPE "+dev)); typ != "crypto_LUKS" {
		t.Fatalf("%s holds %q, want crypto_LUKS", dev, typ)
	}
	if src := strings.TrimSpace(e.g.sh(t, `awk -v p=`+quote(v.staging)+` '$2 == p { print $1 }' /proc/mounts`)); src != mapping(v) {
		t.Fatalf("the staging path is mounted from %q, not the LUKS mapping %s", src, mapping(v))
	}
	v.publish(t)
	sum := e.writeMarker(t, v.target+"/plain.txt", 8)
	v.unpublish(t)
	v.unstage(t)
	if _, rc := e.g.try(t, "test -e "+mapping(v)); rc == 0 {
		t.Fatalf("%s is still there after unstage", mapping(v))
	}
	if d := e.rbdDevice(t, image); d != "" {
		t.Fatalf("after unstage %s is still mapped at %s", image, d)
	}
	e.assertRawEncrypted(t, image)
	dek := cephCSIOpenDEK(t, e.imageMeta(t, image, "rbd.csi.ceph.com/dek"), v.id())
	e.assertHeaderOpensLikeCephCSI(t, image, dek)

	step(t, "NodeStageVolume with a wrong passphrase", func() {
		_, err := v.node.NodeStageVolume(ctxT(t), &csi.NodeStageVolumeRequest{VolumeId: v.id(), StagingTargetPath: v.staging,
			VolumeCapability: v.vcap, VolumeContext: v.vol.GetVolumeContext(), Secrets: withPassphrase(e.c.RBDNodeSecrets(), "not-it")})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "does not open") {
			t.Fatalf("stage with a wrong passphrase: %v, want PermissionDenied saying the key does not open the DEK", err)
		}
		t.Logf("wrong passphrase: %v", err)
	})
	if d := e.rbdDevice(t, image); d != "" {
		t.Fatalf("a refused stage left %s mapped at %s", image, d)
	}
	v.stage(t)
	v.publish(t)
	if got := e.readSum(t, v.target+"/plain.txt"); got != sum {
		t.Fatalf("data read back after restage differs")
	}
	v.unpublish(t)
	v.unstage(t)

	snap := e.snapshotOf(t, v)
	restored := e.createRBD(t, 192*mib, testutil.FSCap("ext4"), params("mounter", "krbd"),
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}})
	rimage := restored.vol.GetVolumeContext()["imageName"]
	if got := cephCSIOpenDEK(t, e.imageMeta(t, rimage, "rbd.csi.ceph.com/dek"), restored.id()); got != dek {
		t.Fatalf("the restored volume has another DEK than its source")
	}
	restored.stage(t)
	restored.publish(t)
	if got := e.readSum(t, restored.target+"/plain.txt"); got != sum {
		t.Fatalf("the restored volume's data differs from the snapshot's")
	}
	// 192 MiB less the 16 MiB LUKS2 header, less ext4's own: grown at stage
	// past the 112 MiB the source's filesystem had.
	if n := e.dfTotal(t, restored.target); n < 150*mib {
		t.Fatalf("ext4 restored into 192 MiB has %d bytes: the LUKS mapping or ext4 was not grown at stage", n)
	}
	before := e.dfTotal(t, restored.target)
	restored.expand(t, 256*mib)
	if n := e.dfTotal(t, restored.target); n < before+50*mib {
		t.Fatalf("ext4 has %d bytes after expanding from 192 to 256 MiB (had %d)", n, before)
	}
	if size := strings.TrimSpace(e.g.sh(t, "blockdev --getsize64 "+mapping(restored))); size != fmt.Sprint(256*mib-16*mib) {
		t.Fatalf("the LUKS mapping is %s bytes after expansion, want %d", size, 256*mib-16*mib)
	}
	restored.unpublish(t)
	restored.unstage(t)
	e.assertRawEncrypted(t, rimage)
	e.assertSecretsNotOnGuest(t, dek)
}

// assertHeaderOpensLikeCephCSI reads the image's LUKS header region as
// admin into a file and checks that ceph-csi's way of opening (cryptsetup
// reading the DEK on standard input) accepts the DEK.
func (e *env) assertHeaderOpensLikeCephCSI(t *testing.T, image, dek string) {
	t.Helper()
	step(t, "ceph-csi's cryptsetup opens the header", func() {
		img, err := rbd.OpenImageReadOnly(e.c.IOContext(t, "rbd"), image, rbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		hdr := make([]byte, 16*mib)
		_, err = img.ReadAt(hdr, 0)
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "header")
		if err := os.WriteFile(f, hdr, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("cryptsetup", "luksOpen", "--test-passphrase", f, "-d", "/dev/stdin")
		cmd.Stdin = strings.NewReader(dek)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup as ceph-csi runs it refuses the DEK: %v: %s", err, out)
		}
	})
}

// testLUKSBlockClone: a raw block volume on rbd-nbd, encrypted; data
// written through the published device is not in the raw image; a PVC
// clone of it opens with the copied DEK on krbd and reads the data; its
// expansion grows the mapping the pod sees.
func (e *env) testLUKSBlockClone(t *testing.T) {
	v := e.createRBD(t, 64*mib, testutil.BlockCap(), params("mounter", "rbd-nbd", "encryptionSectorSize", "4096"), nil)
	image := v.vol.GetVolumeContext()["imageName"]
	v.stage(t)
	v.publish(t)
	var sum string
	step(t, "write 4 MiB of plain text to the block device", func() {
		out := e.g.sh(t, "yes "+marker+" | head -c 4194304 > /tmp/kt-plain && dd if=/tmp/kt-plain of="+quote(v.target)+
			" bs=1M oflag=direct conv=fsync,notrunc status=none && sha256sum < /tmp/kt-plain && rm /tmp/kt-plain")
		sum = strings.Fields(out)[0]
	})
	if u := v.stats(t); u.GetTotal() != 48*mib {
		t.Errorf("block stats total %d, want %d (64 MiB less the LUKS2 header)", u.GetTotal(), 48*mib)
	}
	v.unpublish(t)
	v.unstage(t)
	if d := e.nbdDevice(t, image); d != "" {
		t.Fatalf("after unstage %s is still served by %s", image, d)
	}
	e.assertRawEncrypted(t, image)

	clone := e.createRBD(t, 96*mib, testutil.BlockCap(), params("mounter", "krbd"),
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.id()}}})
	clone.stage(t)
	clone.publish(t)
	var got string
	step(t, "read 4 MiB back from the clone", func() {
		got = strings.Fields(e.g.sh(t, "dd if="+quote(clone.target)+" bs=1M count=4 iflag=direct status=none | sha256sum"))[0]
	})
	if got != sum {
		t.Fatalf("the clone's data differs from its source's")
	}
	if size := strings.TrimSpace(e.g.sh(t, "blockdev --getsize64 "+quote(clone.target))); size != fmt.Sprint(80*mib) {
		t.Fatalf("the clone (96 MiB) shows %s bytes, want %d: its mapping was not grown to the device at stage", size, 80*mib)
	}
	clone.expand(t, 128*mib)
	if size := strings.TrimSpace(e.g.sh(t, "blockdev --getsize64 "+quote(clone.target))); size != fmt.Sprint(112*mib) {
		t.Fatalf("after expansion to 128 MiB the published device is %s bytes, want %d", size, 112*mib)
	}
	clone.unpublish(t)
	clone.unstage(t)
	e.assertRawEncrypted(t, clone.vol.GetVolumeContext()["imageName"])
}

// testCephCSILayout: a volume laid out as ceph-csi lays it out (a DEK it
// would generate, sealed as its secrets-metadata KMS seals it, and a LUKS2
// header written by cryptsetup as ceph-csi runs it, passphrase on standard
// input) stages with this node plugin, which mounts what is inside.
func (e *env) testCephCSILayout(t *testing.T) {
	v := e.createRBD(t, 64*mib, testutil.FSCap("ext4"), params("mounter", "krbd"), nil)
	image := v.vol.GetVolumeContext()["imageName"]
	raw := make([]byte, 20)
	_, _ = rand.Read(raw)
	dek := base64.URLEncoding.EncodeToString(raw)
	step(t, "lay the volume out as ceph-csi does", func() {
		f := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 64*mib); err != nil {
			t.Fatal(err)
		}
		// ceph-csi's options; --iter-time only because the slot is timed
		// on this host, which unlocks it ten times faster than the guest.
		cmd := exec.Command("cryptsetup", "-q", "luksFormat", "--type", "luks2", "--hash", "sha256", "--pbkdf-memory", "32768",
			"--iter-time", "200", f, "-d", "/dev/stdin")
		cmd.Stdin = strings.NewReader(dek)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cryptsetup luksFormat: %v: %s", err, out)
		}
		hdr, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := rbd.OpenImage(e.c.IOContext(t, "rbd"), image, rbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if _, err := img.WriteAt(hdr[:16*mib], 0); err != nil {
			t.Fatal(err)
		}
		if err := img.SetMetadata("rbd.csi.ceph.com/dek", cephCSISealDEK(t, dek, v.id())); err != nil {
			t.Fatal(err)
		}
		if err := img.SetMetadata("rbd.csi.ceph.com/encrypted", "encrypted"); err != nil {
			t.Fatal(err)
		}
	})
	v.stage(t)
	if typ := e.mountOf(t, v.staging); typ != "ext4" {
		t.Fatalf("the staging path holds %q, want ext4 made on the mapping", typ)
	}
	v.publish(t)
	sum := e.writeMarker(t, v.target+"/plain.txt", 2)
	v.unpublish(t)
	v.unstage(t)
	v.stage(t)
	v.publish(t)
	if got := e.readSum(t, v.target+"/plain.txt"); got != sum {
		t.Fatalf("data read back differs")
	}
	v.unpublish(t)
	v.unstage(t)
	e.assertRawEncrypted(t, image)
	e.assertHeaderOpensLikeCephCSI(t, image, dek)
	e.assertSecretsNotOnGuest(t, dek)
}
