package rbd

import (
	"math/bits"
	"strconv"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/mapper"
	"github.com/leanceph/cephcsi/internal/testutil/paramtest"
	"github.com/leanceph/cephcsi/internal/volid"
)

// checkSafeName asserts what a pool, namespace or name prefix may hold once
// accepted: nothing that splits an image spec, an option list or a command
// line.
func checkSafeName(t *testing.T, what, v string) {
	t.Helper()
	if strings.ContainsAny(v, "/@ \t\r\n\v\f,;=\x00") || strings.HasPrefix(v, "-") {
		t.Fatalf("accepted %s %q", what, v)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < ' ' || v[i] == 0x7f {
			t.Fatalf("accepted %s %q with a control character", what, v)
		}
	}
}

// knownFeatures and needs restate the feature table: the bit of each name
// and what each feature depends on.
var (
	knownFeatures = map[string]uint64{
		"layering": rbd.FeatureLayering, "exclusive-lock": rbd.FeatureExclusiveLock, "object-map": rbd.FeatureObjectMap,
		"fast-diff": rbd.FeatureFastDiff, "deep-flatten": rbd.FeatureDeepFlatten, "journaling": rbd.FeatureJournaling,
	}
	needs = [][2]uint64{
		{rbd.FeatureObjectMap, rbd.FeatureExclusiveLock},
		{rbd.FeatureFastDiff, rbd.FeatureObjectMap},
		{rbd.FeatureJournaling, rbd.FeatureExclusiveLock},
	}
)

// checkFeatures asserts that a parsed feature set is non-empty, closed
// under the dependencies, and spelled by names that parse back to it.
func checkFeatures(t *testing.T, in string, set uint64, names string) {
	t.Helper()
	if set == 0 {
		t.Fatalf("imageFeatures %q gave no feature", in)
	}
	for _, n := range needs {
		if set&n[0] != 0 && set&n[1] == 0 {
			t.Fatalf("imageFeatures %q gave %#x: feature %#x without %#x", in, set, n[0], n[1])
		}
	}
	var fromNames uint64
	seen := map[string]bool{}
	for _, n := range strings.Split(names, ",") {
		bit, ok := knownFeatures[n]
		if !ok || seen[n] {
			t.Fatalf("imageFeatures %q gave the names %q", in, names)
		}
		seen[n] = true
		fromNames |= bit
	}
	if fromNames != set {
		t.Fatalf("imageFeatures %q: names %q are %#x, the set is %#x", in, names, fromNames, set)
	}
	if again, againNames, err := parseFeatures(names); err != nil || again != set || againNames != names {
		t.Fatalf("imageFeatures %q: the names %q parse to %#x %q, %v", in, names, again, againNames, err)
	}
}

// FuzzParseFeatures: parseFeatures never panics; what it accepts is a
// consistent feature set; what it refuses is InvalidArgument naming
// imageFeatures.
func FuzzParseFeatures(f *testing.F) {
	for _, s := range []string{"", "layering", "layering, exclusive-lock,object-map,fast-diff,deep-flatten",
		"layering,exclusive-lock,journaling", "layering,object-map", "fast-diff,exclusive-lock", "journaling",
		"layering,striping", " , ", "layering,layering", "Layering", "exclusive-lock,object-map,fast-diff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, names, err := parseFeatures(s)
		if err != nil {
			if p := paramtest.RejectedParam(t, err); p != "imageFeatures" {
				t.Fatalf("parseFeatures(%q) blames %q", s, p)
			}
			return
		}
		checkFeatures(t, s, set, names)
	})
}

// FuzzParseLayout: parseLayout never panics; an accepted layout is one
// librbd takes (both striping values or neither, a power-of-two stripe
// unit from 512 bytes to the object size, a power-of-two object size from
// 4 KiB to 32 MiB); a refusal is InvalidArgument naming one of the three
// parameters, one that was given.
func FuzzParseLayout(f *testing.F) {
	for _, c := range [][3]string{
		{"", "", ""}, {"65536", "16", ""}, {"65536", "16", "4194304"}, {"4194304", "1", "4194304"}, {"8388608", "2", "4194304"},
		{"65536", "", ""}, {"", "4", ""}, {"3000", "2", ""}, {"", "", "1000"}, {"", "", "67108864"}, {"1", "1", ""},
		{"-1", "1", ""}, {"65536", "4294967296", ""}, {"0", "0", "0"}, {"+4096", "1", ""}, {"4611686018427387904", "1", ""},
		{"", "", "4096"}, {"512", "1", "4096"}, {"256", "1", ""},
	} {
		f.Add(c[0], c[1], c[2])
	}
	f.Fuzz(func(t *testing.T, unit, count, size string) {
		p := map[string]string{}
		for k, v := range map[string]string{"stripeUnit": unit, "stripeCount": count, "objectSize": size} {
			if v != "" {
				p[k] = v
			}
		}
		var v volumeParams
		if err := parseLayout(&v, p); err != nil {
			if name := paramtest.RejectedParam(t, err); p[name] == "" {
				t.Fatalf("parseLayout(%q) blames %q, which is not set", p, name)
			}
			return
		}
		checkLayout(t, p, &v)
	})
}

func checkLayout(t *testing.T, p map[string]string, v *volumeParams) {
	t.Helper()
	if (v.StripeUnit == 0) != (v.StripeCount == 0) {
		t.Fatalf("%q: stripe unit %d with count %d", p, v.StripeUnit, v.StripeCount)
	}
	if v.StripeCount > 1<<32-1 {
		t.Fatalf("%q: stripe count %d", p, v.StripeCount)
	}
	if v.ObjectOrder != 0 && (v.ObjectOrder < 12 || v.ObjectOrder > 25) {
		t.Fatalf("%q: object order %d", p, v.ObjectOrder)
	}
	if u := v.StripeUnit; u != 0 {
		if bits.OnesCount64(u) != 1 || u < 512 || u > 32<<20 {
			t.Fatalf("%q: stripe unit %d", p, u)
		}
		if v.ObjectOrder != 0 && u > 1<<v.ObjectOrder {
			t.Fatalf("%q: stripe unit %d above the object size %d", p, u, uint64(1)<<v.ObjectOrder)
		}
	}
}

// notImplementedParams restates the parameters the driver refuses when they
// ask for something.
var notImplementedParams = []string{"integrityMode", "thickProvision",
	"topologyConstrainedPools", "journalPool", "tryOtherMounters", "cephLogDir", "cephLogStrategy", "BaseReadIops",
	"BaseWriteIops", "BaseReadBytesPerSecond", "BaseWriteBytesPerSecond", "ReadIopsPerGiB", "WriteIopsPerGiB",
	"ReadBpsPerGiB", "WriteBpsPerGiB", "BaseVolSizeBytes"}

// checkEncryption: encryption is on exactly when "encrypted" is a true
// boolean, only as "block" (LUKS), with options cryptsetup is given as
// they are.
func checkEncryption(t *testing.T, p map[string]string, e *encryption) {
	t.Helper()
	on, err := strconv.ParseBool(strings.TrimSpace(p["encrypted"]))
	if (err == nil && on) != (e != nil) {
		t.Fatalf("encrypted=%q gave encryption %+v", p["encrypted"], e)
	}
	if e == nil {
		return
	}
	if typ := strings.TrimSpace(p["encryptionType"]); typ != "" && typ != "block" {
		t.Fatalf("accepted encryptionType %q", typ)
	}
	if c := e.Options.Cipher; c != "" && !strings.HasSuffix(c, "-xts-plain64") {
		t.Fatalf("accepted encryptionCipher %q", c)
	}
	if k := e.Options.KeySize; k != 0 && k != 256 && k != 512 {
		t.Fatalf("accepted encryptionKeySize %d", k)
	}
	if s := e.Options.SectorSize; s != 0 && (s < 512 || s > 4096 || s&(s-1) != 0) {
		t.Fatalf("accepted encryptionSectorSize %d", s)
	}
}

// asksNothing restates off: empty or a false boolean.
func asksNothing(v string) bool {
	switch strings.TrimSpace(v) {
	case "", "0", "f", "F", "false", "FALSE", "False":
		return true
	}
	return false
}

const fuzzUUID = "197480ab-6e0f-11ed-b5c4-6efb82c232c4"

// FuzzParseVolumeParams: parseVolumeParams never panics; an accepted
// StorageClass yields values safe to use (a clusterID that fits a volume
// ID, pool, data pool and namespace names and a name prefix that split
// nothing, a known filesystem, a consistent feature set and layout, a
// mounter the node understands, no unimplemented feature asked for); a
// refusal is InvalidArgument naming a parameter that is to blame: without
// it (or with a good value for a required one) the complaint goes.
func FuzzParseVolumeParams(f *testing.F) {
	type seed struct{ cluster, pool, dataPool, ns, features, prefix, fstype, format, unit, count, size, mounter, k, v string }
	for _, s := range []seed{
		{cluster: "rook-ceph", pool: "replicapool"},
		{cluster: "c", pool: "rbd", dataPool: "ec", features: "layering, exclusive-lock,object-map,fast-diff,deep-flatten",
			prefix: "k8s-", fstype: "xfs", format: "2", unit: "65536", count: "16", size: "4194304", mounter: "rbd-nbd", k: "unknown", v: "ignored"},
		{cluster: "c", pool: "rbd", ns: "tenant-a", mounter: "rbd-fuse", k: "encrypted", v: "false"},
		{cluster: "c", pool: "rbd", k: "encrypted", v: "true"},
		{cluster: "c", pool: "rbd", k: "thickProvision", v: "yes"},
		{pool: "rbd"},
		{cluster: "c"},
		{cluster: strings.Repeat("c", 37), pool: "rbd"},
		{cluster: "c", pool: "rbd/x"},
		{cluster: "c", pool: "rbd", dataPool: "-ec"},
		{cluster: "c", pool: "rbd", ns: "a/b"},
		{cluster: "c", pool: "rbd", ns: "ns,_pool_ns=x"},
		{cluster: "c", pool: "rbd\x00"},
		{cluster: "c", pool: "rbd", features: "layering,striping"},
		{cluster: "c", pool: "rbd", features: ","},
		{cluster: "c", pool: "rbd", fstype: "btrfs"},
		{cluster: "c", pool: "rbd", prefix: "a/b"},
		{cluster: "c", pool: "rbd", format: "1"},
		{cluster: "c", pool: "rbd", unit: "65536"},
		{cluster: "c", pool: "rbd", count: "2"},
		{cluster: "c", pool: "rbd", unit: "8388608", count: "2", size: "4194304"},
		{cluster: "c", pool: "rbd", unit: "1073741824", count: "2"},
		{cluster: "c", pool: "rbd", mounter: "nfs"},
	} {
		f.Add(s.cluster, s.pool, s.dataPool, s.ns, s.features, s.prefix, s.fstype, s.format, s.unit, s.count, s.size, s.mounter, s.k, s.v)
	}
	f.Fuzz(func(t *testing.T, cluster, pool, dataPool, ns, features, prefix, fstype, format, unit, count, size, mounter, k, v string) {
		p := paramtest.FuzzParams(map[string]string{"clusterID": cluster, "pool": pool, "dataPool": dataPool, "radosNamespace": ns,
			"imageFeatures": features, "volumeNamePrefix": prefix, "csi.storage.k8s.io/fstype": fstype, "imageFormat": format,
			"stripeUnit": unit, "stripeCount": count, "objectSize": size, "mounter": mounter}, k, v)
		params, err := parseVolumeParams(p)
		if err != nil {
			paramtest.CheckBlame(t, func(p map[string]string) error { _, err := parseVolumeParams(p); return err }, p, err,
				map[string]string{"clusterID": "c", "pool": "rbd"})
			return
		}
		if _, err := (volid.ID{ClusterID: params.ClusterID, UUID: fuzzUUID}).Encode(); err != nil || params.ClusterID != p["clusterID"] {
			t.Fatalf("accepted clusterID %q: %v", params.ClusterID, err)
		}
		if params.Pool == "" || len(params.Pool) > 255 {
			t.Fatalf("accepted pool %q", params.Pool)
		}
		checkSafeName(t, "pool", params.Pool)
		checkSafeName(t, "dataPool", params.DataPool)
		checkSafeName(t, "radosNamespace", params.RadosNamespace)
		if !paramtest.SafePrefix.MatchString(params.NamePrefix) || (p["volumeNamePrefix"] != "" && params.NamePrefix != p["volumeNamePrefix"]) {
			t.Fatalf("accepted volumeNamePrefix %q as %q", p["volumeNamePrefix"], params.NamePrefix)
		}
		if params.FsType != "ext4" && params.FsType != "xfs" {
			t.Fatalf("accepted fstype %q", params.FsType)
		}
		if f := p["imageFormat"]; f != "" && f != "2" {
			t.Fatalf("accepted imageFormat %q", f)
		}
		checkFeatures(t, p["imageFeatures"], params.Features, params.FeatureNames)
		checkLayout(t, p, params)
		if m, set := p["mounter"]; set {
			if _, err := mapper.KindOf(m); err != nil {
				t.Fatalf("accepted mounter %q, which the node refuses: %v", m, err)
			}
		}
		checkEncryption(t, p, params.Encryption)
		for _, name := range notImplementedParams {
			if v, set := p[name]; set && !asksNothing(v) {
				t.Fatalf("accepted %s=%q, which is not implemented", name, v)
			}
		}
		if opts := params.options(); opts.Features != params.Features || opts.DataPool != params.DataPool ||
			opts.StripeUnit != params.StripeUnit || opts.StripeCount != params.StripeCount || opts.ObjectOrder != params.ObjectOrder {
			t.Fatalf("image options %+v differ from the parameters %+v", opts, params)
		}
	})
}

// FuzzSnapshotPrefix: the snapshot name prefix is the default when unset,
// else 1 to 64 letters, digits, '.', '_' and '-' (not first); a refusal is
// InvalidArgument naming snapshotNamePrefix.
func FuzzSnapshotPrefix(f *testing.F) {
	paramtest.FuzzSnapshotPrefix(f, snapshotPrefix, "csi-snap-")
}
