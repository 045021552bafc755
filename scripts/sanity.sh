#!/usr/bin/env bash
# csi-sanity, the CSI community's conformance suite, against the real cephcsi
# binary (controller and node service in one process) and a private Ceph
# cluster, followed by a check that nothing was left behind.
#
#   scripts/sanity.sh [rbd|cephfs|all]      (default: all)
#
# RBD runs twice, with filesystem (mount) and with raw block volumes.
# The cluster lives in _output/ceph-sanity with its monitor on port 16789, so
# that the leak check can demand empty pools without regard for the shared
# test cluster. Logs and reports go to _output/sanity/. The cephx keys are
# written only to a private temporary directory that is removed on exit.
#
# Environment: SANITY_RBD_MOUNTER, SANITY_CEPHFS_MOUNTER (default: the kernel
# client when this kernel has it, else rbd-fuse / fuse), SANITY_TIMEOUT
# (seconds per suite, default 2400), GO (default go).
set -euo pipefail
unset CEPH_ARGS CEPH_CONF CEPH_KEYRING

cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=/dev/null
. "$repo/build.env"
out=$repo/_output
cluster=$out/ceph-sanity
sanity_port=${SANITY_MON_PORT:-16789}
logs=$out/sanity
sanity_bin=$out/bin/csi-sanity
go=${GO:-go}
# The suite creates volumes of 1 GiB and expands them to 2 GiB.
vol_size=$((1 << 30))
expand_size=$((2 << 30))

log() { echo "sanity: $*" >&2; }
die() {
	log "$*"
	exit 1
}

what=${1:-all}
case "$what" in
rbd | cephfs) suites=("$what") ;;
all) suites=(rbd cephfs) ;;
*) die "usage: $0 [rbd|cephfs|all]" ;;
esac

ceph_() { timeout 60 ceph --conf "$cluster/ceph.conf" --name client.admin "$@"; }
rbd_() { timeout 60 rbd --conf "$cluster/ceph.conf" --name client.admin "$@"; }
rados_() { timeout 60 rados --conf "$cluster/ceph.conf" --name client.admin "$@"; }

# build_sanity installs csi-sanity at the pinned version unless the binary
# there already is that version.
build_sanity() {
	if [[ -x "$sanity_bin" ]] && "$go" version -m "$sanity_bin" 2>/dev/null |
		grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/kubernetes-csi/csi-test/v5[[:space:]]+${CSI_SANITY_VERSION}[[:space:]]"; then
		return
	fi
	log "building csi-sanity $CSI_SANITY_VERSION"
	mkdir -p "$out/bin"
	(cd "$out" && GOBIN="$out/bin" GOFLAGS=-buildvcs=false "$go" install \
		"github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION")
}

start_cluster() {
	CEPH_MON_PORT=$sanity_port scripts/ceph-cluster.sh start "$cluster"
}

# cluster_leftovers prints one line per object a finished suite must not
# leave on the sanity cluster; nothing when the cluster is clean. A check
# that cannot run counts as a leftover: a silent failure must not pass.
cluster_leftovers() {
	local pool ns obj json
	for pool in rbd rbd2; do
		json=$(rbd_ ls -p "$pool" --format json) || { echo "check failed: rbd ls -p $pool"; continue; }
		jq -r --arg p "$pool" '.[] | "image \($p)/\(.)"' <<<"$json"
		json=$(rbd_ trash ls --all -p "$pool" --format json) || { echo "check failed: rbd trash ls -p $pool"; continue; }
		jq -r --arg p "$pool" '.[] | "trash \($p)/\(.name) (id \(.id))"' <<<"$json"
		json=$(rados_ -p "$pool" --all ls --format json) || { echo "check failed: rados ls -p $pool"; continue; }
		# "|" and not a tab: read would strip the empty namespace's tab.
		while IFS='|' read -r ns obj; do
			[[ -n "$obj" ]] || continue
			case "$obj" in
			csi.volumes.default | csi.snaps.default) journal_keys "$pool" "$ns" "$obj" ;;
			*) echo "object $pool${ns:+/$ns}/$obj" ;;
			esac
		done < <(jq -r '.[] | select(.name | test("^(csi\\.|rbd_(header|id|object_map)\\.)")) |
			"\(.namespace)|\(.name)"' <<<"$json")
		# Data objects, one line per image.
		jq -r --arg p "$pool" '[.[] | select(.name | startswith("rbd_data.")) |
			{ns: .namespace, img: (.name | split(".")[1])}] | group_by(.) | .[] |
			"data objects \($p)\(if .[0].ns == "" then "" else "/" + .[0].ns end)/rbd_data.\(.[0].img).*: \(length)"' <<<"$json"
	done
	local group
	for group in csi _nogroup; do
		local args=(--group_name "$group")
		[[ $group == _nogroup ]] && args=()
		if ! json=$(ceph_ fs subvolume ls myfs "${args[@]}" 2>"$logs/.err"); then
			# A group that was never created holds nothing.
			grep -q "subvolume group '$group' does not exist" "$logs/.err" ||
				echo "check failed: ceph fs subvolume ls myfs --group_name $group: $(cat "$logs/.err")"
			continue
		fi
		jq -r --arg g "$group" '.[] | "subvolume myfs/\($g)/\(.name)"' <<<"$json"
	done
	rm -f "$logs/.err"
	json=$(rados_ -p myfs-metadata -N csi ls --format json) || { echo "check failed: rados ls -p myfs-metadata -N csi"; return; }
	while read -r obj; do
		[[ -n "$obj" ]] || continue
		case "$obj" in
		csi.volumes.default | csi.snaps.default) journal_keys myfs-metadata csi "$obj" ;;
		*) echo "object myfs-metadata/csi/$obj" ;;
		esac
	done < <(jq -r '.[].name' <<<"$json")
}

# journal_keys lists the keys of a journal directory object: the object may
# stay, but empty.
journal_keys() {
	local pool=$1 ns=$2 obj=$3 keys
	keys=$(rados_ -p "$pool" -N "$ns" listomapkeys "$obj") || { echo "check failed: listomapkeys $pool/$obj"; return; }
	[[ -z "$keys" ]] || sed "s|^|journal key $pool${ns:+/$ns}/$obj: |" <<<"$keys"
}

# node_leftovers prints mounts, loop devices and FUSE daemons of one suite
# that outlived the driver: anything under its temporary directory or naming
# one of the images or subvolumes the driver created.
node_leftovers() {
	local tmp=$1 names=$2
	local pattern=$tmp/
	[[ -s "$names" ]] && pattern="$pattern|$(paste -sd'|' "$names")"
	findmnt -rn -o TARGET,SOURCE,FSTYPE | grep -E -- "$pattern" | sed 's/^/mount /' || true
	losetup -l -n -O NAME,BACK-FILE 2>/dev/null | grep -E -- "$pattern" | sed 's/^/loop device /' || true
	pgrep -a -f 'rbd-fuse|ceph-fuse' | grep -E -- "$pattern|:$sanity_port" | sed 's/^/process /' || true
}

# release_node_leftovers undoes what node_leftovers found, so that a failed
# run does not keep devices busy on the machine.
release_node_leftovers() {
	local tmp=$1 names=$2
	local pattern=$tmp/
	[[ -s "$names" ]] && pattern="$pattern|$(paste -sd'|' "$names")"
	local dev
	for dev in $(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | grep -E -- "$pattern" | awk '{print $1}'); do
		losetup -d "$dev" || true
	done
	local target
	findmnt -rn -o TARGET,SOURCE | grep -E -- "$pattern" | awk '{print $1}' | sort -r | while read -r target; do
		umount "$target" 2>/dev/null || umount -l "$target" || true
	done
}

# secrets_yaml writes the secrets csi-sanity passes in each call.
secrets_yaml() {
	local type=$1 f
	local -a ctrl node
	if [[ $type == rbd ]]; then
		ctrl=(userID "$CEPH_RBD_PROVISIONER_ID" userKey "$CEPH_RBD_PROVISIONER_KEY")
		node=(userID "$CEPH_RBD_NODE_ID" userKey "$CEPH_RBD_NODE_KEY")
	else
		ctrl=(adminID "$CEPH_FS_PROVISIONER_ID" adminKey "$CEPH_FS_PROVISIONER_KEY")
		node=(userID "$CEPH_FS_NODE_ID" userKey "$CEPH_FS_NODE_KEY"
			adminID "$CEPH_FS_NODE_ID" adminKey "$CEPH_FS_NODE_KEY")
	fi
	for f in CreateVolumeSecret DeleteVolumeSecret ControllerValidateVolumeCapabilitiesSecret \
		ControllerExpandVolumeSecret CreateSnapshotSecret DeleteSnapshotSecret \
		ListSnapshotsSecret GetSnapshotSecret; do
		echo "$f:"
		printf "  %s: '%s'\n" "${ctrl[@]}"
	done
	for f in NodeStageVolumeSecret NodePublishVolumeSecret NodeExpandVolumeSecret; do
		echo "$f:"
		printf "  %s: '%s'\n" "${node[@]}"
	done
}

params_yaml() {
	local type=$1 cluster_id=$2
	echo "clusterID: '$cluster_id'"
	if [[ $type == rbd ]]; then
		echo "pool: rbd"
		echo "imageFeatures: layering"
		echo "csi.storage.k8s.io/fstype: ext4"
		[[ -z "$rbd_mounter" ]] || echo "mounter: $rbd_mounter"
	else
		echo "fsName: myfs"
		echo "mounter: $cephfs_mounter"
	fi
}

pick_mounters() {
	# krbd is the default mounter: an empty value leaves the parameter out.
	if [[ -n "${SANITY_RBD_MOUNTER+set}" ]]; then
		rbd_mounter=$SANITY_RBD_MOUNTER
	elif [[ -d /sys/bus/rbd ]] || { modprobe -q rbd 2>/dev/null && [[ -d /sys/bus/rbd ]]; }; then
		rbd_mounter=
	else
		rbd_mounter=rbd-fuse
	fi
	if [[ -n "${SANITY_CEPHFS_MOUNTER:-}" ]]; then
		cephfs_mounter=$SANITY_CEPHFS_MOUNTER
	elif grep -qw ceph /proc/filesystems || { modprobe -q ceph 2>/dev/null && grep -qw ceph /proc/filesystems; }; then
		cephfs_mounter=kernel
	else
		cephfs_mounter=fuse
	fi
}

# csi-sanity does not retry an Aborted CreateVolume, so a CephFS restore or
# clone must be ready within the call: the driver waits this long for the
# copy (a few hundred ms here) instead of answering Aborted at once.
clone_wait=${SANITY_CLONE_WAIT:-60s}

driver_pid=
tmp=
cleanup() {
	if [[ -n "$driver_pid" ]] && kill -0 "$driver_pid" 2>/dev/null; then
		kill "$driver_pid" 2>/dev/null || true
		wait "$driver_pid" 2>/dev/null || true
	fi
	driver_pid=
	if [[ -n "$tmp" && -d "$tmp" ]]; then
		release_node_leftovers "$tmp" /dev/null
		rm -rf --one-file-system "$tmp" || log "could not remove $tmp entirely"
	fi
	tmp=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_driver ends the driver and reports whether it exited cleanly.
stop_driver() {
	local rc=0
	kill "$driver_pid" 2>/dev/null || return 1
	wait "$driver_pid" || rc=$?
	driver_pid=
	return "$rc"
}

# run_suite runs csi-sanity for one driver type and access type (mount or
# block); it returns non-zero when a test failed or something was left behind.
run_suite() {
	local type=$1 access=$2
	local name=$type
	[[ $access == mount ]] || name=$type-$access
	local start=$SECONDS failed=0
	tmp=$(mktemp -d /tmp/cephcsi-sanity.XXXXXX) # 0700: the keys are written here
	local sock=$tmp/csi.sock names=$logs/$name-names.txt
	local driver_log=$logs/$name-driver.log sanity_log=$logs/$name-sanity.log report=$logs/$name-report.json
	rm -f "$driver_log" "$sanity_log" "$report" "$names"
	local cluster_id
	cluster_id=$(jq -r '.[0].clusterID' "$cluster/config.json")
	(
		umask 077
		secrets_yaml "$type" >"$tmp/secrets.yaml"
		params_yaml "$type" "$cluster_id" >"$tmp/volume-params.yaml"
		echo "clusterID: '$cluster_id'" >"$tmp/snapshot-params.yaml"
	)
	log "$name: parameters: $(paste -sd' ' "$tmp/volume-params.yaml")"

	"$out/cephcsi" --type="$type" --controllerserver --nodeserver --nodeid=sanity \
		--endpoint="unix://$sock" --configpath="$cluster/config.json" \
		--pluginpath="$tmp/plugins" --stagingpath="$tmp/kubelet-staging" \
		--clonewait="$clone_wait" --v=2 >"$driver_log" 2>&1 &
	driver_pid=$!
	local end=$((SECONDS + 30))
	until [[ -S "$sock" ]]; do
		if ! kill -0 "$driver_pid" 2>/dev/null; then
			wait "$driver_pid" || true
			driver_pid=
			log "$name: the driver exited before serving:"
			tail -n 20 "$driver_log" >&2
			cleanup
			return 1
		fi
		((SECONDS < end)) || {
			log "$name: the driver did not create $sock in 30 s"
			cleanup
			return 1
		}
		sleep 0.1
	done

	local sanity_start=$SECONDS
	timeout "${SANITY_TIMEOUT:-2400}" "$sanity_bin" \
		--csi.endpoint="unix://$sock" \
		--csi.stagingdir="$tmp/sanity-staging" \
		--csi.mountdir="$tmp/sanity-target" \
		--csi.testvolumesize="$vol_size" \
		--csi.testvolumeexpandsize="$expand_size" \
		--csi.testvolumeparameters="$tmp/volume-params.yaml" \
		--csi.testsnapshotparameters="$tmp/snapshot-params.yaml" \
		--csi.secrets="$tmp/secrets.yaml" \
		--csi.testvolumeaccesstype="$access" \
		--ginkgo.no-color \
		--ginkgo.json-report="$report" 2>&1 | tee "$sanity_log" || failed=1
	local sanity_took=$((SECONDS - sanity_start))

	if ! stop_driver; then
		log "$name: the driver did not exit cleanly (see $driver_log)"
		failed=1
	fi
	grep -Eo '(csi-vol|csi-snap)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$driver_log" |
		sort -u >"$names" || true

	# Keys must not reach a log line.
	local key
	for key in "${all_keys[@]}"; do
		if grep -qF -- "$key" "$driver_log" "$sanity_log"; then
			log "$name: a cephx key appears in $driver_log or $sanity_log"
			failed=1
		fi
	done

	# A FUSE daemon exits a moment after its filesystem is unmounted: give
	# the last ones a few seconds before calling them leaks.
	local leaks tries=0
	while leaks=$(node_leftovers "$tmp" "$names") && [[ -n "$leaks" ]] && ((tries++ < 20)); do
		sleep 0.25
	done
	leaks=$(
		[[ -z "$leaks" ]] || echo "$leaks"
		cluster_leftovers
	)
	if [[ -n "$leaks" ]]; then
		log "$name: left behind after the suite:"
		sed 's/^/  /' <<<"$leaks" >&2
		failed=1
	else
		log "$name: nothing left behind (pools rbd, rbd2, trash, journals, subvolumes, mounts, loop devices)"
	fi
	release_node_leftovers "$tmp" "$names"
	cleanup

	summarize "$name" "$report"
	log "$name: csi-sanity took ${sanity_took} s, the whole suite $((SECONDS - start)) s"
	if ((failed)); then
		log "$name: FAILED (logs: $sanity_log, $driver_log)"
		return 1
	fi
	log "$name: passed"
}

# summarize prints the counts of the ginkgo report and every skipped test
# with its reason, so that skips stay visible.
summarize() {
	local type=$1 report=$2
	[[ -s "$report" ]] || {
		log "$type: no report written"
		return
	}
	jq -r --arg t "$type" '[.[].SpecReports[] | select(.LeafNodeType == "It")] |
		"sanity: \($t): \(map(select(.State == "passed")) | length) passed, " +
		"\(map(select(.State == "failed" or .State == "panicked" or .State == "timedout" or .State == "interrupted" or .State == "aborted")) | length) failed, " +
		"\(map(select(.State == "skipped")) | length) skipped"' "$report" >&2
	jq -r '.[].SpecReports[] | select(.LeafNodeType == "It" and .State == "skipped") |
		"  skipped: \(.ContainerHierarchyTexts | join(" / ")) / \(.LeafNodeText): \(.Failure.Message // "")"' \
		"$report" | sort | uniq -c | sed 's/^ *1 /  /' >&2
	jq -r '.[].SpecReports[] | select(.LeafNodeType == "It" and (.State != "passed" and .State != "skipped")) |
		"  \(.State): \(.ContainerHierarchyTexts | join(" / ")) / \(.LeafNodeText)"' "$report" >&2
}

total_start=$SECONDS
mkdir -p "$logs"
build_sanity
make --no-print-directory build >/dev/null
start_cluster
stale=$(cluster_leftovers)
if [[ -n "$stale" ]]; then
	# Only this script uses the sanity cluster: start from an empty one.
	log "the sanity cluster holds leftovers of an earlier run; recreating it:"
	sed 's/^/  /' <<<"$stale" >&2
	CEPH_MON_PORT=$sanity_port scripts/ceph-cluster.sh purge "$cluster"
	start_cluster
fi
# shellcheck source=/dev/null
. "$cluster/secrets.env"
all_keys=("$CEPH_RBD_PROVISIONER_KEY" "$CEPH_RBD_NODE_KEY" "$CEPH_FS_PROVISIONER_KEY" "$CEPH_FS_NODE_KEY")
pick_mounters

rc=0
for s in "${suites[@]}"; do
	run_suite "$s" mount || rc=1
	# RBD also serves raw block volumes; CephFS does not.
	[[ $s != rbd ]] || run_suite "$s" block || rc=1
done
log "${suites[*]}: $( ((rc)) && echo FAILED || echo passed) in $((SECONDS - total_start)) s"
exit "$rc"
