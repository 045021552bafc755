package cephfs

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/volid"
)

// paramNamed extracts the parameter a csierr.Param error names.
var paramNamed = regexp.MustCompile(`^parameter "([^"]*)": `)

// rejectedParam fails t unless err is InvalidArgument naming a parameter,
// and returns that parameter.
func rejectedParam(t *testing.T, err error) string {
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

var safePrefix = regexp.MustCompile(`^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$`)

// checkInert asserts that an accepted value holds nothing that ends an
// option or an argument: printable ASCII without spaces, ',', ';', quotes
// or backslashes, and no leading '-'.
func checkInert(t *testing.T, what, v string) {
	t.Helper()
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f || strings.ContainsRune(`,;"'\`, rune(c)) {
			t.Fatalf("accepted %s %q, which holds %q", what, v, c)
		}
	}
	if strings.HasPrefix(v, "-") {
		t.Fatalf("accepted %s %q, which starts with '-'", what, v)
	}
}

const fuzzUUID = "197480ab-6e0f-11ed-b5c4-6efb82c232c4"

// FuzzParseVolumeParams: parseVolumeParams never panics; an accepted
// StorageClass yields a clusterID that fits a volume ID, a filesystem name
// that cannot end the mds_namespace= option or the --client_fs= argument,
// a data pool name and a name prefix that split nothing, a mounter the
// node takes; a refusal is InvalidArgument naming the parameter to blame:
// without it (or with a good value for a required one) the complaint goes.
func FuzzParseVolumeParams(f *testing.F) {
	type seed struct{ cluster, fs, pool, mounter, prefix, backing, k, v string }
	for _, s := range []seed{
		{cluster: "rook-ceph", fs: "myfs"},
		{cluster: "c", fs: "fs", pool: "data", mounter: "fuse", prefix: "k8s-", backing: "true", k: "unknownParameter", v: "ignored"},
		{cluster: "c", fs: "fs", mounter: "kernel", backing: "false"},
		{fs: "fs"},
		{cluster: "c"},
		{cluster: strings.Repeat("c", 37), fs: "fs"},
		{cluster: "c", fs: "fs,name=admin"},
		{cluster: "c", fs: "fs secretfile=/etc/ceph/x"},
		{cluster: "c", fs: "--keyring=/etc/ceph/keyring"},
		{cluster: "c", fs: "fs", pool: "a/b"},
		{cluster: "c", fs: "fs", pool: "data\n"},
		{cluster: "c", fs: "fs", mounter: "nfs"},
		{cluster: "c", fs: "fs", prefix: "a/b"},
		{cluster: "c", fs: "fs", prefix: "a,b"},
		{cluster: "c", fs: "fs", prefix: "a\tb"},
		{cluster: "c", fs: "fs", prefix: strings.Repeat("p", 65)},
		{cluster: "c", fs: "fs", backing: "yes please"},
	} {
		f.Add(s.cluster, s.fs, s.pool, s.mounter, s.prefix, s.backing, s.k, s.v)
	}
	f.Fuzz(func(t *testing.T, cluster, fs, pool, mounter, prefix, backing, k, v string) {
		p := map[string]string{}
		for k, v := range map[string]string{"clusterID": cluster, "fsName": fs, "pool": pool, "mounter": mounter,
			"volumeNamePrefix": prefix, "backingSnapshot": backing} {
			if v != "" {
				p[k] = v
			}
		}
		if _, set := p[k]; !set {
			p[k] = v
		}
		params, err := parseVolumeParams(p)
		if err != nil {
			name := rejectedParam(t, err)
			fixed := cloneParams(p)
			switch name {
			case "clusterID":
				fixed[name] = "c"
			case "fsName":
				fixed[name] = "fs"
			default:
				if _, set := p[name]; !set {
					t.Fatalf("parseVolumeParams(%q) = %v: blames %q, which is not set", p, err, name)
				}
				delete(fixed, name)
			}
			if _, err := parseVolumeParams(fixed); err != nil && rejectedParam(t, err) == name {
				t.Fatalf("parseVolumeParams(%q) blames %q, and still does without it: %v", p, name, err)
			}
			return
		}
		if _, err := (volid.ID{ClusterID: params.ClusterID, UUID: fuzzUUID}).Encode(); err != nil || params.ClusterID != p["clusterID"] {
			t.Fatalf("accepted clusterID %q: %v", params.ClusterID, err)
		}
		if params.FsName == "" || params.FsName != p["fsName"] {
			t.Fatalf("accepted fsName %q as %q", p["fsName"], params.FsName)
		}
		checkInert(t, "fsName", params.FsName)
		if params.Pool != p["pool"] || strings.ContainsAny(params.Pool, "/@ \t\r\n\v\f,;=\x00") || strings.HasPrefix(params.Pool, "-") {
			t.Fatalf("accepted pool %q", params.Pool)
		}
		if !safePrefix.MatchString(params.NamePrefix) || (p["volumeNamePrefix"] != "" && params.NamePrefix != p["volumeNamePrefix"]) {
			t.Fatalf("accepted volumeNamePrefix %q as %q", p["volumeNamePrefix"], params.NamePrefix)
		}
		if m := params.Mounter; m != "" && m != mounterKernel && m != mounterFuse {
			t.Fatalf("accepted mounter %q", m)
		}
		if err := validMounter(params.Mounter); err != nil {
			t.Fatalf("accepted mounter %q, which the node refuses: %v", params.Mounter, err)
		}
		if b := p["backingSnapshot"]; params.BackingSnapshot != (b == "1" || strings.EqualFold(b, "t") || strings.EqualFold(b, "true")) {
			t.Fatalf("backingSnapshot %q read as %v", b, params.BackingSnapshot)
		}
	})
}

// FuzzSnapshotPrefix: the snapshot name prefix is the default when unset,
// else 1 to 64 letters, digits, '.', '_' and '-' (not first); a refusal is
// InvalidArgument naming snapshotNamePrefix.
func FuzzSnapshotPrefix(f *testing.F) {
	for _, s := range []string{"", "csi-snap-", "snap.", "a@b", "a/b", "a b", "a,b", "-s", "a\x00", strings.Repeat("s", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, err := snapshotPrefix(map[string]string{"snapshotNamePrefix": v})
		if err != nil {
			if name := rejectedParam(t, err); name != "snapshotNamePrefix" {
				t.Fatalf("snapshotPrefix(%q) blames %q", v, name)
			}
			return
		}
		if v == "" && got != request.DefaultSnapshotPrefix || v != "" && got != v || !safePrefix.MatchString(got) {
			t.Fatalf("snapshotPrefix(%q) = %q", v, got)
		}
	})
}

func cloneParams(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
