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

.PHONY: all build deps test unit integration sanity bench demo lint cluster-start cluster-stop cluster-purge clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(GO) build -tags $(TAGS) -ldflags '$(LDFLAGS)' -o $(BINARY) ./cmd/cephcsi

# Every test: unit tests, then the integration tests against the local
# cluster (started on demand), then the conformance and end-to-end suites.
test: deps
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory unit integration sanity && \
	echo "make test: all suites passed in $$(( $$(date +%s) - start )) s"

unit:
	$(GO) vet -tags $(TAGS),integration ./...
	$(GO) test -tags $(TAGS) -count=1 ./...

integration: build
	$(GO) test -tags $(TAGS),integration -count=1 -p 1 -timeout 30m ./...

# csi-sanity against the real binary for RBD and CephFS, on a private cluster
# (_output/ceph-sanity, port 16789) that must be empty afterwards.
sanity: build
	scripts/sanity.sh all

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
