//go:build integration

// Package hostiletest sends bad requests to both drivers, controller and
// node, and checks that each gets the exact gRPC code it should and that
// neither the cluster nor the node holds anything new afterwards.
package hostiletest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// world is what the test looks at before and after: every image, trash
// entry and subvolume of the cluster, the journal directories, the node's
// mounts and loop devices, and the files under the test's node directories.
type world map[string]bool

func snapshotWorld(t *testing.T, c *testutil.Cluster, dirs ...string) world {
	t.Helper()
	w := world{}
	for _, p := range testutil.RBDPools {
		io := c.IOContext(t, p)
		names, err := rbd.GetImageNames(io)
		must(t, err, "listing images")
		for _, n := range names {
			w["image "+p+"/"+n] = true
		}
		trash, err := rbd.GetTrashList(io)
		must(t, err, "listing the trash")
		for _, e := range trash {
			w["trash "+p+"/"+e.Name] = true
		}
		for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
			journalKeys(t, io, dir, "journal "+p+"/"+dir+"/", w)
		}
	}
	subs, err := admin.NewFromConn(c.Admin()).ListSubVolumes(testutil.FSName, testutil.FSGroup)
	must(t, err, "listing subvolumes")
	for _, s := range subs {
		w["subvolume "+s] = true
	}
	meta := c.IOContext(t, testutil.FSMetadataPool)
	meta.SetNamespace("csi")
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		journalKeys(t, meta, dir, "journal cephfs/"+dir+"/", w)
	}
	// Mounts and loop devices where the drivers of this test could make
	// them: its directories, the drivers' temporary plugin paths, and the
	// working directory (where a relative path would land). Others' are
	// not this test's business.
	cwd, _ := os.Getwd()
	ours := func(p string) bool {
		if strings.HasPrefix(p, "/tmp/csi") || strings.HasPrefix(p, cwd) {
			return true
		}
		for _, d := range dirs {
			if strings.HasPrefix(p, d) {
				return true
			}
		}
		return false
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && ours(f[4]) {
				w["mount "+f[4]] = true
			}
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, _ := os.ReadFile(l); ours(strings.TrimSpace(string(b))) {
			w["loop "+strings.TrimSpace(string(b))] = true
		}
	}
	for _, d := range dirs {
		_ = filepath.Walk(d, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				w["file "+p] = true
			}
			return nil
		})
	}
	return w
}

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// journalKeys adds the keys of a journal directory object (none when the
// object does not exist yet).
func journalKeys(t *testing.T, io *rados.IOContext, oid, prefix string, w world) {
	t.Helper()
	err := io.ListOmapValues(oid, "", "", 100000, func(k string, _ []byte) { w[prefix+k] = true })
	if err != nil && !errors.Is(err, rados.ErrNotFound) {
		t.Fatalf("listing %s: %v", oid, err)
	}
}

// diff lists what after has that before had not, and what it lost.
func diff(before, after world) (added, removed []string) {
	for k := range after {
		if !before[k] {
			added = append(added, k)
		}
	}
	for k := range before {
		if !after[k] {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

type badCall struct {
	what string
	code codes.Code
	call func(ctx context.Context) error
	// within bounds the answer; 0 for the default, 5 s.
	within time.Duration
}

// cephAnswered is badCall for a request only the cluster can refuse (a
// wrong key): librados reports the monitor's refusal in milliseconds in
// most runs, but took 6.0 s in one (Tentacle 20.2, one monitor), so it is
// allowed 15 s, still half the connect timeout.
func cephAnswered(bc badCall) badCall {
	bc.within = 15 * time.Second
	return bc
}

func TestHostileRequests(t *testing.T) {
	c := testutil.RequireCluster(t)
	rbdDrv := testutil.StartDriver(t, c, "rbd", nil)
	fsDrv := testutil.StartDriver(t, c, "cephfs", nil)
	work, err := os.MkdirTemp("", "hostile")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Real objects to aim at: an RBD volume and snapshot, a CephFS volume.
	rbdVol := mustCreate(t, ctx, rbdDrv, rbdVolReq(c, "hostile-rbd-"+uuid.NewString()[:8], nil))
	rbdSnap := mustSnapshot(t, ctx, rbdDrv, c.RBDSecrets(), rbdVol.GetVolumeId())
	fsVol := mustCreate(t, ctx, fsDrv, &csi.CreateVolumeRequest{Name: "hostile-fs-" + uuid.NewString()[:8],
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, VolumeCapabilities: []*csi.VolumeCapability{fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)},
		Parameters: fsParams(c), Secrets: c.CephFSSecrets()})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = rbdDrv.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: rbdSnap.GetSnapshotId(), Secrets: c.RBDSecrets()})
		_, _ = rbdDrv.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: rbdVol.GetVolumeId(), Secrets: c.RBDSecrets()})
		_, _ = fsDrv.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: fsVol.GetVolumeId(), Secrets: c.CephFSSecrets()})
	})
	// A file someone else owns, at a path a confused CO hands the node.
	foreign := filepath.Join(work, "not-ours.txt")
	if err := os.WriteFile(foreign, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}

	calls := append(rbdControllerCalls(c, rbdDrv, rbdVol, rbdSnap), fsControllerCalls(c, fsDrv, fsVol)...)
	calls = append(calls, nodeCalls(c, rbdDrv, fsDrv, rbdVol, fsVol, work, foreign)...)
	if len(calls) < 60 {
		t.Fatalf("only %d hostile requests; the table must hold at least 60", len(calls))
	}

	before := snapshotWorld(t, c, work)
	slow := 0
	for _, bc := range calls {
		start := time.Now()
		err := bc.call(ctx)
		took := time.Since(start)
		if got := status.Code(err); got != bc.code {
			t.Errorf("%s: got %v (%v), want %v", bc.what, got, err, bc.code)
		}
		if err != nil && containsSecret(status.Convert(err).Message(), c) {
			t.Errorf("%s: a key appears in the error", bc.what)
		}
		within := bc.within
		if within == 0 {
			within = 5 * time.Second
		}
		if took > within {
			slow++
			t.Errorf("%s took %s; a bad request must be answered at once", bc.what, took.Round(time.Millisecond))
		}
	}
	after := snapshotWorld(t, c, work)
	added, removed := diff(before, after)
	if len(added) > 0 {
		t.Errorf("the hostile requests left %d new things: %s", len(added), strings.Join(added, "; "))
	}
	if len(removed) > 0 {
		t.Errorf("the hostile requests removed %d things: %s", len(removed), strings.Join(removed, "; "))
	}
	if b, err := os.ReadFile(foreign); err != nil || string(b) != "keep me" {
		t.Errorf("a file the driver did not create was changed or removed (%v)", err)
	}
	t.Logf("%d hostile requests, %d slow", len(calls), slow)
}

func containsSecret(msg string, c *testutil.Cluster) bool {
	for _, k := range []string{"CEPH_RBD_PROVISIONER_KEY", "CEPH_RBD_NODE_KEY", "CEPH_FS_PROVISIONER_KEY", "CEPH_FS_NODE_KEY"} {
		if v := c.Var(k); v != "" && strings.Contains(msg, v) {
			return true
		}
	}
	return false
}

func rbdParams(c *testutil.Cluster) map[string]string {
	return map[string]string{"clusterID": c.ClusterID, "pool": "rbd"}
}

func fsParams(c *testutil.Cluster) map[string]string {
	return map[string]string{"clusterID": c.ClusterID, "fsName": testutil.FSName}
}

func fsCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

// rbdVolReq is a good CreateVolume request for an 8 MiB RBD volume with
// content from src (nil for none).
func rbdVolReq(c *testutil.Cluster, name string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("")}, Parameters: rbdParams(c), Secrets: c.RBDSecrets(),
		VolumeContentSource: src}
}

// call is a bad request: rpc with req must be answered code.
func call[Req, Resp any](what string, code codes.Code, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) badCall {
	return badCall{what: what, code: code, call: func(ctx context.Context) error {
		_, err := rpc(ctx, req)
		return err
	}}
}

// mutating returns the maker of bad calls of rpc named prefix+what: each
// changes a good request (a fresh one from good) with mutate.
func mutating[Req, Resp any](prefix string, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error),
	good func() Req) func(what string, code codes.Code, mutate func(Req)) badCall {
	return func(what string, code codes.Code, mutate func(Req)) badCall {
		return badCall{what: prefix + what, code: code, call: func(ctx context.Context) error {
			r := good()
			mutate(r)
			_, err := rpc(ctx, r)
			return err
		}}
	}
}

// param sets parameter k of a CreateVolume request to v.
func param(k, v string) func(*csi.CreateVolumeRequest) {
	return func(r *csi.CreateVolumeRequest) { r.Parameters[k] = v }
}

func mustCreate(t *testing.T, ctx context.Context, d *testutil.Driver, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	resp, err := d.Controller.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", req.GetName(), err)
	}
	return resp.GetVolume()
}

func mustSnapshot(t *testing.T, ctx context.Context, d *testutil.Driver, secrets map[string]string, source string) *csi.Snapshot {
	t.Helper()
	resp, err := d.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "hostile-snap-" + uuid.NewString()[:8],
		SourceVolumeId: source, Secrets: secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	return resp.GetSnapshot()
}

func clone[M any](m map[string]M) map[string]M {
	out := make(map[string]M, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// missingID is a well-formed ID of this cluster that names nothing.
func missingID(c *testutil.Cluster, location int64) string {
	return fmt.Sprintf("0001-%04x-%s-%016x-%s", len(c.ClusterID), c.ClusterID, location, uuid.NewString())
}

func rbdControllerCalls(c *testutil.Cluster, d *testutil.Driver, vol *csi.Volume, snap *csi.Snapshot) []badCall {
	ctl := d.Controller
	create := mutating("rbd CreateVolume ", ctl.CreateVolume, func() *csi.CreateVolumeRequest {
		return rbdVolReq(c, "hostile-"+uuid.NewString()[:8], nil)
	})
	ia := codes.InvalidArgument
	srcSnap := func(id string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = testutil.FromSnapshot(id) }
	}
	srcVol := func(id string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = testutil.FromVolume(id) }
	}
	id := vol.GetVolumeId()
	upperID := id[:len(id)-36] + strings.ToUpper(id[len(id)-36:])
	calls := []badCall{
		create("without a name", ia, func(r *csi.CreateVolumeRequest) { r.Name = "" }),
		create("without capabilities", ia, func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }),
		create("with a capability without access type", ia, func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{{AccessMode: r.VolumeCapabilities[0].AccessMode}}
		}),
		create("with an unknown access mode", ia, func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].AccessMode.Mode = csi.VolumeCapability_AccessMode_UNKNOWN
		}),
		create("RWX filesystem", ia, func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}),
		create("with a mount flag smuggling options", ia, func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].GetMount().MountFlags = []string{"noatime,dev"}
		}),
		create("without clusterID", ia, func(r *csi.CreateVolumeRequest) { delete(r.Parameters, "clusterID") }),
		create("without pool", ia, func(r *csi.CreateVolumeRequest) { delete(r.Parameters, "pool") }),
		create("with an unknown clusterID", ia, param("clusterID", "no-such-cluster")),
		create("in a missing pool", ia, param("pool", "no-such-pool")),
		create("in a pool named with a slash", ia, param("pool", "rbd/evil")),
		create("in a pool named like an option", ia, param("pool", "-p")),
		create("with a missing dataPool", ia, param("dataPool", "no-such-pool")),
		create("with an unknown feature", ia, param("imageFeatures", "layering,bogus")),
		create("with object-map but no exclusive-lock", ia, param("imageFeatures", "layering,object-map")),
		create("with fstype btrfs", ia, param("csi.storage.k8s.io/fstype", "btrfs")),
		create("with a prefix holding a slash", ia, param("volumeNamePrefix", "a/b")),
		create("with a prefix holding a space", ia, param("volumeNamePrefix", "a b")),
		create("encrypted without a passphrase for the default KMS", ia, param("encrypted", "true")),
		create("with encryptionKMSID but not encrypted", ia, param("encryptionKMSID", "vault")),
		create("thick-provisioned", ia, param("thickProvision", "true")),
		create("with topologyConstrainedPools lacking domain segments", ia, param("topologyConstrainedPools", `[{"poolName":"rbd"}]`)),
		create("with QoS limits", ia, param("BaseReadIops", "100")),
		create("with imageFormat 1", ia, param("imageFormat", "1")),
		create("with mounter nfs", ia, param("mounter", "nfs")),
		create("with stripeUnit but no stripeCount", ia, param("stripeUnit", "65536")),
		create("with an object size that is no power of two", ia, param("objectSize", "3000")),
		create("with a radosNamespace other than config.json's", ia, param("radosNamespace", "other")),
		create("with negative bytes", ia, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 }),
		create("with required above the limit", ia, func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 1 << 20 }),
		create("of 2^63-1 bytes", codes.OutOfRange, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = math.MaxInt64 }),
		create("with a limit below 1 MiB", codes.OutOfRange, func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1, LimitBytes: 100}
		}),
		create("without secrets", ia, func(r *csi.CreateVolumeRequest) { r.Secrets = nil }),
		create("with a user ID smuggling options", ia, func(r *csi.CreateVolumeRequest) {
			r.Secrets = clone(r.Secrets)
			r.Secrets["userID"] = "admin,secret=x"
		}),
		create("with a key that is not base64", ia, func(r *csi.CreateVolumeRequest) {
			r.Secrets = clone(r.Secrets)
			r.Secrets["userKey"] = "not a key!"
		}),
		cephAnswered(create("with a wrong key", codes.PermissionDenied, func(r *csi.CreateVolumeRequest) {
			r.Secrets = clone(r.Secrets)
			r.Secrets["userKey"] = "AQBA" + strings.Repeat("A", 34) + "=="
		})),
		create("from a malformed snapshot ID", codes.NotFound, srcSnap("not-an-id")),
		create("from an empty snapshot ID", ia, srcSnap("")),
		create("from a missing snapshot", codes.NotFound, srcSnap(missingID(c, 1))),
		create("from a missing volume", codes.NotFound, srcVol(missingID(c, 1))),
		create("from a snapshot in an unknown cluster", codes.NotFound,
			srcSnap("0001-0005-other-0000000000000001-"+uuid.NewString())),
		create("smaller than its source snapshot", codes.OutOfRange, func(r *csi.CreateVolumeRequest) {
			srcSnap(snap.GetSnapshotId())(r)
			r.CapacityRange.RequiredBytes = 4 << 20
		}),
		call("rbd DeleteVolume without an ID", ia, ctl.DeleteVolume, &csi.DeleteVolumeRequest{Secrets: c.RBDSecrets()}),
		call("rbd DeleteVolume without secrets", ia, ctl.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}),
		call("rbd DeleteVolume of an ID not ours", codes.OK, ctl.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: "pvc-1234", Secrets: c.RBDSecrets()}),
		call("rbd DeleteVolume of an unjournaled ID", codes.OK, ctl.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: missingID(c, 1), Secrets: c.RBDSecrets()}),
		// Not the canonical form: not ours, so it must not touch the volume.
		call("rbd DeleteVolume of an uppercase spelling of a real ID", codes.OK, ctl.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: upperID, Secrets: c.RBDSecrets()}),
		call("rbd ControllerExpandVolume without an ID", ia, ctl.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}, Secrets: c.RBDSecrets()}),
		call("rbd ControllerExpandVolume without a range", ia, ctl.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets()}),
		call("rbd ControllerExpandVolume of a missing volume", codes.NotFound, ctl.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{VolumeId: missingID(c, 1),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}, Secrets: c.RBDSecrets()}),
		call("rbd ControllerExpandVolume to 2^63-1 bytes", codes.OutOfRange, ctl.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: math.MaxInt64}, Secrets: c.RBDSecrets()}),
		call("rbd CreateSnapshot without a name", ia, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{SourceVolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets()}),
		call("rbd CreateSnapshot without a source", ia, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", Secrets: c.RBDSecrets()}),
		call("rbd CreateSnapshot of a missing volume", codes.NotFound, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", SourceVolumeId: missingID(c, 1), Secrets: c.RBDSecrets()}),
		call("rbd CreateSnapshot of a malformed ID", codes.NotFound, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", SourceVolumeId: "garbage", Secrets: c.RBDSecrets()}),
		call("rbd CreateSnapshot with a bad prefix", ia, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", SourceVolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets(),
			Parameters: map[string]string{"snapshotNamePrefix": "../x"}}),
		call("rbd CreateSnapshot naming another cluster", ia, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", SourceVolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets(),
			Parameters: map[string]string{"clusterID": "other"}}),
		call("rbd DeleteSnapshot without an ID", ia, ctl.DeleteSnapshot, &csi.DeleteSnapshotRequest{Secrets: c.RBDSecrets()}),
		call("rbd DeleteSnapshot of an ID not ours", codes.OK, ctl.DeleteSnapshot, &csi.DeleteSnapshotRequest{SnapshotId: "snapshot-1", Secrets: c.RBDSecrets()}),
		call("rbd ValidateVolumeCapabilities without an ID", ia, ctl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{
			VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("")}, Secrets: c.RBDSecrets()}),
		call("rbd ValidateVolumeCapabilities without capabilities", ia, ctl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol.GetVolumeId(), Secrets: c.RBDSecrets()}),
		call("rbd ValidateVolumeCapabilities of a missing volume", codes.NotFound, ctl.ValidateVolumeCapabilities, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: missingID(c, 1),
			VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("")}, Secrets: c.RBDSecrets()}),
	}
	return calls
}

func fsControllerCalls(c *testutil.Cluster, d *testutil.Driver, vol *csi.Volume) []badCall {
	ctl := d.Controller
	create := mutating("cephfs CreateVolume ", ctl.CreateVolume, func() *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: "hostile-" + uuid.NewString()[:8], CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)},
			Parameters:         fsParams(c), Secrets: c.CephFSSecrets()}
	})
	ia := codes.InvalidArgument
	// A volume ID of the filesystem that names nothing.
	missing := func() string { id := vol.GetVolumeId(); return id[:len(id)-36] + uuid.NewString() }
	return []badCall{
		create("without fsName", ia, func(r *csi.CreateVolumeRequest) { delete(r.Parameters, "fsName") }),
		create("in a missing filesystem", ia, param("fsName", "nofs")),
		create("with a pool that is not a data pool", ia, param("pool", "rbd")),
		create("encrypted without a passphrase for the default KMS", ia, param("encrypted", "true")),
		create("with kernelMountOptions smuggling a secret file", ia, param("kernelMountOptions", "ro,secretfile=/etc/shadow")),
		create("with fuseMountOptions holding a space", ia, param("fuseMountOptions", "a b")),
		create("with mounter rbd", ia, param("mounter", "rbd")),
		create("as a block volume", ia, func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{testutil.BlockCap()}
		}),
		create("backed by a snapshot without one", ia, param("backingSnapshot", "true")),
		create("with a backingSnapshot that is no boolean", ia, param("backingSnapshot", "maybe")),
		create("without secrets", ia, func(r *csi.CreateVolumeRequest) { r.Secrets = nil }),
		create("of 2^63-1 bytes", codes.OutOfRange, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = math.MaxInt64 }),
		create("from a missing volume", codes.NotFound, func(r *csi.CreateVolumeRequest) { r.VolumeContentSource = testutil.FromVolume(missing()) }),
		call("cephfs DeleteVolume without an ID", ia, ctl.DeleteVolume, &csi.DeleteVolumeRequest{Secrets: c.CephFSSecrets()}),
		call("cephfs DeleteVolume of an unjournaled ID", codes.OK, ctl.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: missing(), Secrets: c.CephFSSecrets()}),
		call("cephfs ControllerExpandVolume of a missing volume", codes.NotFound, ctl.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{VolumeId: missing(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}, Secrets: c.CephFSSecrets()}),
		call("cephfs CreateSnapshot of a missing volume", codes.NotFound, ctl.CreateSnapshot, &csi.CreateSnapshotRequest{Name: "hostile-x", SourceVolumeId: missing(),
			Secrets: c.CephFSSecrets()}),
	}
}

func nodeCalls(c *testutil.Cluster, rbdDrv, fsDrv *testutil.Driver, rbdVol, fsVol *csi.Volume, work, foreign string) []badCall {
	rbdNode, fsNode := rbdDrv.Node, fsDrv.Node
	staging := filepath.Join(work, "staging")
	target := filepath.Join(work, "target")
	fsc := testutil.FSCap("")
	rbdStage := func() *csi.NodeStageVolumeRequest {
		vc := clone(rbdVol.GetVolumeContext())
		vc["mounter"] = "rbd-fuse"
		return &csi.NodeStageVolumeRequest{VolumeId: rbdVol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: fsc,
			VolumeContext: vc, Secrets: c.RBDNodeSecrets()}
	}
	stage := mutating("rbd NodeStageVolume ", rbdNode.NodeStageVolume, rbdStage)
	ctxv := func(k, v string) func(*csi.NodeStageVolumeRequest) {
		return func(r *csi.NodeStageVolumeRequest) { r.VolumeContext[k] = v }
	}
	ia := codes.InvalidArgument
	fsStage := mutating("cephfs NodeStageVolume ", fsNode.NodeStageVolume, func() *csi.NodeStageVolumeRequest {
		return &csi.NodeStageVolumeRequest{VolumeId: fsVol.GetVolumeId(), StagingTargetPath: staging,
			VolumeCapability: fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER),
			VolumeContext:    clone(fsVol.GetVolumeContext()), Secrets: c.CephFSNodeSecrets()}
	})
	return []badCall{
		stage("without an ID", ia, func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "" }),
		stage("without a staging path", ia, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = "" }),
		stage("at a relative staging path", ia, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = "rel/dir" }),
		stage("at an unclean staging path", ia, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = staging + "/../x" }),
		stage("without a capability", ia, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = nil }),
		stage("without clusterID in the context", ia, func(r *csi.NodeStageVolumeRequest) { delete(r.VolumeContext, "clusterID") }),
		stage("with a pool holding a slash", ia, ctxv("pool", "rbd/x")),
		stage("with an image name like an option", ia, ctxv("imageName", "--id=admin")),
		stage("with map options smuggling a user", ia, ctxv("mapOptions", "krbd:ro,name=admin")),
		stage("with map options smuggling a secret", ia, ctxv("mapOptions", "nbd:secret=abc")),
		stage("with mkfs options naming another device", ia, ctxv("mkfsOptions", "-E nodiscard /dev/sda")),
		stage("with an unknown mounter", ia, ctxv("mounter", "iscsi")),
		stage("with fstype btrfs", ia, func(r *csi.NodeStageVolumeRequest) {
			r.VolumeCapability = testutil.FSCap("btrfs")
		}),
		stage("with mount flags smuggling options", ia, func(r *csi.NodeStageVolumeRequest) {
			r.VolumeCapability = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
				MountFlags: []string{"ro,exec"}}}, AccessMode: fsc.AccessMode}
		}),
		stage("without secrets", ia, func(r *csi.NodeStageVolumeRequest) { r.Secrets = nil }),
		call("rbd NodeUnstageVolume at a relative path", ia, rbdNode.NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: rbdVol.GetVolumeId(), StagingTargetPath: "rel"}),
		call("rbd NodePublishVolume at a relative target", ia, rbdNode.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: rbdVol.GetVolumeId(), StagingTargetPath: staging,
			TargetPath: "pod/mount", VolumeCapability: fsc}),
		call("rbd NodePublishVolume onto its staging path", ia, rbdNode.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: rbdVol.GetVolumeId(), StagingTargetPath: staging,
			TargetPath: staging, VolumeCapability: fsc}),
		call("rbd NodeUnpublishVolume at a relative target", ia, rbdNode.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: rbdVol.GetVolumeId(), TargetPath: "pod/mount"}),
		call("rbd NodeUnpublishVolume at a file the driver did not create", codes.OK, rbdNode.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: rbdVol.GetVolumeId(), TargetPath: foreign}),
		// The spec (and csi-sanity) call a relative volume_path NotFound:
		// nothing is published there.
		call("rbd NodeGetVolumeStats at a relative path", codes.NotFound, rbdNode.NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: rbdVol.GetVolumeId(), VolumePath: "x"}),
		call("rbd NodeGetVolumeStats at a missing path", codes.NotFound, rbdNode.NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{VolumeId: rbdVol.GetVolumeId(), VolumePath: target + "-none"}),
		call("rbd NodeGetVolumeHealth at a relative staging path", ia, rbdNode.NodeGetVolumeHealth, &csi.NodeGetVolumeHealthRequest{VolumeId: rbdVol.GetVolumeId(), StagingTargetPath: "rel"}),
		call("rbd NodeGetVolumeHealth of a volume not staged here", codes.NotFound, rbdNode.NodeGetVolumeHealth, &csi.NodeGetVolumeHealthRequest{VolumeId: rbdVol.GetVolumeId() + "0"}),
		call("cephfs NodeGetVolumeHealth at an unclean publish path", ia, fsNode.NodeGetVolumeHealth, &csi.NodeGetVolumeHealthRequest{VolumeId: fsVol.GetVolumeId(), VolumePublishPath: "/a/../b"}),
		call("cephfs NodeGetVolumeHealth without a volume ID", ia, fsNode.NodeGetVolumeHealth, &csi.NodeGetVolumeHealthRequest{}),
		call("rbd NodeExpandVolume at a relative path", codes.NotFound, rbdNode.NodeExpandVolume, &csi.NodeExpandVolumeRequest{VolumeId: rbdVol.GetVolumeId(), VolumePath: "x"}),
		fsStage("at a relative staging path", ia, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = "rel" }),
		fsStage("without fsName in the context", ia, func(r *csi.NodeStageVolumeRequest) { delete(r.VolumeContext, "fsName") }),
		fsStage("with fuse options smuggling a key file", ia, func(r *csi.NodeStageVolumeRequest) {
			r.VolumeContext["mounter"] = "fuse"
			r.VolumeContext["fuseMountOptions"] = "debug,keyring=/etc/ceph/x"
		}),
		fsStage("with kernel options smuggling a name", ia, func(r *csi.NodeStageVolumeRequest) {
			r.VolumeContext["mounter"] = "kernel"
			r.VolumeContext["kernelMountOptions"] = "name=admin"
		}),
		fsStage("as a block volume", ia, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = testutil.BlockCap() }),
		call("cephfs NodePublishVolume at a relative target", ia, fsNode.NodePublishVolume, &csi.NodePublishVolumeRequest{VolumeId: fsVol.GetVolumeId(), StagingTargetPath: staging,
			TargetPath: "rel", VolumeCapability: fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}),
		call("cephfs NodeUnpublishVolume at a file the driver did not create", codes.OK, fsNode.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: fsVol.GetVolumeId(), TargetPath: foreign}),
	}
}
