#!/usr/bin/env bash
# A Ceph cluster to break on purpose: three monitors, three OSDs, a manager
# and an MDS, each daemon in a network namespace of its own on a test bridge.
#
#   scripts/ceph-faults.sh up      DIR          network, then a new cluster in DIR
#   scripts/ceph-faults.sh down    DIR          end every daemon by PID, remove
#                                               the namespaces and the bridge
#   scripts/ceph-faults.sh start   DIR [D...]   start daemons (all when none named)
#   scripts/ceph-faults.sh stop    DIR [D...]   stop daemons (SIGTERM, then SIGKILL)
#   scripts/ceph-faults.sh link    DIR D|node up|down   a namespace's link
#   scripts/ceph-faults.sh add-mon DIR ID       a new monitor in a namespace of its own
#   scripts/ceph-faults.sh rm-mon  DIR ID       stop a monitor and remove it from the map
#   scripts/ceph-faults.sh pid     DIR D        the PID of a running daemon
#   scripts/ceph-faults.sh daemons DIR          the daemons of the cluster
#   scripts/ceph-faults.sh env     DIR          shell variables describing the cluster
#   scripts/ceph-faults.sh residue              what of any bed is left on this machine
#
# Run it through scripts/in-root for the Ceph release of build.env. Daemons
# are named mon.a, osd.0, mgr.x, mds.a. The bridge cfault0 lives in the
# namespace cfault-net; each daemon's namespace cfault-<type>-<id> (e.g.
# cfault-mon-a) joins it by a veth pair, and so does the caller's own
# namespace ("the node") through cfault-node (10.98.0.1/24), where the
# driver and the test's clients run. "link D down" takes the bridge's end of
# D's veth down: the daemon keeps its address and route and its packets
# vanish, as when a cable is pulled. Monitor a is 10.98.0.11, b .12 ... (up
# to f, for monitors added later), mgr.x .20, mds.a .21, osd.N .(30+N).
#
# The cluster is what scripts/ceph-cluster.sh makes (its pools, CephFS,
# cephx users, DIR/config.json and DIR/secrets.env, so that
# `ceph-cluster.sh env DIR` describes it too), with pools of size 3 and
# min_size 2, one OSD per failure domain, failure detection in seconds and
# small memory and disk footprints. DIR holds keys: keep it private and
# remove it after use.
set -euo pipefail
unset CEPH_KEYRING CEPH_ARGS CEPH_CONF

cmd=${1:-}
usage() {
	sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}
[[ -n $cmd ]] || usage
if [[ $cmd != residue ]]; then
	dir=${2:-}
	[[ -n $dir ]] || usage
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	conf=$dir/ceph.conf
	shift 2
else
	shift
fi

net=10.98.0
node_addr=$net.1
netns_hub=cfault-net
bridge=cfault0
node_if=cfault-node
cluster_id=${CEPH_CLUSTER_ID:-fault-cluster}
mon_ids=(a b c d e f)

log() { [[ -n "${QUIET:-}" ]] || echo "ceph-faults: $*" >&2; }
die() {
	echo "ceph-faults: $*" >&2
	exit 1
}
# shellcheck source=lib/ceph-common.sh
source "$(dirname "$0")/lib/ceph-common.sh"

# addr_of D prints the address of daemon D (mon.a, osd.1, mgr.x, mds.a).
addr_of() {
	local d=$1 i
	case $d in
	mon.*)
		for i in "${!mon_ids[@]}"; do
			[[ ${mon_ids[$i]} != "${d#mon.}" ]] || {
				echo "$net.$((11 + i))"
				return
			}
		done
		;;
	mgr.x) echo "$net.20" ;;
	mds.a) echo "$net.21" ;;
	osd.[0-9]) echo "$net.$((30 + ${d#osd.}))" ;;
	esac
	[[ $d == mon.* || $d == mgr.x || $d == mds.a || $d == osd.[0-9] ]] || die "no daemon $d"
}
mon_list() { tr "\n" " " <"$dir/mons"; }
ns_of() { echo "cfault-${1/./-}"; }
# The bridge's end of a namespace's veth (at most 15 characters).
port_of() { echo "cfp-${1/./}"; }
pidfile() { echo "$dir/run/$1.pid"; }
pid_of() {
	local f
	f=$(pidfile "$1")
	[[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

hub() { ip netns exec "$netns_hub" "$@"; }

net_up() {
	ip netns add "$netns_hub"
	hub ip link set lo up
	hub ip link add "$bridge" type bridge
	hub ip link set "$bridge" up
	ip link add "$node_if" type veth peer name cfp-node netns "$netns_hub"
	hub ip link set cfp-node master "$bridge" up
	ip addr add "$node_addr/24" dev "$node_if"
	ip link set "$node_if" up
}

# ns_up D makes D's namespace and plugs it into the bridge.
ns_up() {
	local d=$1 ns port
	ns=$(ns_of "$d")
	port=$(port_of "$d")
	ip netns list 2>/dev/null | grep -qw "^$ns" && return
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n "$ns" link add eth0 type veth peer name "$port" netns "$netns_hub"
	ip -n "$ns" addr add "$(addr_of "$d")/24" dev eth0
	ip -n "$ns" link set eth0 up
	hub ip link set "$port" master "$bridge" up
}

mon_host() {
	local id hosts=()
	for id in $(mon_list); do
		hosts+=("[v2:$(addr_of "mon.$id"):3300,v1:$(addr_of "mon.$id"):6789]")
	done
	(
		IFS=,
		echo "${hosts[*]}"
	)
}

write_conf() {
	local fsid=$1 d
	cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = $(mon_host)
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
log_file = $dir/log/\$name.log
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_delete = true
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_max_pg_per_osd = 1000
# One host: each OSD is its own failure domain.
osd_crush_chooseleaf_type = 0
ms_bind_msgr1 = true
ms_bind_msgr2 = true
# Failure detection in seconds: peers report an OSD that misses heartbeats
# for 6 s, one report suffices (with two of three down, one peer is left),
# and a down OSD is never marked out (the data stays degraded, not moved).
osd_heartbeat_interval = 1
osd_heartbeat_grace = 6
mon_osd_min_down_reporters = 1
mon_osd_reporter_subtree_level = osd
mon_osd_down_out_interval = 86400
mon_osd_adjust_heartbeat_grace = false
# A killed client's watch on an image outlives it by this long (30 s by
# default), as in ceph-cluster.sh.
osd_client_watch_timeout = 10

[mon]
mon_data = $dir/\$name
keyring = $dir/mon.keyring
paxos_propose_interval = 0.01
paxos_min_wait = 0.001
mon_warn_on_pool_no_redundancy = false

[mgr]
mgr_data = $dir/\$name
keyring = $dir/\$name/keyring

[osd]
osd_data = $dir/\$name
osd_class_dir = $(class_dir)
keyring = $dir/\$name/keyring
osd_objectstore = bluestore
bluestore_block_size = 4294967296
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[mds]
mds_data = $dir/\$name
keyring = $dir/\$name/keyring
mds_tick_interval = 0.2

[client.admin]
keyring = $dir/keyring
EOF
	for d in $(daemons); do
		printf '\n[%s]\npublic_addr = %s\n' "$d" "$(addr_of "$d")" >>"$conf"
	done
}

daemons() {
	local id
	for id in $(mon_list); do echo "mon.$id"; done
	echo mgr.x
	echo osd.0 osd.1 osd.2 | tr ' ' '\n'
	echo mds.a
}

# run_daemon D starts daemon D in its namespace.
run_daemon() {
	local d=$1 type=${1%%.*} id=${1#*.}
	pid_of "$d" >/dev/null && return
	ns_up "$d"
	ip netns exec "$(ns_of "$d")" "ceph-$type" --conf "$conf" -i "$id" --pid-file "$(pidfile "$d")" \
		2>>"$dir/log/$d-start.log"
}

# end_daemon D [timeout]: SIGTERM, SIGKILL after the timeout (SIGCONT first:
# a stopped daemon cannot handle SIGTERM).
end_daemon() {
	local d=$1 limit=${2:-20} pid end
	pid=$(pid_of "$d") || {
		rm -f "$(pidfile "$d")"
		return 0
	}
	kill -CONT "$pid" 2>/dev/null || true
	kill "$pid" 2>/dev/null || true
	end=$((SECONDS + limit))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= end)); then
			kill -9 "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	rm -f "$(pidfile "$d")"
}

quorum_of() { # n: at least n monitors in quorum
	local n
	n=$(ceph_ quorum_status --format json 2>/dev/null | jq '.quorum | length') || return 1
	((n >= $1))
}
osds_up() { [[ "$(ceph_ osd stat --format json | jq .num_up_osds)" == 3 ]]; }

bootstrap() {
	local fsid id d monmap=() uuid i
	fsid=$(uuidgen)
	[[ ! -e $dir/mons ]] || die "$dir holds a cluster already; run down first"
	mkdir -p "$dir"/{run,log}
	chmod 700 "$dir"
	echo a b c | tr ' ' '\n' >"$dir/mons"
	write_conf "$fsid"
	ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
	ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
	for id in a b c; do
		monmap+=(--addv "$id" "[v2:$(addr_of "mon.$id"):3300,v1:$(addr_of "mon.$id"):6789]")
	done
	monmaptool --create --fsid "$fsid" "${monmap[@]}" "$dir/run/monmap" >/dev/null
	for id in a b c; do
		mkdir -p "$dir/mon.$id"
		ceph-mon --conf "$conf" --mkfs -i "$id" --monmap "$dir/run/monmap" --keyring "$dir/mon.keyring"
		run_daemon "mon.$id"
	done
	wait_for 60 "a quorum of three monitors" quorum_of 3

	mkdir -p "$dir"/{mgr.x,mds.a}
	ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$dir/mgr.x/keyring"
	ceph_ auth get-or-create mds.a mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds' -o "$dir/mds.a/keyring"
	run_daemon mgr.x
	for i in 0 1 2; do
		uuid=$(uuidgen)
		mkdir -p "$dir/osd.$i"
		[[ "$(ceph_ osd new "$uuid")" == "$i" ]] || die "osd new did not give ID $i"
		ceph-osd --conf "$conf" -i "$i" --mkfs --mkkey --no-mon-config --osd-uuid "$uuid" >"$dir/log/osd.$i-mkfs.log" 2>&1 ||
			die "ceph-osd --mkfs failed: see $dir/log/osd.$i-mkfs.log"
		ceph_ auth add "osd.$i" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' -i "$dir/osd.$i/keyring" >/dev/null 2>&1
		run_daemon "osd.$i" &
	done
	wait
	run_daemon mds.a
	wait_for 120 "three OSDs up" osds_up
	provision
	wait_for 120 "the filesystem to become active" fs_active
	wait_for 180 "HEALTH_OK" health_ok
}

provision() {
	provision_pools_and_users
	write_config_json
}

# write_config_json lists the monitors of DIR/mons in DIR/config.json,
# replacing the file in one rename as a ConfigMap update does.
write_config_json() {
	local id mons=()
	for id in $(mon_list); do mons+=("\"$(addr_of "mon.$id"):6789\""); done
	cat >"$dir/config.json.new" <<EOF
[
  {
    "clusterID": "$cluster_id",
    "monitors": [$(
		IFS=,
		echo "${mons[*]}"
	)],
    "cephFS": {"subvolumeGroup": "csi"}
  }
]
EOF
	mv "$dir/config.json.new" "$dir/config.json"
}

add_mon() {
	local id=$1 d=mon.$1 tmp
	grep -qx "$id" "$dir/mons" && die "monitor $id exists"
	addr_of "$d" >/dev/null
	ceph_ mon add "$id" "$(addr_of "$d")" >/dev/null
	echo "$id" >>"$dir/mons"
	write_conf "$(ceph-conf -c "$conf" --lookup fsid)"
	tmp=$(mktemp -d)
	ceph_ mon getmap -o "$tmp/monmap" >/dev/null 2>&1
	mkdir -p "$dir/$d"
	ceph-mon --conf "$conf" --mkfs -i "$id" --monmap "$tmp/monmap" --keyring "$dir/mon.keyring"
	rm -rf "$tmp"
	run_daemon "$d"
	wait_for 90 "monitor $id in the quorum" in_quorum "$id"
}

in_quorum() { ceph_ quorum_status --format json | jq -e --arg id "$1" '.quorum_names | index($id)' >/dev/null; }

rm_mon() {
	local id=$1
	grep -qx "$id" "$dir/mons" || die "no monitor $id"
	end_daemon "mon.$id"
	ceph_ mon remove "$id" >/dev/null 2>&1
	grep -vx "$id" "$dir/mons" >"$dir/mons.new" || true
	mv "$dir/mons.new" "$dir/mons"
	write_conf "$(ceph-conf -c "$conf" --lookup fsid)"
	rm -rf "${dir:?}/mon.$id"
}

link() {
	local d=$1 state=$2 port
	[[ $state == up || $state == down ]] || die "link state is up or down, not $state"
	if [[ $d == node ]]; then port=cfp-node; else
		addr_of "$d" >/dev/null
		port=$(port_of "$d")
	fi
	hub ip link set "$port" "$state"
}

# down ends every daemon of DIR, then every process left in a namespace of
# the bed (only its daemons run there), and removes the namespaces.
down() {
	local d ns pid
	if [[ -n ${dir:-} && -f $dir/mons ]]; then
		for d in mds.a osd.0 osd.1 osd.2 mgr.x $(for id in "${mon_ids[@]}"; do echo "mon.$id"; done); do
			end_daemon "$d" 10 &
		done
		wait
		# A daemon whose pid file is gone still names this bed's ceph.conf.
		for pid in $(pgrep -f -- "--conf $conf( |\$)" || true); do
			log "ending daemon $pid that outlived its pid file"
			kill -CONT "$pid" 2>/dev/null || true
			kill -9 "$pid" 2>/dev/null || true
		done
	fi
	for ns in $(ip netns list 2>/dev/null | awk '/^cfault-/ { print $1 }'); do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			log "ending process $pid left in $ns: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-80)"
			kill -CONT "$pid" 2>/dev/null || true
			kill -9 "$pid" 2>/dev/null || true
		done
	done
	for ns in $(ip netns list 2>/dev/null | awk '/^cfault-/ { print $1 }'); do
		[[ $ns == "$netns_hub" ]] || ip netns del "$ns"
	done
	! ip netns list 2>/dev/null | grep -qw "^$netns_hub" || ip netns del "$netns_hub"
	# The node's end goes with its peer in the hub; a killed run may have
	# left it behind alone.
	! ip link show "$node_if" >/dev/null 2>&1 || ip link del "$node_if"
}

# residue prints what of a bed is left: namespaces, links, daemons.
residue() {
	ip netns list 2>/dev/null | awk '/^cfault-/ { print "namespace " $1 }'
	ip -br link 2>/dev/null | awk '/^cf/ { print "link " $1 }'
	pgrep -a -f -- '--conf [^ ]*cfault[^ ]*/ceph.conf' | sed 's/^/process /' || true
}

case "$cmd" in
up)
	command -v ceph-mon >/dev/null || die "no Ceph daemons here: run this through scripts/in-root"
	start=$SECONDS
	trap 'down' ERR
	net_up
	bootstrap
	trap - ERR
	log "HEALTH_OK after $((SECONDS - start)) s"
	;;
down) down ;;
start)
	ds=("$@")
	[[ ${#ds[@]} -gt 0 ]] || mapfile -t ds < <(daemons)
	# Each daemon's start waits for its initialisation (an OSD's takes
	# seconds): start them side by side.
	for d in "${ds[@]}"; do run_daemon "$d" & done
	wait
	;;
stop)
	ds=("$@")
	[[ ${#ds[@]} -gt 0 ]] || mapfile -t ds < <(daemons | tac)
	for d in "${ds[@]}"; do end_daemon "$d" 20 & done
	wait
	;;
link) link "$@" ;;
add-mon)
	add_mon "$1"
	write_config_json
	;;
rm-mon)
	rm_mon "$1"
	write_config_json
	;;
pid) pid_of "$1" || die "$1 is not running" ;;
daemons) daemons ;;
env)
	echo "CEPH_CLUSTER_DIR=$dir"
	echo "CEPH_CONF_FILE=$conf"
	echo "CEPH_ADMIN_KEYRING=$dir/keyring"
	echo "CEPH_MONITORS=$(jq -r '.[0].monitors | join(",")' "$dir/config.json")"
	echo "CEPH_CLUSTER_ID=$cluster_id"
	echo "CEPH_CSI_CONFIG=$dir/config.json"
	echo "CEPH_NODE_ADDR=$node_addr"
	cat "$dir/secrets.env"
	;;
residue) residue ;;
*) die "unknown command $cmd" ;;
esac
