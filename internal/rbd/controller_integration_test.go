//go:build integration

package rbd_test

import (
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

func TestCreateVolumeShapeJournalAndDelete(t *testing.T) {
	e := newRBDEnv(t)
	c, d, io, ctx := e.c, e.d, e.io, e.ctx
	name := uniqueName("pvc")

	req := &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 10<<20 + 1},
		VolumeCapabilities: mountCap(),
		Parameters: params(c, "imageFeatures", "layering,exclusive-lock,object-map,fast-diff",
			"mounter", "rbd-nbd", "csi.storage.k8s.io/provisioner-secret-name", "x"),
		Secrets: c.RBDSecrets(),
	}
	resp, err := d.Controller.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	vol := resp.GetVolume()
	if vol.GetCapacityBytes() != 11<<20 {
		t.Errorf("capacity = %d, want 11 MiB (rounded up)", vol.GetCapacityBytes())
	}
	u := testutil.UUIDOf(t, vol.GetVolumeId())
	image := "csi-vol-" + u
	vc := vol.GetVolumeContext()
	for k, want := range map[string]string{"clusterID": c.ClusterID, "pool": pool, "journalPool": pool, "imageName": image,
		"imageFormat": "2", "mounter": "rbd-nbd", "imageFeatures": "layering,exclusive-lock,object-map,fast-diff"} {
		if vc[k] != want {
			t.Errorf("volume_context[%s] = %q, want %q", k, vc[k], want)
		}
	}
	if _, leaked := vc["csi.storage.k8s.io/provisioner-secret-name"]; leaked {
		t.Error("sidecar parameter copied into volume_context")
	}

	// The image, as a Rook user would inspect it.
	img, err := rbd.OpenImageReadOnly(io, image, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("image %s not in pool: %v", image, err)
	}
	features, _ := img.GetFeatures()
	imageID, _ := img.GetId()
	img.Close()
	if size := testutil.ImageSize(t, io, image); size != 11<<20 {
		t.Errorf("image size = %d", size)
	}
	want := rbd.FeatureLayering | rbd.FeatureExclusiveLock | rbd.FeatureObjectMap | rbd.FeatureFastDiff
	if features != want {
		t.Errorf("features = %#x, want %#x", features, want)
	}

	// The journal, exactly as ceph-csi writes it.
	if got := testutil.Omap(t, io, "csi.volumes.default")["csi.volume."+name]; got != u {
		t.Errorf("csi.volumes.default[csi.volume.%s] = %q, want %q", name, got, u)
	}
	entry := testutil.Omap(t, io, "csi.volume."+u)
	if entry["csi.volname"] != name || entry["csi.imagename"] != image || entry["csi.imageid"] != imageID {
		t.Errorf("csi.volume.%s = %v (image id %s)", u, entry, imageID)
	}

	// A retry returns the same volume; another size is AlreadyExists.
	again, err := d.Controller.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("retry = %v, %v; want the same volume", again, err)
	}
	bigger := proto.Clone(req).(*csi.CreateVolumeRequest)
	bigger.CapacityRange = &csi.CapacityRange{RequiredBytes: 20 << 20}
	if _, err := d.Controller.CreateVolume(ctx, bigger); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other size: %v, want AlreadyExists", err)
	}

	// Delete removes the image, then the journal keys; a second delete is fine.
	for i := 0; i < 2; i++ {
		e.deleteVolume(vol.GetVolumeId())
	}
	if left := c.Leftovers(t, u); len(left) > 0 {
		t.Errorf("left after delete: %v", left)
	}
	if _, ok := testutil.Omap(t, io, "csi.volumes.default")["csi.volume."+name]; ok {
		t.Error("directory key left after delete")
	}
}

func TestCreateVolumeDefaultsAndXFS(t *testing.T) {
	e := newRBDEnv(t)
	// No capacity range: the default size.
	req := e.volReq(uniqueName("pvc"), 0, nil, "csi.storage.k8s.io/fstype", "xfs", "volumeNamePrefix", "k8s-")
	req.CapacityRange = nil
	resp, err := e.d.Controller.CreateVolume(e.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	vol := resp.GetVolume()
	image := "k8s-" + testutil.UUIDOf(t, vol.GetVolumeId())
	if vol.GetCapacityBytes() != 1<<30 || vol.GetVolumeContext()["imageName"] != image {
		t.Fatalf("volume = %v", vol)
	}
	if !testutil.ImageExists(t, e.io, image) {
		t.Fatalf("image %s missing", image)
	}
	e.deleteVolume(vol.GetVolumeId())
	if testutil.ImageExists(t, e.io, image) {
		t.Fatal("custom-prefixed image left after delete")
	}
}

func TestRacingCreatesMakeOneImage(t *testing.T) {
	e := newRBDEnv(t)
	ctx := e.ctx
	req := e.volReq(uniqueName("race"), 4<<20, nil)

	var mu sync.Mutex
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := e.d.Controller.CreateVolume(ctx, req)
				if status.Code(err) == codes.Aborted { // the sidecar's retry
					time.Sleep(5 * time.Millisecond)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ids[resp.GetVolume().GetVolumeId()] = true
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	if len(ids) != 1 {
		t.Fatalf("racing creates returned %d volume IDs", len(ids))
	}
	var id string
	for id = range ids {
	}
	u := testutil.UUIDOf(t, id)
	names, _ := rbd.GetImageNames(e.io)
	n := 0
	for _, img := range names {
		if img == "csi-vol-"+u {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d images for one name", n)
	}
	e.deleteVolume(id)
}

func TestExpandGrowsImage(t *testing.T) {
	e := newRBDEnv(t)
	c, d, ctx := e.c, e.d, e.ctx
	vol := e.create(uniqueName("exp"), 8<<20, nil)
	id, image := vol.GetVolumeId(), vol.GetVolumeContext()["imageName"]
	defer e.deleteVolume(id)

	exp, err := d.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20}, Secrets: c.RBDSecrets(), VolumeCapability: mountCap()[0]})
	if err != nil {
		t.Fatal(err)
	}
	if exp.GetCapacityBytes() != 20<<20 || !exp.GetNodeExpansionRequired() {
		t.Errorf("expand = %v", exp)
	}
	if size := testutil.ImageSize(t, e.io, image); size != 20<<20 {
		t.Errorf("image size after expand = %d", size)
	}
	// Shrinking is not done: the size stays.
	exp, err = d.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 10 << 20}, Secrets: c.RBDSecrets()})
	if err != nil || exp.GetCapacityBytes() != 20<<20 {
		t.Errorf("smaller expand = %v, %v", exp, err)
	}
	// Block volumes need no node expansion.
	exp, err = d.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 24 << 20}, Secrets: c.RBDSecrets(), VolumeCapability: testutil.BlockCap()})
	if err != nil || exp.GetNodeExpansionRequired() {
		t.Errorf("block expand = %v, %v", exp, err)
	}
	if _, err := d.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId:      "0001-000c-test-cluster-1-0000000000000001-00000000-0000-0000-0000-000000000000",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}, Secrets: c.RBDSecrets()}); status.Code(err) != codes.NotFound {
		t.Errorf("expand of a missing volume: %v, want NotFound", err)
	}
}

func TestWatchedImageIsNotDeleted(t *testing.T) {
	e := newRBDEnv(t)
	vol := e.create(uniqueName("busy"), 4<<20, nil)
	id, image := vol.GetVolumeId(), vol.GetVolumeContext()["imageName"]
	// A read-write open registers a watch, as a mapped device does.
	img, err := rbd.OpenImage(e.io, image, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.d.Controller.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.c.RBDSecrets()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete of a watched image: %v, want FailedPrecondition", err)
	}
	if !testutil.ImageExists(t, e.io, image) {
		t.Error("watched image was deleted")
	}
	img.Close()
	e.deleteVolume(id) // once unwatched
	e.assertClean()
}

func TestBadRequestsArePreciseAndLeaveNothing(t *testing.T) {
	e := newRBDEnv(t)
	c, d, io, ctx := e.c, e.d, e.io, e.ctx
	before := len(testutil.Omap(t, io, "csi.volumes.default"))
	base := func() *csi.CreateVolumeRequest { return e.volReq(uniqueName("bad"), 1<<20, nil) }
	for what, tc := range map[string]struct {
		mutate func(*csi.CreateVolumeRequest)
		code   codes.Code
	}{
		"no name":      {func(r *csi.CreateVolumeRequest) { r.Name = "" }, codes.InvalidArgument},
		"no caps":      {func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, codes.InvalidArgument},
		"no pool":      {func(r *csi.CreateVolumeRequest) { delete(r.Parameters, "pool") }, codes.InvalidArgument},
		"unknown pool": {func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "nope" }, codes.InvalidArgument},
		"unknown data": {func(r *csi.CreateVolumeRequest) { r.Parameters["dataPool"] = "nope" }, codes.InvalidArgument},
		"bad cluster":  {func(r *csi.CreateVolumeRequest) { r.Parameters["clusterID"] = "nope" }, codes.InvalidArgument},
		"no secrets":   {func(r *csi.CreateVolumeRequest) { r.Secrets = nil }, codes.InvalidArgument},
		"bad feature":  {func(r *csi.CreateVolumeRequest) { r.Parameters["imageFeatures"] = "layering,bogus" }, codes.InvalidArgument},
		"limit < req":  {func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 1 }, codes.InvalidArgument},
		"rwx filesystem": {func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}, codes.InvalidArgument},
		"wrong key": {func(r *csi.CreateVolumeRequest) {
			r.Secrets = map[string]string{"userID": "csi-rbd-provisioner", "userKey": "AQBA" + strings.Repeat("A", 34) + "=="}
		}, codes.PermissionDenied},
	} {
		r := base()
		tc.mutate(r)
		_, err := d.Controller.CreateVolume(ctx, r)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", what, err, tc.code)
		}
		if r.Secrets != nil && r.Secrets["userKey"] != "" && err != nil && strings.Contains(err.Error(), r.Secrets["userKey"]) {
			t.Errorf("%s: the key appears in the error", what)
		}
	}
	if after := len(testutil.Omap(t, io, "csi.volumes.default")); after != before {
		t.Errorf("failed creates left %d journal keys", after-before)
	}
	// Deleting an ID that is not ours, or whose image is gone, succeeds.
	for _, id := range []string{"not-a-volume-id",
		"0001-000e-test-cluster-1-0000000000000001-00000000-0000-0000-0000-000000000000"} {
		if _, err := d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: c.RBDSecrets()}); err != nil {
			t.Errorf("delete %q: %v", id, err)
		}
	}
}

// --setmetadata: the Kubernetes names the sidecars add to the parameters
// are recorded on the image (and the snapshot image) under ceph-csi's keys,
// as `rbd image-meta list` shows them; with --setmetadata=false none are.
func TestSetMetadataRecordsKubernetesNames(t *testing.T) {
	for _, on := range []bool{true, false} {
		e := newRBDEnv(t, func(o *config.Options) { o.SetMetadata, o.ClusterName = on, "prod" })
		vol := e.create(uniqueName("meta"), 4<<20, nil, "csi.storage.k8s.io/pvc/name", "data",
			"csi.storage.k8s.io/pvc/namespace", "team-a", "csi.storage.k8s.io/pv/name", "pvc-1234")
		snap := e.snapshot(uniqueName("metasnap"), vol.GetVolumeId(), "csi.storage.k8s.io/volumesnapshot/name", "snap-1",
			"csi.storage.k8s.io/volumesnapshot/namespace", "team-a", "csi.storage.k8s.io/volumesnapshotcontent/name", "snapcontent-9")
		want := map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team-a",
			"csi.storage.k8s.io/pv/name": "pvc-1234", "csi.ceph.com/cluster/name": "prod"}
		wantSnap := map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "snap-1", "csi.storage.k8s.io/volumesnapshot/namespace": "team-a",
			"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-9", "csi.ceph.com/cluster/name": "prod"}
		if !on {
			want, wantSnap = map[string]string{}, map[string]string{}
		}
		if got := imageMeta(t, e.io, vol.GetVolumeContext()["imageName"]); !reflect.DeepEqual(got, want) {
			t.Errorf("setmetadata=%v: volume metadata = %v, want %v", on, got, want)
		}
		if got := imageMeta(t, e.io, "csi-snap-"+testutil.UUIDOf(t, snap.GetSnapshotId())); !reflect.DeepEqual(got, wantSnap) {
			t.Errorf("setmetadata=%v: snapshot metadata = %v, want %v", on, got, wantSnap)
		}
		// A restore names its own PVC, not the source's or the snapshot's.
		restored := e.create(uniqueName("metarestore"), 4<<20, testutil.FromSnapshot(snap.GetSnapshotId()),
			"csi.storage.k8s.io/pvc/name", "restored", "csi.storage.k8s.io/pvc/namespace", "team-b", "csi.storage.k8s.io/pv/name", "pvc-5678")
		wantRestore := map[string]string{"csi.storage.k8s.io/pvc/name": "restored", "csi.storage.k8s.io/pvc/namespace": "team-b",
			"csi.storage.k8s.io/pv/name": "pvc-5678", "csi.ceph.com/cluster/name": "prod"}
		if !on {
			wantRestore = map[string]string{}
		}
		if got := imageMeta(t, e.io, restored.GetVolumeContext()["imageName"]); !reflect.DeepEqual(got, wantRestore) {
			t.Errorf("setmetadata=%v: restored volume metadata = %v, want %v", on, got, wantRestore)
		}
		e.deleteVolume(restored.GetVolumeId())
		e.deleteSnapshot(snap.GetSnapshotId())
		e.deleteVolume(vol.GetVolumeId())
	}
}

// imageMeta lists an image's metadata through librbd, as `rbd image-meta
// list` does.
func imageMeta(t *testing.T, io *rados.IOContext, name string) map[string]string {
	t.Helper()
	img, err := rbd.OpenImageReadOnly(io, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatalf("opening %s: %v", name, err)
	}
	defer img.Close()
	m, err := img.ListMetadata()
	if err != nil {
		t.Fatalf("listing the metadata of %s: %v", name, err)
	}
	return m
}
