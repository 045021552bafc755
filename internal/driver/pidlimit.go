package driver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The files --pidlimit works on; tests point them elsewhere.
type cgroupFS struct {
	procCgroup string // /proc/self/cgroup
	root       string // /sys/fs/cgroup
}

var hostCgroups = cgroupFS{procCgroup: "/proc/self/cgroup", root: "/sys/fs/cgroup"}

// pidsMaxFile finds the pids.max file of this process's cgroup, for cgroup
// v1 (a "pids" hierarchy) and v2 (the unified one). Inside a container the
// cgroup path /proc/self/cgroup names is often the host's while only the
// container's own cgroup is mounted; then the mount's root is the file.
func (c cgroupFS) pidsMaxFile() (string, error) {
	data, err := os.ReadFile(c.procCgroup)
	if err != nil {
		return "", err
	}
	var v1, v2 string
	var haveV1, haveV2 bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, haveV2 = f[2], true
		}
		for _, ctl := range strings.Split(f[1], ",") {
			if ctl == "pids" {
				v1, haveV1 = f[2], true
			}
		}
	}
	var candidates []string
	if haveV1 {
		candidates = append(candidates, filepath.Join(c.root, "pids", v1, "pids.max"), filepath.Join(c.root, "pids", "pids.max"))
	}
	if haveV2 {
		candidates = append(candidates, filepath.Join(c.root, v2, "pids.max"), filepath.Join(c.root, "pids.max"))
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("%s names no pids cgroup", c.procCgroup)
	}
	candidates = slices.Compact(candidates)
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no pids.max for this process (looked at %s)", strings.Join(candidates, ", "))
}

// setPIDLimit writes limit (-1: "max") to the process's pids.max and returns
// the limit it replaced.
func (c cgroupFS) setPIDLimit(limit int) (before string, err error) {
	if limit == 0 || limit < -1 {
		return "", errors.New("no limit to set")
	}
	path, err := c.pidsMaxFile()
	if err != nil {
		return "", err
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	want := "max"
	if limit > 0 {
		want = strconv.Itoa(limit)
	}
	// O_WRONLY without O_CREATE: a cgroup file is never created here.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(want); err != nil {
		_ = f.Close() // the write error is the one to report
		return "", fmt.Errorf("writing %s to %s: %w", want, path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("writing %s to %s: %w", want, path, err)
	}
	return strings.TrimSpace(string(old)), nil
}
