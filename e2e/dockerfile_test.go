package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the repository root, one level above this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// buildEnv reads the KEY=VALUE pins of build.env, without the quotes of
// the quoted lists.
func buildEnv(t testing.TB) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "build.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = strings.Trim(v, `"`)
		}
	}
	return env
}

// dockerfile is what the tests read from the Dockerfile.
type dockerfile struct {
	text string
	// args are the ARG defaults, quotes removed.
	args map[string]string
	// stages are the FROM lines in order.
	stages []string
	// runtime is the text of the last stage.
	runtime string
	// entrypoint is the runtime stage's exec-form ENTRYPOINT.
	entrypoint []string
	// binaryPath is where the runtime stage copies the built binary.
	binaryPath string
}

var (
	argLine   = regexp.MustCompile(`(?m)^ARG ([A-Z_]+)=(.*)$`)
	fromLine  = regexp.MustCompile(`(?m)^FROM .*$`)
	entryLine = regexp.MustCompile(`(?m)^ENTRYPOINT (\[.*\])$`)
	copyBin   = regexp.MustCompile(`(?m)^COPY --from=build /out/cephcsi (\S+)$`)
)

func readDockerfile(t testing.TB) *dockerfile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Continuation lines joined, as Docker reads them.
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	d := &dockerfile{text: text, args: map[string]string{}}
	for _, m := range argLine.FindAllStringSubmatch(text, -1) {
		// An ARG repeated in a later stage must keep the same default.
		v := strings.Trim(strings.TrimSpace(m[2]), `"`)
		if old, ok := d.args[m[1]]; ok && old != v {
			t.Errorf("Dockerfile: ARG %s has the defaults %q and %q", m[1], old, v)
		}
		d.args[m[1]] = v
	}
	d.stages = fromLine.FindAllString(text, -1)
	if idx := fromLine.FindAllStringIndex(text, -1); len(idx) > 0 {
		d.runtime = text[idx[len(idx)-1][0]:]
	}
	if m := entryLine.FindStringSubmatch(d.runtime); m != nil {
		if err := json.Unmarshal([]byte(m[1]), &d.entrypoint); err != nil {
			t.Errorf("Dockerfile: ENTRYPOINT %s: %v", m[1], err)
		}
	}
	if m := copyBin.FindStringSubmatch(d.runtime); m != nil {
		d.binaryPath = m[1]
	}
	return d
}

// The image's contract, the same for the Dockerfile and make image: the
// binary at this path is the entrypoint.
const imageBinaryPath = "/usr/local/bin/cephcsi"

// imagePackages is the runtime package list both images install, from
// build.env: the Ceph packages pinned to the Debian version, then the rest.
func imagePackages(env map[string]string) (ceph, other []string) {
	return strings.Fields(env["IMAGE_CEPH_PACKAGES"]), strings.Fields(env["IMAGE_PACKAGES"])
}

// The image cannot be built here from the Dockerfile (no container engine),
// so check that it agrees with the tree and with build.env, from which make
// image builds the same image (see image_test.go for that one).
func TestDockerfileMatchesTree(t *testing.T) {
	root := repoRoot(t)
	df := readDockerfile(t)
	env := buildEnv(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(gomod))
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}

	// The ARG defaults are build.env's pins, so that a plain `docker build`
	// makes the image make image makes.
	for arg, want := range map[string]string{
		"GO_VERSION":          goVersion[1],
		"BASE_IMAGE":          env["BASE_IMAGE"],
		"CEPH_DEB_VERSION":    env["CEPH_DEB_VERSION"],
		"IMAGE_CEPH_PACKAGES": env["IMAGE_CEPH_PACKAGES"],
		"IMAGE_PACKAGES":      env["IMAGE_PACKAGES"],
		"CEPH_DEV_PACKAGES":   env["CEPH_DEV_PACKAGES"],
		"GO_CEPH_TAGS":        env["GO_CEPH_TAGS"],
	} {
		got, ok := df.args[arg]
		if !ok {
			t.Errorf("Dockerfile has no ARG %s (build.env: %q)", arg, want)
		} else if got != want {
			t.Errorf("Dockerfile ARG %s=%q, build.env has %q", arg, got, want)
		}
	}
	if env["BASE_IMAGE"] != "debian:"+env["CEPH_SUITE"]+"-slim" {
		t.Errorf("BASE_IMAGE %q is not Debian %s, whose Ceph %s the image ships", env["BASE_IMAGE"], env["CEPH_SUITE"], env["CEPH_DEB_VERSION"])
	}

	// Both stages start from the base image: the builder links against
	// the Ceph libraries the runtime stage installs, not a Go image's own
	// Debian. The Go toolchain only is copied from the golang image.
	var ours []string
	for _, s := range df.stages {
		if strings.HasPrefix(s, "FROM ${BASE_IMAGE}") {
			ours = append(ours, s)
		}
	}
	if len(ours) != 2 || !strings.HasSuffix(df.stages[len(df.stages)-1], "FROM ${BASE_IMAGE}") {
		t.Errorf("Dockerfile stages %q: want a build stage and the final stage FROM ${BASE_IMAGE}", df.stages)
	}
	for what, want := range map[string]string{
		"the Go toolchain stage":          "FROM golang:${GO_VERSION} AS go",
		"the toolchain copied":            "COPY --from=go /usr/local/go /usr/local/go",
		"the build with build.env's tags": `go build -tags "${GO_CEPH_TAGS}"`,
		"the Ceph -dev packages pinned":   "${CEPH_DEV_PACKAGES}",
		"the runtime packages":            "${IMAGE_CEPH_PACKAGES}",
		"the node tools":                  "${IMAGE_PACKAGES}",
	} {
		if !strings.Contains(df.text, want) {
			t.Errorf("Dockerfile lacks %s: %q", what, want)
		}
	}
	// The pin is applied to each Ceph package, in both stages.
	if n := strings.Count(df.text, `$p=${CEPH_DEB_VERSION}`); n != 2 {
		t.Errorf("Dockerfile pins packages to ${CEPH_DEB_VERSION} in %d places, want 2 (-dev in the builder, runtime in the image)", n)
	}
	if !strings.Contains(df.runtime, "${IMAGE_CEPH_PACKAGES}") || !strings.Contains(df.runtime, "${IMAGE_PACKAGES}") {
		t.Error("the runtime stage does not install IMAGE_CEPH_PACKAGES and IMAGE_PACKAGES")
	}
	if df.binaryPath != imageBinaryPath {
		t.Errorf("Dockerfile copies the binary to %q, want %s", df.binaryPath, imageBinaryPath)
	}
	if !slices.Equal(df.entrypoint, []string{imageBinaryPath}) {
		t.Errorf("Dockerfile ENTRYPOINT %q, want [%s]", df.entrypoint, imageBinaryPath)
	}

	// What the node service runs must be in the list both images install
	// (not rbd-fuse: the rbd-fuse mapper's helper is the driver binary).
	ceph, other := imagePackages(env)
	for _, pkg := range []string{"librados2", "librbd1", "libcephfs2", "ceph-common", "ceph-fuse", "rbd-nbd",
		"e2fsprogs", "xfsprogs", "util-linux", "mount", "kmod", "fuse3", "logrotate", "cryptsetup-bin"} {
		if !slices.Contains(ceph, pkg) && !slices.Contains(other, pkg) {
			t.Errorf("build.env's image packages lack %s", pkg)
		}
	}
	// Everything the build copies must exist.
	for _, m := range regexp.MustCompile(`(?m)^COPY (\S+) `).FindAllStringSubmatch(df.text, -1) {
		if strings.HasPrefix(m[1], "--") {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, m[1])); err != nil {
			t.Errorf("Dockerfile copies %s: %v", m[1], err)
		}
	}
	main, err := os.ReadFile(filepath.Join(root, "cmd", "cephcsi", "main.go"))
	if err != nil || !strings.Contains(string(main), "package main") {
		t.Errorf("./cmd/cephcsi is not a main package: %v", err)
	}
	if !strings.Contains(df.text, "./cmd/cephcsi") {
		t.Error("Dockerfile does not build ./cmd/cephcsi")
	}
}
