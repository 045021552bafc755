package demo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/volid"
)

const (
	gib = int64(1) << 30
	// The feature set Rook's example StorageClass asks for.
	demoFeatures = "layering,exclusive-lock,object-map,fast-diff"
)

// rbdState is what the RBD steps pass on to each other.
type rbdState struct {
	io         *rados.IOContext
	volumeID   string
	snapshotID string
	restoreID  string
	cloneID    string
}

// RBDSteps is the RBD controller walk-through: create, expand, snapshot,
// restore, clone, delete, and a check that nothing is left.
func RBDSteps() []Step {
	st := &rbdState{}
	return []Step{
		{"Identity: plugin info and capabilities", st.identity},
		{"CreateVolume: 1 GiB in pool rbd", st.createVolume},
		{"ControllerExpandVolume: grow it to 2 GiB", st.expand},
		{"CreateSnapshot of the volume", st.snapshot},
		{"CreateVolume from the snapshot (restore)", st.restore},
		{"CreateVolume from the volume (PVC clone)", st.clone},
		{"Delete everything and check that nothing is left", st.deleteAll},
		{"Driver log: no cephx key", func(_ context.Context, d *Demo) error { return d.CheckDriverLog() }},
	}
}

func (st *rbdState) identity(ctx context.Context, d *Demo) error {
	io, err := d.Pool()
	if err != nil {
		return err
	}
	st.io = io
	c, cancel := d.Ctx(ctx)
	defer cancel()
	d.Call("GetPluginInfo")
	info, err := d.RBD.Identity.GetPluginInfo(c, &csi.GetPluginInfoRequest{})
	if err != nil {
		return err
	}
	d.Show("name, version", "%s %s", info.GetName(), info.GetVendorVersion())
	d.Call("Probe")
	probe, err := d.RBD.Identity.Probe(c, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	d.Show("ready", "%v", probe.GetReady().GetValue())
	d.Call("ControllerGetCapabilities")
	caps, err := d.RBD.Controller.ControllerGetCapabilities(c, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return err
	}
	var names []string
	for _, cp := range caps.GetCapabilities() {
		names = append(names, cp.GetRpc().GetType().String())
	}
	d.Show("controller", "%s", strings.Join(names, ", "))
	return nil
}

func mountCapability() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func (st *rbdState) volumeRequest(d *Demo, name string, size int64, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: mountCapability(),
		Parameters: map[string]string{"clusterID": d.Var("CEPH_CLUSTER_ID"), "pool": d.cfg.Pool,
			"imageFeatures": demoFeatures, "csi.storage.k8s.io/fstype": "ext4"},
		Secrets:             d.RBDSecrets(),
		VolumeContentSource: src,
	}
}

// create makes a volume and registers its deletion for a failed run.
func (st *rbdState) create(ctx context.Context, d *Demo, req *csi.CreateVolumeRequest) (*csi.Volume, error) {
	c, cancel := d.Ctx(ctx)
	defer cancel()
	resp, err := d.RBD.Controller.CreateVolume(c, req)
	if err != nil {
		return nil, err
	}
	vol := resp.GetVolume()
	id := vol.GetVolumeId()
	if u, err := volid.Decode(id); err == nil {
		d.Track(u.UUID)
	}
	d.OnFailure("volume "+id, func(ctx context.Context) error { return st.deleteVolume(ctx, d, id) })
	return vol, nil
}

func (st *rbdState) deleteVolume(ctx context.Context, d *Demo, id string) error {
	c, cancel := d.Ctx(ctx)
	defer cancel()
	_, err := d.RBD.Controller.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: d.RBDSecrets()})
	if err == nil {
		d.Done("volume " + id)
	}
	return err
}

func (st *rbdState) deleteSnapshot(ctx context.Context, d *Demo, id string) error {
	c, cancel := d.Ctx(ctx)
	defer cancel()
	_, err := d.RBD.Controller.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: d.RBDSecrets()})
	if err == nil {
		d.Done("snapshot " + id)
	}
	return err
}

// showVolume prints a CreateVolume result: the ID's parts and the volume
// context the PV gets.
func showVolume(d *Demo, vol *csi.Volume) {
	d.Show("volume_id", "%s", vol.GetVolumeId())
	if id, err := volid.Decode(vol.GetVolumeId()); err == nil {
		d.Show("  decoded", "clusterID %s, pool ID %d, uuid %s", id.ClusterID, id.LocationID, id.UUID)
	}
	d.Show("capacity", "%s", size(vol.GetCapacityBytes()))
	keys := make([]string, 0, len(vol.GetVolumeContext()))
	for k := range vol.GetVolumeContext() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+vol.GetVolumeContext()[k])
	}
	d.Show("volume_context", "%s", strings.Join(kv, " "))
}

func size(b int64) string {
	switch {
	case b >= gib && b%gib == 0:
		return fmt.Sprintf("%d GiB", b/gib)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d bytes", b)
}

// showImage prints an image as `rbd info` and `rbd snap ls` would.
func (st *rbdState) showImage(d *Demo, name string) error {
	img, err := rbd.OpenImageReadOnly(st.io, name, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("image %s/%s: %w", d.cfg.Pool, name, err)
	}
	defer func() { _ = img.Close() }() // opened read-only to show
	sz, err := img.GetSize()
	if err != nil {
		return err
	}
	features, err := img.GetFeatures()
	if err != nil {
		return err
	}
	id, err := img.GetId()
	if err != nil {
		return err
	}
	d.Show("image", "%s/%s (id %s), %s, features %s", d.cfg.Pool, name, id, size(int64(sz)), featureNames(features))
	parent, err := img.GetParent()
	switch {
	case err == nil:
		d.Show("  parent", "%s/%s@%s", parent.Image.PoolName, parent.Image.ImageName, parent.Snap.SnapName)
	case errors.Is(err, rbd.ErrNotFound):
		d.Show("  parent", "none")
	default:
		return err
	}
	user, trash, err := snapshots(img)
	if err != nil {
		return err
	}
	line := "none"
	if len(user) > 0 {
		line = strings.Join(user, ", ")
	}
	if trash > 0 {
		line += fmt.Sprintf(" (+%d in the trash namespace, kept while clones need them)", trash)
	}
	d.Show("  snapshots", "%s", line)
	return nil
}

// featureNames lists feature bits by name in bit order, as `rbd info` does.
func featureNames(features uint64) string {
	fs := rbd.FeatureSet(features)
	names := fs.Names()
	bit := func(n string) uint64 { return uint64(rbd.FeatureSetFromNames([]string{n})) }
	sort.Slice(names, func(i, j int) bool { return bit(names[i]) < bit(names[j]) })
	return strings.Join(names, ",")
}

// snapshots lists the user snapshots of img (what `rbd snap ls` shows) and
// counts the ones in the trash namespace.
func snapshots(img *rbd.Image) (user []string, trash int, err error) {
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, 0, err
	}
	for _, s := range snaps {
		ns, err := img.GetSnapNamespaceType(s.Id)
		if err != nil {
			return nil, 0, err
		}
		if ns == rbd.SnapNamespaceTypeTrash {
			trash++
			continue
		}
		user = append(user, s.Name)
	}
	return user, trash, nil
}

// showJournal prints the omap journal entries of a volume or snapshot.
func (st *rbdState) showJournal(d *Demo, directory, nameKey, entryObject string) error {
	dir, err := st.io.GetOmapValues(directory, "", nameKey, 2)
	if err != nil {
		return fmt.Errorf("omap of %s: %w", directory, err)
	}
	v, ok := dir[nameKey]
	if !ok {
		return fmt.Errorf("%s has no key %s", directory, nameKey)
	}
	d.Show("journal", "%s: %s -> %s", directory, nameKey, v)
	entry, err := st.io.GetAllOmapValues(entryObject, "", "", 100)
	if err != nil {
		return fmt.Errorf("omap of %s: %w", entryObject, err)
	}
	keys := make([]string, 0, len(entry))
	for k := range entry {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+string(entry[k]))
	}
	d.Show("", "%s: %s", entryObject, strings.Join(kv, " "))
	return nil
}

func uuidOf(id string) string {
	d, err := volid.Decode(id)
	if err != nil {
		return ""
	}
	return d.UUID
}

func (st *rbdState) createVolume(ctx context.Context, d *Demo) error {
	name := d.Name("pvc")
	req := st.volumeRequest(d, name, gib, nil)
	d.Call("CreateVolume name=%s size=1 GiB imageFeatures=%s", name, demoFeatures)
	vol, err := st.create(ctx, d, req)
	if err != nil {
		return err
	}
	st.volumeID = vol.GetVolumeId()
	showVolume(d, vol)
	u := uuidOf(st.volumeID)
	if err := st.showImage(d, "csi-vol-"+u); err != nil {
		return err
	}
	if err := st.showJournal(d, "csi.volumes.default", "csi.volume."+name, "csi.volume."+u); err != nil {
		return err
	}
	d.Call("CreateVolume again with the same name (the provisioner retries)")
	again, err := st.create(ctx, d, req)
	if err != nil {
		return err
	}
	if again.GetVolumeId() != st.volumeID {
		return fmt.Errorf("the repeated request returned %s, not %s", again.GetVolumeId(), st.volumeID)
	}
	d.Show("same volume", "yes, %s", again.GetVolumeId())
	return nil
}

func (st *rbdState) expand(ctx context.Context, d *Demo) error {
	c, cancel := d.Ctx(ctx)
	defer cancel()
	d.Call("ControllerExpandVolume to 2 GiB")
	resp, err := d.RBD.Controller.ControllerExpandVolume(c, &csi.ControllerExpandVolumeRequest{
		VolumeId: st.volumeID, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib},
		VolumeCapability: mountCapability()[0], Secrets: d.RBDSecrets(),
	})
	if err != nil {
		return err
	}
	d.Show("capacity", "%s, node expansion required: %v (the filesystem grows on the node)",
		size(resp.GetCapacityBytes()), resp.GetNodeExpansionRequired())
	return st.showImage(d, "csi-vol-"+uuidOf(st.volumeID))
}

func (st *rbdState) snapshot(ctx context.Context, d *Demo) error {
	c, cancel := d.Ctx(ctx)
	defer cancel()
	name := d.Name("snap")
	d.Call("CreateSnapshot name=%s source=%s", name, st.volumeID)
	resp, err := d.RBD.Controller.CreateSnapshot(c, &csi.CreateSnapshotRequest{
		Name: name, SourceVolumeId: st.volumeID, Secrets: d.RBDSecrets(),
		Parameters: map[string]string{"clusterID": d.Var("CEPH_CLUSTER_ID")},
	})
	if err != nil {
		return err
	}
	snap := resp.GetSnapshot()
	st.snapshotID = snap.GetSnapshotId()
	u := uuidOf(st.snapshotID)
	d.Track(u)
	d.OnFailure("snapshot "+st.snapshotID, func(ctx context.Context) error { return st.deleteSnapshot(ctx, d, st.snapshotID) })
	d.Show("snapshot_id", "%s", st.snapshotID)
	d.Show("size, ready", "%s, %v", size(snap.GetSizeBytes()), snap.GetReadyToUse())
	d.Printf("   the snapshot is an image cloned from the source, carrying one snapshot to restore from:\n")
	if err := st.showImage(d, "csi-snap-"+u); err != nil {
		return err
	}
	d.Printf("   the source keeps no user snapshot (`rbd snap ls` is empty):\n")
	if err := st.showImage(d, "csi-vol-"+uuidOf(st.volumeID)); err != nil {
		return err
	}
	return st.showJournal(d, "csi.snaps.default", "csi.snap."+name, "csi.snap."+u)
}

func (st *rbdState) restore(ctx context.Context, d *Demo) error {
	name := d.Name("restore")
	src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: st.snapshotID}}}
	d.Call("CreateVolume name=%s size=2 GiB from snapshot %s", name, st.snapshotID)
	vol, err := st.create(ctx, d, st.volumeRequest(d, name, 2*gib, src))
	if err != nil {
		return err
	}
	st.restoreID = vol.GetVolumeId()
	d.Show("volume_id", "%s", st.restoreID)
	return st.showImage(d, "csi-vol-"+uuidOf(st.restoreID))
}

func (st *rbdState) clone(ctx context.Context, d *Demo) error {
	name := d.Name("clone")
	src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: st.volumeID}}}
	d.Call("CreateVolume name=%s size=2 GiB from volume %s", name, st.volumeID)
	vol, err := st.create(ctx, d, st.volumeRequest(d, name, 2*gib, src))
	if err != nil {
		return err
	}
	st.cloneID = vol.GetVolumeId()
	d.Show("volume_id", "%s", st.cloneID)
	image := "csi-vol-" + uuidOf(st.cloneID)
	if err := st.showImage(d, image); err != nil {
		return err
	}
	d.Printf("   its parent is an intermediate image cloned from the source:\n")
	return st.showImage(d, image+"-temp")
}

func (st *rbdState) deleteAll(ctx context.Context, d *Demo) error {
	for _, v := range []struct{ what, id string }{{"PVC clone", st.cloneID}, {"restored volume", st.restoreID}} {
		d.Call("DeleteVolume %s (%s)", v.id, v.what)
		if err := st.deleteVolume(ctx, d, v.id); err != nil {
			return err
		}
	}
	d.Call("DeleteSnapshot %s", st.snapshotID)
	if err := st.deleteSnapshot(ctx, d, st.snapshotID); err != nil {
		return err
	}
	d.Call("DeleteVolume %s (the source)", st.volumeID)
	if err := st.deleteVolume(ctx, d, st.volumeID); err != nil {
		return err
	}
	d.Call("DeleteVolume %s again (the provisioner retries)", st.volumeID)
	if err := st.deleteVolume(ctx, d, st.volumeID); err != nil {
		return err
	}
	d.Show("repeated delete", "OK")
	left, err := st.leftovers(d)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("left on the cluster: %s", strings.Join(left, ", "))
	}
	d.Show("pool "+d.cfg.Pool, "no image, trash entry, object or journal key of this run is left")
	return nil
}

// leftovers lists what the cluster still holds of this run: images, trash
// entries, objects (rbd_id.<name>, csi.volume.<uuid>, ...) and journal
// directory keys.
func (st *rbdState) leftovers(d *Demo) ([]string, error) {
	var left []string
	names, err := rbd.GetImageNames(st.io)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if d.Ours(n) {
			left = append(left, "image "+n)
		}
	}
	trash, err := rbd.GetTrashList(st.io)
	if err != nil {
		return nil, err
	}
	for _, e := range trash {
		if d.Ours(e.Name) {
			left = append(left, "trash "+e.Name)
		}
	}
	if err := st.io.ListObjects(func(oid string) {
		if d.Ours(oid) {
			left = append(left, "object "+oid)
		}
	}); err != nil {
		return nil, err
	}
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		kv, err := st.io.GetAllOmapValues(dir, "", "", 10000)
		if errors.Is(err, rados.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for k, v := range kv {
			if d.Ours(k) || d.Ours(string(v)) {
				left = append(left, "journal key "+dir+"/"+k)
			}
		}
	}
	return left, nil
}
