# Build, test and try out the Ceph CSI driver. See README.md.
#
# The host is Debian 12; the driver is built and tested against the Ceph
# release of build.env inside the project's root filesystem
# (scripts/build-root.sh), entered through scripts/in-root.
include build.env

GO        ?= go
IN_ROOT   := scripts/in-root
OUT       := $(CURDIR)/_output
BINARY    := $(OUT)/cephcsi
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/leanceph/cephcsi/internal/server.Version=$(VERSION)
# Build tags: go-ceph's default API set is Tentacle's, so none is needed for
# the Ceph release; the test kinds add theirs.
comma     := ,
tags       = $(subst $(eval) ,$(comma),$(strip $(GO_CEPH_TAGS) $(1)))
# The test cluster lives here unless CEPHCSI_CLUSTER_DIR says otherwise.
export CEPHCSI_CLUSTER_DIR ?= $(OUT)/ceph

.PHONY: all build root deps test unit fuzz integration sanity e2e test-kernel test-compat test-faults image bench demo lint \
	cluster-start cluster-stop cluster-purge clean

all: build

# Host packages the scripts need (debootstrap, qemu for the kernel guest...).
deps:
	@scripts/install-deps.sh

# The Ceph root (built once, cached in ~/.cache/cephcsi-root).
root: deps
	@scripts/build-root.sh dev >/dev/null

build: root
	$(IN_ROOT) $(GO) build -tags '$(call tags)' -ldflags '$(LDFLAGS)' -o $(BINARY) ./cmd/cephcsi

# Every test, each suite timed: unit tests, the integration tests against the
# local cluster (started on demand), then the conformance, compatibility,
# fault, end-to-end and kernel suites. The suites that mostly wait on
# clusters come before the e2e: on a cold machine they overlap the niced
# background build of the Kubernetes programs, which the CPU-heavy ones would
# slow. "a+b" runs a and b side by side (scripts/run-suites.sh): fuzzing
# (niced, for a fixed time) next to the image build.
SUITES ?= unit lint integration sanity test-compat test-faults e2e test-kernel fuzz+image
test: deps
	@scripts/run-suites.sh $(SUITES)

unit: root
	$(IN_ROOT) $(GO) vet -tags '$(call tags,integration)' ./...
	$(IN_ROOT) $(GO) test -tags '$(call tags)' -count=1 ./...

# Every go test -fuzz target (one per run, as go test wants) for FUZZTIME
# each, timed; the seed corpora in testdata/fuzz/ run first. A failing
# input is left in the package's testdata/fuzz/<target>/. See scripts/fuzz.sh.
FUZZTIME ?= 10s
FUZZMINIMIZETIME ?= 1s
fuzz: root
	$(IN_ROOT) nice -n 10 env GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZMINIMIZETIME=$(FUZZMINIMIZETIME) TAGS='$(call tags)' scripts/fuzz.sh

integration: build
	$(IN_ROOT) $(GO) test -tags '$(call tags,integration)' -count=1 -p 1 -timeout 30m ./...

# csi-sanity against the real binary for RBD and CephFS, on a private cluster
# (_output/ceph-sanity, port 16789) that must be empty afterwards.
SANITY_SUITES ?= all
sanity: build
	$(IN_ROOT) scripts/sanity.sh $(SANITY_SUITES)

# End to end on a local Kubernetes control plane with the real CSI sidecars
# under the RBAC of deploy/, a node (containerd and a kubelet on the host, the
# node plugins in the Ceph root) running pods on the volumes, plus the chart
# checks (docs/e2e.md). The Kubernetes programs are
# built from the Go module proxy once (about 30 minutes cold) and cached in
# ~/.cache/cephcsi-e2e (E2E_CACHE). The driver also runs as users deploy
# it: our image (scripts/build-image.sh) and the CSI sidecars in pods, from
# the charts and from deploy/ (docs/install.md). See e2e/. E2E_RUN, when
# set, is go test's -run (e.g. make e2e E2E_RUN='^TestHelm').
# The upgrade test starts from the image of E2E_UPGRADE_FROM (the merge of
# the Helm install work; same build.env as now), built into
# _output/upgrade-from once per commit (needs that commit in the clone).
E2E_UPGRADE_FROM ?= 7e9881a9130359423304dc8e20ade8e348f20673
e2e: build
	@scripts/install-deps.sh e2e
	e2e/build-tools.sh
	scripts/build-image.sh
	TAGS='$(call tags)' scripts/build-upgrade-image.sh $(E2E_UPGRADE_FROM)
	$(IN_ROOT) $(GO) vet -tags '$(call tags,e2e)' ./e2e/
	$(IN_ROOT) $(GO) test -tags '$(call tags,e2e)' -count=1 -v -timeout 45m $(if $(E2E_RUN),-run '$(E2E_RUN)') ./e2e/

# The node paths that need kernel modules this host lacks (krbd, rbd-nbd,
# the CephFS kernel client), in a QEMU guest running a Debian kernel, against
# a private cluster in the network namespace cephcsi-kt. Kernel and initramfs
# are cached in ~/.cache/cephcsi-kernel. See docs/kernel-tests.md.
test-kernel: build
	$(IN_ROOT) $(GO) vet -tags '$(call tags,kernel)' ./e2e/kernel/
	GO=$(GO) scripts/kernel-test.sh

# The same binary against clusters of older releases (Reef from its own
# root, Pacific from the host's packages). See docs/compat.md.
test-compat: build
	$(IN_ROOT) $(GO) vet -tags '$(call tags,compat)' ./e2e/compat/
	GO=$(GO) scripts/compat-test.sh

# Faults under the real binary: a cluster of three monitors and three OSDs,
# each daemon in a network namespace of its own on a test bridge
# (scripts/ceph-faults.sh, 10.98.0.0/24), loses a monitor, one and two OSDs,
# the node's link, all of itself (a restart) and its monitors' addresses.
# Prints each fault's timings and checks that nothing is left. See
# docs/faults.md.
test-faults: root
	$(IN_ROOT) $(GO) vet -tags '$(call tags,faults)' ./internal/faulttest/
	$(IN_ROOT) $(GO) test -tags '$(call tags,faults)' -count=1 -v -timeout 40m ./internal/faulttest/

# The OCI image, built offline into _output/cephcsi-image.tar, then unpacked
# and checked (e2e/image_test.go: the layout, the Dockerfile's entrypoint,
# binary path and packages, cephcsi/rbd/ceph-fuse --version chrooted in it).
image: build
	scripts/build-image.sh
	$(IN_ROOT) $(GO) vet -tags '$(call tags,image)' ./e2e/
	$(IN_ROOT) $(GO) test -tags '$(call tags,image)' -count=1 -v -run '^(TestImage|TestDockerfileMatchesTree)$$' ./e2e/

bench: build
	$(IN_ROOT) $(GO) test -tags '$(call tags,integration)' -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./internal/bench/

demo: build
	$(IN_ROOT) env GO=$(GO) scripts/demo.sh

lint: root
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(IN_ROOT) $(GO) vet -tags '$(call tags,integration)' ./...
	$(IN_ROOT) $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run --build-tags '$(call tags,integration)' ./...

cluster-start: root
	$(IN_ROOT) scripts/ceph-cluster.sh start $(CEPHCSI_CLUSTER_DIR)
cluster-stop: root
	$(IN_ROOT) scripts/ceph-cluster.sh stop $(CEPHCSI_CLUSTER_DIR)
cluster-purge: root
	$(IN_ROOT) scripts/ceph-cluster.sh purge $(CEPHCSI_CLUSTER_DIR)

clean: cluster-purge
	$(IN_ROOT) scripts/ceph-cluster.sh purge $(OUT)/ceph-sanity
	rm -rf $(OUT)
