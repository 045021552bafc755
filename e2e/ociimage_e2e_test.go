//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The pods' images, made here without a registry: an OCI image layout of
// one uncompressed layer in a tar file, which `ctr images import` loads
// under the name of its io.containerd.image.name annotation.

const (
	pauseImage   = "cephcsi-e2e.local/pause:1"
	busyboxImage = "cephcsi-e2e.local/busybox:1"
)

// layerFile is one entry of a layer: a regular file (data) or a symlink.
type layerFile struct {
	name string
	mode int64
	data []byte
	link string
}

func layerTar(files []layerFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mtime := time.Unix(0, 0)
	for _, f := range files {
		for d := filepath.Dir(f.name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	// Parents before children.
	var dirList []string
	for d := range dirs {
		dirList = append(dirList, d)
	}
	for len(dirList) > 0 {
		best := 0
		for i, d := range dirList {
			if strings.Count(d, "/") < strings.Count(dirList[best], "/") {
				best = i
			}
		}
		d := dirList[best]
		dirList = append(dirList[:best], dirList[best+1:]...)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime}
		if f.link != "" {
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.link == "" {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeOCIArchive writes the OCI layout of image name (one layer, the
// given entrypoint) as a tar file at path.
func writeOCIArchive(path, name string, entrypoint []string, files []layerFile) error {
	layer, err := layerTar(files)
	if err != nil {
		return err
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": entrypoint, "Env": []string{"PATH=/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digestOf(layer)}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digestOf(config), Size: len(config)},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digestOf(layer), Size: len(layer)}},
	})
	if err != nil {
		return err
	}
	tag := name[strings.LastIndex(name, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest: digestOf(manifest), Size: len(manifest),
			Annotations: map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"}}},
	})
	if err != nil {
		return err
	}
	var out []layerFile
	out = append(out, layerFile{name: "oci-layout", mode: 0o644, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		layerFile{name: "index.json", mode: 0o644, data: index})
	for _, blob := range [][]byte{layer, config, manifest} {
		out = append(out, layerFile{name: "blobs/sha256/" + strings.TrimPrefix(digestOf(blob), "sha256:"), mode: 0o644, data: blob})
	}
	archive, err := layerTar(out)
	if err != nil {
		return err
	}
	return os.WriteFile(path, archive, 0o644)
}

// buildImages writes the pause image (testdata/pause.c, linked statically)
// and the busybox image (the host's static busybox, Debian's busybox-static,
// with a symlink per applet) into dir and returns the archives.
func (e *env) buildImages(dir, hostBusybox string) ([]string, error) {
	pauseBin := filepath.Join(dir, "pause")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", pauseBin, filepath.Join(e.root, "e2e", "testdata", "pause.c")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building pause: %v\n%s", err, out)
	}
	pause, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile(hostBusybox)
	if err != nil {
		return nil, fmt.Errorf("busybox (Debian's busybox-static on the host; make e2e installs it): %w", err)
	}
	list, err := exec.Command(hostBusybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", hostBusybox, err)
	}
	files := []layerFile{{name: "bin/busybox", mode: 0o755, data: bb}}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			files = append(files, layerFile{name: "bin/" + applet, mode: 0o777, link: "busybox"})
		}
	}
	files = append(files, layerFile{name: "tmp/.keep", mode: 0o644})
	pauseTar, bbTar := filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")
	if err := writeOCIArchive(pauseTar, pauseImage, []string{"/pause"}, []layerFile{{name: "pause", mode: 0o755, data: pause}}); err != nil {
		return nil, err
	}
	if err := writeOCIArchive(bbTar, busyboxImage, []string{"/bin/sh"}, files); err != nil {
		return nil, err
	}
	return []string{pauseTar, bbTar}, nil
}
