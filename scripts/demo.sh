#!/usr/bin/env bash
# A walk-through of the RBD driver on the local cluster (`make demo`):
# starts the cluster (installing the Ceph packages if needed), runs the built
# driver binary on a unix socket in a temporary directory, and lets
# cmd/csi-demo create, expand, snapshot, restore, clone and delete volumes
# over the socket while it prints what each call did on the cluster. Then
# the driver is stopped and the temporary directory removed.
#
# Environment: CEPHCSI_CLUSTER_DIR (default _output/ceph), CEPHCSI_BINARY
# (default _output/cephcsi), GO (default go, else /usr/local/go/bin/go).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=../build.env
source build.env
cluster_dir=${CEPHCSI_CLUSTER_DIR:-$root/_output/ceph}
binary=${CEPHCSI_BINARY:-$root/_output/cephcsi}
client=$root/_output/csi-demo
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

say() { printf '\n### %s\n' "$*"; }
die() {
	echo "demo: $*" >&2
	exit 1
}

[[ -x "$binary" ]] || die "$binary is missing: run make build (or make demo)"

say "starting the local Ceph cluster in $cluster_dir (a no-op when it runs)"
start=$SECONDS
scripts/ceph-cluster.sh start "$cluster_dir"
echo "cluster ready after $((SECONDS - start)) s"

say "building the demo client"
"$GO" build -tags "$CEPH_RELEASE" -o "$client" ./cmd/csi-demo

tmp=$(mktemp -d /tmp/csi-demo.XXXXXX)
sock=$tmp/csi.sock
log=$tmp/driver.log
driver_pid=
stop_driver() {
	[[ -n "$driver_pid" ]] || return 0
	if kill -0 "$driver_pid" 2>/dev/null; then
		kill -TERM "$driver_pid"
		local status=0
		wait "$driver_pid" || status=$?
		echo "driver (pid $driver_pid) stopped, exit status $status"
	fi
	driver_pid=
}
cleanup() {
	local rc=$?
	stop_driver
	if ((rc != 0)) && [[ -f "$log" ]]; then
		echo "--- last lines of the driver log:" >&2
		tail -n 20 "$log" >&2
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

cmdline=("$binary" --type=rbd --controllerserver --nodeserver --nodeid=demo
	"--endpoint=unix://$sock" "--configpath=$cluster_dir/config.json" "--pluginpath=$tmp/plugins")
say "starting the driver"
echo "${cmdline[*]#"$root/"}"
"${cmdline[@]}" >"$log" 2>&1 &
driver_pid=$!
for _ in $(seq 100); do
	[[ -S "$sock" ]] && break
	kill -0 "$driver_pid" 2>/dev/null || die "the driver exited at start"
	sleep 0.1
done
[[ -S "$sock" ]] || die "the driver socket $sock did not appear within 10 s"
echo "driver pid $driver_pid listening on $sock"

say "walk-through over the CSI socket (cmd/csi-demo)"
"$client" --endpoint="unix://$sock" --cluster-dir="$cluster_dir" \
	--cluster-script="$root/scripts/ceph-cluster.sh" --driver-log="$log"

say "stopping the driver"
stop_driver
echo "demo done in $((SECONDS - start)) s"
