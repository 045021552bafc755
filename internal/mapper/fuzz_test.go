package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// wantInvalidOption fails t unless err is ErrInvalidOption, InvalidArgument
// at the RPC edge.
func wantInvalidOption(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrInvalidOption) || csierr.Code(err) != codes.InvalidArgument {
		t.Fatalf("%s: error %v (%v), want ErrInvalidOption", what, err, csierr.Code(err))
	}
}

// credentialNames are the options through which an identity, a key or the
// monitors would reach the kernel or a helper.
var credentialNames = []string{"name", "id", "user", "secret", "secretfile", "key", "keyfile", "keyring",
	"mon_host", "mon_addr", "conf", "_pool_ns"}

func isCredential(opt string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(opt, "-"), "=")
	return slices.Contains(credentialNames, strings.ToLower(strings.ReplaceAll(name, "-", "_")))
}

// checkOption asserts that one option, as a mapper passes it on, is one
// item: printable ASCII without spaces, separators, quotes or backslashes,
// not starting with '-', and no credential.
func checkOption(t *testing.T, where, o string) {
	t.Helper()
	for i := 0; i < len(o); i++ {
		if c := o[i]; c <= ' ' || c >= 0x7f || strings.ContainsRune(`,;"'\`, rune(c)) {
			t.Fatalf("%s: option %q holds %q", where, o, c)
		}
	}
	if o == "" || strings.HasPrefix(o, "-") || isCredential(o) {
		t.Fatalf("%s: option %q passed", where, o)
	}
}

// FuzzKindOf: KindOf never panics, names one of the three mappers or
// refuses with ErrInvalidOption, and reads its own answer back unchanged.
func FuzzKindOf(f *testing.F) {
	for _, s := range []string{"", "rbd", "krbd", "rbd-nbd", "nbd", "rbd-fuse", "fuse", " KRBD ", "iscsi", "rbd\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, m string) {
		kind, err := KindOf(m)
		if err != nil {
			wantInvalidOption(t, "KindOf("+m+")", err)
			return
		}
		if kind != KindKRBD && kind != KindNBD && kind != KindFuse {
			t.Fatalf("KindOf(%q) = %q", m, kind)
		}
		if again, err := KindOf(kind); err != nil || again != kind {
			t.Fatalf("KindOf(%q) = %q, %v", kind, again, err)
		}
	})
}

// FuzzOptionsFor: OptionsFor never panics; whether it accepts a value does
// not depend on the mapper asked for; what it hands any mapper is a list of
// options that each stay one option and carry no credential, taken from
// the value; a refusal is ErrInvalidOption.
func FuzzOptionsFor(f *testing.F) {
	for _, s := range []string{"", "krbd:queue_depth=128,lock_on_read;nbd:try-netlink,reattach-timeout=180;fuse:allow_root",
		"alloc_size=65536", "zfs:foo", "krbd:a:b", "krbd:noshare rbd other", "krbd:a,name=admin", "nbd:mon-host=10.9.9.9",
		"nbd:--keyring=/etc/ceph/keyring", "nbd:user=admin", "fuse:allow_other;krbd:ro\n", " ; ;krbd: ", "krbd:x;krbd:y",
		"KRBD:lock_on_read", "rbd-nbd:timeout=30", "krbd:context=\"x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		var accepted []bool
		for _, kind := range []string{KindKRBD, KindNBD, KindFuse} {
			opts, err := OptionsFor(value, kind)
			accepted = append(accepted, err == nil)
			if err != nil {
				wantInvalidOption(t, "OptionsFor("+value+")", err)
				continue
			}
			if !strings.Contains(value, opts) {
				t.Fatalf("OptionsFor(%q, %s) = %q, not from the value", value, kind, opts)
			}
			for _, o := range splitOptions(opts) {
				checkOption(t, "OptionsFor("+value+", "+kind+")", o)
			}
		}
		if accepted[0] != accepted[1] || accepted[0] != accepted[2] {
			t.Fatalf("OptionsFor(%q) accepted for some mappers only: %v", value, accepted)
		}
	})
}

// fuzzKeys lends keys without a kernel.
type fuzzKeys struct{}

func (fuzzKeys) Add(string, []byte) (int, error) { return 7, nil }
func (fuzzKeys) Remove(int) error                { return nil }

var (
	errStopped = errors.New("stopped after the request")
	keyShaped  = regexp.MustCompile(`^[A-Za-z0-9+/=]{16,}$`)
)

// FuzzKRBDMapRequest: whatever the Spec, KRBD.Map either refuses it with
// ErrInvalidOption before any request, or writes exactly one request that
// the rbd module splits (at " \f\n\r\t\v", as its next_token does) into the
// monitors, one option list, the pool, the image and no snapshot; the
// option list is the driver's name= and key= (or secret=), the namespace,
// then the options given item for item, none of them a credential. No
// error shows the key.
func FuzzKRBDMapRequest(f *testing.F) {
	type seed struct {
		pool, ns, image, user, key, opts string
		ro, keyring                      bool
	}
	for _, s := range []seed{
		{pool: "rbd", ns: "ns1", image: "csi-vol-1", user: "csi-rbd-node", key: testKey, opts: "queue_depth=128,lock_on_read", ro: true, keyring: true},
		{pool: "rbd", image: "csi-vol-1", user: "csi-rbd-node", key: testKey},
		{pool: "rbd", image: "img", user: "u", key: testKey, opts: "noshare rbd other"},
		{pool: "rbd", image: "img", user: "u", key: testKey, opts: "a,name=admin"},
		{pool: "rbd", image: "img", user: "u", key: testKey, opts: "a\vb"},
		{pool: "rbd", ns: "ns,name=admin", image: "img", user: "u", key: testKey},
		{pool: "rbd\vother", image: "img", user: "u", key: testKey},
		{pool: "rbd", image: "img\r-", user: "u", key: testKey},
		{pool: "rbd", image: "img", user: "u,secret=x", key: testKey},
		{pool: "rbd", image: "img", user: "u", key: "not base64!"},
		{pool: "rbd", image: "img", user: "u", key: testKey, opts: "_pool_ns=other"},
	} {
		f.Add(s.pool, s.ns, s.image, s.user, s.key, s.opts, s.ro, s.keyring)
	}
	sysfs := f.TempDir()
	if err := os.MkdirAll(filepath.Join(sysfs, "bus", "rbd", "devices"), 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, pool, ns, image, user, key, opts string, ro, keyring bool) {
		var writes [][]byte
		m := &KRBD{Sysfs: sysfs, Dev: sysfs, Timeout: 5 * time.Second,
			Write: func(_ string, data []byte) error {
				writes = append(writes, append([]byte(nil), data...))
				return errStopped
			}}
		if keyring {
			m.Keys = fuzzKeys{}
		}
		s := Spec{Monitors: []string{"10.0.0.1:6789", "[fd00::2]:3300"}, Pool: pool, Namespace: ns, Image: image,
			UserID: user, Key: key, Options: opts, ReadOnly: ro}
		_, err := m.Map(context.Background(), s)
		// A key-shaped key (no message has 16 base64 characters in a row)
		// that is not among the names must not be in the error.
		if err != nil && keyShaped.MatchString(key) && strings.Contains(err.Error(), key) && !strings.Contains(pool+ns+image+user+opts, key) {
			t.Fatalf("the error shows the key: %v", err)
		}
		if len(writes) == 0 {
			wantInvalidOption(t, "KRBD.Map without a request", err)
			return
		}
		if len(writes) != 1 || !errors.Is(err, errStopped) {
			t.Fatalf("%d requests, error %v", len(writes), err)
		}
		req := string(writes[0])
		tokens := strings.FieldsFunc(req, func(r rune) bool { return strings.ContainsRune(" \f\n\r\t\v", r) })
		if len(tokens) != 5 || tokens[0] != "10.0.0.1:6789,[fd00::2]:3300" || tokens[2] != pool || tokens[3] != image || tokens[4] != "-" {
			t.Fatalf("request %q splits into %q", req, tokens)
		}
		auth := "secret=" + key
		if keyring {
			auth = "key=client." + user
		}
		want := []string{"name=" + user, auth}
		if ns != "" {
			want = append(want, "_pool_ns="+ns)
		}
		given := splitOptions(opts)
		want = append(want, given...)
		if ro {
			want = append(want, "ro")
		}
		if items := strings.Split(tokens[1], ","); !slices.Equal(items, want) {
			t.Fatalf("request %q: options %q, want %q", req, items, want)
		}
		for _, o := range given {
			checkOption(t, "krbd request "+req, o)
		}
	})
}

// FuzzNBDMapArgs: whatever the Spec, NBD.Map either refuses it with
// ErrInvalidOption before running rbd-nbd map, or runs it with the
// driver's arguments in place, each option as one --flag that is not a
// credential however spelled, and one image spec that does not look like
// an argument and splits into the pool, namespace and image, none of them
// "." or "..".
func FuzzNBDMapArgs(f *testing.F) {
	for _, s := range [][5]string{
		{"rbd", "ns1", "csi-vol-1", "csi-rbd-node", "try-netlink,reattach-timeout=180"},
		{"rbd", "", "img", "u", ""},
		{"rbd", "", "img", "u", "mon-host=10.9.9.9"},
		{"rbd", "", "img", "u", "user=admin"},
		{"rbd", "", "img", "u", "--keyring=/etc/ceph/keyring"},
		{"rbd", "", "img", "u", "id=admin"},
		{"-c", "", "img", "u", ""},
		{"rbd", "", "img", "-u", ""},
		{"rbd", "a/b", "img", "u", ""},
		{"rbd", "", "img@snap", "u", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], false)
	}
	f.Fuzz(func(t *testing.T, pool, ns, image, user, opts string, ro bool) {
		r := &fakeRunner{}
		n := &NBD{Binary: "rbd-nbd", Conf: "/etc/ceph/test.conf", Runner: r, Timeout: 5 * time.Second}
		s := Spec{Monitors: []string{"10.0.0.1:6789"}, Pool: pool, Namespace: ns, Image: image, UserID: user, Key: testKey,
			Options: opts, ReadOnly: ro}
		_, err := n.Map(context.Background(), s)
		var args []string
		for _, c := range r.calls {
			if slices.Contains(c.Args, "map") {
				args = c.Args
			}
		}
		if args == nil {
			wantInvalidOption(t, "NBD.Map without running rbd-nbd map", err)
			return
		}
		want := []string{"-c", "/etc/ceph/test.conf", "--id", user, "--keyfile", "/proc/self/fd/3", "-m", "10.0.0.1:6789"}
		if ro {
			want = append(want, "--read-only")
		}
		given := splitOptions(opts)
		for _, o := range given {
			want = append(want, "--"+o)
		}
		spec := pool + "/" + image
		if ns != "" {
			spec = pool + "/" + ns + "/" + image
		}
		want = append(want, "map", spec)
		if !slices.Equal(args, want) {
			t.Fatalf("rbd-nbd %q, want %q", args, want)
		}
		for _, o := range given {
			checkOption(t, "rbd-nbd "+strings.Join(args, " "), o)
		}
		parts := strings.Split(spec, "/")
		if strings.HasPrefix(spec, "-") || strings.ContainsAny(spec, "@ \t\n") || len(parts) != 2 && len(parts) != 3 ||
			parts[0] != pool || parts[len(parts)-1] != image {
			t.Fatalf("rbd-nbd image spec %q", spec)
		}
		if strings.HasPrefix(user, "-") || strings.ContainsAny(user, ",= \t\n") {
			t.Fatalf("rbd-nbd --id %q", user)
		}
		for _, v := range []string{pool, ns, image} {
			if v == "." || v == ".." {
				t.Fatalf("accepted the name %q, a path component", v)
			}
		}
	})
}

// FuzzNBDFlags: every rbd-nbd flag made of map or unmap options is one
// "--name[=value]" argument whose name is not a credential.
func FuzzNBDFlags(f *testing.F) {
	for _, s := range []string{"try-netlink,reattach-timeout=180", "", "mon-host=x", "--id=admin", "a b", "keyring=/x", "io-timeout=30,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, opts string) {
		flags, err := nbdFlags(opts)
		if err != nil {
			wantInvalidOption(t, "nbdFlags("+opts+")", err)
			return
		}
		given := splitOptions(opts)
		if len(flags) != len(given) {
			t.Fatalf("nbdFlags(%q) = %q", opts, flags)
		}
		for i, fl := range flags {
			if fl != "--"+given[i] {
				t.Fatalf("nbdFlags(%q) = %q", opts, flags)
			}
			checkOption(t, "nbdFlags("+opts+")", given[i])
		}
	})
}
