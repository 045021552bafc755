package cephfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/keyexec"
)

// The key reaches ceph-fuse and mount.ceph through keyexec's sealed
// in-memory file on descriptor 3, named as /proc/self/fd/3 in the
// `keyfile`/`secretfile` option. It is never written to a filesystem,
// never appears on a command line or in the environment. (A pipe does not
// work: ceph-fuse sizes the key file with fstat, reads nothing from a pipe
// and fails to authenticate.) Not /dev/fd/3: /dev/fd is a symlink that
// systemd or a container runtime creates, not the kernel's devtmpfs, so a
// node whose /dev lacks it could not mount with the kernel client.
const keyFD = keyexec.KeyFilePath

// mountTimeout bounds one mount or unmount helper run.
const mountTimeout = 2 * time.Minute

// mountSpec says what to mount where.
type mountSpec struct {
	Monitors []string
	FsName   string
	Root     string // path inside the filesystem
	Target   string
	Creds    cephconn.Credentials
	// Options are mount options: FUSE options (-o) for ceph-fuse, kernel
	// mount options for mount.ceph.
	Options []string
}

// fuseArgs is the ceph-fuse command line. No ceph.conf is read: everything
// the client needs is on the command line.
func fuseArgs(s mountSpec) []string {
	args := []string{s.Target,
		"-c", "/dev/null",
		"-m", strings.Join(s.Monitors, ","),
		"--id", s.Creds.ID,
		"--keyring", "/dev/null",
		"--keyfile", keyFD,
		"--client_fs=" + s.FsName,
		"-r", s.Root,
	}
	if len(s.Options) > 0 {
		args = append(args, "-o", strings.Join(s.Options, ","))
	}
	return args
}

// kernelArgs is the mount.ceph command line (the helper `mount -t ceph`
// runs). mount.ceph reads the secret file and gives the key to the kernel
// keyring, so the key shows neither in /proc/mounts nor in the arguments.
func kernelArgs(s mountSpec) []string {
	opts := append([]string{"name=" + s.Creds.ID, "secretfile=" + keyFD, "mds_namespace=" + s.FsName}, s.Options...)
	return []string{strings.Join(s.Monitors, ",") + ":" + s.Root, s.Target, "-o", strings.Join(opts, ",")}
}

// runWithKey runs a mount helper with the key on file descriptor 3. The
// key file is emptied when the helper returns: ceph-fuse reads the key
// while it starts, before its foreground process exits, and the daemon it
// leaves behind keeps descriptor 3 open for as long as the mount lives.
// daemon says that it leaves the daemon serving the mount behind
// (ceph-fuse), which then runs in the helper cgroup when one is set.
func runWithKey(ctx context.Context, key string, daemon bool, name string, args ...string) error {
	_, err := runner.Run(ctx, keyexec.Command{Path: name, Args: args, Key: key, EmptyKeyOnReturn: true, Timeout: mountTimeout,
		Daemon: daemon})
	var failed *keyexec.RunError
	if errors.As(err, &failed) {
		// ceph-fuse writes its errors to stdout and stderr both.
		out := failed.Result.Stdout + "\n" + failed.Result.Stderr
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), failed.Err, helperOutput(out, key))
	}
	return err
}

// runner runs the mount helpers; tests replace it.
var runner keyexec.Runner = keyexec.Exec{}

// helperOutput keeps the lines of a helper's output worth reporting, with
// the key masked should a tool ever echo it.
func helperOutput(out, key string) string {
	var keep []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.Contains(line, "newargv") {
			continue
		}
		line = keyexec.Redact(line, key)
		keep = append(keep, line)
	}
	if len(keep) > 8 {
		keep = keep[len(keep)-8:]
	}
	return strings.Join(keep, "; ")
}

// mountFuse mounts with ceph-fuse, which returns once the mount is up.
func mountFuse(ctx context.Context, s mountSpec) error {
	return runWithKey(ctx, s.Creds.Key, true, "ceph-fuse", fuseArgs(s)...)
}

// mountKernel mounts with the kernel client through mount.ceph.
func mountKernel(ctx context.Context, s mountSpec) error {
	return runWithKey(ctx, s.Creds.Key, false, "mount.ceph", kernelArgs(s)...)
}

// kernelClientAvailable reports whether the running kernel has the ceph
// filesystem (built in or loaded).
func kernelClientAvailable() bool {
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "ceph" {
			return true
		}
	}
	return false
}

// splitOptions turns "a,b , c" into [a b c].
func splitOptions(s string) []string {
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}
