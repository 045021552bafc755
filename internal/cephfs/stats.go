package cephfs

import (
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/nodeutil"
)

// quotaUsage reports a mounted volume's usage against its quota. CephFS
// keeps recursive statistics and the quota as virtual xattrs of the
// directory; statfs only approximates them (ceph-fuse rounds the quota down
// to 4 MiB and reports no inode limit), so the xattrs win when present.
func quotaUsage(path string, st *unix.Statfs_t) []*csi.VolumeUsage {
	maxBytes, okMax := xattrInt(path, "ceph.quota.max_bytes")
	usedBytes, okUsed := xattrInt(path, "ceph.dir.rbytes")
	files, okFiles := xattrInt(path, "ceph.dir.rfiles")
	dirs, okDirs := xattrInt(path, "ceph.dir.rsubdirs")
	maxFiles, _ := xattrInt(path, "ceph.quota.max_files")
	var out []*csi.VolumeUsage
	for _, u := range nodeutil.StatfsUsage(path, st) {
		switch {
		case u.GetUnit() == csi.VolumeUsage_BYTES && okMax && okUsed && maxBytes > 0:
			u = &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: maxBytes, Used: usedBytes, Available: max(maxBytes-usedBytes, 0)}
		case u.GetUnit() == csi.VolumeUsage_INODES && okFiles && okDirs:
			// Inodes in use; a total only when an inode quota is set.
			used := files + dirs
			u = &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Used: used}
			if maxFiles > 0 {
				u.Total, u.Available = maxFiles, max(maxFiles-used, 0)
			}
		}
		out = append(out, u)
	}
	return out
}

// xattrInt reads a numeric CephFS virtual xattr.
func xattrInt(path, name string) (int64, bool) {
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil || n <= 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
	return v, err == nil
}
