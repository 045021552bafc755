package inspect

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/kube"
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

// The objects inspect reads, as much of them as it reads.
type (
	pvObject struct {
		Metadata kube.Meta `json:"metadata"`
		Spec     struct {
			CSI *struct {
				Driver           string            `json:"driver"`
				VolumeHandle     string            `json:"volumeHandle"`
				VolumeAttributes map[string]string `json:"volumeAttributes"`
			} `json:"csi"`
			ClaimRef *struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"claimRef"`
		} `json:"spec"`
		Status struct {
			Phase string `json:"phase"`
		} `json:"status"`
	}
	contentObject struct {
		Metadata kube.Meta `json:"metadata"`
		Spec     struct {
			Driver string `json:"driver"`
			Source struct {
				SnapshotHandle string `json:"snapshotHandle"`
			} `json:"source"`
			VolumeSnapshotRef struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"volumeSnapshotRef"`
		} `json:"spec"`
		Status struct {
			SnapshotHandle string `json:"snapshotHandle"`
		} `json:"status"`
	}
	metaOnly struct {
		Metadata kube.Meta `json:"metadata"`
	}
)

// ReadKube lists the PVs, PVCs, VolumeSnapshotContents and VolumeSnapshots
// (the snapshot CRDs may be absent: no snapshots then) that concern the
// drivers named.
func ReadKube(ctx context.Context, kubeconfig string, drivers []string) (*Kube, error) {
	return readKube(ctx, &kube.Client{Kubeconfig: kubeconfig}, drivers)
}

func readKube(ctx context.Context, c *kube.Client, drivers []string) (*Kube, error) {
	ours := map[string]bool{}
	for _, d := range drivers {
		ours[d] = true
	}
	k := &Kube{ClaimUIDs: map[string]bool{}, SnapshotUIDs: map[string]bool{}, Named: map[string]string{}}
	failed := func(what string, err error) error {
		if errors.Is(err, kube.ErrConfig) {
			return csierr.Errorf(csierr.ErrInvalid, "--kubeconfig: %v", err)
		}
		return csierr.Errorf(csierr.ErrUnavailable, "listing %s: %v", what, err)
	}
	err := kube.List(ctx, c, "/api/v1/persistentvolumes", func(pv *pvObject) {
		c := pv.Spec.CSI
		if c == nil {
			return
		}
		k.Named[c.VolumeHandle] = "pv/" + pv.Metadata.Name + " of driver " + c.Driver
		if !ours[c.Driver] {
			return
		}
		p := PV{Name: pv.Metadata.Name, Driver: c.Driver, Handle: c.VolumeHandle, Phase: pv.Status.Phase,
			Static: c.VolumeAttributes["staticVolume"] == "true" || c.VolumeAttributes["rootPath"] != ""}
		if r := pv.Spec.ClaimRef; r != nil {
			p.Claim = r.Namespace + "/" + r.Name
		}
		k.PVs = append(k.PVs, p)
	})
	if err != nil {
		return nil, failed("PersistentVolumes", err)
	}
	if err := kube.List(ctx, c, "/api/v1/persistentvolumeclaims", func(o *metaOnly) { k.ClaimUIDs[o.Metadata.UID] = true }); err != nil {
		return nil, failed("PersistentVolumeClaims", err)
	}
	err = kube.List(ctx, c, "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents", func(o *contentObject) {
		driver := o.Spec.Driver
		cnt := Content{Name: o.Metadata.Name, Driver: driver, Handle: o.Status.SnapshotHandle}
		if cnt.Handle == "" { // pre-provisioned
			cnt.Handle = o.Spec.Source.SnapshotHandle
		}
		if cnt.Handle != "" {
			k.Named[cnt.Handle] = "volumesnapshotcontent/" + cnt.Name + " of driver " + driver
		}
		if !ours[driver] {
			return
		}
		if r := o.Spec.VolumeSnapshotRef; r.Name != "" {
			cnt.Snapshot = r.Namespace + "/" + r.Name
		}
		k.Contents = append(k.Contents, cnt)
	})
	switch {
	case errors.Is(err, kube.ErrNotFound):
		return k, nil // no snapshot CRDs: no snapshots of Kubernetes
	case err != nil:
		return nil, failed("VolumeSnapshotContents", err)
	}
	if err := kube.List(ctx, c, "/apis/snapshot.storage.k8s.io/v1/volumesnapshots", func(o *metaOnly) { k.SnapshotUIDs[o.Metadata.UID] = true }); err != nil {
		return nil, failed("VolumeSnapshots", err)
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
