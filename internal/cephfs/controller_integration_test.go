//go:build integration

package cephfs_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

func TestCreateVolumeShapeJournalAndDelete(t *testing.T) {
	e := newEnv(t)
	name := uniqueName("pvc")
	req := &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: size(10<<20 + 1),
		VolumeCapabilities: []*csi.VolumeCapability{
			fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)},
		Parameters: params(e.c, "pool", dataPool, "kernelMountOptions", "noatime",
			"csi.storage.k8s.io/provisioner-secret-name", "x"),
		Secrets: e.secrets,
	}
	vol, _ := e.createVolume(req)
	if vol.GetCapacityBytes() != 11<<20 {
		t.Errorf("capacity = %d, want 11 MiB (rounded up)", vol.GetCapacityBytes())
	}
	u := testutil.UUIDOf(t, vol.GetVolumeId())
	sub := "csi-vol-" + u

	// The subvolume, as `ceph fs subvolume info myfs csi-vol-... csi` shows it.
	info := e.subvolumeInfo(sub)
	if quota(info) != 11<<20 || info.Type != "subvolume" || info.DataPool != dataPool || info.Mode&0o777 != 0o777 {
		t.Errorf("subvolume %s: quota %d, type %s, data pool %s, mode %o", sub, quota(info), info.Type, info.DataPool, info.Mode)
	}
	vc := vol.GetVolumeContext()
	for k, want := range map[string]string{"clusterID": e.c.ClusterID, "fsName": fsName, "subvolumeName": sub,
		"subvolumePath": info.Path, "mounter": "fuse", "kernelMountOptions": "noatime", "pool": dataPool} {
		if vc[k] != want {
			t.Errorf("volume_context[%s] = %q, want %q", k, vc[k], want)
		}
	}
	if _, leaked := vc["csi.storage.k8s.io/provisioner-secret-name"]; leaked {
		t.Error("sidecar parameter copied into volume_context")
	}

	// The journal, in the metadata pool's "csi" namespace, as ceph-csi writes it.
	if got := testutil.Omap(t, e.meta, "csi.volumes.default")["csi.volume."+name]; got != u {
		t.Errorf("csi.volumes.default[csi.volume.%s] = %q, want %q", name, got, u)
	}
	entry := testutil.Omap(t, e.meta, "csi.volume."+u)
	if entry["csi.volname"] != name || entry["csi.imagename"] != sub {
		t.Errorf("csi.volume.%s = %v", u, entry)
	}

	// A retry returns the same volume; another size is AlreadyExists.
	again, err := e.d.Controller.CreateVolume(e.ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("retry = %v, %v; want the same volume", again, err)
	}
	bigger := proto.Clone(req).(*csi.CreateVolumeRequest)
	bigger.CapacityRange = size(20 << 20)
	if _, err := e.d.Controller.CreateVolume(e.ctx, bigger); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other size: %v, want AlreadyExists", err)
	}

	// Delete removes the subvolume, then the journal; a second delete is fine.
	for i := 0; i < 2; i++ {
		e.deleteVolume(vol.GetVolumeId())
	}
	if e.subvolumeExists(sub) {
		t.Errorf("subvolume %s left after delete", sub)
	}
	e.assertNoLeftovers("after delete")
}

func TestUserSecretsAndDefaults(t *testing.T) {
	e := newEnv(t)
	// userID/userKey stand in for adminID/adminKey when those are absent.
	user := map[string]string{"userID": e.secrets["adminID"], "userKey": e.secrets["adminKey"]}
	vol, _ := e.createVolume(&csi.CreateVolumeRequest{Name: uniqueName("pvc"), VolumeCapabilities: rwo(),
		Parameters: params(e.c, "volumeNamePrefix", "k8s-"), Secrets: user})
	sub := "k8s-" + testutil.UUIDOf(t, vol.GetVolumeId())
	if vol.GetCapacityBytes() != 1<<30 || vol.GetVolumeContext()["subvolumeName"] != sub {
		t.Fatalf("volume = %v", vol)
	}
	if q := quota(e.subvolumeInfo(sub)); q != 1<<30 {
		t.Errorf("quota of %s = %d, want 1 GiB", sub, q)
	}
	if _, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: user}); err != nil {
		t.Fatal(err)
	}
	if e.subvolumeExists(sub) {
		t.Fatal("custom-prefixed subvolume left after delete")
	}
}

func TestBadRequestsArePreciseAndLeaveNothing(t *testing.T) {
	e := newEnv(t)
	name := uniqueName("bad")
	e.track(&e.names, name)
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	for _, tc := range []struct {
		what    string
		req     *csi.CreateVolumeRequest
		code    codes.Code
		mention string
	}{
		{"no fsName", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: map[string]string{"clusterID": e.c.ClusterID}}, codes.InvalidArgument, "fsName"},
		{"unknown fs", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, "fsName", "nosuchfs")}, codes.InvalidArgument, "fsName"},
		{"foreign pool", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, "pool", "rbd")}, codes.InvalidArgument, "pool"},
		{"bad mounter", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, "mounter", "nfs")}, codes.InvalidArgument, "mounter"},
		{"block", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{block}, Parameters: params(e.c)}, codes.InvalidArgument, "block"},
		{"unknown cluster", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, "clusterID", "nope")}, codes.InvalidArgument, "clusterID"},
		{"no secrets", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c), Secrets: map[string]string{"x": "y"}}, codes.InvalidArgument, "adminID"},
		{"backing without snapshot", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c, "backingSnapshot", "true")}, codes.InvalidArgument, "backingSnapshot"},
		{"missing source snapshot", &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo(), Parameters: params(e.c),
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{
				SnapshotId: "0001-000e-test-cluster-1-0000000000000001-00000000-0000-0000-0000-000000000000"}}}}, codes.NotFound, "snapshot"},
	} {
		if tc.req.Secrets == nil {
			tc.req.Secrets = e.secrets
		}
		_, err := e.d.Controller.CreateVolume(e.ctx, tc.req)
		if status.Code(err) != tc.code || !containsFold(status.Convert(err).Message(), tc.mention) {
			t.Errorf("%s: %v, want %s mentioning %q", tc.what, err, tc.code, tc.mention)
		}
	}
	if _, ok := testutil.Omap(t, e.meta, "csi.volumes.default")["csi.volume."+name]; ok {
		t.Error("a refused request left a journal key")
	}
	// Calls on volumes that do not exist.
	missing := "0001-000e-" + e.c.ClusterID + "-0000000000000001-11111111-2222-3333-4444-555555555555"
	if _, err := e.d.Controller.ControllerExpandVolume(e.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: missing,
		CapacityRange: size(1 << 30), Secrets: e.secrets}); status.Code(err) != codes.NotFound {
		t.Errorf("expand of a missing volume: %v, want NotFound", err)
	}
	if _, err := e.d.Controller.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: missing,
		Secrets: e.secrets}); status.Code(err) != codes.NotFound {
		t.Errorf("snapshot of a missing volume: %v, want NotFound", err)
	}
	if _, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: missing, Secrets: e.secrets}); err != nil {
		t.Errorf("delete of a missing volume: %v, want success", err)
	}
	if _, err := e.d.Controller.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: missing, Secrets: e.secrets}); err != nil {
		t.Errorf("delete of a missing snapshot: %v, want success", err)
	}
	if _, err := e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: "not-an-id", Secrets: e.secrets}); err != nil {
		t.Errorf("delete of a foreign ID: %v, want success", err)
	}
}

func TestExpandGrowsQuota(t *testing.T) {
	e := newEnv(t)
	vol := e.newVolume("exp", 8<<20, nil)
	sub := vol.GetVolumeContext()["subvolumeName"]
	resp, err := e.d.Controller.ControllerExpandVolume(e.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: size(20 << 20), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCapacityBytes() != 20<<20 || resp.GetNodeExpansionRequired() {
		t.Errorf("expand = %v, want 20 MiB without node expansion", resp)
	}
	if q := quota(e.subvolumeInfo(sub)); q != 20<<20 {
		t.Errorf("quota = %d after expand", q)
	}
	// Expanding to a smaller size keeps the quota.
	resp, err = e.d.Controller.ControllerExpandVolume(e.ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: size(10 << 20), Secrets: e.secrets})
	if err != nil || resp.GetCapacityBytes() != 20<<20 {
		t.Errorf("smaller expand = %v, %v; want 20 MiB kept", resp, err)
	}
	if q := quota(e.subvolumeInfo(sub)); q != 20<<20 {
		t.Errorf("quota = %d after a smaller expand", q)
	}
	v, err := e.d.Controller.ValidateVolumeCapabilities(e.ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol.GetVolumeId(),
		VolumeCapabilities: []*csi.VolumeCapability{fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}, Secrets: e.secrets})
	if err != nil || v.GetConfirmed() == nil {
		t.Errorf("RWX validation = %v, %v; want confirmed", v, err)
	}
	e.deleteVolume(vol.GetVolumeId())
}

// TestDeleteVolumeWithSnapshotsRetainsThem deletes a volume that still has a
// snapshot: the snapshot keeps working for restores, and the subvolume is
// purged by Ceph once the snapshot is deleted.
func TestDeleteVolumeWithSnapshotsRetainsThem(t *testing.T) {
	e := newEnv(t)
	vol := e.newVolume("ret", 16<<20, nil)
	sub := vol.GetVolumeContext()["subvolumeName"]
	data := []byte("kept in a retained snapshot")
	e.withMounted(vol, func(target string) { writeFile(t, target+"/f", data) })
	snap := e.snapshot(uniqueName("snap"), vol.GetVolumeId())

	e.deleteVolume(vol.GetVolumeId())
	info, err := e.fsa.SubVolumeInfo(fsName, group, sub)
	if err != nil || info.State != admin.StateSnapRetained {
		t.Fatalf("after delete, subvolume %s: %+v, %v; want state snapshot-retained", sub, info, err)
	}
	if entry := testutil.Omap(t, e.meta, "csi.volume."+testutil.UUIDOf(t, vol.GetVolumeId())); entry != nil {
		t.Errorf("journal entry left after delete: %v", entry)
	}

	// The snapshot still restores.
	restored := e.newVolume("rst", 16<<20, testutil.FromSnapshot(snap.GetSnapshotId()))
	e.withMounted(restored, func(target string) { mustEqual(t, "restored file", readFile(t, target+"/f"), data) })

	e.deleteSnapshot(snap.GetSnapshotId())
	// Ceph purges the retained subvolume itself: at once, or (when the purge
	// of its data directory is still running) when that purge ends.
	deadline := time.Now().Add(30 * time.Second)
	for e.subvolumeExists(sub) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if e.subvolumeExists(sub) {
		t.Errorf("retained subvolume %s not purged within 30 s after its last snapshot went", sub)
	}
	e.deleteVolume(restored.GetVolumeId())
}

// --setmetadata: the Kubernetes names are recorded as subvolume and
// subvolume snapshot metadata, as `ceph fs subvolume metadata ls` shows
// them; with --setmetadata=false none are.
func TestSetMetadataRecordsKubernetesNames(t *testing.T) {
	for _, on := range []bool{true, false} {
		e := newEnv(t, func(o *config.Options) { o.SetMetadata, o.ClusterName = on, "prod" })
		vol := e.newVolume("meta", 8<<20, nil, "csi.storage.k8s.io/pvc/name", "data", "csi.storage.k8s.io/pvc/namespace", "team-a",
			"csi.storage.k8s.io/pv/name", "pvc-1234")
		sub := vol.GetVolumeContext()["subvolumeName"]
		got, err := e.fsa.ListMetadata(fsName, group, sub)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team-a",
			"csi.storage.k8s.io/pv/name": "pvc-1234", "csi.ceph.com/cluster/name": "prod"}
		if !on {
			want = map[string]string{}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("setmetadata=%v: subvolume metadata = %v, want %v", on, got, want)
		}
		resp, err := e.d.Controller.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: uniqueName("metasnap"),
			SourceVolumeId: vol.GetVolumeId(), Secrets: e.secrets,
			Parameters: map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "snap-1"}})
		if err != nil {
			t.Fatal(err)
		}
		e.track(&e.snapshots, resp.GetSnapshot().GetSnapshotId())
		snapName := "csi-snap-" + testutil.UUIDOf(t, resp.GetSnapshot().GetSnapshotId())
		gotSnap, err := e.fsa.ListSnapshotMetadata(fsName, group, sub, snapName)
		if err != nil {
			t.Fatal(err)
		}
		wantSnap := map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "snap-1", "csi.ceph.com/cluster/name": "prod"}
		if !on {
			wantSnap = map[string]string{}
		}
		if !reflect.DeepEqual(gotSnap, wantSnap) {
			t.Errorf("setmetadata=%v: snapshot metadata = %v, want %v", on, gotSnap, wantSnap)
		}
	}
}
