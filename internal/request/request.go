// Package request checks what a CSI request carries, the same way for RBD
// and CephFS: volume capabilities and access modes, capacity ranges, the
// credentials in its secrets, the parameters both drivers share, and the
// digest that tells a repeated request from a different one.
//
// Every check returns a plain error of a csierr kind naming the field or
// parameter; the RPC edge turns it into a gRPC status.
package request

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
)

// Default name prefixes of the objects made for volumes and snapshots.
const (
	DefaultVolumePrefix   = "csi-vol-"
	DefaultSnapshotPrefix = "csi-snap-"
)

// Secret key pairs of the contract.
var (
	UserSecret  = [2]string{"userID", "userKey"}
	AdminSecret = [2]string{"adminID", "adminKey"}
)

// Credentials extracts credentials from secrets, taking the first pair
// present. Missing ones are InvalidArgument naming the expected keys; a
// user ID that could smuggle options into a helper's command line is
// refused.
func Credentials(secrets map[string]string, pairs ...[2]string) (cephconn.Credentials, error) {
	c, err := cephconn.FromSecrets(secrets, pairs...)
	if err != nil {
		return c, csierr.Errorf(csierr.ErrInvalid, "secrets: %v", err)
	}
	if !SafeToken(c.ID) {
		return c, csierr.Errorf(csierr.ErrInvalid, "secrets: the user ID may hold only letters, digits and . _ - (not first)")
	}
	if !Base64Text(c.Key) {
		return c, csierr.Errorf(csierr.ErrInvalid, "secrets: the key of %s is not a cephx key (base64 text)", c)
	}
	return c, nil
}

// Base64Text reports whether s is made of base64 characters only, as every
// cephx key is.
func Base64Text(s string) bool {
	for _, r := range s {
		if !alnum(r) && r != '+' && r != '/' && r != '=' {
			return false
		}
	}
	return s != ""
}

// alnum reports whether r is an ASCII letter or digit.
func alnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// SafeToken reports whether s is a non-empty run of letters, digits, '.',
// '_' and '-' that does not start with '-': safe as a cephx user ID or a
// name prefix inside any option string or command line.
func SafeToken(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := rune(s[i]); !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

const (
	// MiB is the allocation unit for volume sizes.
	MiB = int64(1) << 20
	// DefaultVolumeSize applies when a request carries no capacity range.
	DefaultVolumeSize = int64(1) << 30
	// MaxVolumeSize is the largest size handed out: the largest whole MiB
	// an int64 byte count holds.
	MaxVolumeSize = math.MaxInt64 / MiB * MiB
)

// RoundedSize returns the size to allocate for a capacity range: the
// required bytes (or the limit, or 1 GiB when both are absent) rounded up to
// whole MiB, which must not exceed the limit.
func RoundedSize(r *csi.CapacityRange) (int64, error) {
	req, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || limit < 0 {
		return 0, csierr.Field("capacity_range", "bytes must not be negative")
	}
	if limit > 0 && req > limit {
		return 0, csierr.Field("capacity_range", "required_bytes %d exceeds limit_bytes %d", req, limit)
	}
	if req > MaxVolumeSize {
		return 0, csierr.Errorf(csierr.ErrOutOfRange, "capacity_range: required_bytes %d exceeds the largest size %d", req, MaxVolumeSize)
	}
	size := req
	if size == 0 {
		size = DefaultVolumeSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	rounded := (size + MiB - 1) / MiB * MiB
	if limit > 0 && rounded > limit {
		// Rounding up would overshoot the limit: take the largest whole MiB
		// inside it, if that still satisfies the requirement.
		rounded = limit / MiB * MiB
		if rounded < req || rounded == 0 {
			return 0, csierr.Errorf(csierr.ErrOutOfRange, "capacity_range: no whole MiB size between %d and %d bytes", req, limit)
		}
	}
	return rounded, nil
}

// ExpandSize checks what every ControllerExpandVolume needs, a volume ID and
// a capacity range, and returns the new size, rounded as RoundedSize does.
func ExpandSize(req *csi.ControllerExpandVolumeRequest) (int64, error) {
	if req.GetVolumeId() == "" {
		return 0, csierr.Field("volume_id", "is required")
	}
	if req.GetCapacityRange() == nil {
		return 0, csierr.Field("capacity_range", "is required")
	}
	return RoundedSize(req.GetCapacityRange())
}

// Fits reports whether an existing volume of size have satisfies r.
func Fits(have int64, r *csi.CapacityRange) bool {
	if have < r.GetRequiredBytes() {
		return false
	}
	return r.GetLimitBytes() == 0 || have <= r.GetLimitBytes()
}

// ValidateCapabilities checks volume capabilities. Multi-node writers are
// allowed only for block volumes unless sharedFS (CephFS) is set.
func ValidateCapabilities(caps []*csi.VolumeCapability, sharedFS bool) error {
	if len(caps) == 0 {
		return csierr.Field("volume_capabilities", "must hold at least one capability")
	}
	for i, c := range caps {
		if err := ValidateCapability(fmt.Sprintf("volume_capabilities[%d]", i), c, sharedFS); err != nil {
			return err
		}
	}
	return nil
}

// ValidateCapability checks one capability (as NodeStage and NodePublish
// carry it); field names it in errors.
func ValidateCapability(field string, c *csi.VolumeCapability, sharedFS bool) error {
	if c == nil {
		return csierr.Field(field, "is required")
	}
	bad := func(format string, args ...any) error {
		return csierr.Errorf(csierr.ErrInvalid, "%s: %s", field, fmt.Sprintf(format, args...))
	}
	block := c.GetBlock() != nil
	if !block && c.GetMount() == nil {
		return bad("access_type must be block or mount")
	}
	if sharedFS && block {
		return bad("block access is not supported by this driver")
	}
	switch mode := c.GetAccessMode().GetMode(); mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
	case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
		if !block && !sharedFS {
			return bad("access mode %s needs a block volume", mode)
		}
	default:
		return bad("access mode %s is not supported", mode)
	}
	if m := c.GetMount(); m != nil {
		for _, f := range m.GetMountFlags() {
			if err := SafeOption(field+".mount.mount_flags", f); err != nil {
				return err
			}
		}
	}
	return nil
}

// ReadOnly reports whether an access mode lets no one write.
func ReadOnly(mode csi.VolumeCapability_AccessMode_Mode) bool {
	return mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY ||
		mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
}

// ReadOnlyModes reports whether every capability asks for a reader-only
// mode.
func ReadOnlyModes(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if !ReadOnly(c.GetAccessMode().GetMode()) {
			return false
		}
	}
	return len(caps) > 0
}

// SafeOption refuses a mount or map option that could carry more than
// itself: anything but printable ASCII (spaces and control characters
// separate arguments and requests), the separators of option lists (',' and
// ';'), quotes (mount(8) and the kernel's LSM options read a quoted option
// across commas, so an unbalanced quote swallows the options after it) and
// backslashes; a leading '-' (a helper that scans its whole command line,
// as every Ceph tool does, would take the option for one of its own); and
// the options through which credentials, identities and monitors travel,
// which the driver sets. Ceph reads '-' and '_' alike in option names, and
// so does this check.
func SafeOption(field, opt string) error {
	if i := unsafeIndex(opt); i >= 0 {
		return csierr.Errorf(csierr.ErrInvalid, "%s: option %q may not contain %q: only printable ASCII without spaces, quotes, backslashes, ',' or ';'",
			field, opt, opt[i])
	}
	if strings.HasPrefix(opt, "-") {
		return csierr.Errorf(csierr.ErrInvalid, "%s: option %q may not start with '-'", field, opt)
	}
	name, _, _ := strings.Cut(opt, "=")
	switch strings.ReplaceAll(strings.ToLower(name), "-", "_") {
	case "name", "secret", "secretfile", "key", "keyfile", "keyring", "id", "user", "conf", "c", "k", "n", "i", "m",
		"mon_host", "mon_addr":
		return csierr.Errorf(csierr.ErrInvalid, "%s: option %q is set by the driver and may not be given", field, name)
	}
	return nil
}

// SafeOptionList checks a comma-separated option list item by item (the
// items trimmed of spaces, empty ones skipped, as the option parsers read
// such a list).
func SafeOptionList(field, list string) error {
	for _, o := range strings.Split(list, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		if err := SafeOption(field, o); err != nil {
			return err
		}
	}
	return nil
}

// SafeValue refuses a value that the driver places inside an option or on
// a helper's command line (a filesystem name, a path) when it could end
// that option or argument and start another: the characters SafeOption
// refuses, or a leading '-'.
func SafeValue(field, v string) error {
	if i := unsafeIndex(v); i >= 0 {
		return csierr.Errorf(csierr.ErrInvalid, "%s: %q may not contain %q: only printable ASCII without spaces, quotes, backslashes, ',' or ';'",
			field, v, v[i])
	}
	if strings.HasPrefix(v, "-") {
		return csierr.Errorf(csierr.ErrInvalid, "%s: %q may not start with '-'", field, v)
	}
	return nil
}

// unsafeIndex returns the index of the first byte of s that SafeOption and
// SafeValue refuse, or -1.
func unsafeIndex(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`,;"'\`, c) >= 0 {
			return i
		}
	}
	return -1
}

// NamePrefix returns the name prefix parameter name of p, or def.
func NamePrefix(p map[string]string, name, def string) (string, error) {
	v, ok := p[name]
	if !ok || v == "" {
		return def, nil
	}
	if !SafeToken(v) || len(v) > 64 {
		return "", csierr.Param(name, "%q may hold only up to 64 letters, digits and . _ - (not first)", v)
	}
	return v, nil
}

// ValidPoolName refuses pool names no Ceph pool can have (and that could
// confuse a helper's command line or a C string).
func ValidPoolName(param, v string) error {
	if !validName(v) {
		return csierr.Param(param, "%q is not a valid pool name", v)
	}
	return nil
}

// ValidNamespace refuses RADOS namespace names that an image spec
// (pool/namespace/image) or a map request cannot carry; "" is the default
// namespace.
func ValidNamespace(param, v string) error {
	if v != "" && !validName(v) {
		return csierr.Param(param, "%q is not a valid RADOS namespace", v)
	}
	return nil
}

// validName reports whether v can name a pool or namespace: 1 to 255
// bytes, no control characters, no separator of an image spec, option
// list or command line, and no leading '-'.
func validName(v string) bool {
	if v == "" || len(v) > 255 || strings.HasPrefix(v, "-") || strings.ContainsAny(v, "/@ ,;=") {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < ' ' || v[i] == 0x7f {
			return false
		}
	}
	return true
}

// PassThrough copies StorageClass parameters into a volume context, leaving
// out the sidecars' own csi.storage.k8s.io/ keys except the fstype.
func PassThrough(params map[string]string) map[string]string {
	out := make(map[string]string, len(params)+8)
	for k, v := range params {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") && k != "csi.storage.k8s.io/fstype" {
			continue
		}
		out[k] = v
	}
	return out
}

// Digest is a short, stable fingerprint of what a create request asks for:
// the parts given (kind of request, size, content source...) and the
// parameters, without the sidecars' csi.storage.k8s.io/ keys (secret names
// and Kubernetes object names, which do not change what is made).
func Digest(params map[string]string, parts ...string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s=%d:%s;", len(k), k, len(params[k]), params[k])
	}
	return "v1:" + hex.EncodeToString(h.Sum(nil))[:32]
}

// SourceOf names a request's content source for a digest: "" for none,
// "snapshot:<id>" or "volume:<id>".
func SourceOf(src *csi.VolumeContentSource) string {
	switch {
	case src.GetSnapshot() != nil:
		return "snapshot:" + src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		return "volume:" + src.GetVolume().GetVolumeId()
	}
	return ""
}

// ControllerCapabilities lists controller RPC capabilities.
func ControllerCapabilities(types ...csi.ControllerServiceCapability_RPC_Type) []*csi.ControllerServiceCapability {
	out := make([]*csi.ControllerServiceCapability, 0, len(types))
	for _, t := range types {
		out = append(out, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return out
}

// NodeCapabilities lists node RPC capabilities.
func NodeCapabilities(types ...csi.NodeServiceCapability_RPC_Type) []*csi.NodeServiceCapability {
	out := make([]*csi.NodeServiceCapability, 0, len(types))
	for _, t := range types {
		out = append(out, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return out
}
