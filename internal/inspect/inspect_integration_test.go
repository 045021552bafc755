//go:build integration

package inspect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"

	"github.com/leanceph/cephcsi/internal/failpoint"
	"github.com/leanceph/cephcsi/internal/inspect"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// world is one test's own corner of the shared cluster: a RADOS namespace
// of pool rbd (so that images and trash entries of other tests stay out of
// sight), a config.json naming it, and a journal instance of its own.
type world struct {
	t        *testing.T
	c        *testutil.Cluster
	bin      string
	ns       string
	cluster  string
	instance string
	config   string
	secrets  string
	plugins  string
	io       *rados.IOContext // admin, in the namespace
}

func newWorld(t *testing.T) *world {
	c := testutil.RequireCluster(t)
	id := uuid.NewString()[:8]
	w := &world{t: t, c: c, bin: testutil.BuildBinary(t, "failpoints"), ns: "inspect-" + id, cluster: "inspect-" + id,
		instance: "inspect-" + id, plugins: t.TempDir()}
	w.io = c.IOContext(t, "rbd")
	if err := rbd.NamespaceCreate(w.io, w.ns); err != nil {
		t.Fatal(err)
	}
	w.io.SetNamespace(w.ns)
	dir := t.TempDir()
	w.config = filepath.Join(dir, "config.json")
	cfg, _ := json.Marshal([]map[string]any{{"clusterID": w.cluster, "monitors": strings.Split(c.Monitors, ","),
		"rbd": map[string]string{"radosNamespace": w.ns}}})
	if err := os.WriteFile(w.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	// A Secret as Kubernetes mounts it: one file per key.
	w.secrets = filepath.Join(dir, "secret")
	if err := os.Mkdir(w.secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range c.RBDSecrets() {
		if err := os.WriteFile(filepath.Join(w.secrets, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func (w *world) start(armed string) *testutil.Process {
	var env []string
	if armed != "" {
		env = append(env, failpoint.EnvVar+"="+armed)
	}
	return testutil.StartProcess(w.t, w.bin, env, "--type=rbd", "--controllerserver", "--nodeserver", "--nodeid=inspect-node",
		"--configpath="+w.config, "--pluginpath="+w.plugins, "--instanceid="+w.instance)
}

func (w *world) createReq(name string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}, VolumeContentSource: src,
		Parameters: map[string]string{"clusterID": w.cluster, "pool": "rbd"}, Secrets: w.c.RBDSecrets()}
}

// dies sends a call to a process armed at a failpoint and checks that it
// died there.
func (w *world) dies(armed string, call func(p *testutil.Process) error) {
	w.t.Helper()
	p := w.start(armed)
	if err := call(p); err == nil {
		w.t.Fatalf("%s: the call succeeded", armed)
	}
	if code, ok := p.Exited(10 * time.Second); !ok || code != failpoint.ExitCode {
		w.t.Fatalf("%s: exit %d (exited %v); log:\n%s", armed, code, ok, p.Log())
	}
}

// inspect runs `cephcsi inspect -o json` with args and returns the report
// and the exit status.
func (w *world) inspect(args ...string) (*inspect.Report, int) {
	w.t.Helper()
	cmd := exec.Command(w.bin, append([]string{"inspect", "-o", "json", "--type=rbd", "--configpath=" + w.config,
		"--secrets=" + w.secrets, "--instanceid=" + w.instance}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	key := w.c.RBDSecrets()["userKey"]
	if strings.Contains(out.String()+errb.String(), key) {
		w.t.Fatal("the key is in inspect's output")
	}
	var rep inspect.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		w.t.Fatalf("inspect %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out.String(), errb.String())
	}
	return &rep, code
}

// table runs inspect with the human output, for the log.
func (w *world) table(args ...string) string {
	cmd := exec.Command(w.bin, append([]string{"inspect", "--type=rbd", "--configpath=" + w.config,
		"--secrets=" + w.secrets, "--instanceid=" + w.instance}, args...)...)
	out, _ := cmd.Output()
	return string(out)
}

// kinds lists the orphans as "kind name collect".
func kinds(rep *inspect.Report) []string {
	var out []string
	for _, o := range rep.Orphans {
		out = append(out, fmt.Sprintf("%s %s %v", o.Kind, o.Name, o.Collect))
	}
	sort.Strings(out)
	return out
}

// onCluster lists, as admin, every image, trash entry and journal object
// in the namespace.
func (w *world) onCluster() []string {
	var out []string
	names, _ := rbd.GetImageNames(w.io)
	for _, n := range names {
		out = append(out, "image "+n)
	}
	trash, _ := rbd.GetTrashList(w.io)
	for _, e := range trash {
		out = append(out, "trash "+e.Name)
	}
	_ = w.io.ListObjects(func(oid string) {
		if strings.HasPrefix(oid, "csi.") {
			out = append(out, "object "+oid)
		}
	})
	sort.Strings(out)
	return out
}

// The orphans that crashes and a hand-made mistake leave in Ceph are found
// exactly, gc removes exactly those that are ours (a dry run first, then
// with --yes), and a second gc finds nothing to remove.
func TestInspectAndGCFindExactlyTheOrphans(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Live volumes: a source, and a volume whose journal entry is removed
	// by hand below.
	p := w.start("")
	src, err := p.Controller.CreateVolume(ctx, w.createReq("inspect-src", nil))
	if err != nil {
		t.Fatal(err)
	}
	lost, err := p.Controller.CreateVolume(ctx, w.createReq("inspect-lost", nil))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "inspect-snap", SourceVolumeId: src.GetVolume().GetVolumeId(),
		Secrets: w.c.RBDSecrets(), Parameters: map[string]string{"clusterID": w.cluster}})
	if err != nil {
		t.Fatal(err)
	}
	restored, err := p.Controller.CreateVolume(ctx, w.createReq("inspect-restored", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := p.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "inspect-kept-snap", SourceVolumeId: src.GetVolume().GetVolumeId(),
		Secrets: w.c.RBDSecrets(), Parameters: map[string]string{"clusterID": w.cluster}})
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot goes to the trash: the restored volume depends on it.
	if _, err := p.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId(), Secrets: w.c.RBDSecrets()}); err != nil {
		t.Fatal(err)
	}
	p.Kill()

	// 1. A create that died after reserving its name.
	w.dies("create-volume-after-reserve", func(p *testutil.Process) error {
		_, err := p.Controller.CreateVolume(ctx, w.createReq("inspect-reserved", nil))
		return err
	})
	// 2. A PVC clone that died after its -temp image.
	w.dies("clone-volume-after-temp", func(p *testutil.Process) error {
		_, err := p.Controller.CreateVolume(ctx, w.createReq("inspect-clone", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolume().GetVolumeId()}}}))
		return err
	})
	// 3. A delete that died after the image, before its trashed parent
	// (the snapshot's image, marked by the driver) was purged.
	w.dies("remove-images-after-image", func(p *testutil.Process) error {
		_, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: restored.GetVolume().GetVolumeId(), Secrets: w.c.RBDSecrets()})
		return err
	})
	// 4. A journal entry removed by hand: its image is nobody's now.
	lostUUID := lost.GetVolume().GetVolumeId()[len(lost.GetVolume().GetVolumeId())-36:]
	lostImage := lost.GetVolume().GetVolumeContext()["imageName"]
	op := rados.CreateWriteOp()
	op.RmOmapKeys([]string{"csi.volume.inspect-lost"})
	if err := op.Operate(w.io, "csi.volumes."+w.instance, rados.OperationNoFlag); err != nil {
		t.Fatal(err)
	}
	op.Release()
	if err := w.io.Delete("csi.volume." + lostUUID); err != nil {
		t.Fatal(err)
	}

	// 5. The first step of a repeated CreateSnapshot, left on the source:
	// a snapshot named after the snapshot's image. And a snapshot of the
	// user's on the same image, which is not ours.
	srcImage := src.GetVolume().GetVolumeContext()["imageName"]
	keptImage := "csi-snap-" + kept.GetSnapshot().GetSnapshotId()[len(kept.GetSnapshot().GetSnapshotId())-36:]
	srcImg, err := rbd.OpenImage(w.io, srcImage, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range []string{keptImage, "user-backup"} {
		if _, err := srcImg.CreateSnapshot(sn); err != nil {
			t.Fatal(err)
		}
	}
	_ = srcImg.Close()

	before := w.onCluster()
	t.Logf("on the cluster before inspect:\n%s", strings.Join(before, "\n"))
	rep, code := w.inspect("--grace=0s")
	if code != 0 {
		t.Errorf("inspect exit %d: %+v", code, rep.Errors)
	}
	snapImage := "csi-snap-" + snap.GetSnapshot().GetSnapshotId()[len(snap.GetSnapshot().GetSnapshotId())-36:]
	var cloneImage string
	for _, p := range rep.Pools {
		for _, e := range p.Entries {
			if e.RequestName == "inspect-clone" {
				cloneImage = e.Image
			}
		}
	}
	want := []string{
		"image-without-journal " + lostImage + " false",
		"journal-without-image volume inspect-clone true",
		"journal-without-image volume inspect-reserved true",
		"journal-without-image volume inspect-restored true",
		"leftover-temp " + cloneImage + "-temp true",
		"leftover-snapshot " + srcImage + "@" + keptImage + " true",
	}
	trashName := ""
	for _, o := range rep.Orphans {
		if o.Kind == inspect.TrashUnneeded {
			trashName = o.Name
		}
	}
	if !strings.HasPrefix(trashName, snapImage+" (trash ") {
		t.Errorf("no trash-unneeded orphan for %s (found %q)", snapImage, trashName)
	}
	want = append(want, "trash-unneeded "+trashName+" true")
	sort.Strings(want)
	if got := kinds(rep); !slices.Equal(got, want) {
		t.Errorf("orphans:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("cephcsi inspect --grace=0s:\n%s", w.table("--grace=0s"))

	// Within the grace period nothing is collected.
	young, _ := w.inspect("--gc", "--grace=1h")
	if len(young.Removed) != 0 {
		t.Errorf("gc within the grace period would remove %+v", young.Removed)
	}
	// A dry run lists, removes nothing.
	dry, _ := w.inspect("--gc", "--grace=0s")
	if !dry.DryRun || len(dry.Removed) != 6 {
		t.Errorf("dry run: dryRun %v, would remove %+v", dry.DryRun, dry.Removed)
	}
	if after := w.onCluster(); !slices.Equal(after, before) {
		t.Errorf("a dry run changed the cluster:\n%s", strings.Join(after, "\n"))
	}

	t.Logf("cephcsi inspect --gc --yes --grace=0s:\n%s", w.table("--gc", "--yes", "--grace=0s"))
	gone, code := w.inspect("--gc", "--yes", "--grace=0s")
	if code != 0 || len(gone.Removed) != 0 {
		t.Errorf("second gc: exit %d, removed %+v", code, gone.Removed)
	}
	if got := kinds(gone); !slices.Equal(got, []string{"image-without-journal " + lostImage + " false"}) {
		t.Errorf("after gc, orphans: %v", got)
	}
	// What is left: the source volume and the kept snapshot (images and
	// journal entries), the user's snapshot, and the image that is not ours.
	left := w.onCluster()
	srcUUID := src.GetVolume().GetVolumeId()[len(src.GetVolume().GetVolumeId())-36:]
	wantLeft := []string{"image " + lostImage, "image " + srcImage, "image " + keptImage, "object csi.snaps." + w.instance,
		"object csi.volume." + srcUUID, "object csi.snap." + strings.TrimPrefix(keptImage, "csi-snap-"), "object csi.volumes." + w.instance}
	sort.Strings(wantLeft)
	if !slices.Equal(left, wantLeft) {
		t.Errorf("left on the cluster:\n%s\nwant:\n%s", strings.Join(left, "\n"), strings.Join(wantLeft, "\n"))
	}

	if srcImg, err = rbd.OpenImage(w.io, srcImage, rbd.NoSnapshot); err != nil {
		t.Fatal(err)
	}
	var userSnaps []string
	snaps, _ := srcImg.GetSnapshotNames()
	for _, sn := range snaps {
		if ns, err := srcImg.GetSnapNamespaceType(sn.Id); err == nil && ns == rbd.SnapNamespaceTypeUser {
			userSnaps = append(userSnaps, sn.Name)
		}
	}
	if !slices.Equal(userSnaps, []string{"user-backup"}) {
		t.Errorf("user snapshots of %s after gc: %v, want only the user's", srcImage, userSnaps)
	}
	_ = srcImg.GetSnapshot("user-backup").Remove()
	_ = srcImg.Close()

	// Clean up: the source and snapshot through the driver, the foreign
	// image as admin.
	p = w.start("")
	if _, err := p.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: kept.GetSnapshot().GetSnapshotId(), Secrets: w.c.RBDSecrets()}); err != nil {
		t.Error(err)
	}
	if _, err := p.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolume().GetVolumeId(), Secrets: w.c.RBDSecrets()}); err != nil {
		t.Error(err)
	}
	p.Kill()
	if err := rbd.RemoveImage(w.io, lostImage); err != nil {
		t.Error(err)
	}
	for _, oid := range []string{"csi.volumes." + w.instance, "csi.snaps." + w.instance} {
		_ = w.io.Delete(oid)
	}
	if left := w.onCluster(); len(left) > 0 {
		t.Errorf("left after cleanup: %v", left)
	}
	w.io.SetNamespace("")
	if err := rbd.NamespaceRemove(w.io, w.ns); err != nil {
		t.Error(err)
	}
}
