package cephfs

import (
	"context"

	"github.com/leanceph/cephcsi/internal/cephconn"
)

// MountFuseForTest mounts with ceph-fuse exactly as the node service does,
// for the integration tests (package cephfs_test).
func MountFuseForTest(ctx context.Context, monitors []string, fsName, root, target, id, key string) error {
	return mountFuse(ctx, mountSpec{Monitors: monitors, FsName: fsName, Root: root, Target: target,
		Creds: cephconn.Credentials{ID: id, Key: key}})
}
