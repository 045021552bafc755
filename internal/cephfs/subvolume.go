package cephfs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/ceph/go-ceph/cephfs/admin"
	"k8s.io/klog/v2"
)

// Subvolume operations on an open filesystem (fsConn), for the
// controller's calls.

// createSubvolume makes an empty subvolume with a quota, creating the

// removeSnapshot removes a subvolume snapshot; a missing one is fine. One

// removeSubvolume removes a subvolume, keeping its snapshots (the subvolume

// setMetadata records the --setmetadata names on a subvolume, or on one of
// its snapshots when snapshot is set. A release without subvolume metadata
// (before Quincy) cannot record them: logged, not failed, since nothing
// else depends on them.
func (f *fsConn) setMetadata(ctx context.Context, subvolume, snapshot string, kv map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(kv)) {
		var err error
		if snapshot == "" {
			err = f.admin.SetMetadata(f.fs.Name, f.group, subvolume, k, kv[k])
		} else {
			err = f.admin.SetSnapshotMetadata(f.fs.Name, f.group, subvolume, snapshot, k, kv[k])
		}
		var unsupported admin.NotImplementedError
		if errors.As(err, &unsupported) {
			klog.FromContext(ctx).Info("this Ceph release keeps no subvolume metadata; the Kubernetes names are not recorded", "subvolume", subvolume)
			return nil
		}
		if err != nil {
			return fmt.Errorf("recording metadata %s on %s: %w", k, subvolume, err)
		}
	}
	return nil
}
