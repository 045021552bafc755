package cephfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/service"
)

func unitStageNode(t *testing.T) *NodeServer {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`[{"clusterID":"c1","monitors":["10.0.0.1:6789"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	return &NodeServer{Deps: &service.Deps{Options: &config.Options{NodeID: "node-1"}, Clusters: config.NewClusters(cfg)}}
}

func unitStageRequest(kv ...string) *csi.NodeStageVolumeRequest {
	vc := map[string]string{"clusterID": "c1", "fsName": "myfs", "subvolumePath": "/volumes/csi/csi-vol-1/uuid", "mounter": "kernel"}
	for i := 0; i+1 < len(kv); i += 2 {
		vc[kv[i]] = kv[i+1]
	}
	return &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/staging",
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}},
		VolumeContext: vc, Secrets: map[string]string{"userID": "csi-cephfs-node", "userKey": testKey}}
}

// TestDecodeStageRefusesInjection: the volume context of a static or
// dynamic volume may carry neither options nor values that reach the
// mount helper as more than themselves (FuzzStageMountOptions found each
// of these accepted before).
func TestDecodeStageRefusesInjection(t *testing.T) {
	n := unitStageNode(t)
	for _, tc := range []struct {
		kv    []string
		field string
	}{
		// Credentials of another user for mount.ceph, which takes the last
		// name= and secretfile=.
		{[]string{"kernelMountOptions", "name=admin,secretfile=/etc/ceph/admin.secret"}, "volume_context.kernelMountOptions"},
		{[]string{"kernelMountOptions", "noatime secret=AQD"}, "volume_context.kernelMountOptions"},
		{[]string{"kernelMountOptions", "mon_addr=10.9.9.9"}, "volume_context.kernelMountOptions"},
		// An unbalanced quote makes the options after it part of this one.
		{[]string{"kernelMountOptions", `context="x`}, "volume_context.kernelMountOptions"},
		// First after -o, ceph-fuse reads these as its own arguments.
		{[]string{"mounter", "fuse", "fuseMountOptions", "--keyring=/etc/ceph/keyring"}, "volume_context.fuseMountOptions"},
		{[]string{"mounter", "fuse", "fuseMountOptions", "--log_file=/etc/passwd"}, "volume_context.fuseMountOptions"},
		// mds_namespace=<fsName> is one item of the option list.
		{[]string{"fsName", "myfs,name=admin"}, "volume_context.fsName"},
		{[]string{"subvolumePath", "/r,name=admin"}, "volume_context.subvolumePath"},
		{[]string{"subvolumePath", "volumes/csi"}, "volume_context.subvolumePath"},
		{[]string{"staticVolume", "true", "rootPath", "/r\n"}, "volume_context.rootPath"},
		{[]string{"mounter", "nfs"}, "volume_context.mounter"},
	} {
		_, err := n.decodeStage(context.Background(), unitStageRequest(tc.kv...))
		if csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q: %v, want InvalidArgument naming %s", tc.kv, err, tc.field)
		}
	}
	sr, err := n.decodeStage(context.Background(), unitStageRequest("kernelMountOptions", " ms_mode=secure, noatime "))
	if err != nil {
		t.Fatal(err)
	}
	sr.spec.Target = "/staging"
	want := []string{"10.0.0.1:6789:/volumes/csi/csi-vol-1/uuid", "/staging", "-o",
		"name=csi-cephfs-node,secretfile=/proc/self/fd/3,mds_namespace=myfs,ms_mode=secure,noatime"}
	if got := kernelArgs(sr.spec); !slices.Equal(got, want) {
		t.Errorf("mount.ceph args = %q, want %q", got, want)
	}
}
