#!/usr/bin/env bash
# make fuzz: runs every go test -fuzz target of the module for a short fixed
# time each (go test fuzzes one target of one package per run), timing each,
# and prints a table at the end. Run inside the Ceph root (scripts/in-root).
#
#   scripts/fuzz.sh [PACKAGE...]          default: every package with a target
#
#   FUZZTIME          time per target (go test -fuzztime), default 10s
#   FUZZMINIMIZETIME  time to minimize each new or failing input, default 1s
#                     (go test's 60s would take a short run's whole time
#                     each time an input adds coverage)
#   TAGS              build tags, comma separated
#   GO                the go command, default go
#
# A target that fails leaves its failing input in the package's
# testdata/fuzz/<target>/ (rerun it with go test -run <target>/<file>);
# every target runs, and the exit status is 1 when any failed. A run that
# fails with nothing but "context deadline exceeded" and no failing input
# is Go's own race at the end of -fuzztime (go.dev/issue/75804, fixed in Go
# 1.27): that target runs once more, and its second result counts.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-1s}
TAGS=${TAGS:-}

log() { echo "fuzz: $*" >&2; }

# The packages whose test files define a fuzz target; go test -list then
# names the targets the build (tags included) really has.
if [[ $# -gt 0 ]]; then
	pkgs=("$@")
else
	mapfile -t pkgs < <(grep -rlE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' --include='*_test.go' . |
		xargs -r -n1 dirname | sort -u | sed 's|^\./||; s|^|./|')
fi
[[ ${#pkgs[@]} -gt 0 ]] || {
	log "no fuzz targets"
	exit 1
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT

now() { date +%s.%N; }
since() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'; }
declare -a rows
status=0
total0=$(now)
for pkg in "${pkgs[@]}"; do
	if ! targets=$("$GO" test -tags "$TAGS" -list '^Fuzz' "$pkg" | grep '^Fuzz'); then
		log "$pkg: listing the targets failed"
		rows+=("$(printf '%-28s %-26s %8s  %s' "$pkg" "-" "-" "FAILED (no targets listed)")")
		status=1
		continue
	fi
	for target in $targets; do
		t0=$(now)
		result=FAILED
		for try in 1 2; do
			log "=== $pkg $target ($FUZZTIME)"
			inputs=$(ls "$pkg/testdata/fuzz/$target" 2>/dev/null || true)
			if "$GO" test -tags "$TAGS" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" \
				-fuzzminimizetime "$FUZZMINIMIZETIME" "$pkg" 2>&1 | tee "$out"; [[ ${PIPESTATUS[0]} == 0 ]]; then
				result=ok
				[[ $try == 1 ]] || result="ok (second run: go.dev/issue/75804)"
				break
			fi
			# Go's deadline race: the target's only complaint, no input kept.
			if [[ $try == 1 && $(ls "$pkg/testdata/fuzz/$target" 2>/dev/null || true) == "$inputs" ]] &&
				grep -A1 -- "^--- FAIL: $target " "$out" | grep -qx $'\tcontext deadline exceeded\|    context deadline exceeded'; then
				log "$pkg $target: context deadline exceeded without a failing input (go.dev/issue/75804); once more"
				continue
			fi
			break
		done
		[[ $result != FAILED ]] || status=1
		rows+=("$(printf '%-28s %-26s %7ss  %s' "$pkg" "$target" "$(since "$t0")" "$result")")
	done
done

echo
printf '%-28s %-26s %8s  %s\n' package target time result
printf '%s\n' "${rows[@]}"
printf '%-28s %-26s %7ss  %s\n' total "${#rows[@]} targets" "$(since "$total0")" \
	"$([[ $status == 0 ]] && echo ok || echo FAILED)"
exit "$status"
