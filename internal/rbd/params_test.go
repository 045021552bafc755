package rbd

import (
	"strings"
	"testing"

	"github.com/ceph/go-ceph/rbd"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestParseVolumeParams(t *testing.T) {
	v, err := parseVolumeParams(map[string]string{"clusterID": "c", "pool": "rbd"})
	if err != nil {
		t.Fatal(err)
	}
	if v.NamePrefix != "csi-vol-" || v.FsType != "ext4" || v.Features != rbd.FeatureLayering || v.FeatureNames != "layering" {
		t.Fatalf("defaults = %+v", v)
	}
	v, err = parseVolumeParams(map[string]string{"clusterID": "c", "pool": "rbd", "dataPool": "ec",
		"imageFeatures":    "layering, exclusive-lock,object-map,fast-diff,deep-flatten",
		"volumeNamePrefix": "k8s-", "csi.storage.k8s.io/fstype": "xfs", "unknown": "ignored"})
	if err != nil {
		t.Fatal(err)
	}
	want := rbd.FeatureLayering | rbd.FeatureExclusiveLock | rbd.FeatureObjectMap | rbd.FeatureFastDiff | rbd.FeatureDeepFlatten
	if v.Features != want || v.DataPool != "ec" || v.NamePrefix != "k8s-" || v.FsType != "xfs" {
		t.Fatalf("parsed = %+v", v)
	}
}

func TestParseVolumeParamsNamesTheBadParameter(t *testing.T) {
	for param, p := range map[string]map[string]string{
		"clusterID":                 {"pool": "rbd"},
		"pool":                      {"clusterID": "c"},
		"imageFeatures":             {"clusterID": "c", "pool": "rbd", "imageFeatures": "layering,striping"},
		"csi.storage.k8s.io/fstype": {"clusterID": "c", "pool": "rbd", "csi.storage.k8s.io/fstype": "btrfs"},
		"volumeNamePrefix":          {"clusterID": "c", "pool": "rbd", "volumeNamePrefix": "a/b"},
		"mounter":                   {"clusterID": "c", "pool": "rbd", "mounter": "nfs"},
	} {
		_, err := parseVolumeParams(p)
		if csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: code = %v", param, csierr.Code(err))
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, `"`+param+`"`) {
			t.Errorf("%s: message %q does not name the parameter", param, msg)
		}
	}
}

func TestFeatureDependencies(t *testing.T) {
	for _, s := range []string{"layering,object-map", "layering,fast-diff,exclusive-lock", "journaling"} {
		if _, _, err := parseFeatures(s); err == nil {
			t.Errorf("parseFeatures(%q) accepted a missing dependency", s)
		}
	}
	if _, names, err := parseFeatures("layering,exclusive-lock,journaling"); err != nil || names != "layering,exclusive-lock,journaling" {
		t.Errorf("journaling with exclusive-lock: %q, %v", names, err)
	}
}

// TestParseVolumeParamsSafeValues: the values the fuzz targets found
// accepted although unsafe, and the blame put on a parameter not given.
func TestParseVolumeParamsSafeValues(t *testing.T) {
	base := func(kv ...string) map[string]string {
		p := map[string]string{"clusterID": "c", "pool": "rbd"}
		for i := 0; i+1 < len(kv); i += 2 {
			p[kv[i]] = kv[i+1]
		}
		return p
	}
	for _, tc := range []struct {
		p     map[string]string
		param string
	}{
		{base("clusterID", strings.Repeat("c", 37)), "clusterID"},   // would not fit a volume ID
		{base("radosNamespace", "a/b"), "radosNamespace"},           // splits pool/namespace/image
		{base("radosNamespace", "ns,_pool_ns=x"), "radosNamespace"}, // a second krbd option
		{base("pool", "rbd\x00x"), "pool"},                          // a C string ends at the NUL
		{base("stripeCount", "4"), "stripeCount"},                   // blamed stripeUnit, which was not set
		{base("stripeUnit", "256", "stripeCount", "1"), "stripeUnit"},
		{base("stripeUnit", "1073741824", "stripeCount", "1"), "stripeUnit"},
	} {
		_, err := parseVolumeParams(tc.p)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"`+tc.param+`"`) {
			t.Errorf("%q: %v, want InvalidArgument naming %s", tc.p, err, tc.param)
		}
	}
	// A value naming no feature is the default, not an image without any.
	for _, s := range []string{"", " , ", ","} {
		if set, names, err := parseFeatures(s); err != nil || set != rbd.FeatureLayering || names != "layering" {
			t.Errorf("parseFeatures(%q) = %#x, %q, %v", s, set, names, err)
		}
	}
	v, err := parseVolumeParams(base("radosNamespace", "tenant-a", "stripeUnit", "512", "stripeCount", "8"))
	if err != nil || v.RadosNamespace != "tenant-a" || v.StripeUnit != 512 || v.StripeCount != 8 {
		t.Errorf("good namespace and striping: %+v, %v", v, err)
	}
}
