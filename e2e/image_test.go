//go:build image

package e2e

// The image of make image (_output/cephcsi-image.tar, built by
// scripts/build-image.sh), checked as a container runtime would use it: the
// OCI layout is read and verified blob by blob, the layers are unpacked in
// order into a root filesystem, and programs are run in it (chroot). It is
// also compared with the Dockerfile: the same entrypoint, binary path and
// packages. Run by make image (root is needed for chroot).

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		Env        []string          `json:"Env"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// layout is an OCI image layout unpacked from the image tar.
type layout struct {
	dir string
}

// extractLayout unpacks the image tar (a plain tar of the layout) and checks
// that every blob's content has the digest it is named by.
func extractLayout(t *testing.T, tarPath string) *layout {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatalf("%v (run make image)", err)
	}
	defer func() { _ = f.Close() }()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading %s: %v", tarPath, err)
		}
		name := path.Clean(hdr.Name)
		if !fs.ValidPath(name) {
			t.Fatalf("image tar entry %q leaves the layout", hdr.Name)
		}
		dst := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			out, err := os.Create(dst)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			_, err = io.Copy(io.MultiWriter(out, h), tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if d, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && hex.EncodeToString(h.Sum(nil)) != d {
				t.Errorf("blob %s has the digest %x", name, h.Sum(nil))
			}
		default:
			t.Errorf("image tar entry %s has type %q; a layout holds directories and files", hdr.Name, hdr.Typeflag)
		}
	}
	return &layout{dir: dir}
}

// blob opens the blob of d, checking its size.
func (l *layout) blob(t *testing.T, d descriptor) *os.File {
	t.Helper()
	hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("digest %q is not sha256", d.Digest)
	}
	f, err := os.Open(filepath.Join(l.dir, "blobs", "sha256", hexDigest))
	if err != nil {
		t.Fatalf("blob %s: %v", d.Digest, err)
	}
	t.Cleanup(func() { _ = f.Close() })
	if st, err := f.Stat(); err != nil || st.Size() != d.Size {
		t.Fatalf("blob %s: size %v (%v), the descriptor says %d", d.Digest, st.Size(), err, d.Size)
	}
	return f
}

func (l *layout) json(t *testing.T, d descriptor, v any) {
	t.Helper()
	if err := json.NewDecoder(l.blob(t, d)).Decode(v); err != nil {
		t.Fatalf("blob %s: %v", d.Digest, err)
	}
}

// unpackLayer applies one gzip layer to the root filesystem under dir, as
// a runtime does (whiteouts included), and returns its diff ID (the
// digest of the uncompressed tar). Every path stays inside dir (os.Root).
func unpackLayer(t *testing.T, r io.Reader, dir string) string {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = root.Close() }()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatalf("layer: %v", err)
	}
	h := sha256.New()
	tee := io.TeeReader(zr, h)
	tr := tar.NewReader(tee)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("layer: %v", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == "." {
			continue
		}
		if !fs.ValidPath(name) {
			t.Fatalf("layer entry %q leaves the root", hdr.Name)
		}
		parent, base := path.Split(name)
		if base == ".wh..wh..opq" {
			entries, _ := fs.ReadDir(root.FS(), path.Clean(parent))
			for _, e := range entries {
				_ = root.RemoveAll(path.Join(parent, e.Name()))
			}
			continue
		}
		if victim, ok := strings.CutPrefix(base, ".wh."); ok {
			_ = root.RemoveAll(path.Join(parent, victim))
			continue
		}
		if parent != "" {
			if err := root.MkdirAll(path.Clean(parent), 0o755); err != nil {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		}
		mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		case tar.TypeReg:
			_ = root.Remove(name)
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err == nil {
				_, err = io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		case tar.TypeLink:
			_ = root.Remove(name)
			if err := root.Link(path.Clean(strings.TrimPrefix(hdr.Linkname, "./")), name); err != nil {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		default:
			t.Fatalf("layer entry %s has type %q, which this image should not hold", name, hdr.Typeflag)
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			t.Fatalf("layer entry %s: %v", name, err)
		}
		if hdr.Typeflag != tar.TypeSymlink {
			if err := root.Chmod(name, mode); err != nil {
				t.Fatalf("layer entry %s: %v", name, err)
			}
		}
	}
	// The rest of the stream (tar padding) belongs to the digest too.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// dpkgStatus reads the installed packages and versions of a root.
func dpkgStatus(t *testing.T, rootfs string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(rootfs, "var", "lib", "dpkg", "status"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	installed := map[string]string{}
	var pkg, version, state string
	flush := func() {
		if pkg != "" && state == "install ok installed" {
			installed[pkg] = version
		}
		pkg, version, state = "", "", ""
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			flush()
		case strings.HasPrefix(line, "Package: "):
			pkg = strings.TrimPrefix(line, "Package: ")
		case strings.HasPrefix(line, "Version: "):
			version = strings.TrimPrefix(line, "Version: ")
		case strings.HasPrefix(line, "Status: "):
			state = strings.TrimPrefix(line, "Status: ")
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return installed
}

// inImage runs a program of the unpacked image, chrooted into it, with
// every shared library symbol resolved at start (LD_BIND_NOW), so that a
// binary built against other libraries than the image's fails here.
func inImage(t *testing.T, rootfs string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LD_BIND_NOW=1"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s in the image: %v: %s", strings.Join(argv, " "), err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// checkLogRotation runs, in the image, what the operator's log-rotator
// container does with the plugins' csi-logs/*.log (bash running logrotate
// with a copytruncate config): the log is rotated and compressed, and the
// file the plugin keeps open is truncated, not replaced.
func checkLogRotation(t *testing.T, rootfs string) {
	t.Helper()
	dir := filepath.Join(rootfs, "tmp", "csi-logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	line := []byte("I1201 12:00:00.000000       1 driver.go:1] driver started\n")
	if err := os.WriteFile(filepath.Join(dir, "csi-rbdplugin.log"), bytes.Repeat(line, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := "/tmp/csi-logs/*.log {\n\tsize 1k\n\trotate 3\n\tcompress\n\tcopytruncate\n\tmissingok\n\tnotifempty\n}\n"
	if err := os.WriteFile(filepath.Join(rootfs, "tmp", "logrotate.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	inImage(t, rootfs, "/bin/bash", "-c", "logrotate --state /tmp/logrotate.state /tmp/logrotate.conf")
	if st, err := os.Stat(filepath.Join(dir, "csi-rbdplugin.log")); err != nil || st.Size() != 0 {
		t.Errorf("after logrotate the plugin's log is %v, %v; want it kept and truncated", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "csi-rbdplugin.log.1.gz")); err != nil {
		t.Errorf("logrotate in the image left no compressed rotation: %v", err)
	}
}

func fileDigest(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestImage(t *testing.T) {
	repo := repoRoot(t)
	env := buildEnv(t)
	df := readDockerfile(t)
	tarPath := os.Getenv("CEPHCSI_IMAGE")
	if tarPath == "" {
		tarPath = filepath.Join(repo, "_output", "cephcsi-image.tar")
	}
	l := extractLayout(t, tarPath)

	var ociLayout struct {
		Version string `json:"imageLayoutVersion"`
	}
	if raw, err := os.ReadFile(filepath.Join(l.dir, "oci-layout")); err != nil || json.Unmarshal(raw, &ociLayout) != nil || ociLayout.Version != "1.0.0" {
		t.Fatalf("oci-layout: %q, %v; want imageLayoutVersion 1.0.0", raw, err)
	}
	var index struct {
		SchemaVersion int          `json:"schemaVersion"`
		Manifests     []descriptor `json:"manifests"`
	}
	raw, err := os.ReadFile(filepath.Join(l.dir, "index.json"))
	if err != nil || json.Unmarshal(raw, &index) != nil {
		t.Fatalf("index.json: %v: %s", err, raw)
	}
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 || index.Manifests[0].MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("index.json: want one image manifest, have %s", raw)
	}
	if index.Manifests[0].Annotations["org.opencontainers.image.ref.name"] == "" {
		t.Error("the manifest has no org.opencontainers.image.ref.name (tag)")
	}
	var manifest struct {
		SchemaVersion int          `json:"schemaVersion"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}
	l.json(t, index.Manifests[0], &manifest)
	if manifest.SchemaVersion != 2 || manifest.Config.MediaType != "application/vnd.oci.image.config.v1+json" || len(manifest.Layers) == 0 {
		t.Fatalf("manifest: %+v", manifest)
	}
	var cfg imageConfig
	l.json(t, manifest.Config, &cfg)
	if cfg.Architecture != "amd64" || cfg.OS != "linux" {
		t.Errorf("config: %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
	}
	if len(cfg.RootFS.DiffIDs) != len(manifest.Layers) {
		t.Fatalf("config has %d diff IDs for %d layers", len(cfg.RootFS.DiffIDs), len(manifest.Layers))
	}

	rootfs := t.TempDir()
	for i, d := range manifest.Layers {
		if d.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
			t.Fatalf("layer %d has media type %s", i, d.MediaType)
		}
		if got := unpackLayer(t, l.blob(t, d), rootfs); got != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d unpacks to %s, the config says %s", i, got, cfg.RootFS.DiffIDs[i])
		}
	}

	// The Dockerfile's entrypoint and binary path, here too.
	if !slices.Equal(cfg.Config.Entrypoint, df.entrypoint) || !slices.Equal(cfg.Config.Entrypoint, []string{imageBinaryPath}) {
		t.Errorf("entrypoint %q; the Dockerfile's is %q, want [%s]", cfg.Config.Entrypoint, df.entrypoint, imageBinaryPath)
	}
	if len(cfg.Config.Cmd) != 0 {
		t.Errorf("the image has a Cmd %q; the Dockerfile has none", cfg.Config.Cmd)
	}
	st, err := os.Stat(filepath.Join(rootfs, df.binaryPath))
	if err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("the Dockerfile's binary path %s in the image: %v (mode %v)", df.binaryPath, err, st.Mode())
	}
	if got, want := fileDigest(t, filepath.Join(rootfs, df.binaryPath)), fileDigest(t, filepath.Join(repo, "_output", "cephcsi")); got != want {
		t.Errorf("%s in the image is not _output/cephcsi (sha256 %s, want %s)", df.binaryPath, got, want)
	}

	// The packages the Dockerfile installs (its ARG defaults, which
	// dockerfile_test.go holds to build.env's), installed here, the Ceph
	// ones at the pinned version.
	installed := dpkgStatus(t, rootfs)
	for _, p := range strings.Fields(df.args["IMAGE_CEPH_PACKAGES"]) {
		if v := installed[p]; v != df.args["CEPH_DEB_VERSION"] || v != env["CEPH_DEB_VERSION"] {
			t.Errorf("package %s: %q in the image, want %s", p, v, env["CEPH_DEB_VERSION"])
		}
	}
	for _, p := range strings.Fields(df.args["IMAGE_PACKAGES"]) {
		if _, ok := installed[p]; !ok {
			t.Errorf("package %s is not installed in the image", p)
		}
	}

	version := inImage(t, rootfs, df.binaryPath, "--version")
	if version == "" || version != cfg.Config.Labels["org.opencontainers.image.version"] {
		t.Errorf("cephcsi --version in the image: %q, the image's version label %q", version, cfg.Config.Labels["org.opencontainers.image.version"])
	}
	wantCeph := fmt.Sprintf("ceph version %s (", env["CEPH_VERSION"])
	for _, argv := range [][]string{{"/usr/bin/rbd", "--version"}, {"/usr/bin/ceph-fuse", "--version"}} {
		out := inImage(t, rootfs, argv...)
		if !strings.HasPrefix(out, wantCeph) || !strings.Contains(out, " "+env["CEPH_RELEASE"]+" ") {
			t.Errorf("%s in the image: %q, want Ceph %s (%s)", strings.Join(argv, " "), out, env["CEPH_VERSION"], env["CEPH_RELEASE"])
		}
		t.Logf("%s: %s", strings.Join(argv, " "), out)
	}
	checkLogRotation(t, rootfs)
	t.Logf("cephcsi --version: %s", version)
	t.Logf("image %s: %d layers, %d packages installed", tarPath, len(manifest.Layers), len(installed))
}
