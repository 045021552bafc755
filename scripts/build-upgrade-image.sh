#!/usr/bin/env bash
# The e2e's image of an earlier commit, for the upgrade test (e2e/
# upgrade_e2e_test.go): the binary built from `git archive COMMIT` with this
# checkout's Ceph root (the commit's build.env must ask for the same Ceph),
# and its image by scripts/build-image.sh, in _output/upgrade-from/. Kept
# while the commit stays the same.
#
#   TAGS=<go build tags> scripts/build-upgrade-image.sh COMMIT
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:?usage: $0 COMMIT}
# A shallow clone (as some CI checkouts are) lacks the earlier commit: fetch
# the history it needs once, and fail saying so if that is not possible.
if ! git rev-parse -q --verify "$want^{commit}" >/dev/null; then
	if [[ $(git rev-parse --is-shallow-repository) == true ]]; then
		git fetch -q --unshallow || git fetch -q origin "$want" || true
	fi
	git rev-parse -q --verify "$want^{commit}" >/dev/null ||
		{ echo "$0: commit $want is not in this clone; the upgrade test needs it (E2E_UPGRADE_FROM)" >&2; exit 1; }
fi
commit=$(git rev-parse --verify "$want^{commit}")
out=_output/upgrade-from
if [[ -f $out/cephcsi-image.tar && $(cat "$out/commit" 2>/dev/null) == "$commit" ]]; then
	exit 0
fi
# The commit is built in this checkout's dev root: its build.env must ask
# for the same Ceph and image (comments and the root's extra tools, which
# only tests use, may differ).
ceph_env() { git show "$1:build.env" | grep -v -e '^#' -e '^ROOT_TOOL_PACKAGES='; }
if [[ "$(ceph_env "$commit")" != "$(ceph_env HEAD)" ]]; then
	echo "$0: $commit has another Ceph root than HEAD (build.env); pick a commit with the same Ceph root" >&2
	exit 1
fi
rm -rf "$out"
mkdir -p "$out/src"
git archive "$commit" | tar -x -C "$out/src"
short=$(git rev-parse --short "$commit")
scripts/in-root go build -C "$out/src" -tags "${TAGS:-}" -ldflags "-X github.com/leanceph/cephcsi/internal/server.Version=$short" \
	-o "$PWD/$out/cephcsi" ./cmd/cephcsi
rm -rf "$out/src"
BINARY=$out/cephcsi IMAGE=$out/cephcsi-image.tar SOURCE_DATE_EPOCH=$(git log -1 --format=%ct "$commit") scripts/build-image.sh
echo "$commit" >"$out/commit"
