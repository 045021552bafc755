#!/usr/bin/env bash
# make test: runs the named suites (make targets) one after another, timing
# each, and prints a table at the end. The slow, cold-cache-only preparation
# that only later suites need (the Kubernetes programs of the e2e, the Ceph
# roots) starts first in the background, niced, so that it overlaps the
# suites that spend their time waiting on the cluster rather than on the CPU.
#
#   scripts/run-suites.sh SUITE...      e.g. unit integration sanity e2e
#
# SUITE may be a group "a+b": those suites run side by side (each with its
# output in _output/logs/<suite>.log, printed when the group ends), for
# suites that spend their time waiting on clusters, guests or timeouts and do
# not share a cluster, port or network namespace.
#
# Stops at the first failing suite or group (its output is above the table).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p _output/logs

now() { date +%s; }
start=$(now)
declare -a rows
status=0

log() { echo "run-suites: $*" >&2; }

# Roots first: every suite needs the dev root, test-compat the Reef one and
# make image the image root. Sequential (they share the network), timed.
all=" ${*//+/ } "
t0=$(now)
scripts/build-root.sh dev >/dev/null
[[ $all != *" test-compat "* ]] || scripts/build-root.sh reef >/dev/null
[[ $all != *" image "* && $all != *" e2e "* ]] || scripts/build-root.sh image >/dev/null
rows+=("$(printf '%-14s %6d s  %s' roots $(($(now) - t0)) ok)")

tools_pid=
if [[ $all == *" e2e "* ]]; then
	log "building the e2e's Kubernetes programs in the background (log: _output/logs/build-tools.log)"
	nice -n 10 e2e/build-tools.sh >_output/logs/build-tools.log 2>&1 &
	tools_pid=$!
fi

# run_group SUITE...: the suites side by side; a row each, in order.
run_group() {
	local -a pids=()
	local suite i rc=0
	local -A took=() ok=()
	if [[ $# -eq 1 ]]; then
		log "=== $1"
		local t0
		t0=$(now)
		if make --no-print-directory "$1"; then ok[$1]=ok; else ok[$1]=FAILED; rc=1; fi
		took[$1]=$(($(now) - t0))
	else
		local joined="$*"
		log "=== ${joined// / + } (side by side; logs _output/logs/<suite>.log)"
		for suite in "$@"; do
			(
				t0=$(now)
				r=0
				make --no-print-directory "$suite" >"_output/logs/$suite.log" 2>&1 || r=$?
				echo "$(($(now) - t0)) $r" >"_output/logs/$suite.rc"
			) &
			pids+=($!)
		done
		for i in "${!pids[@]}"; do
			wait "${pids[$i]}" || true
		done
		for suite in "$@"; do
			local secs r
			read -r secs r <"_output/logs/$suite.rc" || { secs=0 r=1; }
			echo "----- $suite (exit $r, $secs s) -----"
			cat "_output/logs/$suite.log"
			took[$suite]=$secs
			if [[ $r -eq 0 ]]; then ok[$suite]=ok; else ok[$suite]=FAILED; rc=1; fi
		done
	fi
	for suite in "$@"; do
		local note=${ok[$suite]} other others=
		for other in "$@"; do
			[[ $other == "$suite" ]] || others+=${others:+, }$other
		done
		[[ -z $others ]] || note+=" (side by side with $others)"
		rows+=("$(printf '%-14s %6d s  %s' "$suite" "${took[$suite]}" "$note")")
	done
	return $rc
}

for group in "$@"; do
	IFS=+ read -r -a members <<<"$group"
	if [[ " ${members[*]} " == *" e2e "* && -n $tools_pid ]]; then
		t0=$(now)
		if ! wait "$tools_pid"; then
			tail -30 _output/logs/build-tools.log >&2
			rows+=("$(printf '%-14s %6d s  %s' e2e-tools $(($(now) - t0)) FAILED)")
			status=1
			break
		fi
		rows+=("$(printf '%-14s %6d s  %s' "e2e-tools" $(($(now) - t0)) "ok (waited; log _output/logs/build-tools.log)")")
		tools_pid=
	fi
	if ! run_group "${members[@]}"; then
		status=1
		break
	fi
done
[[ -z $tools_pid ]] || kill "$tools_pid" 2>/dev/null || true

echo
echo "suite            time  result"
printf '%s\n' "${rows[@]}"
if [[ $status -eq 0 ]]; then
	echo "make test: all suites passed in $(($(now) - start)) s"
else
	echo "make test: FAILED after $(($(now) - start)) s"
fi
exit $status
