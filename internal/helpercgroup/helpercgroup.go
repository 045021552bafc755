// Package helpercgroup keeps the node plugin's daemons (the rbd-fuse
// helper, ceph-fuse, rbd-nbd) out of the node plugin container's cgroup, so
// that they outlive a restart or an upgrade of that container.
//
// When a container without a PID namespace of its own (the node plugins run
// with hostPID) stops, the runtime kills every process of its cgroup, and
// the kubelet kills whatever is left in a removed pod's cgroup. A FUSE
// daemon killed that way takes its mount with it: the pods using the volume
// see ENOTCONN (CephFS) or EIO (an RBD filesystem on the rbd-fuse loop
// device) until they are restarted. A process in a cgroup outside the pod's
// is not touched by either, as the kubelet's own FUSE mounts are kept out of
// its cgroup with systemd-run --scope.
//
// The daemons are therefore started through `cephcsi helper-exec CGROUP --
// PROGRAM ARGS...` (Command), which moves itself into CGROUP in every
// cgroup hierarchy of the node and then executes PROGRAM: the daemon and
// whatever it forks start outside the container's cgroup, with no window in
// which the container's end could reach them. The container must see the
// node's cgroup hierarchies (the host's /sys, as the node plugin DaemonSets
// mount it) and share the host's PID namespace.
package helpercgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Command is the first argument of cephcsi that runs Main.
const Command = "helper-exec"

// Validate checks a cgroup path: absolute, clean, not the root.
func Validate(cgroup string) error {
	if !filepath.IsAbs(cgroup) || filepath.Clean(cgroup) != cgroup || cgroup == "/" {
		return fmt.Errorf("cgroup %q: want an absolute, clean path below the cgroup root, like /cephcsi-helpers", cgroup)
	}
	return nil
}

// Args is the command line (after the cephcsi binary) that runs program
// with args in cgroup.
func Args(cgroup, program string, args ...string) []string {
	return append([]string{Command, cgroup, "--", program}, args...)
}

// Main is `cephcsi helper-exec CGROUP -- PROGRAM ARGS...`: it moves this
// process into CGROUP and executes PROGRAM, keeping its descriptors (the
// key on 3, the report pipe on 4). It returns only on failure.
func Main(args []string) int {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintf(os.Stderr, "cephcsi %s: usage: %s CGROUP -- PROGRAM [ARGS...]\n", Command, Command)
		return 2
	}
	cgroup, program, pargs := args[0], args[2], args[3:]
	path, err := exec.LookPath(program)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cephcsi %s: %v\n", Command, err)
		return 127
	}
	// The namespace join and the move are made by this thread, which then
	// executes the program: the new image keeps both.
	runtime.LockOSThread()
	if err := Enter(cgroup); err != nil {
		fmt.Fprintf(os.Stderr, "cephcsi %s: %v\n", Command, err)
		return 126
	}
	err = syscall.Exec(path, append([]string{program}, pargs...), os.Environ())
	fmt.Fprintf(os.Stderr, "cephcsi %s: executing %s: %v\n", Command, path, err)
	return 127
}

// Enter moves the calling process into cgroup in every hierarchy. In a
// cgroup namespace of its own (cgroup v2 containers), the calling thread
// first joins the host's (PID 1's), from which the node's hierarchies are
// reachable; the caller locks its OS thread.
func Enter(cgroup string) error {
	if err := Validate(cgroup); err != nil {
		return err
	}
	if err := joinHostCgroupNS(); err != nil {
		return err
	}
	dirs, err := Ensure(cgroup)
	if err != nil {
		return err
	}
	pid := strconv.Itoa(os.Getpid())
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(pid), 0); err != nil {
			return fmt.Errorf("moving into cgroup %s: %w", d, err)
		}
	}
	return nil
}

// Ensure creates cgroup in every hierarchy of the node (initialising the
// cpuset of new v1 cpuset cgroups from their parent, which a v1 cpuset
// needs before it can hold a process) and returns its directories. The node
// plugin calls it at start, so that a cgroup it cannot use is reported then.
func Ensure(cgroup string) ([]string, error) {
	if err := Validate(cgroup); err != nil {
		return nil, err
	}
	roots, err := hierarchies("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range roots {
		dir := h.mountPoint
		for _, part := range strings.Split(strings.TrimPrefix(cgroup, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			if h.cpuset {
				if err := inheritCpuset(parent, dir); err != nil {
					return nil, err
				}
			}
		}
		f, err := os.OpenFile(filepath.Join(dir, "cgroup.procs"), os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		_ = f.Close() // opened only to check that it can be written
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", parent, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
			return fmt.Errorf("cgroup %s: setting %s: %w", dir, f, err)
		}
	}
	return nil
}

type hierarchy struct {
	mountPoint string
	cpuset     bool
}

// hierarchies lists the mount points of every cgroup hierarchy (v1 and v2)
// that show the hierarchy from its root. A mount point listed more than
// once (a container's own view of its cgroup, covered by the host's /sys)
// counts once, by its last, visible, mount; one that does not show the root
// is not a way out of the container's cgroup and is skipped.
func hierarchies(mountinfo string) ([]hierarchy, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	type entry struct {
		root string
		h    hierarchy
	}
	byPoint := map[string]entry{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		fields, tail := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(fields) < 5 || len(tail) < 3 || (tail[0] != "cgroup" && tail[0] != "cgroup2") {
			continue
		}
		mp := unescape(fields[4])
		if _, seen := byPoint[mp]; !seen {
			order = append(order, mp)
		}
		cpuset := false
		if tail[0] == "cgroup" {
			for _, o := range strings.Split(tail[2], ",") {
				cpuset = cpuset || o == "cpuset"
			}
		}
		byPoint[mp] = entry{root: unescape(fields[3]), h: hierarchy{mountPoint: mp, cpuset: cpuset}}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []hierarchy
	for _, mp := range order {
		if e := byPoint[mp]; e.root == "/" {
			out = append(out, e.h)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy is mounted from its root here (the node's /sys/fs/cgroup must be visible)")
	}
	return out, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// joinHostCgroupNS joins PID 1's cgroup namespace when ours differs and
// PID 1's can be read; the caller has locked its OS thread.
func joinHostCgroupNS() error {
	self, err := os.Readlink("/proc/self/ns/cgroup")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // a kernel without cgroup namespaces
		}
		return err
	}
	host, err := os.Readlink("/proc/1/ns/cgroup")
	if errors.Is(err, os.ErrPermission) {
		// PID 1 is beyond reach (a sandbox's); if our namespace differs,
		// the move that follows fails and says where.
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the host's cgroup namespace (the node plugin needs hostPID): %w", err)
	}
	if self == host {
		return nil
	}
	fd, err := unix.Open("/proc/1/ns/cgroup", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the host's cgroup namespace: %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // a namespace descriptor, read only
	if err := unix.Setns(fd, unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("joining the host's cgroup namespace: %w", err)
	}
	return nil
}
