package cephfs

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
)

func TestParseVolumeParams(t *testing.T) {
	base := func(kv ...string) map[string]string {
		p := map[string]string{"clusterID": "c", "fsName": "fs"}
		for i := 0; i+1 < len(kv); i += 2 {
			p[kv[i]] = kv[i+1]
		}
		return p
	}
	v, err := parseVolumeParams(base("unknownParameter", "ignored"))
	if err != nil || v.NamePrefix != "csi-vol-" || v.Mounter != "" || v.BackingSnapshot {
		t.Fatalf("defaults = %+v, %v", v, err)
	}
	v, err = parseVolumeParams(base("volumeNamePrefix", "k8s-", "mounter", "fuse", "pool", "data", "backingSnapshot", "true"))
	if err != nil || v.NamePrefix != "k8s-" || v.Mounter != "fuse" || v.Pool != "data" || !v.BackingSnapshot {
		t.Fatalf("explicit = %+v, %v", v, err)
	}
	for _, tc := range []struct {
		p     map[string]string
		field string
	}{
		{map[string]string{"fsName": "fs"}, "clusterID"},
		{map[string]string{"clusterID": "c"}, "fsName"},
		{base("mounter", "nfs"), "mounter"},
		{base("volumeNamePrefix", "a/b"), "volumeNamePrefix"},
		{base("backingSnapshot", "yes please"), "backingSnapshot"},
		{base("encrypted", "maybe"), "encrypted"},
		{base("encrypted", "true", "encryptionType", "block"), "encryptionType"},
		{base("encrypted", "true", "encryptionType", "fscrypt"), "encryptionType"},
		{base("encrypted", "true", "mounter", "fuse"), "mounter"},
		{base("encrypted", "true", "encryptionCipher", "aes-xts-plain64"), "encryptionCipher"},
		{base("encryptionKMSID", "vault"), "encryptionKMSID"},
		{base("encryptionType", "file"), "encryptionType"},
		{base("encrypted", "true", "backingSnapshot", "true"), "backingSnapshot"},
	} {
		_, err := parseVolumeParams(tc.p)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"`+tc.field+`"`) {
			t.Errorf("%v: %v, want InvalidArgument naming %s", tc.p, err, tc.field)
		}
	}
	for _, tc := range []struct {
		p     map[string]string
		kmsID string
		on    bool
	}{
		{base("encrypted", "false"), "", false},
		{base("encrypted", "false", "encryptionKMSID", "x"), "", false},
		{base("encrypted", "true"), "", true},
		{base("encrypted", "True", "encryptionKMSID", "default", "mounter", "kernel"), "", true},
		{base("encrypted", "true", "encryptionKMSID", "secrets", "encryptionType", "file"), "secrets", true},
	} {
		v, err := parseVolumeParams(tc.p)
		switch {
		case err != nil:
			t.Errorf("%v: %v", tc.p, err)
		case (v.Encryption != nil) != tc.on || (tc.on && v.Encryption.KMSID != tc.kmsID):
			t.Errorf("%v: encryption %+v, want on=%v KMS %q", tc.p, v.Encryption, tc.on, tc.kmsID)
		}
	}
	if p, err := snapshotPrefix(nil); err != nil || p != "csi-snap-" {
		t.Errorf("default snapshot prefix = %q, %v", p, err)
	}
	if _, err := snapshotPrefix(map[string]string{"snapshotNamePrefix": "a@b"}); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("bad snapshot prefix: %v", err)
	}
}

func TestFitsCapacityRange(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		have int64
		r    *csi.CapacityRange
		want bool
	}{
		{10 * mib, &csi.CapacityRange{RequiredBytes: 10 * mib}, true},
		{10 * mib, &csi.CapacityRange{RequiredBytes: 10*mib - 5}, true},
		{10 * mib, &csi.CapacityRange{RequiredBytes: 20 * mib}, false},
		{20 * mib, &csi.CapacityRange{RequiredBytes: 10 * mib, LimitBytes: 15 * mib}, false},
		{20 * mib, &csi.CapacityRange{RequiredBytes: 10 * mib}, true},
		{5 * mib, nil, true},
	} {
		if got := request.Fits(tc.have, tc.r); got != tc.want {
			t.Errorf("Fits(%d, %v) = %v, want %v", tc.have, tc.r, got, tc.want)
		}
	}
}

func TestReadOnlyModes(t *testing.T) {
	c := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: m}}
	}
	if !request.ReadOnlyModes([]*csi.VolumeCapability{c(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY),
		c(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)}) {
		t.Error("reader-only modes not recognised")
	}
	if request.ReadOnlyModes([]*csi.VolumeCapability{c(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY),
		c(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}) {
		t.Error("a writer mode passed as read-only")
	}
}

// TestParseVolumeParamsSafeValues: values FuzzParseVolumeParams found
// accepted although they reach mount options, paths or volume IDs.
func TestParseVolumeParamsSafeValues(t *testing.T) {
	for _, tc := range []struct {
		p     map[string]string
		field string
	}{
		{map[string]string{"clusterID": strings.Repeat("c", 37), "fsName": "fs"}, "clusterID"},
		{map[string]string{"clusterID": "c", "fsName": "fs,name=admin"}, "fsName"},
		{map[string]string{"clusterID": "c", "fsName": "--keyring=/etc/ceph/keyring"}, "fsName"},
		{map[string]string{"clusterID": "c", "fsName": "fs", "pool": "data\n"}, "pool"},
		{map[string]string{"clusterID": "c", "fsName": "fs", "volumeNamePrefix": "a,b"}, "volumeNamePrefix"},
		{map[string]string{"clusterID": "c", "fsName": "fs", "volumeNamePrefix": "a\tb"}, "volumeNamePrefix"},
		{map[string]string{"clusterID": "c", "fsName": "fs", "volumeNamePrefix": strings.Repeat("p", 65)}, "volumeNamePrefix"},
	} {
		_, err := parseVolumeParams(tc.p)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"`+tc.field+`"`) {
			t.Errorf("%q: %v, want InvalidArgument naming %s", tc.p, err, tc.field)
		}
	}
	if _, err := snapshotPrefix(map[string]string{"snapshotNamePrefix": "a,b"}); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("snapshot prefix with a comma: %v", err)
	}
}
