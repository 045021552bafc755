//go:build kernel

package kernel

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/testutil"
)

const mib = int64(1) << 20

// volume is one CSI volume as the test drives it through the guest's node
// service, with the paths kubelet would use.
type volume struct {
	e       *env
	node    csi.NodeClient
	ctl     csi.ControllerClient
	vol     *csi.Volume
	vcap    *csi.VolumeCapability
	secrets map[string]string // node secrets
	staging string
	target  string
}

// createRBD provisions an RBD volume through the controller; the test's
// cleanup takes it down (unpublish, unstage, delete) and checks that the
// image is gone.
func (e *env) createRBD(t *testing.T, size int64, vcap *csi.VolumeCapability, params map[string]string, src *csi.VolumeContentSource) *volume {
	t.Helper()
	p := map[string]string{"clusterID": e.c.ClusterID, "pool": "rbd"}
	for k, v := range params {
		p[k] = v
	}
	name := "kt-" + uuid.NewString()
	var vol *csi.Volume
	step(t, "CreateVolume "+strconv.FormatInt(size/mib, 10)+" MiB", func() {
		resp, err := e.rbdCtl.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: name,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{vcap},
			Parameters: p, Secrets: e.rbdSecrets(), VolumeContentSource: src})
		if err != nil {
			t.Fatalf("CreateVolume: %v", err)
		}
		vol = resp.GetVolume()
	})
	v := e.newVolume(vol, vcap, e.rbdNode, e.rbdCtl, e.rbdNodeSecrets(), "rbd.csi.ceph.com")
	image := vol.GetVolumeContext()["imageName"]
	t.Cleanup(func() {
		v.release(t)
		if _, err := e.rbdCtl.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: e.rbdSecrets()}); err != nil {
			t.Errorf("DeleteVolume %s: %v", vol.GetVolumeId(), err)
			return
		}
		if e.imageExists(t, image) {
			t.Errorf("image rbd/%s still exists after DeleteVolume", image)
		}
	})
	return v
}

func (e *env) newVolume(vol *csi.Volume, vcap *csi.VolumeCapability, node csi.NodeClient, ctl csi.ControllerClient, secrets map[string]string, driver string) *volume {
	id := vol.GetVolumeId()
	sum := strings.ReplaceAll(uuid.NewSHA1(uuid.NameSpaceOID, []byte(id)).String(), "-", "")
	v := &volume{e: e, node: node, ctl: ctl, vol: vol, vcap: vcap, secrets: secrets}
	pod := uuid.NewString()
	if vcap.GetBlock() != nil {
		v.staging = "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/pv-" + sum
		v.target = "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-" + sum + "/" + pod
	} else {
		v.staging = "/var/lib/kubelet/plugins/kubernetes.io/csi/" + driver + "/" + sum + "/globalmount"
		v.target = "/var/lib/kubelet/pods/" + pod + "/volumes/kubernetes.io~csi/pv-" + sum + "/mount"
	}
	return v
}

// imageExists asks the cluster (as admin) whether the pool rbd has image.
func (e *env) imageExists(t *testing.T, image string) bool {
	t.Helper()
	io := e.c.IOContext(t, "rbd")
	img, err := rbd.OpenImageReadOnly(io, image, rbd.NoSnapshot)
	if errors.Is(err, rbd.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatalf("opening image %s: %v", image, err)
	}
	img.Close()
	return true
}

func (v *volume) id() string { return v.vol.GetVolumeId() }

func (v *volume) stage(t *testing.T) {
	t.Helper()
	// kubelet creates the staging directory's parent.
	v.e.g.sh(t, "mkdir -p "+quote(path.Dir(v.staging)))
	step(t, "NodeStageVolume", func() {
		if _, err := v.node.NodeStageVolume(ctxT(t), &csi.NodeStageVolumeRequest{VolumeId: v.id(),
			StagingTargetPath: v.staging, VolumeCapability: v.vcap, VolumeContext: v.vol.GetVolumeContext(),
			Secrets: v.secrets}); err != nil {
			t.Fatalf("NodeStageVolume: %v", err)
		}
	})
	v.e.assertNoKeyFiles(t)
}

func (v *volume) publish(t *testing.T) {
	t.Helper()
	v.e.g.sh(t, "mkdir -p "+quote(path.Dir(v.target)))
	step(t, "NodePublishVolume", func() {
		if _, err := v.node.NodePublishVolume(ctxT(t), &csi.NodePublishVolumeRequest{VolumeId: v.id(),
			StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.vcap,
			VolumeContext: v.vol.GetVolumeContext(), Secrets: v.secrets}); err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
	})
}

func (v *volume) unpublish(t *testing.T) {
	t.Helper()
	step(t, "NodeUnpublishVolume", func() {
		if _, err := v.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: v.id(), TargetPath: v.target}); err != nil {
			t.Fatalf("NodeUnpublishVolume: %v", err)
		}
	})
}

func (v *volume) unstage(t *testing.T) {
	t.Helper()
	step(t, "NodeUnstageVolume", func() {
		if _, err := v.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: v.id(), StagingTargetPath: v.staging}); err != nil {
			t.Fatalf("NodeUnstageVolume: %v", err)
		}
	})
}

// release unpublishes and unstages without failing the test on errors (a
// cleanup after a failure); both calls are idempotent.
func (v *volume) release(t *testing.T) {
	if _, err := v.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: v.id(), TargetPath: v.target}); err != nil {
		t.Errorf("cleanup: NodeUnpublishVolume %s: %v", v.id(), err)
	}
	if _, err := v.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: v.id(), StagingTargetPath: v.staging}); err != nil {
		t.Errorf("cleanup: NodeUnstageVolume %s: %v", v.id(), err)
	}
}

// stats calls NodeGetVolumeStats on the target and returns the byte usage.
func (v *volume) stats(t *testing.T) *csi.VolumeUsage {
	t.Helper()
	var resp *csi.NodeGetVolumeStatsResponse
	step(t, "NodeGetVolumeStats", func() {
		var err error
		resp, err = v.node.NodeGetVolumeStats(ctxT(t), &csi.NodeGetVolumeStatsRequest{VolumeId: v.id(), VolumePath: v.target, StagingTargetPath: v.staging})
		if err != nil {
			t.Fatalf("NodeGetVolumeStats: %v", err)
		}
	})
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES {
			return u
		}
	}
	t.Fatalf("NodeGetVolumeStats has no byte usage: %v", resp)
	return nil
}

// expand grows the volume through the controller and then the node.
func (v *volume) expand(t *testing.T, size int64) int64 {
	t.Helper()
	var nodeExpand bool
	step(t, "ControllerExpandVolume", func() {
		resp, err := v.ctl.ControllerExpandVolume(ctxT(t), &csi.ControllerExpandVolumeRequest{VolumeId: v.id(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Secrets: v.e.controllerSecrets(v.ctl), VolumeCapability: v.vcap})
		if err != nil {
			t.Fatalf("ControllerExpandVolume: %v", err)
		}
		if resp.GetCapacityBytes() < size {
			t.Fatalf("ControllerExpandVolume gave %d bytes, asked %d", resp.GetCapacityBytes(), size)
		}
		nodeExpand = resp.GetNodeExpansionRequired()
	})
	if !nodeExpand {
		return 0
	}
	var got int64
	step(t, "NodeExpandVolume", func() {
		resp, err := v.node.NodeExpandVolume(ctxT(t), &csi.NodeExpandVolumeRequest{VolumeId: v.id(), VolumePath: v.target,
			StagingTargetPath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: v.vcap})
		if err != nil {
			t.Fatalf("NodeExpandVolume: %v", err)
		}
		got = resp.GetCapacityBytes()
	})
	return got
}

func (e *env) controllerSecrets(ctl csi.ControllerClient) map[string]string {
	if ctl == e.fsCtl {
		return e.c.CephFSSecrets()
	}
	return e.rbdSecrets()
}

// writeData writes n MiB of random data to file in the guest, flushes it and
// returns its SHA-256.
func (e *env) writeData(t *testing.T, file string, n int) string {
	t.Helper()
	var sum string
	step(t, fmt.Sprintf("write %d MiB in the guest", n), func() {
		out := e.g.sh(t, fmt.Sprintf("head -c %d /dev/urandom > %s && sync %s && sha256sum < %s",
			int64(n)*mib, quote(file), quote(file), quote(file)))
		sum = strings.Fields(out)[0]
	})
	return sum
}

func (e *env) readSum(t *testing.T, file string) string {
	t.Helper()
	var sum string
	step(t, "read back in the guest", func() {
		sum = strings.Fields(e.g.sh(t, "sha256sum < "+quote(file)))[0]
	})
	return sum
}

// rbdDevice returns the guest's krbd device mapping image, "" when none.
func (e *env) rbdDevice(t *testing.T, image string) string {
	t.Helper()
	out := e.g.sh(t, `for d in /sys/bus/rbd/devices/*; do [ -e "$d/name" ] && [ "$(cat $d/name)" = `+quote(image)+` ] && echo /dev/rbd${d##*/}; done; true`)
	return strings.TrimSpace(out)
}

// nbdDevice returns the guest's rbd-nbd device serving image, "" when none.
func (e *env) nbdDevice(t *testing.T, image string) string {
	t.Helper()
	// Only stdout is JSON: Tentacle's list-mapped also prints "cannot read
	// keyfile" on stderr while a device is mapped (the daemons' command
	// lines name /proc/self/fd/3); the driver's mapper reads stdout alone.
	out, rc := e.g.try(t, "rbd-nbd list-mapped --format json 2>/dev/null")
	if rc != 0 {
		msg, _ := e.g.try(t, "rbd-nbd list-mapped --format json 2>&1")
		t.Fatalf("rbd-nbd list-mapped exited %d: %s", rc, strings.TrimSpace(msg))
	}
	out = strings.TrimSpace(out)
	var list []struct{ Image, Device string }
	if out != "" {
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("rbd-nbd list-mapped: %v: %q", err, out)
		}
	}
	for _, m := range list {
		if m.Image == image {
			return m.Device
		}
	}
	return ""
}

// mountOf returns the filesystem type mounted at p in the guest, "" if none.
func (e *env) mountOf(t *testing.T, p string) string {
	t.Helper()
	out := e.g.sh(t, `awk -v p=`+quote(p)+` '$2 == p { print $3 }' /proc/mounts | tail -1`)
	return strings.TrimSpace(out)
}

func (e *env) fsUUID(t *testing.T, dev string) string {
	t.Helper()
	return strings.TrimSpace(e.g.sh(t, "blkid -o value -s UUID "+quote(dev)))
}

// dfTotal is the size df reports for the filesystem at p, in bytes.
func (e *env) dfTotal(t *testing.T, p string) int64 {
	t.Helper()
	out := e.g.sh(t, "df -B1 --output=size "+quote(p)+" | tail -1")
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("df of %s: %q", p, out)
	}
	return n
}

// testKRBDFilesystem: ext4 on krbd through stage, publish, write, unstage,
// restage (no second mkfs), read back, stats and online expansion.
func (e *env) testKRBDFilesystem(t *testing.T) {
	v := e.createRBD(t, 128*mib, testutil.FSCap("ext4"), map[string]string{"mounter": "krbd"}, nil)
	image := v.vol.GetVolumeContext()["imageName"]
	v.stage(t)
	dev := e.rbdDevice(t, image)
	if dev == "" {
		t.Fatalf("after stage no /sys/bus/rbd device maps %s", image)
	}
	if fs := e.mountOf(t, v.staging); fs != "ext4" {
		t.Fatalf("staging path holds %q, want ext4 on %s", fs, dev)
	}
	fsid := e.fsUUID(t, dev)
	// A repeated stage (kubelet retries) changes nothing.
	v.stage(t)
	if n := strings.Count(e.g.sh(t, "ls /sys/bus/rbd/devices"), "\n"); n != 1 {
		t.Fatalf("a repeated stage left %d rbd devices, want 1", n)
	}
	v.publish(t)
	sum := e.writeData(t, v.target+"/data", 8)
	u := v.stats(t)
	if u.GetTotal() < 100*mib || u.GetTotal() > 128*mib || u.GetUsed() < 8*mib {
		t.Errorf("stats of a 128 MiB ext4 holding 8 MiB: total %d used %d", u.GetTotal(), u.GetUsed())
	}
	v.unpublish(t)
	v.unstage(t)
	if d := e.rbdDevice(t, image); d != "" {
		t.Fatalf("after unstage %s is still mapped at %s", image, d)
	}
	if fs := e.mountOf(t, v.staging); fs != "" {
		t.Fatalf("after unstage the staging path is still mounted (%s)", fs)
	}

	v.stage(t)
	dev = e.rbdDevice(t, image)
	if got := e.fsUUID(t, dev); got != fsid {
		t.Fatalf("restage changed the filesystem UUID %s -> %s: it was formatted again", fsid, got)
	}
	v.publish(t)
	if got := e.readSum(t, v.target+"/data"); got != sum {
		t.Fatalf("data read back after restage differs: %s, wrote %s", got, sum)
	}

	before := e.dfTotal(t, v.target)
	if got := v.expand(t, 256*mib); got < 256*mib {
		t.Fatalf("NodeExpandVolume reports %d bytes, want at least %d", got, 256*mib)
	}
	after := e.dfTotal(t, v.target)
	if after < 230*mib {
		t.Fatalf("ext4 is %d bytes after expanding to 256 MiB (was %d)", after, before)
	}
	if u := v.stats(t); u.GetTotal() < 230*mib {
		t.Errorf("NodeGetVolumeStats total %d after expanding to 256 MiB", u.GetTotal())
	}
	if got := e.readSum(t, v.target+"/data"); got != sum {
		t.Fatalf("data changed by the expansion")
	}
	v.unpublish(t)
	v.unstage(t)
	if d := e.rbdDevice(t, image); d != "" {
		t.Fatalf("after unstage %s is still mapped at %s", image, d)
	}
}

// testKRBDBlock: a raw block volume on krbd: the device is published as a
// file, data written to it survives unstage and restage, and it grows.
func (e *env) testKRBDBlock(t *testing.T) {
	v := e.createRBD(t, 64*mib, testutil.BlockCap(), map[string]string{"mounter": "krbd"}, nil)
	image := v.vol.GetVolumeContext()["imageName"]
	v.stage(t)
	if e.rbdDevice(t, image) == "" {
		t.Fatalf("after stage no /sys/bus/rbd device maps %s", image)
	}
	v.publish(t)
	var sum string
	step(t, "write 4 MiB to the block device", func() {
		out := e.g.sh(t, "head -c 4194304 /dev/urandom > /tmp/kt-block && dd if=/tmp/kt-block of="+quote(v.target)+
			" bs=1M oflag=direct conv=fsync,notrunc status=none && sha256sum < /tmp/kt-block && rm /tmp/kt-block")
		sum = strings.Fields(out)[0]
	})
	if u := v.stats(t); u.GetTotal() != 64*mib {
		t.Errorf("block stats total %d, want %d", u.GetTotal(), 64*mib)
	}
	// The kernel mapping outlives the plugin; the restarted plugin finds it.
	e.rbdPlugin.crashAndRestart(t)
	v.unpublish(t)
	v.unstage(t)
	if d := e.rbdDevice(t, image); d != "" {
		t.Fatalf("after unstage %s is still mapped at %s", image, d)
	}
	v.stage(t)
	v.publish(t)
	var got string
	step(t, "read 4 MiB back", func() {
		got = strings.Fields(e.g.sh(t, "dd if="+quote(v.target)+" bs=1M count=4 iflag=direct status=none | sha256sum"))[0]
	})
	if got != sum {
		t.Fatalf("block data after restage differs")
	}
	// A block volume needs no node expansion (the controller says so, as
	// ceph-csi does): the mapped device follows the image by itself.
	if n := v.expand(t, 128*mib); n != 0 {
		t.Fatalf("ControllerExpandVolume asked for node expansion of a block volume (node gave %d bytes)", n)
	}
	step(t, "wait for the device to grow", func() {
		want := strconv.FormatInt(128*mib, 10)
		var out string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			out = strings.TrimSpace(e.g.sh(t, "blockdev --getsize64 "+quote(v.target)))
			if out == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("published block device is %s bytes 30 s after expanding the image to %s", out, want)
			}
		}
	})
	if u := v.stats(t); u.GetTotal() != 128*mib {
		t.Errorf("block stats total %d after expansion, want %d", u.GetTotal(), 128*mib)
	}
	v.unpublish(t)
	v.unstage(t)
}

// testNBDFilesystem: ext4 on rbd-nbd, with the same round trip and growth.
func (e *env) testNBDFilesystem(t *testing.T) {
	v := e.createRBD(t, 128*mib, testutil.FSCap("ext4"), map[string]string{"mounter": "rbd-nbd"}, nil)
	image := v.vol.GetVolumeContext()["imageName"]
	v.stage(t)
	dev := e.nbdDevice(t, image)
	if !strings.HasPrefix(dev, "/dev/nbd") {
		t.Fatalf("after stage rbd-nbd does not serve %s (list-mapped: %q)", image, dev)
	}
	if fs := e.mountOf(t, v.staging); fs != "ext4" {
		t.Fatalf("staging path holds %q, want ext4 on %s", fs, dev)
	}
	v.publish(t)
	sum := e.writeData(t, v.target+"/data", 8)
	// rbd-nbd daemons outlive the plugin; the restarted plugin finds them.
	e.rbdPlugin.crashAndRestart(t)
	v.unpublish(t)
	v.unstage(t)
	if d := e.nbdDevice(t, image); d != "" {
		t.Fatalf("after unstage rbd-nbd still serves %s on %s", image, d)
	}
	if out := strings.TrimSpace(e.g.sh(t, "cat /sys/block/"+path.Base(dev)+"/pid 2>/dev/null; true")); out != "" {
		t.Fatalf("%s is still connected (pid %s)", dev, out)
	}
	v.stage(t)
	v.publish(t)
	if got := e.readSum(t, v.target+"/data"); got != sum {
		t.Fatalf("data read back after restage differs")
	}
	if got := v.expand(t, 192*mib); got < 192*mib {
		t.Fatalf("NodeExpandVolume reports %d bytes, want at least %d", got, 192*mib)
	}
	if n := e.dfTotal(t, v.target); n < 170*mib {
		t.Fatalf("ext4 on rbd-nbd is %d bytes after expanding to 192 MiB", n)
	}
	v.unpublish(t)
	v.unstage(t)
}

// testRestoreFromSnapshot: xfs on krbd; a volume restored from a snapshot
// shows the data written before the snapshot, while the source (same XFS
// UUID) is still mounted next to it.
// snapshotOf takes a CSI snapshot of v, deleted when the test ends.
func (e *env) snapshotOf(t *testing.T, v *volume) *csi.Snapshot {
	t.Helper()
	var snap *csi.Snapshot
	step(t, "CreateSnapshot", func() {
		resp, err := v.ctl.CreateSnapshot(ctxT(t), &csi.CreateSnapshotRequest{SourceVolumeId: v.id(),
			Name: "kt-snap-" + uuid.NewString(), Secrets: e.controllerSecrets(v.ctl), Parameters: map[string]string{"clusterID": e.c.ClusterID}})
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
		snap = resp.GetSnapshot()
	})
	t.Cleanup(func() {
		if _, err := v.ctl.DeleteSnapshot(ctxT(t), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: e.controllerSecrets(v.ctl)}); err != nil {
			t.Errorf("DeleteSnapshot: %v", err)
		}
	})
	return snap
}

func (e *env) testRestoreFromSnapshot(t *testing.T) {
	// mkfs.xfs refuses filesystems under 300 MB.
	src := e.createRBD(t, 320*mib, testutil.FSCap("xfs"), map[string]string{"mounter": "krbd", "csi.storage.k8s.io/fstype": "xfs"}, nil)
	src.stage(t)
	if fs := e.mountOf(t, src.staging); fs != "xfs" {
		t.Fatalf("staging path holds %q, want xfs", fs)
	}
	src.publish(t)
	sum := e.writeData(t, src.target+"/before-snapshot", 4)
	snap := e.snapshotOf(t, src)
	// Written after the snapshot: must not show in the restored volume.
	e.writeData(t, src.target+"/after-snapshot", 1)
	// Restored larger than the snapshot: stage grows the filesystem.
	restored := e.createRBD(t, 400*mib, testutil.FSCap("xfs"), map[string]string{"mounter": "krbd", "csi.storage.k8s.io/fstype": "xfs"},
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}})
	restored.stage(t)
	restored.publish(t)
	if got := e.readSum(t, restored.target+"/before-snapshot"); got != sum {
		t.Fatalf("the restored volume's data differs from the snapshot's")
	}
	if _, rc := e.g.try(t, "test -e "+quote(restored.target+"/after-snapshot")); rc == 0 {
		t.Fatalf("the restored volume has a file written after the snapshot")
	}
	// df leaves out XFS's internal log (64 MiB here): compare with the
	// source's filesystem instead of the image sizes.
	srcSize, restoredSize := e.dfTotal(t, src.target), e.dfTotal(t, restored.target)
	if restoredSize < srcSize+70*mib {
		t.Fatalf("xfs restored into 400 MiB from a 320 MiB snapshot has %d bytes, the source %d: not grown at stage", restoredSize, srcSize)
	}
	if got := restored.expand(t, 512*mib); got < 512*mib {
		t.Fatalf("NodeExpandVolume reports %d bytes, want at least %d", got, 512*mib)
	}
	if n := e.dfTotal(t, restored.target); n < restoredSize+100*mib {
		t.Fatalf("xfs has %d bytes after expanding from 400 to 512 MiB (had %d)", n, restoredSize)
	}
	restored.unpublish(t)
	restored.unstage(t)
	src.unpublish(t)
	src.unstage(t)
}

// testReadOnlyFromSnapshot: a snapshot of an unstaged ext4 volume restored
// into a volume staged read-only (SINGLE_NODE_READER_ONLY: mapped ro,
// mounted ro) shows the snapshot's data and refuses writes. (A snapshot of a
// volume that was mounted when it was taken cannot be staged read-only: its
// journal needs a replay, which needs write access; see
// docs/kernel-tests.md.)
func (e *env) testReadOnlyFromSnapshot(t *testing.T) {
	src := e.createRBD(t, 128*mib, testutil.FSCap("ext4"), map[string]string{"mounter": "krbd"}, nil)
	src.stage(t)
	src.publish(t)
	sum := e.writeData(t, src.target+"/data", 2)
	src.unpublish(t)
	src.unstage(t)
	snap := e.snapshotOf(t, src)
	rox := testutil.FSCap("ext4")
	rox.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	ro := e.createRBD(t, 128*mib, rox, map[string]string{"mounter": "krbd"},
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}})
	ro.stage(t)
	dev := e.rbdDevice(t, ro.vol.GetVolumeContext()["imageName"])
	if out := strings.TrimSpace(e.g.sh(t, "blockdev --getro "+dev)); out != "1" {
		t.Errorf("a reader-only volume is mapped writable (%s: getro %s)", dev, out)
	}
	ro.publish(t)
	if got := e.readSum(t, ro.target+"/data"); got != sum {
		t.Fatalf("the read-only restored volume's data differs from the snapshot's")
	}
	if _, rc := e.g.try(t, "touch "+quote(ro.target+"/new")); rc == 0 {
		t.Fatalf("a file could be created on a reader-only volume")
	}
	ro.unpublish(t)
	ro.unstage(t)
}
