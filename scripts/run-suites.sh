#!/usr/bin/env bash
# make test: runs the named suites (make targets) one after another, timing
# each, and prints a table at the end. The slow, cold-cache-only preparation
# that only later suites need (the Kubernetes programs of the e2e, the Ceph
# roots) starts first in the background, niced, so that it overlaps the
# suites that spend their time waiting on the cluster rather than on the CPU.
#
#   scripts/run-suites.sh SUITE...      e.g. unit integration sanity e2e
#
# Stops at the first failing suite (its output is above the table).
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
t0=$(now)
scripts/build-root.sh dev >/dev/null
[[ " $* " != *" test-compat "* ]] || scripts/build-root.sh reef >/dev/null
[[ " $* " != *" image "* && " $* " != *" e2e "* ]] || scripts/build-root.sh image >/dev/null
rows+=("$(printf '%-14s %6d s  %s' roots $(($(now) - t0)) ok)")

tools_pid=
if [[ " $* " == *" e2e "* ]]; then
	log "building the e2e's Kubernetes programs in the background (log: _output/logs/build-tools.log)"
	nice -n 10 e2e/build-tools.sh >_output/logs/build-tools.log 2>&1 &
	tools_pid=$!
fi

for suite in "$@"; do
	if [[ $suite == e2e && -n $tools_pid ]]; then
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
	log "=== $suite"
	t0=$(now)
	if make --no-print-directory "$suite"; then
		rows+=("$(printf '%-14s %6d s  %s' "$suite" $(($(now) - t0)) ok)")
	else
		rows+=("$(printf '%-14s %6d s  %s' "$suite" $(($(now) - t0)) FAILED)")
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
