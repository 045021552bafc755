# Build, test and try out the Ceph CSI driver. See README.md.
include build.env

GO        ?= go
TAGS      := $(CEPH_RELEASE)
OUT       := $(CURDIR)/_output
BINARY    := $(OUT)/cephcsi
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/leanceph/cephcsi/internal/server.Version=$(VERSION)
# The test cluster lives here unless CEPHCSI_CLUSTER_DIR says otherwise.
export CEPHCSI_CLUSTER_DIR ?= $(OUT)/ceph

.PHONY: all build deps test unit integration sanity e2e test-kernel bench demo lint cluster-start cluster-stop cluster-purge clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(GO) build -tags $(TAGS) -ldflags '$(LDFLAGS)' -o $(BINARY) ./cmd/cephcsi

# Every test: unit tests, then the integration tests against the local
# cluster (started on demand), then the conformance and end-to-end suites.
test: deps
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory unit integration sanity e2e test-kernel && \
	echo "make test: all suites passed in $$(( $$(date +%s) - start )) s"

unit:
	$(GO) vet -tags $(TAGS),integration ./...
	$(GO) test -tags $(TAGS) -count=1 ./...

integration: build
	$(GO) test -tags $(TAGS),integration -count=1 -p 1 -timeout 30m ./...

# csi-sanity against the real binary for RBD and CephFS, on a private cluster
# (_output/ceph-sanity, port 16789) that must be empty afterwards.
SANITY_SUITES ?= all
sanity: build
	scripts/sanity.sh $(SANITY_SUITES)

# End to end on a local Kubernetes control plane with the real CSI sidecars
# under the RBAC of deploy/, plus the chart checks. The Kubernetes programs are
# built from the Go module proxy once (about 30 minutes cold) and cached in
# ~/.cache/cephcsi-e2e (E2E_CACHE). See e2e/.
e2e: build
	e2e/build-tools.sh
	$(GO) vet -tags $(TAGS),e2e ./e2e/
	$(GO) test -tags $(TAGS),e2e -count=1 -v -timeout 45m ./e2e/

# The node paths that need kernel modules this host lacks (krbd, rbd-nbd,
# the CephFS kernel client), in a QEMU guest running Debian's stock kernel,
# against a private cluster in the network namespace cephcsi-kt. Kernel and
# initramfs are cached in ~/.cache/cephcsi-kernel. See docs/kernel-tests.md.
test-kernel: build
	$(GO) vet -tags $(TAGS),kernel ./e2e/kernel/
	GO=$(GO) scripts/kernel-test.sh

bench: build
	$(GO) test -tags $(TAGS),integration -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./internal/bench/

demo: build
	GO=$(GO) scripts/demo.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet -tags $(TAGS),integration ./...
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run --build-tags $(TAGS),integration ./...

cluster-start:
	scripts/ceph-cluster.sh start $(CEPHCSI_CLUSTER_DIR)
cluster-stop:
	scripts/ceph-cluster.sh stop $(CEPHCSI_CLUSTER_DIR)
cluster-purge:
	scripts/ceph-cluster.sh purge $(CEPHCSI_CLUSTER_DIR)

clean: cluster-purge
	scripts/ceph-cluster.sh purge $(OUT)/ceph-sanity
	rm -rf $(OUT)
