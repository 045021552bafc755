package request

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestRoundedSize(t *testing.T) {
	for _, tc := range []struct {
		req, limit int64
		want       int64
		code       codes.Code
	}{
		{0, 0, 1 << 30, codes.OK},
		{1, 0, MiB, codes.OK},
		{MiB, 0, MiB, codes.OK},
		{MiB + 1, 0, 2 * MiB, codes.OK},
		{0, 10 * MiB, 10 * MiB, codes.OK},
		{MiB + 1, 2*MiB + 5, 2 * MiB, codes.OK},
		{MiB + 1, MiB + 2, 0, codes.OutOfRange},
		{5 * MiB, MiB, 0, codes.InvalidArgument},
		{-1, 0, 0, codes.InvalidArgument},
	} {
		got, err := RoundedSize(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.limit})
		if csierr.Code(err) != tc.code || got != tc.want {
			t.Errorf("RoundedSize(%d, %d) = %d, %v; want %d, %v", tc.req, tc.limit, got, err, tc.want, tc.code)
		}
	}
	if got, err := RoundedSize(nil); err != nil || got != DefaultVolumeSize {
		t.Errorf("RoundedSize(nil) = %d, %v", got, err)
	}
}

func TestExpandSizeNamesTheMissingField(t *testing.T) {
	if _, err := ExpandSize(&csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: MiB}}); csierr.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "volume_id") {
		t.Errorf("no volume_id: %v", err)
	}
	if _, err := ExpandSize(&csi.ControllerExpandVolumeRequest{VolumeId: "v"}); csierr.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "capacity_range") {
		t.Errorf("no capacity_range: %v", err)
	}
	if got, err := ExpandSize(&csi.ControllerExpandVolumeRequest{VolumeId: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: MiB + 1}}); err != nil || got != 2*MiB {
		t.Errorf("ExpandSize = %d, %v; want %d", got, err, 2*MiB)
	}
}

func capability(block bool, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	}
	return c
}

func TestValidateCapabilities(t *testing.T) {
	rwx := csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rwop := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	for _, tc := range []struct {
		caps     []*csi.VolumeCapability
		sharedFS bool
		ok       bool
	}{
		{[]*csi.VolumeCapability{capability(false, rwo)}, false, true},
		{[]*csi.VolumeCapability{capability(false, rwop)}, false, true},
		{[]*csi.VolumeCapability{capability(true, rwx)}, false, true},
		{[]*csi.VolumeCapability{capability(false, rwx)}, false, false},
		{[]*csi.VolumeCapability{capability(false, rwx)}, true, true},
		{[]*csi.VolumeCapability{capability(true, rwo)}, true, false},
		{[]*csi.VolumeCapability{capability(false, csi.VolumeCapability_AccessMode_UNKNOWN)}, false, false},
		{[]*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}}, false, false},
		{nil, false, false},
	} {
		err := ValidateCapabilities(tc.caps, tc.sharedFS)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateCapabilities(%v, shared=%v) = %v, want ok=%v", tc.caps, tc.sharedFS, err, tc.ok)
		}
		if err != nil && csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("code = %v, want InvalidArgument", csierr.Code(err))
		}
	}
}

func TestPassThroughDropsSidecarKeys(t *testing.T) {
	out := PassThrough(map[string]string{
		"pool": "rbd", "mounter": "rbd-nbd",
		"csi.storage.k8s.io/fstype":                      "xfs",
		"csi.storage.k8s.io/provisioner-secret-name":     "s",
		"csi.storage.k8s.io/node-stage-secret-namespace": "ns",
	})
	if len(out) != 3 || out["csi.storage.k8s.io/fstype"] != "xfs" || out["mounter"] != "rbd-nbd" {
		t.Fatalf("PassThrough = %v", out)
	}
}

func TestSafeOption(t *testing.T) {
	for _, ok := range []string{"noatime", "queue_depth=128", "ms_mode=prefer-crc", "context=system_u:object_r:tmp_t:s0",
		"recover_session=clean", "namespace=x", "keyed"} {
		if err := SafeOption("f", ok); err != nil {
			t.Errorf("SafeOption(%q) = %v", ok, err)
		}
	}
	for opt, why := range map[string]string{
		"a,name=admin":           "a second option",
		"noshare rbd other":      "more tokens of a krbd add request (pool and image)",
		"a\vb":                   "a vertical tab, whitespace to the kernel's request parser",
		"a\x00b":                 "a NUL",
		"ro\x7f":                 "DEL",
		"fsname=caf\u00e9":       "non-ASCII",
		`context="x`:             "an unbalanced quote, which makes mount(8) read the driver's next options into this one",
		`a\,b`:                   "a backslash",
		"--log_file=/etc/passwd": "an argument ceph-fuse takes for its own when first after -o",
		"-o":                     "an argument",
		"name=admin":             "the cephx user",
		"Secret=x":               "the key",
		"secretfile=/etc/x":      "the key",
		"keyring=/etc/x":         "the key",
		"mon-host=10.0.0.9":      "the monitors, spelled with a dash",
		"mon_addr=10.0.0.9":      "the monitors of the kernel CephFS client",
		"user=admin":             "the cephx user under Ceph's other name for --id",
	} {
		err := SafeOption("volume_context.mapOptions", opt)
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "volume_context.mapOptions") {
			t.Errorf("SafeOption(%q) = %v; want InvalidArgument naming the field (%s)", opt, err, why)
		}
	}
	if err := SafeOptionList("f", " noatime, ,nodiratime "); err != nil {
		t.Errorf("SafeOptionList with spaces around items: %v", err)
	}
	if err := SafeOptionList("f", "noatime,name=admin"); err == nil {
		t.Error("SafeOptionList accepted name=")
	}
}

func TestNamesAndTokens(t *testing.T) {
	for _, v := range []string{"rbd\x00", "rbd\v", "rbd\n", "-rbd", "a/b", "a@b", "a,b", "", strings.Repeat("p", 256)} {
		if err := ValidPoolName("pool", v); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"pool"`) {
			t.Errorf("ValidPoolName(%q) = %v", v, err)
		}
	}
	if err := ValidPoolName("pool", "ec-data.1"); err != nil {
		t.Error(err)
	}
	if err := ValidNamespace("radosNamespace", ""); err != nil {
		t.Errorf("the default namespace: %v", err)
	}
	if err := ValidNamespace("radosNamespace", "ns/x"); csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidNamespace(ns/x) = %v", err)
	}
	for v, want := range map[string]bool{"csi-rbd-node": true, "a.b_c": true, "-n": false, "": false, "a b": false, "a,b": false} {
		if SafeToken(v) != want {
			t.Errorf("SafeToken(%q) = %v", v, !want)
		}
	}
	if _, err := NamePrefix(map[string]string{"p": "-x"}, "p", "d"); err == nil {
		t.Error("a prefix starting with '-' was accepted")
	}
	for _, v := range []string{"myfs", "/volumes/csi/v/uuid"} {
		if err := SafeValue("f", v); err != nil {
			t.Errorf("SafeValue(%q) = %v", v, err)
		}
	}
	for _, v := range []string{"fs,name=admin", "fs name", "-fs", "fs\n"} {
		if err := SafeValue("f", v); csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("SafeValue(%q) = %v", v, err)
		}
	}
}
