#!/usr/bin/env bash
# Builds (once) and prints the path of a Debian root filesystem holding one
# Ceph release, for building and testing the driver on a Debian 12 host whose
# own Ceph is older.
#
#   scripts/build-root.sh [ROOT]     ROOT: dev (default), reef or image
#
#   dev    Debian $CEPH_SUITE with Ceph $CEPH_DEB_VERSION: daemons, client
#          tools, -dev libraries, the compiler and the node tools. The
#          product is built and tested in it (scripts/in-root).
#   reef   Debian $REEF_SUITE with Ceph $REEF_DEB_VERSION daemons and tools:
#          a compatibility target for make test-compat.
#   image  Debian $CEPH_SUITE with only the runtime packages of the image
#          ($IMAGE_PACKAGES): the root filesystem of make image.
#
# Roots live in ~/.cache/cephcsi-root (CEPHCSI_ROOT_CACHE), named by a hash of
# this script and the build.env pins they use, so they are rebuilt only when
# those change; once a new one is ready, older roots of its kind are removed
# but for the newest other one. Concurrent callers wait for one build
# (flock). The Ceph packages are pinned to the exact Debian version of
# build.env: a registry that no longer serves it makes the build fail, loudly.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=/dev/null
. "$repo/build.env"
kind=${1:-dev}
cache=${CEPHCSI_ROOT_CACHE:-$HOME/.cache/cephcsi-root}

log() { echo "build-root: $*" >&2; }
die() {
	log "$*"
	exit 1
}

# pinned VERSION PKG... prints PKG=VERSION for each.
pinned() {
	local v=$1 p
	shift
	for p in "$@"; do printf '%s=%s ' "$p" "$v"; done
}

case "$kind" in
dev)
	suite=$CEPH_SUITE
	packages="$(pinned "$CEPH_DEB_VERSION" $CEPH_DAEMON_PACKAGES $CEPH_CLIENT_PACKAGES $CEPH_DEV_PACKAGES) $ROOT_TOOL_PACKAGES"
	;;
reef)
	suite=$REEF_SUITE
	packages="$(pinned "$REEF_DEB_VERSION" $CEPH_DAEMON_PACKAGES $CEPH_CLIENT_PACKAGES) $ROOT_TOOL_PACKAGES"
	;;
image)
	suite=$CEPH_SUITE
	packages="$(pinned "$CEPH_DEB_VERSION" $IMAGE_CEPH_PACKAGES) $IMAGE_PACKAGES"
	;;
*) die "unknown root $kind (dev, reef or image)" ;;
esac

key=$(printf '%s\n' "$(cat "$0")" "$suite" "$packages" "$DEBIAN_MIRROR" | sha256sum | cut -c1-12)
root=$cache/$kind-$suite-$key
if [[ -f $root/.cephcsi-root-ready ]]; then
	echo "$root"
	exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building a root needs root"
mkdir -p "$cache"
exec 9>"$cache/.$kind.lock"
flock 9
if [[ -f $root/.cephcsi-root-ready ]]; then
	echo "$root"
	exit 0
fi

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

tmp=$root.tmp
rm -rf "$tmp"
start=$SECONDS
log "building the $kind root (Debian $suite) in $root"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$tmp" "$DEBIAN_MIRROR" >"$cache/$kind.debootstrap.log" 2>&1 ||
	die "debootstrap failed: see $cache/$kind.debootstrap.log"
log "debootstrap done after $((SECONDS - start)) s"

# The registry's sid Release file can be past its Valid-Until date; daemons'
# postinst scripts must not try to start services (no init system here).
echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99cephcsi-no-valid-until"
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$tmp/etc/resolv.conf"

# The install runs in a mount namespace of its own so that /proc and /dev
# are gone with it.
# shellcheck disable=SC2086
unshare --mount --propagation private sh -euc '
	root=$1
	shift
	mount -t proc proc "$root/proc"
	mount --rbind /dev "$root/dev"
	mount --rbind /sys "$root/sys"
	chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -qq
	chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -qq --no-install-recommends "$@"
	chroot "$root" apt-get clean
' sh "$tmp" $packages >"$cache/$kind.install.log" 2>&1 || die "package install failed: see $cache/$kind.install.log"

rm -rf "$tmp"/var/lib/apt/lists/*
# What the root holds, for tests and notes.
chroot "$tmp" dpkg-query -W -f='${Package}=${Version}\n' >"$tmp/.cephcsi-packages"
mv "$tmp" "$root"
touch "$root/.cephcsi-root-ready"
# Older roots of this kind go, but the newest other one stays: two checkouts
# pinned differently (a branch, a worktree) would otherwise evict each other's
# root on every call.
ls -1dt "$cache/$kind"-*/.cephcsi-root-ready 2>/dev/null | tail -n +3 | while read -r marker; do
	rm -rf "$(dirname "$marker")"
done
log "the $kind root is ready after $((SECONDS - start)) s"
echo "$root"
