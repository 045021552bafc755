#!/usr/bin/env bash
# Builds the programs the end-to-end test runs, from the Go module proxy, at
# the versions pinned in build.env:
#
#   e2e/build-tools.sh          build whatever is missing from the cache
#   e2e/build-tools.sh paths    print NAME=PATH for every program (and the
#                               snapshot CRD directory as snapshot-crds=DIR)
#
# Most of these modules carry replace directives in their go.mod, which
# `go install pkg@version` refuses. So each one is built from a small wrapper
# module that requires it and repeats its replaces that point at other module
# versions; replaces that point into the module's own tree (Kubernetes'
# staging/, etcd's sibling modules) become plain requirements of the published
# modules at the matching version.
#
# Binaries land in $E2E_CACHE/bin/NAME-VERSION (default
# ~/.cache/cephcsi-e2e), outside the work tree so that a fresh clone on the
# same machine (as CI uses) finds them. A cold build takes about 30 minutes on
# two cores; a warm one, seconds.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../build.env
source "$root/build.env"

cache=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cephcsi-e2e}
bindir=$cache/bin
srcdir=$cache/src
mkdir -p "$bindir" "$srcdir"

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
export PATH="$PATH:/usr/local/go/bin"

k8s_minor=${KUBERNETES_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
# What kubectl and the API server compare: without these the binaries report
# v0.0.0 and kubectl refuses to talk to them.
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor
 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitTreeState=clean"

kubelet_minor=${KUBELET_VERSION#v1.}
kubelet_minor=${kubelet_minor%%.*}
kubelet_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBELET_VERSION
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kubelet_minor
 -X k8s.io/component-base/version.gitTreeState=clean"

# name|module|version|package|version for in-tree replaces|extra ldflags
tools=(
	"etcd|go.etcd.io/etcd/server/v3|$ETCD_VERSION|go.etcd.io/etcd/server/v3|$ETCD_VERSION|"
	"kube-apiserver|k8s.io/kubernetes|$KUBERNETES_VERSION|k8s.io/kubernetes/cmd/kube-apiserver|v0.${KUBERNETES_VERSION#v1.}|$k8s_ldflags"
	"kube-controller-manager|k8s.io/kubernetes|$KUBERNETES_VERSION|k8s.io/kubernetes/cmd/kube-controller-manager|v0.${KUBERNETES_VERSION#v1.}|$k8s_ldflags"
	"kubectl|k8s.io/kubernetes|$KUBERNETES_VERSION|k8s.io/kubernetes/cmd/kubectl|v0.${KUBERNETES_VERSION#v1.}|$k8s_ldflags"
	"kubelet|k8s.io/kubernetes|$KUBELET_VERSION|k8s.io/kubernetes/cmd/kubelet|v0.${KUBELET_VERSION#v1.}|$kubelet_ldflags"
	"helm|helm.sh/helm/v3|$HELM_VERSION|helm.sh/helm/v3/cmd/helm||-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	"csi-provisioner|github.com/kubernetes-csi/external-provisioner/v6|$CSI_PROVISIONER_VERSION|github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner|$CSI_PROVISIONER_VERSION|-X main.version=$CSI_PROVISIONER_VERSION"
	"csi-attacher|github.com/kubernetes-csi/external-attacher/v4|$CSI_ATTACHER_VERSION|github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher|$CSI_ATTACHER_VERSION|-X main.version=$CSI_ATTACHER_VERSION"
	"csi-resizer|github.com/kubernetes-csi/external-resizer/v2|$CSI_RESIZER_VERSION|github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer|$CSI_RESIZER_VERSION|-X main.version=$CSI_RESIZER_VERSION"
	"csi-snapshotter|github.com/kubernetes-csi/external-snapshotter/v8|$CSI_SNAPSHOTTER_VERSION|github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter|$CSI_SNAPSHOTTER_VERSION|-X main.version=$CSI_SNAPSHOTTER_VERSION"
	"snapshot-controller|github.com/kubernetes-csi/external-snapshotter/v8|$CSI_SNAPSHOTTER_VERSION|github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller|$CSI_SNAPSHOTTER_VERSION|-X main.version=$CSI_SNAPSHOTTER_VERSION"
	"csi-addons-manager|github.com/csi-addons/kubernetes-csi-addons|$CSI_ADDONS_VERSION|github.com/csi-addons/kubernetes-csi-addons/cmd/manager|$CSI_ADDONS_VERSION|-X github.com/csi-addons/kubernetes-csi-addons/internal/version.Version=$CSI_ADDONS_VERSION"
	"csi-addons-sidecar|github.com/csi-addons/kubernetes-csi-addons|$CSI_ADDONS_VERSION|github.com/csi-addons/kubernetes-csi-addons/sidecar|$CSI_ADDONS_VERSION|-X github.com/csi-addons/kubernetes-csi-addons/internal/version.Version=$CSI_ADDONS_VERSION"
)

log() { echo "build-tools: $*" >&2; }

# mod_info MODULE@VERSION FIELD prints one field of `go mod download -json`.
mod_info() {
	(cd "$srcdir" && go mod download -json "$1") | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

# wrapper MODULE VERSION INTREE_VERSION prepares (once) the wrapper module
# and prints its directory.
wrapper() {
	local module=$1 version=$2 intree=$3
	local dir=$srcdir/${module//\//_}@$version
	if [[ -f "$dir/.ready" ]]; then
		echo "$dir"
		return
	fi
	rm -rf "$dir"
	mkdir -p "$dir"
	local gomod
	gomod=$(mod_info "$module@$version" GoMod)
	[[ -f "$gomod" ]] || { log "cannot fetch $module@$version"; return 1; }
	(
		cd "$dir"
		printf 'module cephcsi-e2e/wrapper\n\ngo %s\n\nrequire %s %s\n' \
			"$(go env GOVERSION | sed 's/^go//')" "$module" "$version" >go.mod
		# One "OLD [VER] => NEW [VER]" per line, from both the single-line
		# and the block form of replace.
		printed=$(go mod edit -print "$gomod")
		awk <<<"$printed" '
			/^replace \(/ { inblock = 1; next }
			inblock && /^\)/ { inblock = 0; next }
			inblock && /=>/ { print; next }
			/^replace .*=>/ { sub(/^replace /, ""); print }' |
			while read -r line; do
				local old=${line%%=>*} new=${line#*=>}
				read -r -a o <<<"$old"
				read -r -a n <<<"$new"
				case ${n[0]} in
				./* | ../*)
					# In-tree module: its published release at the matching version.
					# Only those the module requires: not every one is published.
					grep -Eq "^(require )?[[:space:]]*${o[0]//./\\.} v" <<<"$printed" || continue
					go mod edit -require="${o[0]}@$intree"
					;;
				*)
					local from=${o[0]}
					[[ ${#o[@]} -gt 1 ]] && from+="@${o[1]}"
					go mod edit -replace="$from=${n[0]}@${n[1]}"
					;;
				esac
			done
	)
	touch "$dir/.ready"
	echo "$dir"
}

build_one() {
	local name=$1 module=$2 version=$3 pkg=$4 intree=$5 ldflags=$6
	local out=$bindir/$name-$version
	[[ -x "$out" ]] && return 0
	local dir start
	start=$(date +%s)
	dir=$(wrapper "$module" "$version" "${intree:-$version}")
	log "building $name $version (from $module)"
	(cd "$dir" && nice go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
	mv "$out.tmp" "$out"
	log "built $name $version in $(($(date +%s) - start)) s"
}

case ${1:-build} in
build)
	start=$(date +%s)
	for t in "${tools[@]}"; do
		IFS='|' read -r name module version pkg intree ldflags <<<"$t"
		build_one "$name" "$module" "$version" "$pkg" "$intree" "$ldflags"
	done
	mod_info "github.com/kubernetes-csi/external-snapshotter/client/v8@$CSI_SNAPSHOTTER_VERSION" Dir >/dev/null
	log "all tools present in $bindir ($(($(date +%s) - start)) s)"
	;;
paths)
	for t in "${tools[@]}"; do
		IFS='|' read -r name module version _ <<<"$t"
		echo "$name=$bindir/$name-$version"
	done
	echo "snapshot-crds=$(mod_info "github.com/kubernetes-csi/external-snapshotter/client/v8@$CSI_SNAPSHOTTER_VERSION" Dir)/config/crd"
	echo "csi-addons-crds=$(mod_info "github.com/csi-addons/kubernetes-csi-addons@$CSI_ADDONS_VERSION" Dir)/config/crd/bases"
	;;
*)
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
