//go:build kernel

package kernel

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// createCephFS provisions a CephFS volume (a subvolume with a quota) that is
// mounted with the kernel client; cleanup takes it down and checks that the
// subvolume is gone.
func (e *env) createCephFS(t *testing.T, size int64) *volume {
	t.Helper()
	return e.createCephFSWith(t, size, map[string]string{"clusterID": e.c.ClusterID, "fsName": "myfs", "mounter": "kernel"},
		nil, e.c.CephFSSecrets(), e.c.CephFSNodeSecrets())
}

// createCephFSWith provisions a CephFS volume with the given parameters,
// content source and provisioner and node-stage secrets.
func (e *env) createCephFSWith(t *testing.T, size int64, params map[string]string, src *csi.VolumeContentSource,
	secrets, nodeSecrets map[string]string) *volume {
	t.Helper()
	vcap := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	}
	var vol *csi.Volume
	step(t, "CreateVolume (CephFS)", func() {
		req := &csi.CreateVolumeRequest{Name: "kt-" + uuid.NewString(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{vcap},
			Parameters: params, VolumeContentSource: src, Secrets: secrets}
		resp, err := e.fsCtl.CreateVolume(ctxT(t), req)
		// A clone copies in the background: its CreateVolume is Aborted
		// until the copy is done.
		for deadline := time.Now().Add(2 * time.Minute); status.Code(err) == codes.Aborted && time.Now().Before(deadline); {
			time.Sleep(500 * time.Millisecond)
			resp, err = e.fsCtl.CreateVolume(ctxT(t), req)
		}
		if err != nil {
			t.Fatalf("CreateVolume: %v", err)
		}
		vol = resp.GetVolume()
	})
	v := e.newVolume(vol, vcap, e.fsNode, e.fsCtl, nodeSecrets, "cephfs.csi.ceph.com")
	sub := vol.GetVolumeContext()["subvolumeName"]
	t.Cleanup(func() {
		v.release(t)
		if _, err := e.fsCtl.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: secrets}); err != nil {
			t.Errorf("DeleteVolume %s: %v", vol.GetVolumeId(), err)
			return
		}
		names, err := admin.NewFromConn(e.c.Admin()).ListSubVolumes("myfs", "csi")
		if err != nil {
			t.Errorf("listing subvolumes: %v", err)
		}
		for _, n := range names {
			if n == sub {
				t.Errorf("subvolume %s still exists after DeleteVolume", sub)
			}
		}
	})
	return v
}

// fill writes n MiB to file in the guest and returns dd's exit status and
// its output.
func (e *env) fill(t *testing.T, file string, n int) (string, int) {
	t.Helper()
	return e.g.try(t, fmt.Sprintf("dd if=/dev/zero of=%s bs=1M count=%d conv=fsync status=none 2>&1; rc=$?; sync; exit $rc", quote(file), n))
}

// testCephFSKernel: a CephFS volume mounted by the kernel client: data round
// trip across unstage/restage, the quota stops writes (EDQUOT) until the
// controller expands it, stats report the quota.
func (e *env) testCephFSKernel(t *testing.T) {
	v := e.createCephFS(t, 16*mib)
	v.stage(t)
	if fs := e.mountOf(t, v.staging); fs != "ceph" {
		t.Fatalf("staging path holds %q, want a kernel ceph mount", fs)
	}
	if out := e.g.sh(t, "grep ' "+v.staging+" ' /proc/mounts"); strings.Contains(out, "secret=") && !strings.Contains(out, "secret=<hidden>") {
		t.Fatalf("the mount options show the secret: %s", out)
	}
	v.publish(t)
	sum := e.writeData(t, v.target+"/data", 1)
	if u := v.stats(t); u.GetTotal() != 16*mib {
		t.Errorf("stats total %d, want the quota %d", u.GetTotal(), 16*mib)
	}

	// The kernel client enforces the quota with some lag: it learns the
	// usage from the MDS. Writing four times the quota must fail.
	var out string
	var rc int
	step(t, "write 64 MiB into a 16 MiB quota", func() { out, rc = e.fill(t, v.target+"/big", 64) })
	if rc == 0 || !strings.Contains(out, "Disk quota exceeded") {
		t.Fatalf("writing 64 MiB into a 16 MiB volume: exit %d, %q; want EDQUOT", rc, strings.TrimSpace(out))
	}
	written := strings.TrimSpace(e.g.sh(t, "stat -c %s "+quote(v.target+"/big")))
	t.Logf("the kernel client stopped the write at %s bytes", written)
	e.g.sh(t, "rm -f "+quote(v.target+"/big"))

	v.expand(t, 128*mib)
	step(t, "write 64 MiB after expanding to 128 MiB", func() {
		// The new quota reaches the client from the MDS; allow it a moment.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, rc = e.fill(t, v.target+"/big", 64)
			if rc == 0 || time.Now().After(deadline) {
				break
			}
			e.g.sh(t, "rm -f "+quote(v.target+"/big"))
			time.Sleep(time.Second)
		}
	})
	if rc != 0 {
		t.Fatalf("writing 64 MiB after expanding to 128 MiB: exit %d, %s", rc, strings.TrimSpace(out))
	}
	if u := v.stats(t); u.GetTotal() != 128*mib || u.GetUsed() < 64*mib {
		t.Errorf("stats after expansion: total %d used %d, want total %d and at least 64 MiB used", u.GetTotal(), u.GetUsed(), 128*mib)
	}
	v.unpublish(t)
	v.unstage(t)
	if fs := e.mountOf(t, v.staging); fs != "" {
		t.Fatalf("after unstage the staging path is still mounted (%s)", fs)
	}
	v.stage(t)
	v.publish(t)
	if got := e.readSum(t, v.target+"/data"); got != sum {
		t.Fatalf("data read back after restage differs")
	}
	v.unpublish(t)
	v.unstage(t)
}
