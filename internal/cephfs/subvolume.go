package cephfs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"

	"github.com/ceph/go-ceph/cephfs/admin"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Subvolume operations on an open filesystem (fsConn), for the
// controller's calls.

// createSubvolume makes an empty subvolume with a quota, creating the
// subvolume group on first use.
func (f *fsConn) createSubvolume(name string, size int64, pool string) error {
	opts := &admin.SubVolumeOptions{Size: admin.ByteCount(size), Mode: subvolumeMode, PoolLayout: pool}
	err := f.admin.CreateSubVolume(f.fs.Name, f.group, name, opts)
	if csierr.IsNotFound(err) {
		if gerr := f.admin.CreateSubVolumeGroup(f.fs.Name, f.group, nil); gerr != nil {
			return fmt.Errorf("creating subvolume group %s in %s: %w", f.group, f.fs.Name, gerr)
		}
		err = f.admin.CreateSubVolume(f.fs.Name, f.group, name, opts)
	}
	if err != nil {
		return fmt.Errorf("creating subvolume %s in group %s of %s: %w", name, f.group, f.fs.Name, err)
	}
	return nil
}

// removeSnapshot removes a subvolume snapshot; a missing one is fine. One
// that clones still copy from is FailedPrecondition.
func (f *fsConn) removeSnapshot(subvolume, snapshot string) error {
	err := f.admin.RemoveSubVolumeSnapshot(f.fs.Name, f.group, subvolume, snapshot)
	switch {
	case err == nil, csierr.IsNotFound(err):
		return nil
	case csierr.IsErrno(err, syscall.EAGAIN):
		return csierr.Errorf(csierr.ErrPrecondition, "snapshot %s of %s still has clones copying from it; retry when they are done: %v",
			snapshot, subvolume, err)
	}
	return fmt.Errorf("removing snapshot %s of %s: %w", snapshot, subvolume, err)
}

// removeSubvolume removes a subvolume, keeping its snapshots (the subvolume
// then lingers as "snapshot-retained" until its last snapshot goes, when
// Ceph purges it). A clone still copying is cancelled first; its source is
// returned so the caller can drop a temporary snapshot.
func (f *fsConn) removeSubvolume(name string) (cloneSource *admin.CloneSource, err error) {
	err = f.admin.RemoveSubVolumeWithFlags(f.fs.Name, f.group, name, admin.SubVolRmFlags{RetainSnapshots: true})
	if err == nil || csierr.IsNotFound(err) {
		return nil, nil
	}
	if !csierr.IsErrno(err, syscall.EAGAIN) {
		return nil, fmt.Errorf("removing subvolume %s: %w", name, err)
	}
	// An unfinished clone: only a cancelled or failed one may be removed.
	if st, serr := f.admin.CloneStatus(f.fs.Name, f.group, name); serr == nil && st.Source.SubVolume != "" {
		src := st.Source
		cloneSource = &src
	}
	if cerr := f.admin.CancelClone(f.fs.Name, f.group, name); cerr != nil && !csierr.IsNotFound(cerr) &&
		!csierr.IsErrno(cerr, syscall.EINVAL) { // EINVAL: the clone has already ended
		return cloneSource, fmt.Errorf("cancelling clone %s: %w", name, cerr)
	}
	err = f.admin.RemoveSubVolumeWithFlags(f.fs.Name, f.group, name, admin.SubVolRmFlags{Force: true})
	if err != nil && !csierr.IsNotFound(err) {
		return cloneSource, fmt.Errorf("removing cancelled clone %s: %w", name, err)
	}
	return cloneSource, nil
}

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
