#!/usr/bin/env bash
# make image: the cephcsi OCI image, built offline (no container engine, no
# registry) from the image root (scripts/build-root.sh image: Debian
# $CEPH_SUITE with the runtime packages of build.env) and _output/cephcsi,
# into _output/cephcsi-image.tar, an OCI image layout in a tar (what
# `skopeo copy oci-archive:...`, `podman load` or `ctr images import` read).
#
#   scripts/build-image.sh
#
# Two layers: the image root, and the binary at /usr/local/bin/cephcsi (the
# entrypoint), so a new binary leaves the big layer as it was. The layout is
# assembled with tar, gzip, sha256sum and jq: every byte of it comes from
# this script. Reproducible for the same root and binary: entries sorted,
# numeric owners, no atime/ctime, fixed mtimes (the root's files get the
# time the root was finished, the binary and the metadata SOURCE_DATE_EPOCH,
# default the commit time of HEAD), gzip without name or time.
#
# The root's layer is the same for the same root, so it is kept (compressed,
# with its digests) inside the root's cache directory and reused: only the
# binary's layer is made again when the binary changes.
#
# Environment: SOURCE_DATE_EPOCH, VERSION (default: what the binary reports),
# BINARY (default _output/cephcsi) and IMAGE (default
# _output/cephcsi-image.tar), e.g. for the e2e's image of an older commit.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=/dev/null
. "$repo/build.env"
out=$repo/_output
binary=${BINARY:-$out/cephcsi}
image=${IMAGE:-$out/cephcsi-image.tar}
work=$image.work
binary_path=/usr/local/bin/cephcsi

log() { echo "build-image: $*" >&2; }
die() {
	log "$*"
	exit 1
}
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

[[ -x $binary ]] || die "no $binary: run make build first"
start=$(now)
t0=$(now)
root=$(scripts/build-root.sh image)
log "image root $root ($(took "$t0"); cold build $(($(stat -c %Y "$root/.cephcsi-root-ready") - $(stat -c %W "$root"))) s)"
version=${VERSION:-$(scripts/in-root "$binary" --version)}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
root_epoch=$(stat -c %Y "$root/.cephcsi-root-ready")
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

rm -rf "$work"
mkdir -p "$work/layout/blobs/sha256"
blobs=$work/layout/blobs/sha256

# Deterministic tar: sorted input, numeric owners, no atime/ctime records.
tar_args=(--format=posix "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"
	--numeric-owner --no-recursion --null)

# add_layer LISTFILE MTIME TAR-OPTIONS... tars the NUL-separated names of
# LISTFILE, compresses it, stores the blob and prints "digest size diff_id".
add_layer() {
	local list=$1 mtime=$2
	shift 2
	local raw=$work/layer.tar
	tar "${tar_args[@]}" --mtime="@$mtime" "$@" -T "$list" -cf "$raw"
	local diff_id
	diff_id=$(sha256sum "$raw" | cut -d' ' -f1)
	gzip -n -6 <"$raw" >"$work/layer.tar.gz"
	rm -f "$raw"
	local digest size
	digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
	size=$(stat -c %s "$work/layer.tar.gz")
	mv "$work/layer.tar.gz" "$blobs/$digest"
	echo "$digest $size $diff_id"
}

# The root's layer leaves out what only building the root needed (its
# marks, the host's resolv.conf, the no-services policy, the Valid-Until
# override), what the runtime provides (the contents of /dev, /proc, /sys,
# /run, /tmp), logs and caches, and, as Debian's slim images do, manuals and
# documentation other than the copyright files.
t0=$(now)
layer_cache=$root/.cephcsi-image-layer
(
	cd "$root"
	find . -mindepth 1 \( \
		-path ./.cephcsi-packages -o -path ./.cephcsi-root-ready -o -path ./.cephcsi-image-layer -o \
		-path ./etc/resolv.conf -o -path ./usr/sbin/policy-rc.d -o \
		-path ./etc/apt/apt.conf.d/99cephcsi-no-valid-until -o \
		-path './dev/*' -o -path './proc/*' -o -path './sys/*' -o -path './run/*' -o -path './tmp/*' -o \
		-path './var/log/*' -o -path './var/cache/apt/*' -o -path './var/lib/apt/lists/*' -o \
		-path './usr/share/man/*' -o -path './usr/share/info/*' -o -path './usr/share/lintian/*' -o \
		-path './usr/share/locale/*' -o \( -path './usr/share/doc/*' ! -name copyright ! -type d \) \
		\) -prune -o -print0 | sed -z 's|^\./||' | LC_ALL=C sort -z
) >"$work/root.list"
# The cached layer is valid for this root as long as it holds the same
# entries (the list is part of the key) and the root was not finished again.
list_key=$( (sha256sum <"$work/root.list" | cut -d' ' -f1; echo "$root_epoch") | sha256sum | cut -c1-16)
if [[ -f $layer_cache/$list_key.meta ]] && read -r base_digest base_size base_diff <"$layer_cache/$list_key.meta" &&
	[[ -f $layer_cache/$list_key.tar.gz && $(stat -c %s "$layer_cache/$list_key.tar.gz") == "$base_size" ]]; then
	cp "$layer_cache/$list_key.tar.gz" "$blobs/$base_digest"
	log "root layer: reused from $layer_cache, $((base_size >> 20)) MiB compressed ($(took "$t0"))"
else
	read -r base_digest base_size base_diff < <(add_layer "$work/root.list" "$root_epoch" -C "$root")
	log "root layer: $(tr -cd '\0' <"$work/root.list" | wc -c) entries, $((base_size >> 20)) MiB compressed ($(took "$t0"))"
	# Kept for the next build; a concurrent build writes the same bytes.
	rm -rf "$layer_cache"
	mkdir -p "$layer_cache"
	cp "$blobs/$base_digest" "$layer_cache/$list_key.tar.gz.tmp.$$"
	mv "$layer_cache/$list_key.tar.gz.tmp.$$" "$layer_cache/$list_key.tar.gz"
	echo "$base_digest $base_size $base_diff" >"$layer_cache/$list_key.meta"
fi

t0=$(now)
printf '%s\0' "$(basename "$binary")" >"$work/bin.list"
read -r bin_digest bin_size bin_diff < <(add_layer "$work/bin.list" "$epoch" -C "$(dirname "$binary")" \
	--transform="s|^$(basename "$binary")\$|${binary_path#/}|" --owner=0 --group=0 --mode=0755)
log "binary layer: $((bin_size >> 20)) MiB compressed ($(took "$t0"))"

# put_json FILE stores a JSON document as a blob and prints "digest size".
put_json() {
	local digest size
	digest=$(sha256sum "$1" | cut -d' ' -f1)
	size=$(stat -c %s "$1")
	mv "$1" "$blobs/$digest"
	echo "$digest $size"
}

packages="$IMAGE_CEPH_PACKAGES (=$CEPH_DEB_VERSION) $IMAGE_PACKAGES"
jq -cn --arg created "$created" --arg entry "$binary_path" --arg version "$version" \
	--arg base "sha256:$base_diff" --arg bin "sha256:$bin_diff" \
	--arg root_by "scripts/build-root.sh image: Debian $CEPH_SUITE, $packages" \
	--arg bin_by "_output/cephcsi at $binary_path" --arg ceph "$CEPH_VERSION" '{
	created: $created, architecture: "amd64", os: "linux",
	config: {
		Entrypoint: [$entry],
		Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
		Labels: {"org.opencontainers.image.title": "cephcsi", "org.opencontainers.image.version": $version,
			"io.leanceph.ceph.version": $ceph}
	},
	rootfs: {type: "layers", diff_ids: [$base, $bin]},
	history: [{created: $created, created_by: $root_by}, {created: $created, created_by: $bin_by}]
}' >"$work/config.json"
read -r config_digest config_size < <(put_json "$work/config.json")

jq -cn --arg config "sha256:$config_digest" --argjson config_size "$config_size" \
	--arg base "sha256:$base_digest" --argjson base_size "$base_size" \
	--arg bin "sha256:$bin_digest" --argjson bin_size "$bin_size" '{
	schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
	config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
	layers: [
		{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $base, size: $base_size},
		{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $bin, size: $bin_size}
	]
}' >"$work/manifest.json"
read -r manifest_digest manifest_size < <(put_json "$work/manifest.json")

# The tag: the version, with what a tag may not hold replaced.
tag=$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"$version" | cut -c1-128)
jq -cn --arg m "sha256:$manifest_digest" --argjson size "$manifest_size" --arg tag "$tag" '{
	schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
	manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $size,
		platform: {architecture: "amd64", os: "linux"},
		annotations: {"org.opencontainers.image.ref.name": $tag, "io.containerd.image.name": ("cephcsi:" + $tag)}}]
}' >"$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"

(cd "$work/layout" && find . -mindepth 1 -print0 | sed -z 's|^\./||' | LC_ALL=C sort -z) >"$work/layout.list"
tar "${tar_args[@]}" --mtime="@$epoch" --owner=0 --group=0 -C "$work/layout" -T "$work/layout.list" -cf "$image.tmp"
mv "$image.tmp" "$image"
rm -rf "$work"
log "$image: $(($(stat -c %s "$image") >> 20)) MiB, manifest sha256:$manifest_digest, tag $tag ($(took "$start"))"
