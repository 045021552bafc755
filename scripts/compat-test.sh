#!/usr/bin/env bash
# make test-compat: the cephcsi binary built for Ceph $CEPH_VERSION against
# clusters of older releases, each made by that release's own tools and so
# with the cephx keys that release generates (old-format "AQ" keys):
#
#   reef     Ceph $REEF_VERSION from the Reef root (scripts/build-root.sh reef),
#            monitor on port 27789, cluster in _output/ceph-compat-reef
#   pacific  Ceph $PACIFIC_VERSION from the host's Debian 12 packages
#            (scripts/install-deps.sh pacific), port 28789, _output/ceph-compat-pacific
#
#   scripts/compat-test.sh [RELEASE...]     (default: reef pacific)
#
# Steps, each timed: the Reef root (its cold build time is printed too), the
# host's Pacific packages, the test binary (e2e/compat, build tag compat,
# built in the dev root), then per release: a fresh cluster, the test (run in
# the dev root, driving _output/cephcsi over its CSI socket), the cluster
# stopped. At the end: a table of every operation on every release. On exit,
# success or not, every cluster this script started is stopped, and any
# driver or ceph-fuse process a killed test left is ended by its ID.
# Logs: _output/compat/ (test output, driver logs, results.tsv); cluster logs
# stay in the cluster directories until the next run.
#
# Environment: GO (default go), COMPAT_TEST_TIMEOUT (default 20m),
# COMPAT_RUN (go test -run pattern).
set -euo pipefail
unset CEPH_ARGS CEPH_CONF CEPH_KEYRING

cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=/dev/null
. "$repo/build.env"
go=${GO:-go}
out=$repo/_output
logs=$out/compat
test_bin=$out/compat.test
results=$logs/results.tsv
releases=("$@")
[[ ${#releases[@]} -gt 0 ]] || releases=(reef pacific)

log() { echo "compat-test: $*" >&2; }
die() {
	log "$*"
	exit 1
}
now() { date +%s.%N; }
declare -a step_rows
# timed WHAT COMMAND... runs and times one step, keeping a line for the summary.
timed() {
	local what=$1 t0 rc=0 line
	shift
	t0=$(now)
	"$@" || rc=$?
	line=$(printf '%-40s %7.1f s%s' "$what" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')" \
		"$([[ $rc -eq 0 ]] || echo "  (failed, exit $rc)")")
	log "$line"
	step_rows+=("$line")
	return $rc
}

port_of() { case $1 in reef) echo 27789 ;; pacific) echo 28789 ;; esac }
version_of() { case $1 in reef) echo "$REEF_VERSION" ;; pacific) echo "$PACIFIC_VERSION" ;; esac }
dir_of() { echo "$out/ceph-compat-$1"; }

for rel in "${releases[@]}"; do
	[[ -n $(port_of "$rel") ]] || die "unknown release $rel (reef or pacific)"
done
[[ -x $out/cephcsi ]] || die "no _output/cephcsi: run make build first"
mkdir -p "$logs"
: >"$results"

# Debian trixie's Reef mgr cannot load its Python modules: mgr_util.py
# imports bcrypt, and restful imports pyOpenSSL (through cryptography), at
# module level; trixie builds both with a PyO3 that refuses the
# sub-interpreters every mgr module runs in, so no module loads (no volumes,
# no rbd_support, no status) and the cluster never reaches HEALTH_OK. Only
# password hashing and HTTPS certificates use them, which these tests do not
# need, so the Reef daemons run with stand-ins bound over the two packages,
# in the mount namespace of the cluster start only (the root is not changed).
write_reef_mgr_shim() {
	local shim=$logs/reef-mgr-shim
	mkdir -p "$shim/bcrypt" "$shim/OpenSSL"
	cat >"$shim/bcrypt/__init__.py" <<-'EOF'
		# Stand-in for bcrypt in the compat test's Reef mgr (scripts/compat-test.sh).
		def _unavailable(*args, **kwargs):
		    raise RuntimeError("bcrypt is not available in this test cluster's mgr")
		gensalt = hashpw = checkpw = kdf = _unavailable
	EOF
	cat >"$shim/OpenSSL/__init__.py" <<-'EOF'
		# Stand-in for pyOpenSSL in the compat test's Reef mgr (scripts/compat-test.sh).
	EOF
	cat >"$shim/OpenSSL/crypto.py" <<-'EOF'
		def __getattr__(name):
		    raise RuntimeError("pyOpenSSL is not available in this test cluster's mgr")
	EOF
	echo "$shim"
}

# The monitor ports sit below Linux's ephemeral range (32768-60999), so no
# outgoing connection is handed one; a start still waits for a port that
# an earlier cluster's socket holds to be released.
wait_for_ports() {
	local end=$((SECONDS + 120)) p busy
	while :; do
		busy=
		for p in "$@"; do
			[[ -z $(ss -Htanu "( sport = :$p )") ]] || busy+=" $p"
		done
		[[ -n $busy ]] || return 0
		[[ -n ${said:-} ]] || log "waiting for ports$busy to be released (up to 120 s)"
		local said=1
		if ((SECONDS >= end)); then
			log "ports$busy still in use:"
			for p in $busy; do ss -Htanup "( sport = :$p )" >&2; done
			return 1
		fi
		sleep 1
	done
}

start_cluster() {
	local rel=$1 dir port
	dir=$(dir_of "$rel")
	port=$(port_of "$rel")
	# A fresh cluster each run: the leftover checks demand empty pools.
	stop_daemons "$rel" || return 1
	scripts/ceph-cluster.sh purge "$dir"
	wait_for_ports "$port" "$((port + 1))" || return 1
	started+=("$rel")
	if [[ $rel == reef ]]; then
		local shim pkgs=/usr/lib/python3/dist-packages
		shim=$(write_reef_mgr_shim)
		CEPH_MON_PORT=$port IN_ROOT=reef scripts/in-root bash -euc '
			mount --bind "$1/bcrypt" "$2/bcrypt"
			mount --bind "$1/OpenSSL" "$2/OpenSSL"
			exec scripts/ceph-cluster.sh start "$3"' compat "$shim" "$pkgs" "$dir"
	else
		# The host's own Ceph (Pacific).
		CEPH_MON_PORT=$port scripts/ceph-cluster.sh start "$dir"
	fi
}

# sweep ends the processes a killed test run may have left for cluster REL:
# drivers it started (their --configpath names the cluster's config.json)
# and ceph-fuse mounts of its monitor port. Found by those arguments, which
# only this script's processes carry, and ended by their IDs.
sweep() {
	local rel=$1 pid
	local patterns=("--configpath=$(dir_of "$rel")/config.json" "127.0.0.1:$(port_of "$rel")")
	for pid in $(pgrep -f -- "${patterns[0]}" || true) $(pgrep -f -- "ceph-fuse .*${patterns[1]}" || true); do
		[[ $pid != "$$" ]] || continue
		log "ending leftover process $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-100)"
		kill "$pid" 2>/dev/null || true
	done
}

# stop_daemons stops a cluster (ceph-cluster.sh also ends daemons that
# outlived their pid files).
stop_daemons() {
	scripts/ceph-cluster.sh stop "$(dir_of "$1")" || true
}

stop_cluster() {
	local rel=$1
	sweep "$rel"
	stop_daemons "$rel"
	local keep=() r
	for r in "${started[@]}"; do [[ $r == "$rel" ]] || keep+=("$r"); done
	started=("${keep[@]}")
}

started=()
cleanup() {
	local rel
	for rel in "${started[@]}"; do
		log "stopping the $rel cluster"
		sweep "$rel"
		stop_daemons "$rel" || true
	done
	started=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_test() {
	local rel=$1
	local args=(-test.v -test.count=1 -test.timeout "${COMPAT_TEST_TIMEOUT:-20m}")
	[[ -z ${COMPAT_RUN:-} ]] || args+=(-test.run "$COMPAT_RUN")
	scripts/in-root env COMPAT_RELEASE="$rel" COMPAT_CEPH_VERSION="$(version_of "$rel")" \
		COMPAT_CLUSTER_DIR="$(dir_of "$rel")" COMPAT_RESULTS="$results" COMPAT_LOG_DIR="$logs" \
		CEPHCSI_BINARY="$out/cephcsi" "$test_bin" "${args[@]}" >"$logs/$rel-test.log" 2>&1
}

# cold_build_time prints how long the cold build of a root took, from its
# own timestamps: the directory's birth (debootstrap's start) to its ready
# mark.
cold_build_time() {
	local root=$1 born ready
	born=$(stat -c %W "$root")
	ready=$(stat -c %Y "$root/.cephcsi-root-ready")
	if [[ $born -gt 0 ]]; then
		echo "$((ready - born)) s, finished $(date -u -d "@$ready" '+%Y-%m-%d %H:%M UTC')"
	else
		echo "unknown (no birth time on this filesystem)"
	fi
}

start=$(now)
status=0
if [[ " ${releases[*]} " == *" reef "* ]]; then
	timed "the Reef root (build-root.sh reef)" scripts/build-root.sh reef >"$logs/reef-root.path"
	log "the Reef root $(cat "$logs/reef-root.path"): cold build $(cold_build_time "$(cat "$logs/reef-root.path")")"
fi
if [[ " ${releases[*]} " == *" pacific "* ]]; then
	timed "host Pacific packages (install-deps)" scripts/install-deps.sh pacific
fi
tags=${GO_CEPH_TAGS:+$GO_CEPH_TAGS,}compat
timed "build the test (dev root)" scripts/in-root "$go" test -c -tags "$tags" -o "$test_bin" ./e2e/compat/

for rel in "${releases[@]}"; do
	if ! timed "start the $rel cluster (port $(port_of "$rel"))" start_cluster "$rel"; then
		status=1
		printf '%s\tcluster\tstart\tFAIL\t0\tthe cluster did not start: see %s/log\n' "$rel" "$(dir_of "$rel")" >>"$results"
		stop_cluster "$rel" || true
		continue
	fi
	if ! timed "test against $rel" run_test "$rel"; then
		status=1
		log "the $rel test failed; its output (tail, full log in $logs/$rel-test.log):"
		tail -40 "$logs/$rel-test.log" >&2
	fi
	timed "stop the $rel cluster" stop_cluster "$rel" || status=1
done

# The table: one row per operation, one column per release.
echo
echo "==== make test-compat: cephcsi $(git describe --tags --always --dirty 2>/dev/null || echo dev), built against Ceph $CEPH_VERSION ($CEPH_RELEASE)"
awk -F'\t' -v order="${releases[*]}" -v reef="$REEF_VERSION" -v pacific="$PACIFIC_VERSION" '
	BEGIN { n = split(order, rels, " ") }
	{
		key = $2 "\t" $3
		if (!(key in seen)) { seen[key] = 1; keys[++k] = key }
		cell[key, $1] = sprintf("%-7s %7.2fs", $4, $5)
		if ($4 != "pass" && $6 != "") fails[++f] = $1 " " $2 " " $3 ": " $4 ": " $6
	}
	END {
		printf "%-8s %-22s", "group", "operation"
		for (i = 1; i <= n; i++) {
			v = rels[i] == "reef" ? reef : pacific
			printf "  %-17s", rels[i] " " v
		}
		printf "\n"
		for (j = 1; j <= k; j++) {
			split(keys[j], kk, "\t")
			printf "%-8s %-22s", kk[1], kk[2]
			for (i = 1; i <= n; i++) {
				c = ((keys[j], rels[i]) in cell) ? cell[keys[j], rels[i]] : "no result"
				printf "  %-17s", c
			}
			printf "\n"
		}
		for (j = 1; j <= f; j++) print "  " fails[j]
	}' "$results"
echo
echo "steps:"
printf '  %s\n' "${step_rows[@]}"
printf '  %-40s %7.1f s\n' "total" "$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')"
# A failed operation fails the run, and so does a release without results.
grep -q $'\tFAIL\t' "$results" && status=1
for rel in "${releases[@]}"; do
	grep -q "^$rel"$'\t' "$results" || status=1
done
exit $status
