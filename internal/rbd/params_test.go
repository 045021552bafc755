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
