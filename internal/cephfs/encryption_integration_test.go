//go:build integration

package cephfs_test

import (
	"maps"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// Encrypted (fscrypt) CephFS volumes against the real cluster, controller
// side: the journal keys ceph-csi reads, on the volume and its snapshot;
// the refusals, with nothing left behind. The unlock itself needs the
// CephFS kernel client, which this host lacks: its stage is refused
// clearly here and runs in the kernel guest (e2e/kernel).
func TestEncryptedVolumeJournalAndRefusals(t *testing.T) {
	e := newEnv(t)
	secrets := maps.Clone(e.secrets)
	secrets["encryptionPassphrase"] = "fscrypt-integration-pass"

	req := e.volReq("enc", 16<<20, nil, "encrypted", "true", "mounter", "kernel", "csi.storage.k8s.io/pvc/namespace", "tenant-a")
	req.Secrets = secrets
	vol, _ := e.createVolume(req)
	u := testutil.UUIDOf(t, vol.GetVolumeId())
	entry := testutil.Omap(t, e.meta, "csi.volume."+u)
	for k, want := range map[string]string{"csi.volume.encryptKMS": "default", "csi.volume.encryptionType": "file", "csi.volume.owner": "tenant-a"} {
		if entry[k] != want {
			t.Errorf("journal csi.volume.%s[%s] = %q, want %q", u, k, entry[k], want)
		}
	}
	if vc := vol.GetVolumeContext(); vc["encrypted"] != "true" {
		t.Errorf("volume_context[encrypted] = %q, want the StorageClass's \"true\" for the node", vc["encrypted"])
	}

	snap := e.snapshot(uniqueName("encsnap"), vol.GetVolumeId())
	sentry := testutil.Omap(t, e.meta, "csi.snap."+uuidOfID(snap.GetSnapshotId()))
	if sentry["csi.volume.encryptKMS"] != "default" || sentry["csi.volume.encryptionType"] != "file" {
		t.Errorf("snapshot journal entry %v: want the volume's encryptKMS and encryptionType", sentry)
	}

	// Ceph's cloner drops fscrypt policies: restores and clones of an
	// encrypted volume are refused before anything is reserved.
	fromSnap := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	fromVol := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol.GetVolumeId()}}}
	plainSrc := e.newVolume("plain", 16<<20, nil)
	for _, tc := range []struct {
		what    string
		req     *csi.CreateVolumeRequest
		mention string
	}{
		{"encrypted restore", e.volReq("r", 16<<20, fromSnap, "encrypted", "true", "mounter", "kernel"), "encrypted with fscrypt"},
		{"plain restore", e.volReq("r", 16<<20, fromSnap), "encrypted with fscrypt"},
		{"clone", e.volReq("c", 16<<20, fromVol, "encrypted", "true", "mounter", "kernel"), "encrypted with fscrypt"},
		{"plain source, encrypted class", e.volReq("c", 16<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: plainSrc.GetVolumeId()}}}, "encrypted", "true", "mounter", "kernel"), "would stay plain"},
		{"no passphrase for the default KMS", e.volReq("n", 16<<20, nil, "encrypted", "true", "mounter", "kernel"), "encryptionPassphrase"},
		{"ceph-fuse", e.volReq("f", 16<<20, nil, "encrypted", "true", "mounter", "fuse"), "kernel client"},
	} {
		if tc.what != "no passphrase for the default KMS" {
			tc.req.Secrets = secrets
		}
		_, err := e.d.Controller.CreateVolume(e.ctx, tc.req)
		if status.Code(err) != codes.InvalidArgument || !containsFold(status.Convert(err).Message(), tc.mention) {
			t.Errorf("%s: %v, want InvalidArgument mentioning %q", tc.what, err, tc.mention)
		}
		if _, ok := testutil.Omap(t, e.meta, "csi.volumes.default")["csi.volume."+tc.req.GetName()]; ok {
			t.Errorf("%s: the refused request left a journal key", tc.what)
		}
	}

	// This host's kernel has no ceph module: the node says so, and leaves
	// nothing mounted.
	staging := e.mountDir("stage")
	nodeSecrets := maps.Clone(e.c.CephFSNodeSecrets())
	nodeSecrets["encryptionPassphrase"] = secrets["encryptionPassphrase"]
	_, err := e.d.Node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: rwo()[0], VolumeContext: vol.GetVolumeContext(), Secrets: nodeSecrets})
	if status.Code(err) != codes.FailedPrecondition || !containsFold(status.Convert(err).Message(), "kernel client") {
		t.Errorf("stage of an encrypted volume without the ceph module: %v, want FailedPrecondition naming the kernel client", err)
	}
	if isMounted(staging) {
		t.Errorf("a refused stage left %s mounted", staging)
	}
}
