#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when missing:
# the Ceph daemons and tools for the local test cluster, the client
# development libraries for cgo, and the filesystem tools the node service runs.
set -euo pipefail
packages=(ceph-mon ceph-mgr ceph-osd ceph-mds ceph-common ceph-fuse rbd-fuse rbd-nbd
	librados-dev librbd-dev libcephfs-dev e2fsprogs xfsprogs fuse3 util-linux uuid-runtime jq
	${EXTRA_PACKAGES:-})
need=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
