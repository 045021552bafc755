package mapper

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/rbdfuse"
	"github.com/leanceph/cephcsi/internal/topology"
)

// Fuse maps through FUSE and a loop device, for nodes whose kernel has
// neither rbd nor nbd: a helper process of ours (cephcsi rbd-fuse-helper,
// package rbdfuse) serves the image as the one file of a private FUSE
// mount, and a loop device turns that file into a block device. The whole
// data path runs in user space, and the volume works only while its helper
// lives (see docs/rbd-fuse-mapper.md).
//
// The helper gets the key on descriptor 3 (keyexec), reads it and closes
// it; no keyring file is written.
type Fuse struct {
	// Dir holds one private mount point per mapped image.
	Dir string
	// Sysfs, Dev and Proc are the roots of /sys, /dev and /proc.
	Sysfs, Dev, Proc string
	// Conf is the ceph.conf the helper reads ("" for /etc/ceph/ceph.conf
	// when it exists, else none); the monitors always come from the Spec.
	Conf string
	// Helper is the program that serves rbdfuse.HelperCommand: this very
	// binary.
	Helper  string
	Runner  keyexec.Runner
	Starter keyexec.Starter
	Mounter mount.Interface
	Busy    BusyFunc
	// Timeout bounds each step (starting the helper, attaching, detaching).
	Timeout time.Duration
	// unmount is unix.Unmount; tests replace it.
	unmount func(target string, flags int) error
}

// NewFuse returns the rbd-fuse mapper keeping its mount points in dir. Its
// helpers are this binary in its helper mode.
func NewFuse(dir string, r keyexec.Runner, st keyexec.Starter) (*Fuse, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// Loop devices report their backing file by its resolved path.
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this binary to run its FUSE helper: %w", err)
	}
	return &Fuse{Dir: resolved, Sysfs: "/sys", Dev: "/dev", Proc: "/proc", Helper: self, Runner: r, Starter: st,
		Mounter: mount.NewWithoutSystemd(""), Busy: DeviceBusy, Timeout: 60 * time.Second, unmount: unix.Unmount}, nil
}

// paths returns the mount point, the image file inside it and the log
// file of the helper for s.
func (f *Fuse) paths(s Spec) (mnt, file, logFile string) {
	sum := sha256.Sum256([]byte(s.Pool + "\x00" + s.Namespace + "\x00" + s.Image))
	name := hex.EncodeToString(sum[:10])
	mnt = filepath.Join(f.Dir, name)
	return mnt, filepath.Join(mnt, s.Image), mnt + ".log"
}

type fuseState int

const (
	fuseNotMounted fuseState = iota
	fuseHealthy
	fuseStale // the helper is gone
	fuseHung  // the helper does not answer
)

// probeTimeout bounds one look at a helper's mount: every stat there is a
// request to the helper, which may wait on the cluster indefinitely.
const probeTimeout = 10 * time.Second

// state inspects the mount point of s.
func (f *Fuse) state(mnt, file string) (fuseState, error) {
	type result struct {
		st  fuseState
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := f.probe(mnt, file)
		done <- result{st, err}
	}()
	select {
	case r := <-done:
		return r.st, r.err
	case <-time.After(probeTimeout):
		return fuseHung, nil
	}
}

func (f *Fuse) probe(mnt, file string) (fuseState, error) {
	notMnt, err := f.Mounter.IsLikelyNotMountPoint(mnt)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fuseNotMounted, nil
	case mount.IsCorruptedMnt(err):
		return fuseStale, nil
	case err != nil:
		return 0, fmt.Errorf("checking %s: %w", mnt, err)
	case notMnt:
		return fuseNotMounted, nil
	}
	if _, err := os.Stat(file); mount.IsCorruptedMnt(err) {
		return fuseStale, nil
	}
	return fuseHealthy, nil
}

// statTimeout stats a file inside a helper's mount without hanging on an
// unresponsive helper.
func statTimeout(path string) error {
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(path)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(probeTimeout):
		return fmt.Errorf("the FUSE helper does not answer for %s: %w", path, context.DeadlineExceeded)
	}
}

// Map implements Mapper.
func (f *Fuse) Map(ctx context.Context, s Spec) (string, error) {
	if err := s.validate(true); err != nil {
		return "", err
	}
	if dev, err := f.Find(ctx, s); err != nil || dev != "" {
		if dev != "" {
			mnt, file, logFile := f.paths(s)
			switch st, err := f.state(mnt, file); {
			case err == nil && st == fuseStale:
				return "", fmt.Errorf("%w: the FUSE helper serving %s on %s has exited while %s still uses it; unstage the volume%s",
					ErrStale, s, mnt, dev, f.logTail(logFile, s.Key))
			case err == nil && st == fuseHung:
				return "", fmt.Errorf("the FUSE helper serving %s on %s does not answer: %w", s, mnt, context.DeadlineExceeded)
			}
		}
		return dev, err
	}
	mnt, file, _ := f.paths(s)
	st, err := f.state(mnt, file)
	if err != nil {
		return "", err
	}
	if st == fuseStale || st == fuseHung {
		// Nothing uses the broken mount (Find found no loop device): clear
		// it, and end a hung helper, which still holds the image open.
		pid := f.helperPID(mnt)
		if err := f.umount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return "", fmt.Errorf("clearing the stale FUSE mount %s: %w", mnt, err)
		}
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		st = fuseNotMounted
	}
	if st == fuseNotMounted {
		if err := f.startHelper(ctx, s); err != nil {
			return "", err
		}
	}
	dev, err := f.attach(ctx, s, file)
	if err != nil {
		if uerr := f.stopHelper(ctx, s); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return "", err
	}
	return dev, nil
}

// startHelper starts the helper that mounts the image and waits until it
// serves: the helper reports once it has opened the image and mounted.
func (f *Fuse) startHelper(ctx context.Context, s Spec) error {
	opts, err := rbdfuse.ParseOptions(s.Options)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	mnt, file, logFile := f.paths(s)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", mnt, err)
	}
	cfg := rbdfuse.Config{Monitors: s.Monitors, UserID: s.UserID, CephConf: cephConf(f.Conf), Pool: s.Pool,
		Namespace: s.Namespace, Image: s.Image, ReadOnly: s.ReadOnly, Options: opts, MountPoint: mnt}
	if s.CrushLocation != nil {
		cfg.CrushLocation = topology.LibradosCrushLocation(s.CrushLocation)
	}
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		f.cleanupMount(mnt)
		return fmt.Errorf("creating the helper's log: %w", err)
	}
	_, err = f.Starter.Start(ctx, keyexec.Command{Path: f.Helper, Args: append([]string{rbdfuse.HelperCommand}, cfg.Args()...),
		Key: s.Key, Log: logf, Timeout: f.timeout(), Daemon: true})
	_ = logf.Close() // the helper has its own descriptor of it
	if err != nil {
		err = f.startError(s, err, logFile) // reads the log before it goes
		f.cleanupMount(mnt)
		return err
	}
	// The helper serves: the file must be there.
	if err := statTimeout(file); err != nil {
		serr := fmt.Errorf("the FUSE helper for %s serves, but %s: %w%s", s, file, err, f.logTail(logFile, s.Key))
		if uerr := f.stopHelper(ctx, s); uerr != nil {
			serr = errors.Join(serr, uerr)
		}
		return serr
	}
	return nil
}

// startError tells why the helper did not start, with the sentinel that
// gives its gRPC code.
func (f *Fuse) startError(s Spec, err error, logFile string) error {
	var se *keyexec.StartError
	if !errors.As(err, &se) {
		return fmt.Errorf("starting the FUSE helper for %s: %w%s", s, err, f.logTail(logFile, s.Key))
	}
	cause := rbdfuse.FailureFromReport(se.Report)
	switch {
	case errors.Is(cause, rbdfuse.ErrNotFound):
		return fmt.Errorf("%w: %s: %w", ErrImageNotFound, s, cause)
	case errors.Is(cause, rbdfuse.ErrPermission):
		return fmt.Errorf("%w: client.%s on %s: %w", ErrPermission, s.UserID, s, cause)
	case errors.Is(cause, rbdfuse.ErrTimedOut):
		return fmt.Errorf("the FUSE helper for %s: %w: %w", s, cause, context.DeadlineExceeded)
	case errors.Is(cause, rbdfuse.ErrBadOption):
		return fmt.Errorf("%w: %w", ErrInvalidOption, cause)
	}
	return fmt.Errorf("the FUSE helper for %s: %w%s", s, se, f.logTail(logFile, s.Key))
}

// cleanupMount removes the mount point and log left by a failed start.
func (f *Fuse) cleanupMount(mnt string) {
	if notMnt, err := f.Mounter.IsLikelyNotMountPoint(mnt); err != nil || !notMnt {
		_ = f.umount(mnt, unix.MNT_DETACH)
	}
	_ = os.Remove(mnt)
	_ = os.Remove(mnt + ".log")
}

// logTail returns the end of the helper's log for an error message.
func (f *Fuse) logTail(logFile, secret string) string {
	data, err := os.ReadFile(logFile)
	if err != nil || len(data) == 0 {
		return ""
	}
	return " (log " + logFile + ": " + keyexec.LastLines(keyexec.Redact(strings.TrimSpace(string(data)), secret), 3) + ")"
}

// attach gives file a loop device. Direct I/O keeps the loop device from
// caching data a second time in front of the helper (and librbd).
func (f *Fuse) attach(ctx context.Context, s Spec, file string) (string, error) {
	args := []string{"--find", "--show", "--direct-io=on"}
	if s.ReadOnly {
		args = append(args, "--read-only")
	}
	res, err := f.Runner.Run(ctx, keyexec.Command{Path: "losetup", Args: append(args, file), Timeout: f.timeout()})
	if err != nil {
		return "", fmt.Errorf("attaching a loop device to %s: %w", s, err)
	}
	dev := lastLine(res.Stdout)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("losetup printed %q, not a loop device", dev)
	}
	return dev, nil
}

// Find implements Mapper: the loop device whose backing file is the
// image's file in our mount point.
func (f *Fuse) Find(_ context.Context, s Spec) (string, error) {
	_, file, _ := f.paths(s)
	loops, err := loopsBackedBy(f.Sysfs, f.Dev, file)
	if err != nil || len(loops) == 0 {
		return "", err
	}
	return loops[0], nil
}

// Unmap implements Mapper: detach the loop device, then unmount the
// helper's mount and wait for the helper to exit (it flushes and closes the
// image on the way).
func (f *Fuse) Unmap(ctx context.Context, s Spec, opts string) error {
	if o := splitOptions(opts); len(o) > 0 {
		return fmt.Errorf("%w: the rbd-fuse mapper takes no unmap options (got %q)", ErrInvalidOption, opts)
	}
	_, file, _ := f.paths(s)
	loops, err := loopsBackedBy(f.Sysfs, f.Dev, file)
	if err != nil {
		return err
	}
	for _, dev := range loops {
		busy, err := f.Busy(dev)
		if err != nil {
			return err
		}
		if busy {
			return fmt.Errorf("%w: %s (%s) is mounted or held open", ErrBusy, dev, s)
		}
		if _, err := f.Runner.Run(ctx, keyexec.Command{Path: "losetup", Args: []string{"--detach", dev}, Timeout: f.timeout()}); err != nil {
			return fmt.Errorf("detaching %s (%s): %w", dev, s, err)
		}
	}
	if len(loops) > 0 {
		// The kernel defers the detach while someone has the device open.
		err := poll(ctx, 10*time.Second, 50*time.Millisecond, "loop detach of "+s.String(), func() (bool, error) {
			left, err := loopsBackedBy(f.Sysfs, f.Dev, file)
			return len(left) == 0, err
		})
		if isTimeout(err) {
			return fmt.Errorf("%w: %v is still open by a process; it detaches when closed", ErrBusy, loops)
		}
		if err != nil {
			return err
		}
	}
	return f.stopHelper(ctx, s)
}

// stopHelper unmounts the helper's mount of s, waits for the helper to
// exit (it flushes and closes the image on the way) and removes the mount
// point and the log.
func (f *Fuse) stopHelper(ctx context.Context, s Spec) error {
	mnt, file, logFile := f.paths(s)
	st, err := f.state(mnt, file)
	if err != nil {
		return err
	}
	if st != fuseNotMounted {
		pid := f.helperPID(mnt)
		flags := 0
		if st == fuseStale || st == fuseHung {
			flags = unix.MNT_DETACH
		}
		if err := f.umount(mnt, flags); err != nil && !errors.Is(err, unix.EINVAL) {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("%w: the FUSE mount %s of %s", ErrBusy, mnt, s)
			}
			return fmt.Errorf("unmounting the FUSE mount %s: %w", mnt, err)
		}
		if pid > 0 {
			err := poll(ctx, f.timeout(), 50*time.Millisecond, "the FUSE helper to exit", func() (bool, error) {
				return !f.alive(pid), nil
			})
			if err != nil {
				return fmt.Errorf("the FUSE helper (pid %d) serving %s: %w%s", pid, s, err, f.logTail(logFile, s.Key))
			}
		}
	}
	if err := os.Remove(mnt); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", mnt, err)
	}
	_ = os.Remove(logFile)
	return nil
}

// helperPID finds the helper serving mnt, 0 when there is none. It is
// known by its arguments: the helper mode first, the mount point last.
func (f *Fuse) helperPID(mnt string) int {
	entries, err := os.ReadDir(f.Proc)
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(f.Proc, e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(argv) > 2 && argv[1] == rbdfuse.HelperCommand && argv[len(argv)-1] == mnt {
			return pid
		}
	}
	return 0
}

// alive reports whether pid runs (a zombie has finished its work).
func (f *Fuse) alive(pid int) bool {
	data, err := os.ReadFile(filepath.Join(f.Proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// Refresh implements Mapper: stat the file, which makes the kernel ask the
// helper for the image's size (the loop device reads the size the kernel
// has), then tell the loop device to take it.
func (f *Fuse) Refresh(ctx context.Context, s Spec, device string) error {
	_, file, _ := f.paths(s)
	if err := statTimeout(file); err != nil {
		return fmt.Errorf("the FUSE file of %s: %w", s, err)
	}
	if _, err := f.Runner.Run(ctx, keyexec.Command{Path: "losetup", Args: []string{"--set-capacity", device}, Timeout: f.timeout()}); err != nil {
		return fmt.Errorf("updating the size of %s: %w", device, err)
	}
	return nil
}

func (f *Fuse) umount(target string, flags int) error {
	if f.unmount != nil {
		return f.unmount(target, flags)
	}
	return unix.Unmount(target, flags)
}

func (f *Fuse) timeout() time.Duration {
	if f.Timeout <= 0 {
		return 60 * time.Second
	}
	return f.Timeout
}
