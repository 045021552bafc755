package cephfs

import (
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/testutil/paramtest"
	"github.com/leanceph/cephcsi/internal/volid"
)

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
		p := paramtest.FuzzParams(map[string]string{"clusterID": cluster, "fsName": fs, "pool": pool, "mounter": mounter,
			"volumeNamePrefix": prefix, "backingSnapshot": backing}, k, v)
		params, err := parseVolumeParams(p)
		if err != nil {
			paramtest.CheckBlame(t, func(p map[string]string) error { _, err := parseVolumeParams(p); return err }, p, err,
				map[string]string{"clusterID": "c", "fsName": "fs"})
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
		if !paramtest.SafePrefix.MatchString(params.NamePrefix) || (p["volumeNamePrefix"] != "" && params.NamePrefix != p["volumeNamePrefix"]) {
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
	paramtest.FuzzSnapshotPrefix(f, snapshotPrefix, request.DefaultSnapshotPrefix)
}
