//go:build kernel

package kernel

import (
	"bytes"
	"fmt"
	"maps"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	fsmetadata "github.com/google/fscrypt/metadata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// CephFS volumes encrypted with fscrypt, staged by the kernel client in the
// guest. The checks look at the volume from the host as admin, through
// libcephfs and RADOS, without the key: the layout ceph-csi reads, names
// and data that do not show the plain text.

const (
	// fsPassphrase is the default KMS's passphrase (the secrets'
	// encryptionPassphrase), shorter than a raw key: the key is it
	// zero-padded to 32 bytes.
	fsPassphrase = "kt-fscrypt-passphrase-51e0"
	// fsMarker is the plain text of a file name and its contents.
	fsMarker = "CEPHCSI-FSCRYPT-PLAINTEXT-MARKER-a93b"
)

func (e *env) fsParams(kv ...string) map[string]string {
	p := map[string]string{"clusterID": e.c.ClusterID, "fsName": "myfs", "mounter": "kernel", "encrypted": "true"}
	for i := 0; i+1 < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return p
}

func (e *env) fsSecrets(pass string) map[string]string {
	return withPassphrase(e.c.CephFSSecrets(), pass)
}
func (e *env) fsNodeSecrets(pass string) map[string]string {
	return withPassphrase(e.c.CephFSNodeSecrets(), pass)
}

// fsAdmin mounts the filesystem as admin through libcephfs on the host.
func (e *env) fsAdmin(t *testing.T) *cephfs.MountInfo {
	t.Helper()
	m, err := cephfs.CreateFromRados(e.c.Admin())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SelectFilesystem("myfs"); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(); err != nil {
		t.Fatalf("mounting myfs through libcephfs: %v", err)
	}
	t.Cleanup(func() {
		_ = m.Unmount()
		_ = m.Release()
	})
	return m
}

func readDirNames(t *testing.T, m *cephfs.MountInfo, dir string) []string {
	t.Helper()
	d, err := m.OpenDir(dir)
	if err != nil {
		t.Fatalf("opening %s: %v", dir, err)
	}
	defer d.Close()
	var names []string
	for {
		ent, err := d.ReadDir()
		if err != nil {
			t.Fatalf("reading %s: %v", dir, err)
		}
		if ent == nil {
			return names
		}
		if n := ent.Name(); n != "." && n != ".." {
			names = append(names, n)
		}
	}
}

func readFile(t *testing.T, m *cephfs.MountInfo, p string) []byte {
	t.Helper()
	f, err := m.Open(p, 0, 0)
	if err != nil {
		t.Fatalf("opening %s: %v", p, err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		t.Fatalf("reading %s: %v", p, err)
	}
	return buf[:n]
}

// assertFscryptLayout checks the subvolume as ceph-csi lays it out: one
// protector named ceph-csi of the given source and one policy in .fscrypt
// at the root, the encrypted directory beside it, and no plain name in it.
func (e *env) assertFscryptLayout(t *testing.T, v *volume, source fsmetadata.SourceType) {
	t.Helper()
	m := e.fsAdmin(t)
	root := v.vol.GetVolumeContext()["subvolumePath"]
	names := readDirNames(t, m, root)
	if strings.Join(names, ",") != ".fscrypt,ceph-csi-encrypted" && strings.Join(names, ",") != "ceph-csi-encrypted,.fscrypt" {
		t.Fatalf("the subvolume root holds %v, want .fscrypt and ceph-csi-encrypted", names)
	}
	protectors := readDirNames(t, m, path.Join(root, ".fscrypt/protectors"))
	policies := readDirNames(t, m, path.Join(root, ".fscrypt/policies"))
	if len(protectors) != 1 || len(policies) != 1 {
		t.Fatalf(".fscrypt holds protectors %v and policies %v, want one of each", protectors, policies)
	}
	var prot fsmetadata.ProtectorData
	if err := proto.Unmarshal(readFile(t, m, path.Join(root, ".fscrypt/protectors", protectors[0])), &prot); err != nil {
		t.Fatalf("decoding protector %s: %v", protectors[0], err)
	}
	if prot.GetName() != "ceph-csi" || prot.GetSource() != source {
		t.Fatalf("protector %s is named %q with source %v, want \"ceph-csi\" and %v", protectors[0], prot.GetName(), prot.GetSource(), source)
	}
	var pol fsmetadata.PolicyData
	if err := proto.Unmarshal(readFile(t, m, path.Join(root, ".fscrypt/policies", policies[0])), &pol); err != nil {
		t.Fatalf("decoding policy %s: %v", policies[0], err)
	}
	if pol.GetOptions().GetPolicyVersion() != 2 || len(pol.GetWrappedPolicyKeys()) != 1 ||
		pol.GetWrappedPolicyKeys()[0].GetProtectorDescriptor() != prot.GetProtectorDescriptor() {
		t.Fatalf("policy %s: version %d, %d wrapped keys; want a v2 policy wrapped by protector %s", policies[0],
			pol.GetOptions().GetPolicyVersion(), len(pol.GetWrappedPolicyKeys()), prot.GetProtectorDescriptor())
	}
	enc := readDirNames(t, m, path.Join(root, "ceph-csi-encrypted"))
	if len(enc) == 0 {
		t.Fatalf("the encrypted directory is empty without the key; want the file written through it")
	}
	for _, n := range enc {
		if strings.Contains(n, fsMarker) || strings.Contains(n, "plain") {
			t.Fatalf("without the key the encrypted directory shows the plain name %q", n)
		}
	}
	t.Logf("without the key the encrypted directory lists %v", enc)
}

// assertObjectEncrypted reads the first RADOS object of the file (inode
// ino) from the data pool: it must hold data, and not the plain text.
func (e *env) assertObjectEncrypted(t *testing.T, ino uint64) {
	t.Helper()
	oid := fmt.Sprintf("%x.00000000", ino)
	buf := make([]byte, 4<<20)
	n, err := e.c.IOContext(t, "myfs-data0").Read(oid, buf, 0)
	if err != nil {
		t.Fatalf("reading object %s of the file: %v", oid, err)
	}
	if n < len(fsMarker) {
		t.Fatalf("object %s holds %d bytes, want the file's data", oid, n)
	}
	if bytes.Contains(buf[:n], []byte(fsMarker)) {
		t.Fatalf("object %s holds the plain text", oid)
	}
}

// writeFsMarker writes the marker (name and contents) below dir in the
// guest and returns the file's inode number and the contents' checksum.
func (e *env) writeFsMarker(t *testing.T, dir string) (uint64, string) {
	t.Helper()
	file := path.Join(dir, "plain-"+fsMarker+".txt")
	out := e.g.sh(t, fmt.Sprintf("for i in $(seq 2000); do echo %s; done > %s && sync && stat -c %%i %s && sha256sum < %s",
		fsMarker, quote(file), quote(file), quote(file)))
	f := strings.Fields(out)
	ino, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		t.Fatalf("stat output %q", out)
	}
	return ino, f[1]
}

func (e *env) fsMarkerSum(t *testing.T, dir string) string {
	t.Helper()
	return e.readSum(t, path.Join(dir, "plain-"+fsMarker+".txt"))
}

// testCephFSFscrypt: an encrypted CephFS volume (default KMS): pods see
// only the encrypted directory; the cluster holds the ceph-csi layout and
// neither the plain name nor the plain data; a wrong passphrase is refused
// and leaves nothing mounted; restage reads back; a snapshot restores
// is taken, and restores and clones are refused (Ceph's cloner drops the
// fscrypt policy) with nothing left behind.
func (e *env) testCephFSFscrypt(t *testing.T) {
	v := e.createCephFSWith(t, 64*mib, e.fsParams(), nil, e.fsSecrets(fsPassphrase), e.fsNodeSecrets(fsPassphrase))
	v.stage(t)
	v.publish(t)
	if out := strings.TrimSpace(e.g.sh(t, "ls -A "+quote(v.target))); out != "" {
		t.Fatalf("a new encrypted volume's publish target holds %q, want nothing (the metadata stays beside it)", out)
	}
	ino, sum := e.writeFsMarker(t, v.target)
	v.unpublish(t)
	v.unstage(t)
	e.assertFscryptLayout(t, v, fsmetadata.SourceType_raw_key)
	e.assertObjectEncrypted(t, ino)

	step(t, "NodeStageVolume with a wrong passphrase", func() {
		_, err := v.node.NodeStageVolume(ctxT(t), &csi.NodeStageVolumeRequest{VolumeId: v.id(), StagingTargetPath: v.staging,
			VolumeCapability: v.vcap, VolumeContext: v.vol.GetVolumeContext(), Secrets: e.fsNodeSecrets("not-it")})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "does not open") {
			t.Fatalf("stage with a wrong passphrase: %v, want PermissionDenied saying the secret does not open the protector", err)
		}
		t.Logf("wrong passphrase: %v", err)
	})
	if fs := e.mountOf(t, v.staging); fs != "" {
		t.Fatalf("a refused stage left the staging path mounted (%s)", fs)
	}
	v.stage(t) // idempotent: the retry of a stage that succeeded
	e.restageReadsBack(t, v, sum, true, fsPassphrase)

	// Ceph's subvolume cloner copies the encrypted directory without its
	// fscrypt policy: restores and clones are refused, whatever the
	// StorageClass says.
	snap := e.snapshotOf(t, v)
	before := e.subvolumeCount(t)
	plain := e.fsParams()
	delete(plain, "encrypted")
	for _, tc := range []struct {
		what   string
		params map[string]string
		src    *csi.VolumeContentSource
	}{
		{"restore with the encrypted StorageClass", e.fsParams(), &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}},
		{"restore with a plain StorageClass", plain, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}},
		{"PVC clone", e.fsParams(), &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.id()}}}},
	} {
		step(t, tc.what, func() {
			_, err := e.fsCtl.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: "kt-fscrypt-copy", Parameters: tc.params,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib}, VolumeCapabilities: []*csi.VolumeCapability{v.vcap},
				VolumeContentSource: tc.src, Secrets: e.fsSecrets(fsPassphrase)})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "encrypted with fscrypt") {
				t.Fatalf("%s of an encrypted volume: %v, want InvalidArgument saying the source is encrypted with fscrypt", tc.what, err)
			}
		})
	}
	if n := e.subvolumeCount(t); n != before {
		t.Fatalf("the refused copies changed the subvolumes from %d to %d", before, n)
	}
	io := e.c.IOContext(t, "myfs-metadata")
	io.SetNamespace("csi")
	if kv, err := io.GetOmapValues("csi.volumes.default", "", "csi.volume.kt-fscrypt-copy", 1); err != nil || len(kv) != 0 {
		t.Fatalf("the refused copies left journal entries %v (%v)", kv, err)
	}
	e.assertSecretsNotOnGuest(t, fsPassphrase)
}

// testCephFSFscryptMetadataKMS: the secrets-metadata KMS on CephFS: its
// passphrase is a custom fscrypt passphrase (Argon2id-hashed), as ceph-csi
// uses it; KMIP-like KMSs without a secret are refused at CreateVolume.
func (e *env) testCephFSFscryptMetadataKMS(t *testing.T) {
	secrets := e.fsSecrets(passphrase)
	v := e.createCephFSWith(t, 32*mib, e.fsParams("encryptionKMSID", kmsID), nil, secrets, e.fsNodeSecrets(passphrase))
	v.stage(t)
	v.publish(t)
	ino, sum := e.writeFsMarker(t, v.target)
	v.unpublish(t)
	v.unstage(t)
	e.assertFscryptLayout(t, v, fsmetadata.SourceType_custom_passphrase)
	e.assertObjectEncrypted(t, ino)
	e.restageReadsBack(t, v, sum, false, passphrase)

	step(t, "CreateVolume with encryptionType block", func() {
		p := e.fsParams("encryptionType", "block")
		_, err := e.fsCtl.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: "kt-block-fs", Parameters: p,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}, VolumeCapabilities: []*csi.VolumeCapability{v.vcap},
			Secrets: maps.Clone(secrets)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "encryptionType") {
			t.Fatalf("CephFS with encryptionType block: %v, want InvalidArgument naming encryptionType", err)
		}
	})
}

func (e *env) subvolumeCount(t *testing.T) int {
	t.Helper()
	names, err := admin.NewFromConn(e.c.Admin()).ListSubVolumes("myfs", "csi")
	if err != nil {
		t.Fatalf("listing subvolumes: %v", err)
	}
	return len(names)
}

// withRawKeyFile writes the default KMS's raw key for pass (its first 32
// bytes, zero-padded, as ceph-csi cuts it) to a guest file for use, and
// removes it before returning.
func (e *env) withRawKeyFile(t *testing.T, pass string, use func(file string)) {
	t.Helper()
	f := "/dev/shm/kt-fscrypt-raw.key"
	e.g.sh(t, fmt.Sprintf("printf %%s %s | head -c 32 > %s && truncate -s 32 %s", quote(pass), f, f))
	defer e.g.try(t, "rm -f "+f)
	use(f)
}

// fscryptTool runs google's fscrypt tool in the guest (its global
// configuration made once).
func (e *env) fscryptTool(t *testing.T, stdin, args string) (string, int) {
	t.Helper()
	in := "</dev/null"
	if stdin != "" {
		in = "<<'EOF'\n" + stdin + "\nEOF"
	}
	return e.g.try(t, "test -f /etc/fscrypt.conf || fscrypt setup --quiet --force </dev/null >/dev/null 2>&1; fscrypt "+args+" 2>&1 "+in)
}

// restageReadsBack stages and publishes v, checks the marker file's sum,
// has the fscrypt tool lock and reopen the directory with the KMS's secret
// (toolRelocks), checks the sum again and unstages.
func (e *env) restageReadsBack(t *testing.T, v *volume, sum string, raw bool, secret string) {
	t.Helper()
	v.stage(t)
	v.publish(t)
	if got := e.fsMarkerSum(t, v.target); got != sum {
		t.Fatalf("data read back after restage differs")
	}
	v.unpublish(t)
	e.toolRelocks(t, v, raw, secret)
	v.publish(t)
	if got := e.fsMarkerSum(t, v.target); got != sum {
		t.Fatalf("data read back after the fscrypt tool unlocked the volume differs")
	}
	v.unpublish(t)
	v.unstage(t)
}

// toolRelocks locks the staged (not published: a bind mount of the
// directory keeps it in use) volume's encrypted directory with the fscrypt
// tool, checks the names are gone, then unlocks it with the tool from the
// KMS's secret alone: a raw key file, or the passphrase on standard input.
func (e *env) toolRelocks(t *testing.T, v *volume, raw bool, secret string) {
	t.Helper()
	dir := path.Join(v.staging, "ceph-csi-encrypted")
	step(t, "fscrypt status, lock and unlock with the fscrypt tool", func() {
		out, rc := e.fscryptTool(t, "", "status "+quote(dir))
		if rc != 0 || !strings.Contains(out, "ceph-csi") || !strings.Contains(out, "policy_version:2") {
			t.Fatalf("fscrypt status %s: exit %d:\n%s\nwant the protector ceph-csi and a v2 policy", dir, rc, out)
		}
		if out, rc := e.fscryptTool(t, "", "lock --all-users "+quote(dir)); rc != 0 {
			t.Fatalf("fscrypt lock: exit %d:\n%s", rc, out)
		}
		if out := e.g.sh(t, "ls -A "+quote(dir)); strings.Contains(out, fsMarker) {
			t.Fatalf("after fscrypt lock the directory still lists the plain name:\n%s", out)
		}
		unlock := func(args, stdin string) {
			if out, rc := e.fscryptTool(t, stdin, "unlock --quiet "+args+quote(dir)); rc != 0 {
				t.Fatalf("fscrypt unlock with the KMS's secret: exit %d:\n%s", rc, out)
			}
		}
		if raw {
			e.withRawKeyFile(t, secret, func(f string) { unlock("--key="+f+" ", "") })
		} else {
			unlock("", secret)
		}
	})
}

// testCephFSFscryptToolLayout: a volume whose encryption google's fscrypt
// tool set up the ceph-csi way (metadata at the subvolume root, a raw-key
// protector named ceph-csi, the policy on ceph-csi-encrypted; what ceph-csi
// does through the same library) stages with this driver and shows the
// tool's file.
func (e *env) testCephFSFscryptToolLayout(t *testing.T) {
	v := e.createCephFSWith(t, 32*mib, e.fsParams(), nil, e.fsSecrets(fsPassphrase), e.fsNodeSecrets(fsPassphrase))
	plain := maps.Clone(v.vol.GetVolumeContext())
	delete(plain, "encrypted")
	v.e.g.sh(t, "mkdir -p "+quote(path.Dir(v.staging)))
	step(t, "NodeStageVolume, plain, for the tool", func() {
		if _, err := v.node.NodeStageVolume(ctxT(t), &csi.NodeStageVolumeRequest{VolumeId: v.id(), StagingTargetPath: v.staging,
			VolumeCapability: v.vcap, VolumeContext: plain, Secrets: v.secrets}); err != nil {
			t.Fatalf("NodeStageVolume: %v", err)
		}
	})
	dir := path.Join(v.staging, "ceph-csi-encrypted")
	step(t, "fscrypt setup and encrypt with the tool", func() {
		if out, rc := e.fscryptTool(t, "", "setup --quiet "+quote(v.staging)); rc != 0 {
			t.Fatalf("fscrypt setup %s: exit %d:\n%s", v.staging, rc, out)
		}
		e.g.sh(t, "mkdir "+quote(dir))
		e.withRawKeyFile(t, fsPassphrase, func(key string) {
			if out, rc := e.fscryptTool(t, "", "encrypt --quiet --source=raw_key --name=ceph-csi --key="+key+" "+quote(dir)); rc != 0 {
				t.Fatalf("fscrypt encrypt %s: exit %d:\n%s", dir, rc, out)
			}
		})
		e.g.sh(t, "echo "+fsMarker+" > "+quote(dir+"/by-the-tool")+" && sync")
	})
	v.unstage(t)
	v.stage(t)
	v.publish(t)
	if out := strings.TrimSpace(e.g.sh(t, "cat "+quote(v.target+"/by-the-tool"))); out != fsMarker {
		t.Fatalf("the tool's file reads %q through the driver, want %q", out, fsMarker)
	}
	v.unpublish(t)
	v.unstage(t)
}
