package cephfs

import (
	"regexp"
	"strconv"

	"golang.org/x/sys/unix"
)

// KernelQuotaSupported reports whether the running kernel's CephFS client
// enforces quotas: mainline 4.17 and later, and RHEL 7.7 (3.10.0-1062.el7)
// and later, which carries the backport. Without it a kernel mount could
// outgrow the volume's size, so the node prefers ceph-fuse unless
// --forcecephkernelclient says otherwise.
func KernelQuotaSupported() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return true // unknown: keep the kernel client, as before this check
	}
	return kernelQuotaSupported(unix.ByteSliceToString(u.Release[:]))
}

var (
	mainlineRelease = regexp.MustCompile(`^(\d+)\.(\d+)`)
	el7Release      = regexp.MustCompile(`^3\.10\.0-(\d+)(\.[^.]+)*\.el7`)
)

func kernelQuotaSupported(release string) bool {
	if m := el7Release.FindStringSubmatch(release); m != nil {
		build, _ := strconv.Atoi(m[1])
		return build >= 1062
	}
	m := mainlineRelease.FindStringSubmatch(release)
	if m == nil {
		return true
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > 4 || (major == 4 && minor >= 17)
}
