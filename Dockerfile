# The cephcsi image: one binary, /usr/local/bin/cephcsi, run with flags by
# the manifests in deploy/ and the charts in charts/ (and by Rook).
#
#   docker build -t cephcsi:dev .
#
# The same image as `make image` (scripts/build-image.sh), which builds it
# offline from the project's image root: Debian sid with the Ceph client
# packages pinned to the version the binary is built against, and the node
# tools. The ARG defaults are build.env's pins (e2e/dockerfile_test.go checks
# that they agree). The builder starts from the same base and installs the
# same Ceph version's -dev packages, so the libraries the binary links with
# are the ones the image ships; only the Go toolchain comes from the golang
# image.

ARG GO_VERSION=1.26.8
ARG BASE_IMAGE=debian:sid-slim

FROM golang:${GO_VERSION} AS go

FROM ${BASE_IMAGE} AS build
ARG CEPH_DEB_VERSION=20.2.4+ds-2
ARG CEPH_DEV_PACKAGES="librados-dev librbd-dev libcephfs-dev"
# Valid-Until is not checked: a sid mirror's Release file can be past it
# (as scripts/build-root.sh does).
RUN pkgs=; for p in ${CEPH_DEV_PACKAGES}; do pkgs="$pkgs $p=${CEPH_DEB_VERSION}"; done \
	&& apt-get -o Acquire::Check-Valid-Until=false update \
	&& apt-get install -y --no-install-recommends $pkgs gcc libc6-dev pkg-config ca-certificates \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY internal/ internal/
ARG GO_CEPH_TAGS=
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -tags "${GO_CEPH_TAGS}" -trimpath \
	-ldflags "-X github.com/leanceph/cephcsi/internal/server.Version=${VERSION}" \
	-o /out/cephcsi ./cmd/cephcsi

FROM ${BASE_IMAGE}
ARG CEPH_DEB_VERSION=20.2.4+ds-2
# The Ceph client libraries the binary links with and the tools the node
# service runs (ceph-fuse and mount.ceph, rbd, rbd-nbd; the rbd-fuse mapper
# is the binary itself), pinned; mkfs/resize for ext4 and xfs, losetup/blkid,
# mount, modprobe, fusermount3, cryptsetup for LUKS-encrypted volumes, and
# logrotate for the operator's log rotator.
ARG IMAGE_CEPH_PACKAGES="ceph-common ceph-fuse rbd-nbd librados2 librbd1 libcephfs2"
ARG IMAGE_PACKAGES="e2fsprogs xfsprogs util-linux mount kmod fuse3 cryptsetup-bin ca-certificates logrotate"
RUN pkgs=; for p in ${IMAGE_CEPH_PACKAGES}; do pkgs="$pkgs $p=${CEPH_DEB_VERSION}"; done \
	&& apt-get -o Acquire::Check-Valid-Until=false update \
	&& apt-get install -y --no-install-recommends $pkgs ${IMAGE_PACKAGES} \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cephcsi /usr/local/bin/cephcsi
ENTRYPOINT ["/usr/local/bin/cephcsi"]
