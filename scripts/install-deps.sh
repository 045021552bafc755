#!/usr/bin/env bash
# Installs the Debian packages the host needs, when missing.
#
#   scripts/install-deps.sh            what every make target needs on the host:
#                                      debootstrap (the Ceph roots), util-linux,
#                                      iproute2, jq
#   scripts/install-deps.sh pacific    the host's own Ceph (Pacific) daemons and
#                                      tools, for make test-compat
#   scripts/install-deps.sh e2e        containerd, runc and busybox-static, the
#                                      node of make e2e (docs/e2e.md)
#
# Everything Ceph for the build and the main tests lives in the project's
# root filesystem (scripts/build-root.sh), not on the host.
set -euo pipefail
# shellcheck source=/dev/null
. "$(dirname "$0")/../build.env"
packages=(debootstrap util-linux iproute2 jq ${EXTRA_PACKAGES:-})
if [[ ${1:-} == pacific ]]; then
	for p in $CEPH_DAEMON_PACKAGES $CEPH_CLIENT_PACKAGES; do packages+=("$p=$PACIFIC_DEB_VERSION"); done
	packages+=(uuid-runtime)
fi
if [[ ${1:-} == e2e ]]; then
	# The e2e's node runs these on the host; the package's service is not
	# started (no systemd here, and the test runs its own containerd).
	packages+=(containerd runc busybox-static)
fi
need=()
for p in "${packages[@]}"; do
	name=${p%%=*}
	want=${p#*=}
	[[ $want == "$p" ]] && want=
	have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
	if [[ $have == "install ok installed"* && ( -z $want || $have == *" $want" ) ]]; then
		continue
	fi
	need+=("$p")
done
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# The daemons' postinst scripts must not try to start services.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
