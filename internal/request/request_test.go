package request

import (
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
