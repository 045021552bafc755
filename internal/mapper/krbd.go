package mapper

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/topology"
)

// KernelKeys lends a cephx key to the kernel for the duration of one map
// request, so that the request names the key instead of carrying it.
type KernelKeys interface {
	// Add stores payload (the decoded key) as a "ceph" key called desc, in
	// a keyring only the calling OS thread searches, and returns its serial.
	Add(desc string, payload []byte) (serial int, err error)
	// Remove revokes the key.
	Remove(serial int) error
}

// ThreadKeyring keeps keys in the calling thread's keyring. The krbd
// mapper calls it from a locked OS thread that exits afterwards, so the
// keyring dies with the thread.
type ThreadKeyring struct{}

// Add implements KernelKeys.
func (ThreadKeyring) Add(desc string, payload []byte) (int, error) {
	return unix.AddKey("ceph", desc, payload, unix.KEY_SPEC_THREAD_KEYRING)
}

// Remove implements KernelKeys. Invalidating (unlike revoking) makes the
// kernel drop the key and its payload at once, not after the keyring
// garbage collector's delay (5 minutes by default); kernels before 3.5 only
// revoke.
func (ThreadKeyring) Remove(serial int) error {
	_, err := unix.KeyctlInt(unix.KEYCTL_INVALIDATE, serial, 0, 0, 0)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		_, err = unix.KeyctlInt(unix.KEYCTL_REVOKE, serial, 0, 0, 0)
	}
	return err
}

// KRBD maps with the kernel RBD client by writing requests to
// /sys/bus/rbd. The key goes to the kernel's keyring for the one request
// (falling back to the request line when the keyring is unavailable, as in
// a seccomp-restricted container); no keyring file is written.
type KRBD struct {
	// Sysfs and Dev are the roots of /sys and /dev.
	Sysfs, Dev string
	// Write writes one request to a sysfs file.
	Write func(path string, data []byte) error
	// Keys lends keys to the kernel; nil passes them in the request.
	Keys KernelKeys
	// Resolve turns a monitor host name into addresses (the kernel needs
	// addresses).
	Resolve func(ctx context.Context, host string) ([]string, error)
	Runner  keyexec.Runner
	Busy    BusyFunc
	// Timeout bounds one map or unmap request.
	Timeout time.Duration
}

// NewKRBD returns the krbd mapper for this machine.
func NewKRBD(r keyexec.Runner) *KRBD {
	return &KRBD{Sysfs: "/sys", Dev: "/dev", Write: writeSysfs, Keys: ThreadKeyring{},
		Resolve: net.DefaultResolver.LookupHost, Runner: r, Busy: DeviceBusy, Timeout: 90 * time.Second}
}

func writeSysfs(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (k *KRBD) bus(name string) string { return filepath.Join(k.Sysfs, "bus", "rbd", name) }

// control returns the add or remove file: the single-major variant when
// the module offers it (plain add then fails with EINVAL).
func (k *KRBD) control(op string) string {
	single := k.bus(op + "_single_major")
	if _, err := os.Stat(single); err == nil {
		return single
	}
	return k.bus(op)
}

// ensureModule loads the rbd module when /sys/bus/rbd is missing.
func (k *KRBD) ensureModule(ctx context.Context) error {
	if _, err := os.Stat(k.bus("")); err == nil {
		return nil
	}
	_, merr := k.Runner.Run(ctx, keyexec.Command{Path: "modprobe", Args: []string{"rbd"}, Timeout: 30 * time.Second})
	if _, err := os.Stat(k.bus("")); err == nil {
		return nil
	}
	if merr == nil {
		merr = errors.New("no /sys/bus/rbd after loading it")
	}
	return fmt.Errorf("%w: the kernel has no rbd module (%w); use mounter rbd-nbd or rbd-fuse", ErrUnsupported, merr)
}

// Map implements Mapper.
func (k *KRBD) Map(ctx context.Context, s Spec) (string, error) {
	if err := s.validate(true); err != nil {
		return "", err
	}
	if dev, err := k.Find(ctx, s); err != nil || dev != "" {
		return dev, err
	}
	if err := k.ensureModule(ctx); err != nil {
		return "", err
	}
	mons, err := k.monitorAddrs(ctx, s.Monitors)
	if err != nil {
		return "", err
	}
	userOpts := splitOptions(s.Options)
	for _, o := range userOpts {
		name, _, _ := strings.Cut(o, "=")
		// Compared as the kernel might come to: any case, '-' for '_'.
		switch strings.ToLower(strings.ReplaceAll(name, "-", "_")) {
		case "name", "secret", "key", "_pool_ns":
			return "", fmt.Errorf("%w: %q is set by the driver", ErrInvalidOption, name)
		}
	}
	payload, err := base64.StdEncoding.DecodeString(s.Key)
	if err != nil {
		return "", fmt.Errorf("%w: the key is not base64", ErrInvalidOption)
	}
	build := func(auth string) []byte {
		opts := []string{"name=" + s.UserID, auth}
		if s.Namespace != "" {
			opts = append(opts, "_pool_ns="+s.Namespace)
		}
		opts = append(opts, userOpts...)
		if s.CrushLocation != nil {
			opts = append(opts, "read_from_replica=localize", "crush_location="+topology.KernelCrushLocation(s.CrushLocation))
		}
		if s.ReadOnly {
			opts = append(opts, "ro")
		}
		return []byte(fmt.Sprintf("%s %s %s %s -", mons, strings.Join(opts, ","), s.Pool, s.Image))
	}
	keyName := "client." + s.UserID
	err = k.inThread(ctx, func() error {
		if k.Keys != nil {
			serial, kerr := k.Keys.Add(keyName, payload)
			switch {
			case kerr == nil:
				defer k.Keys.Remove(serial) //nolint:errcheck // the thread and its keyring end right after
				return k.Write(k.control("add"), build("key="+keyName))
			case !keyringUnavailable(kerr):
				// The kernel parsed the key and refused it (EINVAL: a key
				// format it does not know, as Tentacle's AES256K keys
				// before Linux 7.0); in the request line it would fail alike.
				return fmt.Errorf("%w: the kernel refused the key of %s (%w); an older kernel may not know its format: use mounter rbd-nbd or rbd-fuse",
					ErrUnsupported, keyName, kerr)
			}
			klog.V(2).InfoS("kernel keyring unavailable; passing the key in the map request", "reason", kerr)
		}
		return k.Write(k.control("add"), build("secret="+s.Key))
	})
	if err != nil {
		// A write error names the sysfs file and the errno, never the data.
		return "", k.mapError(s, err)
	}
	var dev string
	err = poll(ctx, k.timeout(), 50*time.Millisecond, "the rbd device of "+s.String(), func() (bool, error) {
		id, err := k.findID(s)
		if err != nil || id == "" {
			return false, err
		}
		dev = filepath.Join(k.Dev, "rbd"+id)
		_, err = os.Stat(dev)
		return err == nil, nil
	})
	return dev, err
}

// mapError explains a failed add request; err carries the kernel's errno.
func (k *KRBD) mapError(s Spec, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: krbd cannot find %s (or client.%s may not read it)", ErrImageNotFound, s, s.UserID)
	case isTimeout(err):
		return fmt.Errorf("krbd map of %s: %w", s, err)
	}
	return fmt.Errorf("krbd map of %s (see the kernel log): %w", s, err)
}

// keyringUnavailable reports an add_key failure that says the keyring
// cannot be used at all here (a seccomp profile or an old kernel), not that
// the key was refused.
func keyringUnavailable(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}

// inThread runs f on a locked OS thread that is discarded afterwards (so a
// thread keyring made by f goes with it), giving up after the timeout; a
// kernel request that never returns then leaves only that thread behind.
func (k *KRBD) inThread(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		done <- f()
	}()
	timer := time.NewTimer(k.timeout())
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("krbd request did not return within %s: %w", k.timeout(), context.DeadlineExceeded)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k *KRBD) timeout() time.Duration {
	if k.Timeout <= 0 {
		return 90 * time.Second
	}
	return k.Timeout
}

// monitorAddrs turns host:port monitors into the comma-separated address
// list the kernel wants.
func (k *KRBD) monitorAddrs(ctx context.Context, mons []string) (string, error) {
	var out []string
	for _, m := range mons {
		host, port, err := net.SplitHostPort(m)
		if err != nil {
			host, port = strings.Trim(m, "[]"), ""
		}
		addrs := []string{host}
		if net.ParseIP(host) == nil {
			if addrs, err = k.Resolve(ctx, host); err != nil || len(addrs) == 0 {
				return "", fmt.Errorf("resolving monitor %q: %w", host, err)
			}
		}
		for _, a := range addrs {
			if port != "" {
				a = net.JoinHostPort(a, port)
			} else if strings.Contains(a, ":") {
				a = "[" + a + "]"
			}
			out = append(out, a)
		}
	}
	return strings.Join(out, ","), nil
}

// findID returns the kernel device ID mapping the head of s's image.
func (k *KRBD) findID(s Spec) (string, error) {
	root := k.bus("devices")
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("listing rbd devices: %w", err)
	}
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		attrs := map[string]string{}
		for _, a := range []string{"pool", "pool_ns", "name", "current_snap"} {
			v, _, err := readAttr(filepath.Join(dir, a))
			if err != nil {
				return "", err
			}
			attrs[a] = v
		}
		if attrs["pool"] == s.Pool && attrs["pool_ns"] == s.Namespace && attrs["name"] == s.Image && attrs["current_snap"] == "-" {
			return e.Name(), nil
		}
	}
	return "", nil
}

// Find implements Mapper.
func (k *KRBD) Find(_ context.Context, s Spec) (string, error) {
	id, err := k.findID(s)
	if err != nil || id == "" {
		return "", err
	}
	return filepath.Join(k.Dev, "rbd"+id), nil
}

// Unmap implements Mapper. The only unmap option is "force" (unmap even
// while the device is open; I/O to it fails afterwards).
func (k *KRBD) Unmap(ctx context.Context, s Spec, opts string) error {
	force := false
	for _, o := range splitOptions(opts) {
		if o != "force" {
			return fmt.Errorf("%w: krbd unmap option %q is not supported (only force)", ErrInvalidOption, o)
		}
		force = true
	}
	id, err := k.findID(s)
	if err != nil || id == "" {
		return err
	}
	dev := filepath.Join(k.Dev, "rbd"+id)
	if !force {
		busy, err := k.Busy(dev)
		if err != nil {
			return err
		}
		if busy {
			return fmt.Errorf("%w: %s (%s) is mounted or held open", ErrBusy, dev, s)
		}
	}
	req := id
	if force {
		req += " force"
	}
	err = k.inThread(ctx, func() error { return k.Write(k.control("remove"), []byte(req)) })
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: %s (%s) is open", ErrBusy, dev, s)
	}
	return fmt.Errorf("krbd unmap of %s (%s): %w", dev, s, err)
}

// Refresh implements Mapper: the kernel follows resizes on its own; asking
// it to reread the header makes that immediate.
func (k *KRBD) Refresh(ctx context.Context, s Spec, device string) error {
	id := strings.TrimPrefix(filepath.Base(device), "rbd")
	if _, err := strconv.Atoi(id); err != nil {
		return fmt.Errorf("%s is not an rbd device", device)
	}
	return k.inThread(ctx, func() error {
		return k.Write(filepath.Join(k.bus("devices"), id, "refresh"), []byte("1"))
	})
}
