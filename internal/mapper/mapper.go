// Package mapper attaches RBD images to this node as block devices.
//
// Three implementations sit behind one interface: the kernel RBD client
// (krbd, /dev/rbdN), rbd-nbd (/dev/nbdN) and, for kernels that have
// neither the rbd nor the nbd module, our own FUSE helper (package
// rbdfuse) plus a loop device (/dev/loopN), the kind named "rbd-fuse".
// Every implementation is idempotent, finds what an earlier process mapped
// (the node plugin may restart between stage and unstage), bounds every step
// with a timeout, and hands the cephx key over without writing it to a file.
package mapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
)

// Kinds of mapper, as named by the `mounter` volume attribute.
const (
	KindKRBD = "krbd"
	KindNBD  = "rbd-nbd"
	KindFuse = "rbd-fuse"
)

// Sentinel errors. Each wraps the csierr sentinel that gives its gRPC code.
var (
	// ErrBusy: the device is still open or mounted; nothing was unmapped.
	ErrBusy = fmt.Errorf("device is %w", csierr.ErrBusy)
	// ErrUnsupported: this node cannot map with the chosen mapper (for
	// example the kernel has no rbd or nbd module).
	ErrUnsupported = fmt.Errorf("mapper unavailable on this node: %w", csierr.ErrPrecondition)
	// ErrImageNotFound: the pool or image does not exist, or the user may
	// not see it.
	ErrImageNotFound = fmt.Errorf("image %w", csierr.ErrNotFound)
	// ErrStale: a mapping exists whose user-space daemon has died; it must
	// be unstaged before the image can be mapped again.
	ErrStale = fmt.Errorf("stale mapping: %w", csierr.ErrPrecondition)
	// ErrInvalidOption: a map or unmap option this mapper does not accept.
	ErrInvalidOption = fmt.Errorf("map option: %w", csierr.ErrInvalid)
	// ErrPermission: the cluster refused the user's key, or its caps do not
	// reach the image (the errno gives PermissionDenied).
	ErrPermission = fmt.Errorf("cephx: %w", syscall.EACCES)
)

// Spec names an image and how to reach it. Key is held in memory only:
// no implementation logs it, stores it or puts it in an error.
type Spec struct {
	Monitors  []string
	Pool      string
	Namespace string
	Image     string
	UserID    string // cephx user without "client."
	Key       string
	// Options are this mapper's map options (comma separated).
	Options  string
	ReadOnly bool
	// CrushLocation is where the node sits in the CRUSH map (bucket type to
	// bucket) when reads should go to the nearest OSD; nil otherwise.
	CrushLocation map[string]string
}

// String names the image as pool[/namespace]/image, the image spec of the
// Ceph tools; it never shows the key. The names are joined as they are, not
// as a path: path.Join would clean "./img" to "img" (the default pool) and
// "rbd/../img" to "img", another image.
func (s Spec) String() string {
	if s.Namespace != "" {
		return s.Pool + "/" + s.Namespace + "/" + s.Image
	}
	return s.Pool + "/" + s.Image
}

// GoString keeps %#v from printing the key.
func (s Spec) GoString() string { return "mapper.Spec{" + s.String() + "}" }

// validate refuses a Spec that could make a helper or the kernel act on
// more than the image: names that split an image spec, a krbd request or
// an option list, a key that is not base64 text, a user ID that is not a
// plain token, and options that request.SafeOption refuses. needCreds asks
// for monitors and credentials.
func (s Spec) validate(needCreds bool) error {
	if s.Pool == "" || s.Image == "" {
		return fmt.Errorf("%w: pool and image are required", ErrInvalidOption)
	}
	for _, v := range []string{s.Pool, s.Namespace, s.Image} {
		if strings.ContainsAny(v, "/@,") || strings.HasPrefix(v, "-") || strings.ContainsFunc(v, isSpaceOrControl) {
			return fmt.Errorf("%w: %q may not contain spaces, control characters, '/', '@' or ',', nor start with '-'", ErrInvalidOption, v)
		}
		// The rbd-fuse mapper makes a path of the image name.
		if v == "." || v == ".." {
			return fmt.Errorf("%w: %q is not a name", ErrInvalidOption, v)
		}
	}
	if needCreds && (len(s.Monitors) == 0 || s.UserID == "" || s.Key == "") {
		return fmt.Errorf("%w: monitors, user and key are required to map", ErrInvalidOption)
	}
	// krbd may put the key into its request: base64 text only (Go's
	// decoder skips '\r' and '\n', which would split the request).
	if s.Key != "" && !request.Base64Text(s.Key) {
		return fmt.Errorf("%w: the key is not base64 text", ErrInvalidOption)
	}
	if s.UserID != "" && !request.SafeToken(s.UserID) {
		return fmt.Errorf("%w: user %q may hold only letters, digits and . _ - (not first)", ErrInvalidOption, s.UserID)
	}
	if err := request.SafeOptionList("options", s.Options); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return nil
}

// isSpaceOrControl reports the characters that end a token of a krbd
// request or a command line.
func isSpaceOrControl(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// Mapper attaches images as block devices.
type Mapper interface {
	// Map attaches the image and returns its device path. An image that is
	// already attached returns the device it has.
	Map(ctx context.Context, s Spec) (device string, err error)
	// Unmap detaches the image; an image that is not attached is fine.
	// opts are the unmap options. A device still in use gives ErrBusy.
	Unmap(ctx context.Context, s Spec, opts string) error
	// Refresh makes the device follow a resize of the image.
	Refresh(ctx context.Context, s Spec, device string) error
}

// KindOf returns the mapper kind for a `mounter` volume attribute.
func KindOf(mounter string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(mounter)) {
	case "", "rbd", "krbd":
		return KindKRBD, nil
	case "rbd-nbd", "nbd":
		return KindNBD, nil
	case "rbd-fuse", "fuse":
		return KindFuse, nil
	}
	return "", fmt.Errorf("%w: mounter %q is not krbd, rbd-nbd or rbd-fuse", ErrInvalidOption, mounter)
}

// OptionsFor picks one mapper's options out of a mapOptions or unmapOptions
// value. The value is a ';'-separated list of "kind:options" items, kind
// being krbd, nbd or fuse; an item without a kind applies to krbd, as in
// ceph-csi. Every item's options must pass request.SafeOptionList.
func OptionsFor(value, kind string) (string, error) {
	var out string
	for _, item := range strings.Split(value, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		prefix, opts, hasPrefix := strings.Cut(item, ":")
		if !hasPrefix {
			prefix, opts = "krbd", item
		}
		if strings.Contains(opts, ":") {
			return "", fmt.Errorf("%w: badly formed item %q", ErrInvalidOption, item)
		}
		var itemKind string
		switch strings.ToLower(strings.TrimSpace(prefix)) {
		case "krbd":
			itemKind = KindKRBD
		case "nbd", "rbd-nbd":
			itemKind = KindNBD
		case "fuse", "rbd-fuse":
			itemKind = KindFuse
		default:
			return "", fmt.Errorf("%w: unknown mapper %q in %q", ErrInvalidOption, prefix, item)
		}
		if err := request.SafeOptionList(prefix, opts); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
		if itemKind == kind {
			out = strings.TrimSpace(opts)
		}
	}
	return out, nil
}

// splitOptions splits "a,b=c" into its items, dropping empty ones.
func splitOptions(opts string) []string {
	var out []string
	for _, o := range strings.Split(opts, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// poll calls check until it reports done, returns an error, or the timeout
// or ctx ends; what names the awaited condition in the timeout error.
func poll(ctx context.Context, timeout, every time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %w", timeout, what, context.DeadlineExceeded)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(every):
		}
	}
}

// cephConf returns the ceph.conf a helper program reads: override when
// set, else /etc/ceph/ceph.conf when the node has one, else none (the
// monitors are always given on the command line).
func cephConf(override string) string {
	if override != "" {
		return override
	}
	if _, err := os.Stat("/etc/ceph/ceph.conf"); err == nil {
		return "/etc/ceph/ceph.conf"
	}
	return "/dev/null"
}

// isTimeout reports whether err is a timeout of ours or of ctx.
func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
