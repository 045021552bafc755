// Package paramtest holds the checks both drivers' StorageClass fuzz tests
// make of a parameter map and of the error that refuses it. It stands apart
// from testutil, which imports the drivers.
package paramtest

import (
	"maps"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// paramNamed extracts the parameter a csierr.Param error names.
var paramNamed = regexp.MustCompile(`^parameter "([^"]*)": `)

// SafePrefix is what an accepted volumeNamePrefix or snapshotNamePrefix may
// look like: a short name that splits no image spec, option or argument.
var SafePrefix = regexp.MustCompile(`^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$`)

// RejectedParam fails t unless err is InvalidArgument naming a parameter,
// and returns that parameter.
func RejectedParam(t *testing.T, err error) string {
	t.Helper()
	if c := csierr.Code(err); c != codes.InvalidArgument {
		t.Fatalf("error %v has code %v, want InvalidArgument", err, c)
	}
	m := paramNamed.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error %q names no parameter", err)
	}
	return m[1]
}

// FuzzParams is a StorageClass from fuzzed values: every non-empty one of
// named, and then k=v unless k is already set.
func FuzzParams(named map[string]string, k, v string) map[string]string {
	p := map[string]string{}
	for name, val := range named {
		if val != "" {
			p[name] = val
		}
	}
	if _, set := p[k]; !set {
		p[k] = v
	}
	return p
}

// CheckBlame asserts that err, parse's refusal of p, names the parameter to
// blame: one that is set (or a required one, given a good value in
// required), without which (or with that good value) parse no longer blames
// it.
func CheckBlame(t *testing.T, parse func(map[string]string) error, p map[string]string, err error, required map[string]string) {
	t.Helper()
	name := RejectedParam(t, err)
	fixed := maps.Clone(p)
	if good, ok := required[name]; ok {
		fixed[name] = good
	} else {
		if _, set := p[name]; !set {
			t.Fatalf("parse(%q) = %v: blames %q, which is not set", p, err, name)
		}
		delete(fixed, name)
	}
	if err := parse(fixed); err != nil && RejectedParam(t, err) == name {
		t.Fatalf("parse(%q) blames %q, and still does without it: %v", p, name, err)
	}
}

// FuzzSnapshotPrefix fuzzes a VolumeSnapshotClass's snapshotNamePrefix:
// parse takes it or refuses it naming that parameter, and what it takes is
// the value given (or def when none is) and a safe prefix.
func FuzzSnapshotPrefix(f *testing.F, parse func(map[string]string) (string, error), def string) {
	for _, s := range []string{"", "csi-snap-", "snap.", "a@b", "a/b", "a b", "a,b", "-s", "a\x00", strings.Repeat("s", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := parse(map[string]string{"snapshotNamePrefix": v})
		if err != nil {
			if name := RejectedParam(t, err); name != "snapshotNamePrefix" {
				t.Fatalf("snapshot prefix %q: blames %q", v, name)
			}
			return
		}
		if v == "" && got != def || v != "" && got != v || !SafePrefix.MatchString(got) {
			t.Fatalf("snapshot prefix %q taken as %q", v, got)
		}
	})
}
