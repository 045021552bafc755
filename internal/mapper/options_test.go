package mapper

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// TestOptionsForRefusesInjection: the map options the fuzz targets found
// passed on although they carry more than an option.
func TestOptionsForRefusesInjection(t *testing.T) {
	for value, why := range map[string]string{
		"krbd:noshare rbd other":          "more tokens of the krbd add request: maps image other of pool rbd",
		"krbd:a\vb":                       "a vertical tab, whitespace to the rbd module",
		`krbd:context="x`:                 "an unbalanced quote",
		"nbd:mon-host=10.9.9.9":           "rbd-nbd's monitors, spelled with a dash",
		"nbd:user=admin":                  "rbd-nbd's --user, another name for --id",
		"nbd:--keyring=/etc/ceph/keyring": "a keyring",
		"fuse:allow_other;krbd:name=a":    "a credential in an item for another mapper",
	} {
		if _, err := OptionsFor(value, KindKRBD); !errors.Is(err, ErrInvalidOption) || csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("OptionsFor(%q) = %v; want ErrInvalidOption (%s)", value, err, why)
		}
	}
	if got, err := OptionsFor("krbd: lock_on_read , queue_depth=128 ;nbd:try-netlink", KindKRBD); err != nil || got != "lock_on_read , queue_depth=128" {
		t.Errorf("OptionsFor with spaces around items = %q, %v", got, err)
	}
}

// TestMapRefusesUnsafeSpecs: names and users that would split a krbd
// request, an option list or rbd-nbd's command line are refused before
// anything is written or run.
func TestMapRefusesUnsafeSpecs(t *testing.T) {
	for name, edit := range map[string]func(*Spec){
		"namespace with a comma": func(s *Spec) { s.Namespace = "ns,name=admin" },
		"pool with a tab":        func(s *Spec) { s.Pool = "rbd\vother" },
		"image with a CR":        func(s *Spec) { s.Image = "img\r-" },
		"pool like an argument":  func(s *Spec) { s.Pool = "-c" },
		"user with an option":    func(s *Spec) { s.UserID = "u,secret=x" },
		"user like an argument":  func(s *Spec) { s.UserID = "-u" },
		"option with a space":    func(s *Spec) { s.Options = "noshare rbd other" },
		"monitors by option":     func(s *Spec) { s.Options = "mon-host=10.9.9.9" },
		"image ..":               func(s *Spec) { s.Image = ".." },
		"key with a newline":     func(s *Spec) { s.Key = testKey[:8] + "\r\n" + testKey[8:] },
		"namespace .":            func(s *Spec) { s.Namespace = "." },
	} {
		s := testSpec()
		edit(&s)
		k := newFakeKernel(t)
		if _, err := newTestKRBD(k, &fakeKeys{}, false).Map(context.Background(), s); !errors.Is(err, ErrInvalidOption) || len(k.written()) != 0 {
			t.Errorf("krbd, %s: %v, requests %q", name, err, k.written())
		}
		r := &fakeRunner{}
		if _, err := (&NBD{Binary: "rbd-nbd", Runner: r}).Map(context.Background(), s); !errors.Is(err, ErrInvalidOption) || len(r.calls) != 0 {
			t.Errorf("rbd-nbd, %s: %v, commands %q", name, err, r.commands())
		}
	}
}

// TestSpecStringIsTheImageSpec: FuzzNBDMapArgs found pool "." mapped as
// image "0" of the default pool, path.Join having cleaned "./0" to "0"
// (Map now refuses "." and ".." too).
func TestSpecStringIsTheImageSpec(t *testing.T) {
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{Pool: ".", Image: "0"}, "./0"},
		{Spec{Pool: "rbd", Namespace: "..", Image: "img"}, "rbd/../img"},
		{Spec{Pool: "rbd", Image: ".."}, "rbd/.."},
		{Spec{Pool: "rbd", Namespace: "ns", Image: "img"}, "rbd/ns/img"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.s, got, tc.want)
		}
	}
}
