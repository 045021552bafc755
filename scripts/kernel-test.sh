#!/usr/bin/env bash
# make test-kernel: the node service's kernel paths (krbd, rbd-nbd, the CephFS
# kernel client) tested in a QEMU guest running Debian's stock kernel.
#
#   scripts/kernel-test.sh [go test -run pattern]
#
# Steps, each timed: clean up what a killed earlier run left; prepare the
# kernel and initramfs (cached in ~/.cache/cephcsi-kernel); create the network
# namespace cephcsi-kt with a tap device; start a private Ceph cluster
# (_output/ceph-kernel) inside it, bound to the tap's address; build the
# test; boot the guest (one boot per run); run e2e/kernel inside the
# namespace. On exit, success or not, the guest, the cluster and the
# namespace are taken down. The shared cluster in _output/ceph is never
# touched. Needs _output/cephcsi (make build) and root.
#
# The cluster's daemons and the test binary (which links librados) run in
# the project's dev root (scripts/in-root), as the guest's userspace does;
# QEMU and the namespace are the host's.
#
# Environment: GO (default go), KT_TEST_TIMEOUT (default 20m), KT_CLUSTER_DIR
# (the private cluster, default _output/ceph-kernel), and the KT_* variables
# of scripts/kernel-guest.sh (KT_NETNS, KT_TAP, KT_HOST_ADDR, KT_GUEST_ADDR
# and KT_STATE keep two runs on one machine apart).
set -euo pipefail
unset CEPH_ARGS CEPH_CONF CEPH_KEYRING

cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=/dev/null
. "$repo/build.env"
go=${GO:-go}
guest=scripts/kernel-guest.sh
in_root=scripts/in-root
# go-ceph's tags for the Ceph release (none for the newest) and the test's.
read -ra tag_list <<<"${GO_CEPH_TAGS:-} kernel"
tags=$(IFS=, && echo "${tag_list[*]}")
cluster=${KT_CLUSTER_DIR:-$repo/_output/ceph-kernel}
state=${KT_STATE:-$repo/_output/kernel-guest}
netns=${KT_NETNS:-cephcsi-kt}
host_addr=${KT_HOST_ADDR:-10.99.1.1}
test_bin=$repo/_output/kernel.test
run=${1:-}

log() { echo "kernel-test: $*" >&2; }
now() { date +%s.%N; }
timed() { # what command...
	local what=$1 t0 rc=0
	shift
	t0=$(now)
	"$@" || rc=$?
	log "$(printf '%-28s %6.1f s' "$what" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')")$([[ $rc -eq 0 ]] || echo " (failed, exit $rc)")"
	return $rc
}

[[ -x $repo/_output/cephcsi ]] || {
	log "no _output/cephcsi: run make build first"
	exit 1
}

# teardown stops the guest and the cluster and removes the namespace. Any
# process still in the namespace is a leftover of this script (nothing else
# uses it) and is ended by its ID.
teardown() {
	"$guest" stop || true
	"$in_root" scripts/ceph-cluster.sh stop "$cluster" || true
	if ip netns list | grep -qw "^$netns"; then
		local pid
		for pid in $(ip netns pids "$netns" 2>/dev/null); do
			log "ending leftover process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-80))"
			kill "$pid" 2>/dev/null || true
		done
		sleep 1
		for pid in $(ip netns pids "$netns" 2>/dev/null); do
			kill -9 "$pid" 2>/dev/null || true
		done
	fi
	"$guest" net-down || true
}

start=$(now)
timed "install missing packages" "$guest" deps
timed "clean up earlier runs" teardown
trap 'timed "tear down" teardown' EXIT

timed "prepare kernel assets" "$guest" prepare
timed "network namespace" "$guest" net-up
timed "start the test cluster" ip netns exec "$netns" env CEPH_BIND_ADDR="$host_addr" \
	"$in_root" scripts/ceph-cluster.sh start "$cluster"
timed "build the test" "$in_root" "$go" test -c -tags "$tags" -o "$test_bin" ./e2e/kernel/
timed "boot the guest" "$guest" boot

args=(-test.v -test.count=1 -test.timeout "${KT_TEST_TIMEOUT:-20m}")
[[ -z "$run" ]] || args+=(-test.run "$run")
rc=0
timed "kernel node tests" ip netns exec "$netns" env KT_CLUSTER_DIR="$cluster" CEPH_BIND_ADDR="$host_addr" KT_AGENT_SOCK="$state/agent.sock" \
	"$in_root" "$test_bin" "${args[@]}" || rc=$?
if [[ $rc -ne 0 ]]; then
	log "guest console (tail):"
	tail -20 "$state/console.log" >&2 || true
fi
log "$(printf 'total %.0f s' "$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')")"
exit $rc
