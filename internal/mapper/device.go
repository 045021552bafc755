package mapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// BusyFunc reports whether a block device is in use.
type BusyFunc func(device string) (bool, error)

// DeviceBusy reports whether device is mounted or held by another exclusive
// user (device-mapper, another mount): the kernel refuses an exclusive open
// then. A device that no longer exists is not busy.
func DeviceBusy(device string) (bool, error) {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		_ = unix.Close(fd) // opened read-only to probe; nothing to flush
		return false, nil
	case errors.Is(err, unix.EBUSY):
		return true, nil
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return false, nil
	}
	return false, fmt.Errorf("checking whether %s is in use: %w", device, err)
}

// readAttr reads a sysfs attribute without its trailing newline; a missing
// attribute reads as "" with ok false.
func readAttr(path string) (value string, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return strings.TrimRight(string(data), "\n"), true, nil
}

// loopsBackedBy lists the loop devices (as devRoot/loopN) whose backing file
// is file, in name order. A file whose dentry the kernel dropped shows with
// " (deleted)" appended and is still that file: a FUSE file does once its
// server has died and a lookup of it failed.
func loopsBackedBy(sysfs, devRoot, file string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(sysfs, "block"))
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		backing, ok, err := readAttr(filepath.Join(sysfs, "block", name, "loop", "backing_file"))
		if err != nil {
			return nil, err
		}
		dev := filepath.Join(devRoot, name)
		if ok && (backing == file || backing == file+" (deleted)" || sameFileElsewhere(dev, backing, file)) {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out, nil
}

// sameFileElsewhere reports whether the loop device dev, whose backing file
// the kernel shows as backing, is backed by file all the same. The kernel
// renders the path in the mount namespace the device was attached from: a
// device attached by an earlier node plugin process in another mount
// namespace and root (its FUSE helper outlived it) shows that root's path
// before ours, and would otherwise never be found, so never unstaged. Such
// a name counts only when it ends in file and the device's backing file is
// file itself (device and inode).
func sameFileElsewhere(dev, backing, file string) bool {
	if !strings.HasSuffix(backing, file) || backing == file {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return false
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	// Opened read-only for the ioctl alone: nothing to lose on close.
	defer func() { _ = unix.Close(fd) }()
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return false
	}
	return info.Device == st.Dev && info.Inode == st.Ino
}
