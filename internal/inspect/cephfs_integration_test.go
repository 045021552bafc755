//go:build integration

package inspect_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	fsadmin "github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// The CephFS side: crashes after a reservation and before a release, and a
// journal entry removed by hand, in a subvolume group and journal namespace
// of the test's own.
func TestInspectCephFS(t *testing.T) {
	c := testutil.RequireCluster(t)
	id := uuid.NewString()[:8]
	w := &world{t: t, c: c, bin: testutil.BuildBinary(t, "failpoints"), cluster: "inspect-fs-" + id, instance: "inspect-" + id,
		plugins: t.TempDir()}
	group, ns := "inspect-"+id, "inspect-"+id
	dir := t.TempDir()
	w.config = filepath.Join(dir, "config.json")
	cfg, _ := json.Marshal([]map[string]any{{"clusterID": w.cluster, "monitors": strings.Split(c.Monitors, ","),
		"cephFS": map[string]string{"subvolumeGroup": group, "radosNamespace": ns}}})
	if err := os.WriteFile(w.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	w.secrets = filepath.Join(dir, "secret")
	if err := os.Mkdir(w.secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range c.CephFSSecrets() {
		if err := os.WriteFile(filepath.Join(w.secrets, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	journal := c.IOContext(t, testutil.FSMetadataPool)
	journal.SetNamespace(ns)
	fsa := fsadmin.NewFromConn(c.Admin())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := func(armed string) *testutil.Process {
		var env []string
		if armed != "" {
			env = append(env, failpoint.EnvVar+"="+armed)
		}
		return testutil.StartProcess(t, w.bin, env, "--type=cephfs", "--controllerserver", "--nodeserver", "--nodeid=inspect-node",
			"--configpath="+w.config, "--pluginpath="+w.plugins, "--instanceid="+w.instance)
	}
	req := func(name string) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("")}, Secrets: c.CephFSSecrets(),
			Parameters: map[string]string{"clusterID": w.cluster, "fsName": testutil.FSName}}
	}
	dies := func(armed string, call func(p *testutil.Process) error) {
		t.Helper()
		p := start(armed)
		if err := call(p); err == nil {
			t.Fatalf("%s: the call succeeded", armed)
		}
		if code, ok := p.Exited(10 * time.Second); !ok || code != failpoint.ExitCode {
			t.Fatalf("%s: exit %d (exited %v); log:\n%s", armed, code, ok, p.Log())
		}
	}

	p := start("")
	src, err := p.Controller.CreateVolume(ctx, req("fs-src"))
	if err != nil {
		t.Fatal(err)
	}
	doomed, err := p.Controller.CreateVolume(ctx, req("fs-deleted"))
	if err != nil {
		t.Fatal(err)
	}
	lost, err := p.Controller.CreateVolume(ctx, req("fs-lost"))
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	dies("cephfs-create-volume-after-reserve", func(p *testutil.Process) error {
		_, err := p.Controller.CreateVolume(ctx, req("fs-reserved"))
		return err
	})
	dies("cephfs-delete-volume-before-release", func(p *testutil.Process) error {
		_, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: doomed.GetVolume().GetVolumeId(), Secrets: c.CephFSSecrets()})
		return err
	})
	dies("cephfs-create-snapshot-after-reserve", func(p *testutil.Process) error {
		_, err := p.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "fs-snap", SourceVolumeId: src.GetVolume().GetVolumeId(),
			Secrets: c.CephFSSecrets(), Parameters: map[string]string{"clusterID": w.cluster, "fsName": testutil.FSName}})
		return err
	})
	dies("cephfs-clone-after-temp-snapshot", func(p *testutil.Process) error {
		r := req("fs-clone")
		r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolume().GetVolumeId()}}}
		_, err := p.Controller.CreateVolume(ctx, r)
		return err
	})
	lostUUID := lost.GetVolume().GetVolumeId()[len(lost.GetVolume().GetVolumeId())-36:]
	lostName := lost.GetVolume().GetVolumeContext()["subvolumeName"]
	op := rados.CreateWriteOp()
	op.RmOmapKeys([]string{"csi.volume.fs-lost"})
	if err := op.Operate(journal, "csi.volumes."+w.instance, rados.OperationNoFlag); err != nil {
		t.Fatal(err)
	}
	op.Release()
	if err := journal.Delete("csi.volume." + lostUUID); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) []string {
		rep, code := w.inspect(append([]string{"--type=cephfs", "--fsnames=" + testutil.FSName}, args...)...)
		if code != 0 {
			t.Errorf("inspect %v: exit %d: %v %+v", args, code, rep.Errors, rep.Removed)
		}
		return kinds(rep)
	}
	first, _ := w.inspect("--type=cephfs", "--fsnames="+testutil.FSName, "--grace=0s")
	cloneName := ""
	for _, p := range first.Pools {
		for _, e := range p.Entries {
			if e.RequestName == "fs-clone" {
				cloneName = e.Image
			}
		}
	}
	srcName := src.GetVolume().GetVolumeContext()["subvolumeName"]
	want := []string{
		"image-without-journal " + lostName + " false",
		"journal-without-image volume fs-clone true",
		"leftover-snapshot " + srcName + "@" + cloneName + " true",
		"journal-without-image snapshot fs-snap true",
		"journal-without-image volume fs-deleted true",
		"journal-without-image volume fs-reserved true",
	}
	sort.Strings(want)
	if got := run("--grace=0s"); !slices.Equal(got, want) {
		t.Errorf("orphans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("cephcsi inspect --type=cephfs --grace=0s:\n%s", w.table("--type=cephfs", "--fsnames="+testutil.FSName, "--grace=0s"))
	if got := run("--gc", "--yes", "--grace=0s"); !slices.Equal(got, want[:1]) {
		t.Errorf("after gc, orphans %v", got)
	}
	again, _ := w.inspect("--type=cephfs", "--fsnames="+testutil.FSName, "--gc", "--yes", "--grace=0s")
	if len(again.Removed) != 0 {
		t.Errorf("second gc removed %+v", again.Removed)
	}
	subs, _ := fsa.ListSubVolumes(testutil.FSName, group)
	sort.Strings(subs)
	if snaps, _ := fsa.ListSubVolumeSnapshots(testutil.FSName, group, srcName); len(snaps) != 0 {
		t.Errorf("snapshots left on the source: %v", snaps)
	}
	if wantSubs := sortedCopy([]string{lostName, srcName}); !slices.Equal(subs, wantSubs) {
		t.Errorf("subvolumes left %v, want %v", subs, wantSubs)
	}

	// Clean up.
	p = start("")
	if _, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolume().GetVolumeId(), Secrets: c.CephFSSecrets()}); err != nil {
		t.Error(err)
	}
	p.Kill()
	if err := fsa.RemoveSubVolume(testutil.FSName, group, lostName); err != nil {
		t.Error(err)
	}
	_ = fsa.RemoveSubVolumeGroup(testutil.FSName, group)
	for _, oid := range []string{"csi.volumes." + w.instance, "csi.snaps." + w.instance} {
		_ = journal.Delete(oid)
	}
	var left []string
	_ = journal.ListObjects(func(oid string) { left = append(left, oid) })
	if len(left) > 0 {
		t.Errorf("journal objects left: %v", left)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}
