package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
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

// buildEnv reads the KEY=VALUE pins of build.env.
func buildEnv(t testing.TB) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "build.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// The image cannot be built here (no container engine), so check that the
// Dockerfile agrees with the tree and the pins it depends on.
func TestDockerfileMatchesTree(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	env := buildEnv(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(gomod))
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}

	wants := map[string]string{
		"Go version of go.mod":        "ARG GO_VERSION=" + goVersion[1] + "\n",
		"base image of build.env":     "ARG BASE_IMAGE=" + env["BASE_IMAGE"] + "\n",
		"Ceph release of build.env":   "ARG CEPH_RELEASE=" + env["CEPH_RELEASE"] + "\n",
		"Debian bookworm builder":     "FROM golang:${GO_VERSION}-bookworm AS build",
		"build with the release tag":  `go build -tags "${CEPH_RELEASE}"`,
		"the binary's path":           "COPY --from=build /out/cephcsi /usr/local/bin/cephcsi",
		"the entrypoint of the image": `ENTRYPOINT ["/usr/local/bin/cephcsi"]`,
	}
	for what, want := range wants {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %s: %q", what, want)
		}
	}
	if !strings.HasPrefix(env["BASE_IMAGE"], "debian:bookworm") {
		t.Errorf("BASE_IMAGE %q is not Debian bookworm, whose Ceph is %s", env["BASE_IMAGE"], env["CEPH_VERSION"])
	}
	for _, pkg := range []string{"librados-dev", "librbd-dev", "libcephfs-dev", "librados2", "librbd1", "libcephfs2",
		"ceph-common", "ceph-fuse", "rbd-nbd", "rbd-fuse", "e2fsprogs", "xfsprogs"} {
		if !regexp.MustCompile(`\s` + regexp.QuoteMeta(pkg) + `\s`).MatchString(df) {
			t.Errorf("Dockerfile does not install %s", pkg)
		}
	}
	// Everything the build copies and builds must exist.
	for _, m := range regexp.MustCompile(`(?m)^COPY (\S+) `).FindAllStringSubmatch(df, -1) {
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
	if !strings.Contains(df, "./cmd/cephcsi") {
		t.Error("Dockerfile does not build ./cmd/cephcsi")
	}
}
