package inspect

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// PV is a PersistentVolume of one of our drivers.
type PV struct {
	Name, Driver, Handle, Phase, Claim string
	// Static is a volume made outside the driver (staticVolume, rootPath):
	// its handle is not a volume ID of ours.
	Static bool
}

// Content is a VolumeSnapshotContent of one of our drivers.
type Content struct {
	Name, Driver, Handle, Snapshot string
}

// Kube is what inspect reads from Kubernetes.
type Kube struct {
	PVs      []PV
	Contents []Content
	// ClaimUIDs and SnapshotUIDs are the UIDs of every PVC and
	// VolumeSnapshot: the provisioner names its requests pvc-<uid> and the
	// snapshotter snapshot-<uid>, so a journal entry of a claim still being
	// provisioned is not taken for an orphan.
	ClaimUIDs    map[string]bool
	SnapshotUIDs map[string]bool
	// Named are the handles that any PV or VolumeSnapshotContent names,
	// whatever its driver, with the object: a volume one of them names is
	// never an orphan, even when --rbd-drivername or --cephfs-drivername
	// is not the name the driver runs under.
	Named map[string]string
}

var (
	contentsGVR  = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}
	snapshotsGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
)

// ReadKube lists the PVs, PVCs, VolumeSnapshotContents and VolumeSnapshots
// (the snapshot CRDs may be absent: no snapshots then) that concern the
// drivers named.
func ReadKube(ctx context.Context, kubeconfig string, drivers []string) (*Kube, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "--kubeconfig: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ours := map[string]bool{}
	for _, d := range drivers {
		ours[d] = true
	}
	k := &Kube{ClaimUIDs: map[string]bool{}, SnapshotUIDs: map[string]bool{}, Named: map[string]string{}}
	pvs, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrUnavailable, "listing PersistentVolumes: %v", err)
	}
	for _, pv := range pvs.Items {
		c := pv.Spec.CSI
		if c == nil {
			continue
		}
		k.Named[c.VolumeHandle] = "pv/" + pv.Name + " of driver " + c.Driver
		if !ours[c.Driver] {
			continue
		}
		p := PV{Name: pv.Name, Driver: c.Driver, Handle: c.VolumeHandle, Phase: string(pv.Status.Phase),
			Static: c.VolumeAttributes["staticVolume"] == "true" || c.VolumeAttributes["rootPath"] != ""}
		if r := pv.Spec.ClaimRef; r != nil {
			p.Claim = r.Namespace + "/" + r.Name
		}
		k.PVs = append(k.PVs, p)
	}
	pvcs, err := cs.CoreV1().PersistentVolumeClaims(corev1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrUnavailable, "listing PersistentVolumeClaims: %v", err)
	}
	for _, c := range pvcs.Items {
		k.ClaimUIDs[string(c.UID)] = true
	}
	contents, err := dyn.Resource(contentsGVR).List(ctx, metav1.ListOptions{})
	switch {
	case err != nil && strings.Contains(err.Error(), "the server could not find the requested resource"):
		return k, nil // no snapshot CRDs: no snapshots of Kubernetes
	case err != nil:
		return nil, csierr.Errorf(csierr.ErrUnavailable, "listing VolumeSnapshotContents: %v", err)
	}
	for _, o := range contents.Items {
		driver, _, _ := unstructured.NestedString(o.Object, "spec", "driver")
		c := Content{Name: o.GetName(), Driver: driver}
		c.Handle, _, _ = unstructured.NestedString(o.Object, "status", "snapshotHandle")
		if c.Handle == "" { // pre-provisioned
			c.Handle, _, _ = unstructured.NestedString(o.Object, "spec", "source", "snapshotHandle")
		}
		if c.Handle != "" {
			k.Named[c.Handle] = "volumesnapshotcontent/" + c.Name + " of driver " + driver
		}
		if !ours[driver] {
			continue
		}
		ns, _, _ := unstructured.NestedString(o.Object, "spec", "volumeSnapshotRef", "namespace")
		name, _, _ := unstructured.NestedString(o.Object, "spec", "volumeSnapshotRef", "name")
		if name != "" {
			c.Snapshot = ns + "/" + name
		}
		k.Contents = append(k.Contents, c)
	}
	snaps, err := dyn.Resource(snapshotsGVR).Namespace(corev1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrUnavailable, "listing VolumeSnapshots: %v", err)
	}
	for _, o := range snaps.Items {
		k.SnapshotUIDs[string(o.GetUID())] = true
	}
	return k, nil
}

// pending reports whether a journal request name is that of a PVC or
// VolumeSnapshot that still exists.
func (k *Kube) pending(requestName string) bool {
	if uid, ok := strings.CutPrefix(requestName, "pvc-"); ok && k.ClaimUIDs[uid] {
		return true
	}
	if uid, ok := strings.CutPrefix(requestName, "snapshot-"); ok && k.SnapshotUIDs[uid] {
		return true
	}
	return false
}

func (p PV) String() string { return fmt.Sprintf("pv/%s", p.Name) }
