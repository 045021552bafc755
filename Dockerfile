# The cephcsi image: one binary, /usr/local/bin/cephcsi, run with flags by
# the manifests in deploy/ and the charts in charts/ (and by Rook).
#
#   docker build -t cephcsi:dev .
#
# Both stages use Debian bookworm, whose Ceph (16.2.15, Pacific) is what the
# binary is built against (go-ceph build tag "pacific"), so the libraries the
# builder links with are the ones the runtime image ships.

ARG GO_VERSION=1.26.8
ARG BASE_IMAGE=debian:bookworm-slim

FROM golang:${GO_VERSION}-bookworm AS build
RUN apt-get update \
	&& apt-get install -y --no-install-recommends librados-dev librbd-dev libcephfs-dev \
	&& rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY internal/ internal/
ARG CEPH_RELEASE=pacific
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -tags "${CEPH_RELEASE}" -trimpath \
	-ldflags "-X github.com/leanceph/cephcsi/internal/server.Version=${VERSION}" \
	-o /out/cephcsi ./cmd/cephcsi

FROM ${BASE_IMAGE}
# Client libraries the binary links with, and the tools the node service
# runs: ceph-fuse and the kernel client helpers (ceph-common), rbd-nbd and
# rbd-fuse, mkfs/resize for ext4 and xfs, losetup/mount (util-linux), modprobe.
RUN apt-get update \
	&& apt-get install -y --no-install-recommends \
		librados2 librbd1 libcephfs2 ceph-common ceph-fuse rbd-nbd rbd-fuse \
		e2fsprogs xfsprogs util-linux kmod fuse3 ca-certificates \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cephcsi /usr/local/bin/cephcsi
ENTRYPOINT ["/usr/local/bin/cephcsi"]
