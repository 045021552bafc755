package rbdfuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/keyexec"
)

// connectTimeout bounds reaching the monitors and authenticating, so that
// an unreachable cluster is reported before the starter gives up (60 s).
const connectTimeout = 30 * time.Second

// Main runs the helper with the arguments that follow HelperCommand and
// returns its exit status. Standard error is its log.
func Main(args []string) int {
	logger := log.New(os.Stderr, HelperCommand+": ", log.LstdFlags|log.Lmicroseconds)
	report := os.NewFile(keyexec.ReportFD, "report")
	// The key first, so that descriptor 3 is closed whatever happens next.
	key, keyErr := readKey(os.NewFile(keyexec.KeyFD, "key"))
	cfg, err := ParseArgs(args)
	if err == nil {
		err = keyErr
	}
	if err != nil {
		return failStart(report, logger, err)
	}
	logger.SetPrefix(HelperCommand + " " + cfg.Spec() + ": ")

	img, closeImage, err := openImage(cfg, key)
	if err != nil {
		return failStart(report, logger, err)
	}
	file := newImageFile(img, cfg.ReadOnly, logger)
	server, err := mount(cfg, file, logger)
	if err != nil {
		if cerr := file.close(closeImage); cerr != nil {
			logger.Printf("closing the image: %v", cerr)
		}
		return failStart(report, logger, fmt.Errorf("mounting on %s: %w", cfg.MountPoint, err))
	}
	unmountOnSignal(server, logger)
	if _, err := io.WriteString(report, keyexec.Ready); err != nil {
		logger.Printf("reporting ready: %v", err)
	}
	if err := report.Close(); err != nil {
		logger.Printf("closing the report: %v", err)
	}
	logger.Printf("serving on %s (pid %d, read-only %v, %s)", cfg.MountPoint, os.Getpid(), cfg.ReadOnly, cfg.Options)

	// Returns once the mount is gone (unmounted, or the kernel aborted the
	// connection) and every request has been answered.
	server.Wait()
	if err := file.close(closeImage); err != nil {
		logger.Printf("unmounted; flushing and closing the image: %v", err)
		return 1
	}
	logger.Printf("unmounted; image flushed and closed")
	return 0
}

// failStart reports err to the starter and logs it.
func failStart(report *os.File, logger *log.Logger, err error) int {
	logger.Printf("cannot serve: %v", err)
	_, _ = io.WriteString(report, failureReport(err))
	_ = report.Close() // the starter sees the report or the exit either way
	return 1
}

// readKey reads the key and closes its descriptor, so that no descriptor
// of this long-lived process leads to the key.
func readKey(f *os.File) (string, error) {
	defer func() { _ = f.Close() }() // only read from; nothing to lose
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("reading the key on descriptor %d: %w", keyexec.KeyFD, err)
	}
	key := strings.TrimSpace(string(data))
	if key == "" {
		return "", fmt.Errorf("no key on descriptor %d", keyexec.KeyFD)
	}
	return key, nil
}

// openImage connects as cfg.UserID and opens the image, read-only when
// asked. closeImage closes the image and the connection.
func openImage(cfg Config, key string) (img *rbd.Image, closeImage func() error, err error) {
	conn, err := rados.NewConnWithUser(cfg.UserID)
	if err != nil {
		return nil, nil, fmt.Errorf("creating a cluster connection: %w", err)
	}
	if cfg.CephConf != "" {
		if err := conn.ReadConfigFile(cfg.CephConf); err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", cfg.CephConf, err)
		}
	}
	for _, kv := range [][2]string{
		{"mon_host", strings.Join(cfg.Monitors, ",")},
		{"keyring", "/dev/null"}, // only our key, never a keyring of the node
		{"key", key},
		// No admin socket: it would answer "config show", key included.
		{"admin_socket", ""},
		// A partial discard must zero its range, as a punched hole reads.
		{"rbd_skip_partial_discard", "false"},
		{"client_mount_timeout", fmt.Sprint(int(connectTimeout.Seconds()))},
	} {
		if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
			return nil, nil, fmt.Errorf("setting %s: %w", kv[0], err)
		}
	}
	if cfg.CrushLocation != "" {
		for _, kv := range [][2]string{{"crush_location", cfg.CrushLocation}, {"rbd_read_from_replica_policy", "localize"}} {
			if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
				return nil, nil, fmt.Errorf("setting %s: %w", kv[0], err)
			}
		}
	}
	if err := conn.Connect(); err != nil {
		hint := ""
		if csierr.IsErrno(err, syscall.ETIMEDOUT) {
			hint = " (the monitors did not answer in time, or kept refusing the key)"
		}
		return nil, nil, fmt.Errorf("connecting to %s as client.%s: %w%s", strings.Join(cfg.Monitors, ","), cfg.UserID, err, hint)
	}
	ioctx, err := conn.OpenIOContext(cfg.Pool)
	if err != nil {
		conn.Shutdown()
		if errors.Is(err, rados.ErrNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, nil, fmt.Errorf("opening pool %s: %w", cfg.Pool, err)
	}
	ioctx.SetNamespace(cfg.Namespace)
	if cfg.ReadOnly {
		img, err = rbd.OpenImageReadOnly(ioctx, cfg.Image, rbd.NoSnapshot)
	} else {
		img, err = rbd.OpenImage(ioctx, cfg.Image, rbd.NoSnapshot)
	}
	if err != nil {
		ioctx.Destroy()
		conn.Shutdown()
		if errors.Is(err, rbd.ErrNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, nil, fmt.Errorf("opening image %s: %w", cfg.Spec(), err)
	}
	return img, func() error {
		err := img.Close()
		ioctx.Destroy()
		conn.Shutdown()
		return err
	}, nil
}

// mount serves file as cfg.Image in cfg.MountPoint. Nothing is cached in
// the kernel: attributes are asked for each time (the size follows the
// image) and file data bypasses the page cache (see imageFile.Open).
func mount(cfg Config, file *imageFile, logger *log.Logger) (*fuse.Server, error) {
	noCache := time.Duration(0)
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC)
	if cfg.ReadOnly {
		flags |= syscall.MS_RDONLY
	}
	root := &imageDir{}
	return fs.Mount(cfg.MountPoint, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: cfg.Spec(),
			Name:   strings.TrimPrefix(FsType, "fuse."),
			// mount(2) itself, as root: no fusermount, nothing in /etc/mtab.
			DirectMountStrict: true,
			DirectMountFlags:  flags,
			MaxWrite:          cfg.Options.MaxWrite,
			MaxBackground:     cfg.Options.MaxBackground,
			// The loop device submits direct I/O asynchronously; let the
			// kernel keep several such requests in flight.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			DisableXAttrs:     true,
			Debug:             cfg.Options.Debug,
			Logger:            logger,
		},
		EntryTimeout:    &noCache,
		AttrTimeout:     &noCache,
		NegativeTimeout: &noCache,
		Logger:          logger,
		OnAdd: func(ctx context.Context) {
			child := root.NewPersistentInode(ctx, file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
			root.AddChild(cfg.Image, child, false)
		},
	})
}

// imageDir is the mount's root: it holds the image's file and nothing
// else can be made, renamed or removed there. (go-fuse removes a child
// whose directory does not implement Unlink, so it must refuse.)
type imageDir struct{ fs.Inode }

var (
	_ fs.NodeUnlinker = (*imageDir)(nil)
	_ fs.NodeRmdirer  = (*imageDir)(nil)
)

func (*imageDir) Unlink(context.Context, string) syscall.Errno { return syscall.EPERM }
func (*imageDir) Rmdir(context.Context, string) syscall.Errno  { return syscall.EPERM }

// unmountOnSignal unmounts on SIGTERM or SIGINT, which succeeds only when
// nothing (no loop device) uses the file; otherwise the helper serves on.
func unmountOnSignal(server *fuse.Server, logger *log.Logger) {
	signal.Ignore(syscall.SIGHUP)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for s := range sigs {
			logger.Printf("%v: unmounting", s)
			if err := server.Unmount(); err != nil {
				logger.Printf("not unmounted, serving on: %v", err)
			}
		}
	}()
}
