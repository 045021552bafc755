#!/usr/bin/env bash
# A throw-away single-node Ceph cluster for development and tests.
#
#   scripts/ceph-cluster.sh start  DIR   install packages if missing, start (no-op when running)
#   scripts/ceph-cluster.sh stop   DIR   stop this cluster's daemons (MDS first, mon last)
#   scripts/ceph-cluster.sh status DIR   exit 0 when the cluster answers
#   scripts/ceph-cluster.sh purge  DIR   stop, then remove DIR
#   scripts/ceph-cluster.sh env    DIR   print shell variables describing the cluster
#
# Run it through scripts/in-root for the Ceph release of build.env.
#
# The cluster has one mon, one mgr, one bluestore OSD on a sparse file and one
# MDS, all on 127.0.0.1 with cephx. It provides the pools `rbd` and `rbd2`
# (RBD-initialised), the CephFS `myfs`, restricted cephx users shaped like the
# ones Rook creates for the CSI driver, and DIR/config.json for the driver.
#
# Environment: CEPH_MON_PORT (v1 messenger port, default 6789; v2 uses
# CEPH_MON_PORT+1 unless CEPH_MON_V2_PORT is set), CEPH_CLUSTER_ID
# (default "test-cluster-1"), CEPH_BIND_ADDR (default 127.0.0.1).
set -euo pipefail

# Ceph daemons must not pick up a caller's client settings.
unset CEPH_KEYRING CEPH_ARGS CEPH_CONF

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/ceph.conf"
addr=${CEPH_BIND_ADDR:-127.0.0.1}
port=${CEPH_MON_PORT:-6789}
port2=${CEPH_MON_V2_PORT:-$((port + 1))}
cluster_id=${CEPH_CLUSTER_ID:-test-cluster-1}

log() { [[ -n "${QUIET:-}" ]] || echo "ceph-cluster: $*" >&2; }
die() {
	echo "ceph-cluster: $*" >&2
	[[ "$cmd" != start ]] || stop_daemons
	exit 1
}
# shellcheck source=lib/ceph-common.sh
source "$(dirname "$0")/lib/ceph-common.sh"

# The daemons are whichever Ceph this runs with: the project's root through
# scripts/in-root (the Tentacle release the driver is built for, or
# IN_ROOT=reef), or the host's own packages (scripts/install-deps.sh pacific).
need_daemons() {
	command -v ceph-mon >/dev/null ||
		die "no Ceph daemons here: run this through scripts/in-root (or install the host's with scripts/install-deps.sh pacific)"
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() { pid_alive "$dir/run/mon.pid"; }

write_conf() {
	local fsid=$1
	cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = [v2:$addr:$port2,v1:$addr:$port]
public_addr = $addr
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
log_file = $dir/log/\$name.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
ms_bind_msgr1 = true
ms_bind_msgr2 = true

[mon]
mon_data = $dir/mon
keyring = $dir/mon.keyring
paxos_propose_interval = 0.01
paxos_min_wait = 0.001
mon_osd_reporter_subtree_level = osd

[mgr]
mgr_data = $dir/mgr
keyring = $dir/mgr/keyring

[osd]
osd_data = $dir/osd
osd_class_dir = $(class_dir)
keyring = $dir/osd/keyring
osd_objectstore = bluestore
bluestore_block_size = 21474836480
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
# A killed client's watch on an image outlives it by this long (30 s by
# default) and counts as the image being in use; tests that kill the driver
# wait less with 10.
osd_client_watch_timeout = 10

[mds]
mds_data = $dir/mds
keyring = $dir/mds/keyring
mds_tick_interval = 0.2

[client.admin]
keyring = $dir/keyring
EOF
}

bootstrap() {
	local fsid
	fsid=$(uuidgen)
	rm -rf "${dir:?}"/{mon,mgr,osd,mds,run,log} "$dir/keyring" "$dir/mon.keyring" "$dir/config.json" "$dir/secrets.env"
	mkdir -p "$dir"/{mon,mgr,osd,mds,run,log}
	chmod 700 "$dir"
	write_conf "$fsid"

	ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
	ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
	monmaptool --create --fsid "$fsid" --addv a "[v2:$addr:$port2,v1:$addr:$port]" "$dir/run/monmap" >/dev/null
	ceph-mon --conf "$conf" --mkfs -i a --monmap "$dir/run/monmap" --keyring "$dir/mon.keyring"
	start_daemons fresh
}

start_daemons() {
	local fresh=${1:-}
	ceph-mon --conf "$conf" -i a --pid-file "$dir/run/mon.pid"
	wait_for 30 "the monitor" ceph_ mon stat

	if [[ -n "$fresh" ]]; then
		ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$dir/mgr/keyring"
		ceph_ auth get-or-create mds.a mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds' -o "$dir/mds/keyring"
		local osd_uuid
		osd_uuid=$(uuidgen)
		ceph_ osd new "$osd_uuid" >/dev/null
		ceph-osd --conf "$conf" -i 0 --mkfs --mkkey --no-mon-config --osd-uuid "$osd_uuid" >"$dir/log/osd-mkfs.log" 2>&1 ||
			die "ceph-osd --mkfs failed: see $dir/log/osd-mkfs.log"
		ceph_ auth add osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' -i "$dir/osd/keyring" >/dev/null 2>&1
	fi
	ceph-mgr --conf "$conf" -i x --pid-file "$dir/run/mgr.pid"
	ceph-osd --conf "$conf" -i 0 --pid-file "$dir/run/osd.pid" 2>>"$dir/log/osd-start.log"
	ceph-mds --conf "$conf" -i a --pid-file "$dir/run/mds.pid"
	wait_for 60 "the OSD to come up" osd_up
	if [[ -n "$fresh" ]]; then
		provision
	fi
	wait_for 60 "the filesystem to become active" fs_active
	wait_for 60 "HEALTH_OK" health_ok
}

osd_up() { [[ "$(ceph_ osd stat --format json | grep -o '"num_up_osds":[0-9]*')" == '"num_up_osds":1' ]]; }

provision() {
	provision_pools_and_users
	umask 077
	cat >"$dir/config.json" <<EOF
[
  {
    "clusterID": "$cluster_id",
    "monitors": ["$addr:$port"],
    "cephFS": {"subvolumeGroup": "csi"}
  }
]
EOF
}

print_env() {
	echo "CEPH_CLUSTER_DIR=$dir"
	echo "CEPH_CONF_FILE=$conf"
	echo "CEPH_ADMIN_KEYRING=$dir/keyring"
	echo "CEPH_MONITORS=$addr:$port"
	echo "CEPH_CLUSTER_ID=$(grep -o '"clusterID": "[^"]*"' "$dir/config.json" | cut -d'"' -f4)"
	echo "CEPH_CSI_CONFIG=$dir/config.json"
	cat "$dir/secrets.env"
}

stop_daemons() {
	local d
	for d in mds osd mgr mon; do
		local pidf="$dir/run/$d.pid"
		if pid_alive "$pidf"; then
			local pid
			pid=$(cat "$pidf")
			kill "$pid" 2>/dev/null || true
			local end=$((SECONDS + 20))
			while kill -0 "$pid" 2>/dev/null; do
				if ((SECONDS >= end)); then
					kill -9 "$pid" 2>/dev/null || true
					break
				fi
				sleep 0.1
			done
		fi
		rm -f "$pidf"
	done
	# A daemon may outlive its pid file: an MDS blocklisted while it shuts
	# down respawns under a new PID (seen with Reef and Pacific). Every
	# daemon of this cluster names its ceph.conf, which is this cluster's
	# alone; end those by their IDs.
	local end=$((SECONDS + 20)) pids
	while pids=$(pgrep -f -- "--conf $conf( |\$)") && [[ -n $pids ]]; do
		for pid in $pids; do
			log "ending daemon $pid that outlived the stop: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-80)"
			if ((SECONDS < end)); then kill "$pid" 2>/dev/null || true; else kill -9 "$pid" 2>/dev/null || true; fi
		done
		((SECONDS < end + 5)) || { log "daemons $pids would not end"; return 1; }
		sleep 1
	done
}

case "$cmd" in
start)
	if running && health_ok; then
		exit 0
	fi
	need_daemons
	start=$SECONDS
	if [[ -f "$dir/mon/store.db/CURRENT" && -f "$dir/config.json" ]]; then
		stop_daemons
		log "restarting the cluster in $dir"
		start_daemons
	else
		log "creating a cluster in $dir"
		# A half-made cluster is useless: leave no daemon of it running.
		trap 'stop_daemons' ERR
		bootstrap
		trap - ERR
	fi
	log "HEALTH_OK after $((SECONDS - start)) s"
	;;
stop) stop_daemons ;;
status) running && health_ok ;;
env) print_env ;;
purge)
	stop_daemons
	rm -rf "${dir:?}"
	;;
*) die "unknown command $cmd" ;;
esac
