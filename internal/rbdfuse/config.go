// Package rbdfuse serves one RBD image as a file in a private FUSE mount,
// for the rbd-fuse mapper (a loop device over that file is the volume's
// block device; see docs/rbd-fuse-mapper.md).
//
// It runs as a hidden mode of the cephcsi binary (`cephcsi rbd-fuse-helper
// ...`), started by the mapper through keyexec.Exec.Start: a process of
// its own per image, in a session of its own, so that it outlives a restart
// of the node plugin. The helper reads the key from descriptor 3 and closes
// it, opens the image with go-ceph, mounts, reports keyexec.Ready on
// descriptor 4 (or why it cannot) and serves until it is unmounted; then it
// flushes and closes the image and exits.
//
// This file holds what both sides agree on: the command line and the
// start-up report.
package rbdfuse

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// HelperCommand, as the first argument of cephcsi, runs the helper.
const HelperCommand = "rbd-fuse-helper"

// FsType is the type of the helper's mounts in /proc/self/mountinfo.
const FsType = "fuse.cephcsi-rbd"

// ErrBadOption: a map option the helper does not know or a bad value.
var ErrBadOption = errors.New("not a map option of the rbd-fuse mapper")

// Options are the map options of the rbd-fuse mapper (`mapOptions:
// "fuse:..."`).
type Options struct {
	// Debug logs every FUSE request to the helper's log.
	Debug bool
	// MaxWrite is the largest read or write request, in bytes.
	MaxWrite int
	// MaxBackground bounds the asynchronous requests the kernel keeps in
	// flight (the loop device's direct I/O is asynchronous).
	MaxBackground int
}

// Defaults: 1 MiB requests (the kernel's largest) and enough background
// requests for several of them at once.
const (
	DefaultMaxWrite      = 1 << 20
	DefaultMaxBackground = 64
)

// ParseOptions parses comma-separated map options; "" gives the defaults.
// allow_root is accepted and ignored, as only root can use the mount
// anyway (older StorageClasses passed it to rbd-fuse).
func ParseOptions(s string) (Options, error) {
	o := Options{MaxWrite: DefaultMaxWrite, MaxBackground: DefaultMaxBackground}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, value, hasValue := strings.Cut(item, "=")
		number := func(lo, hi int) (int, error) {
			n, err := strconv.Atoi(value)
			if !hasValue || err != nil || n < lo || n > hi {
				return 0, fmt.Errorf("%q: %w (want %s=<%d..%d>)", item, ErrBadOption, name, lo, hi)
			}
			return n, nil
		}
		var err error
		switch name {
		case "debug":
			o.Debug = true
		case "allow_root":
		case "max_write", "max_read":
			o.MaxWrite, err = number(4096, 1<<20)
		case "max_background":
			o.MaxBackground, err = number(1, 1024)
		default:
			err = fmt.Errorf("%q: %w (known: debug, max_write=<bytes>, max_background=<n>)", item, ErrBadOption)
		}
		if err != nil {
			return Options{}, err
		}
	}
	return o, nil
}

// String gives the options back in the form ParseOptions reads.
func (o Options) String() string {
	items := []string{"max_write=" + strconv.Itoa(o.MaxWrite), "max_background=" + strconv.Itoa(o.MaxBackground)}
	if o.Debug {
		items = append(items, "debug")
	}
	return strings.Join(items, ",")
}

// Config is what one helper serves and how it reaches the cluster. The
// key is not part of it: it travels on descriptor 3.
type Config struct {
	Monitors  []string
	UserID    string // without "client."
	CephConf  string // read before the settings below; "" for none
	Pool      string
	Namespace string
	Image     string
	ReadOnly  bool
	Options   Options
	// CrushLocation ("type=name ...") makes reads go to the nearest OSD.
	CrushLocation string
	// MountPoint is an existing, empty directory.
	MountPoint string
}

// Spec names the image as pool[/namespace]/image.
func (c Config) Spec() string {
	if c.Namespace != "" {
		return c.Pool + "/" + c.Namespace + "/" + c.Image
	}
	return c.Pool + "/" + c.Image
}

// Args is the helper's command line after HelperCommand; the mount point
// comes last, so that the mapper can find the helper of a mount point.
func (c Config) Args() []string {
	args := []string{"--mon-host=" + strings.Join(c.Monitors, ","), "--id=" + c.UserID,
		"--pool=" + c.Pool, "--namespace=" + c.Namespace, "--image=" + c.Image, "-o", c.Options.String()}
	if c.CephConf != "" {
		args = append(args, "--conf="+c.CephConf)
	}
	if c.ReadOnly {
		args = append(args, "--read-only")
	}
	if c.CrushLocation != "" {
		args = append(args, "--crush-location="+c.CrushLocation)
	}
	return append(args, c.MountPoint)
}

// ParseArgs reads a command line made by Args.
func ParseArgs(args []string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet(HelperCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	mons := fs.String("mon-host", "", "monitors, comma separated")
	fs.StringVar(&c.UserID, "id", "", "cephx user without client.")
	fs.StringVar(&c.CephConf, "conf", "", "ceph.conf to read first")
	fs.StringVar(&c.Pool, "pool", "", "pool")
	fs.StringVar(&c.Namespace, "namespace", "", "RADOS namespace")
	fs.StringVar(&c.Image, "image", "", "image")
	fs.BoolVar(&c.ReadOnly, "read-only", false, "open the image read-only")
	fs.StringVar(&c.CrushLocation, "crush-location", "", "the node's CRUSH location; reads go to the nearest OSD")
	opts := fs.String("o", "", "map options")
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("%s: %w", HelperCommand, err)
	}
	if fs.NArg() != 1 {
		return Config{}, fmt.Errorf("%s: want exactly one mount point, got %q", HelperCommand, fs.Args())
	}
	c.MountPoint = fs.Arg(0)
	for _, m := range strings.Split(*mons, ",") {
		if m = strings.TrimSpace(m); m != "" {
			c.Monitors = append(c.Monitors, m)
		}
	}
	if len(c.Monitors) == 0 || c.UserID == "" || c.Pool == "" || c.Image == "" {
		return Config{}, fmt.Errorf("%s: --mon-host, --id, --pool and --image are required", HelperCommand)
	}
	o, err := ParseOptions(*opts)
	if err != nil {
		return Config{}, err
	}
	c.Options = o
	return c, nil
}
