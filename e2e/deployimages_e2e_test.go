//go:build e2e

package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The images of a deployment as users run it, without a registry: our
// image from `make image` (_output/cephcsi-image.tar), and each CSI sidecar
// the e2e builds wrapped alone into a minimal image, all imported into the
// node's containerd under cephcsi-e2e.local/<name>:<tag>, the names the
// tests' chart values point at.

const localRegistry = "cephcsi-e2e.local"

// deployImage is an image in the node's containerd.
type deployImage struct{ repository, tag string }

func (i deployImage) ref() string { return i.repository + ":" + i.tag }

// deployImages are the images of one deployment: ours and the sidecars by
// container name (csi-provisioner, ...).
type deployImages struct {
	cephcsi  deployImage
	sidecars map[string]deployImage
}

var (
	imagesOnce sync.Once
	imagesErr  error
	theImages  deployImages
)

// sidecarNames are the controller sidecars the charts and deploy/ run; the
// node plugin registers itself (docs/e2e.md), so no registrar image.
var sidecarNames = []string{"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"}

// importDeployImages imports the images once per run and returns them.
func importDeployImages(t testing.TB, e *env) deployImages {
	t.Helper()
	imagesOnce.Do(func() { theImages, imagesErr = e.node.importDeployImages() })
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	return theImages
}

func (n *node) importDeployImages() (deployImages, error) {
	e := n.e
	out := deployImages{sidecars: map[string]deployImage{}}
	begin := time.Now()
	img, err := n.importCephcsi(filepath.Join(e.root, "_output", "cephcsi-image.tar"), filepath.Join(e.root, "_output", "cephcsi"))
	if err != nil {
		return out, err
	}
	out.cephcsi = img
	fmt.Printf("e2e: image %s (make image) imported in %.1fs\n", img.ref(), time.Since(begin).Seconds())

	dir := filepath.Join(n.dir, "images")
	for _, name := range sidecarNames {
		t0 := time.Now()
		bin := n.e.tools[name]
		version := strings.TrimPrefix(filepath.Base(bin), name+"-")
		data, err := os.ReadFile(bin)
		if err != nil {
			return out, err
		}
		si := deployImage{repository: localRegistry + "/" + name, tag: version}
		archive := filepath.Join(dir, name+".tar")
		// As the upstream images: the static binary at /<name>, its entrypoint.
		if err := writeOCIArchive(archive, si.ref(), []string{"/" + name},
			[]layerFile{{name: name, mode: 0o755, data: data}, {name: "tmp/.keep", mode: 0o644}}); err != nil {
			return out, err
		}
		if err := n.ctr("images", "import", archive); err != nil {
			return out, err
		}
		_ = os.Remove(archive)
		out.sidecars[name] = si
		fmt.Printf("e2e: image %s (%s, %d MiB) imported in %.1fs\n", si.ref(), bin, len(data)>>20, time.Since(t0).Seconds())
	}
	return out, nil
}

func (n *node) ctr(args ...string) error {
	return n.host(append([]string{"/usr/bin/ctr", "--address", n.sock, "-n", "k8s.io"}, args...)...)
}

// importCephcsi imports an image archive of scripts/build-image.sh, after
// checking that it holds the binary given (a stale _output/cephcsi-image.tar
// would test an older driver), and tags it into the local registry.
func (n *node) importCephcsi(archive, binary string) (deployImage, error) {
	version, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return deployImage{}, fmt.Errorf("%s --version: %w", binary, err)
	}
	name, label, err := archiveImage(archive)
	if err != nil {
		return deployImage{}, fmt.Errorf("%s (make e2e builds it with scripts/build-image.sh): %w", archive, err)
	}
	if label != strings.TrimSpace(string(version)) {
		return deployImage{}, fmt.Errorf("%s holds version %q, %s is %q: run scripts/build-image.sh (make e2e does)",
			archive, label, binary, strings.TrimSpace(string(version)))
	}
	if err := n.ctr("images", "import", archive); err != nil {
		return deployImage{}, err
	}
	tag := name[strings.LastIndex(name, ":")+1:]
	img := deployImage{repository: localRegistry + "/cephcsi", tag: tag}
	// The archive names it cephcsi:<tag>, which the kubelet would look for
	// as docker.io/library/cephcsi.
	if err := n.ctr("images", "tag", "--force", name, img.ref()); err != nil {
		return deployImage{}, err
	}
	return img, nil
}

// archiveImage reads an OCI archive's image name (its
// io.containerd.image.name) and its version label.
func archiveImage(archive string) (name, version string, err error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	blobs := map[string][]byte{}
	var index []byte
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", "", err
		}
		// Only the small JSON documents are kept; layers are skipped.
		if h.Size > 1<<20 {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return "", "", err
		}
		if h.Name == "index.json" {
			index = data
		} else if d, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok {
			blobs["sha256:"+d] = data
		}
	}
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 1 {
		return "", "", fmt.Errorf("index.json: %v (%d manifests)", err, len(idx.Manifests))
	}
	name = idx.Manifests[0].Annotations["io.containerd.image.name"]
	var manifest struct {
		Config descriptor `json:"config"`
	}
	if err := json.Unmarshal(blobs[idx.Manifests[0].Digest], &manifest); err != nil {
		return "", "", fmt.Errorf("manifest: %w", err)
	}
	var config struct {
		Config struct {
			Labels map[string]string `json:"Labels"`
		} `json:"config"`
	}
	if err := json.Unmarshal(blobs[manifest.Config.Digest], &config); err != nil {
		return "", "", fmt.Errorf("config: %w", err)
	}
	return name, config.Config.Labels["org.opencontainers.image.version"], nil
}
