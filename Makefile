# mesh: an encrypted mesh overlay network for containers.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin

.PHONY: all build test lint demo bench soak deps clean

all: build

# The daemon and CLI, the CNI plugin the daemon installs from its own
# directory, and the userspace data-plane process it starts from there: a
# user's build and the tests' build are this same target. mesh leaves the
# Kubernetes client out (it would cost an idle daemon ~15 MiB); mesh-kube is
# the same program with it, which `mesh launch --kube` runs in its place.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags mesh_omit_kube -ldflags '$(LDFLAGS)' -o $(BIN)/mesh ./cmd/mesh
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh-kube ./cmd/mesh
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh-dataplane ./cmd/mesh-dataplane
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh-cni ./cmd/mesh-cni

deps:
	./scripts/deps.sh

# Unit tests and the simulated-host tests (these need root; under CI=true a
# missing capability fails instead of skipping).
test: deps lint
	# The e2e package alone takes about 24 minutes on a 2-core machine:
	# the bound leaves room for a slower one (CI's own limit is above it).
	$(GO) test -count=1 -timeout 40m ./...
	./scripts/fuzz.sh

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	# Programs the tests build from testdata, which ./... leaves out.
	$(GO) vet $(addprefix ./,$(wildcard e2e/testdata/*/))
	# The build-tagged suites.
	for tags in bench demo e2ek8s e2ekernel kernelvm; do $(GO) vet -tags $$tags ./... || exit 1; done
	# make build's mesh, without Kubernetes (its tests run in the full build).
	$(GO) build -tags mesh_omit_kube -o /dev/null ./cmd/mesh
	$(GO) mod tidy -diff

# A small mesh of simulated hosts on this machine, status printed, torn down.
demo: deps
	$(GO) test -count=1 -tags demo -run '^TestDemo$$' -v ./internal/demo/

# Side-by-side benchmarks on simulated hosts (needs root; about 30 minutes):
# CNI ADD+DEL against the reference bridge + host-local plugins, IPAM through
# the control socket and its gossiped state size, iperf3 over the underlay,
# the mesh overlay and a bare wireguard-go pair, and the daemon's memory;
# part 10: the policy controller (10,000 pods) and the data plane (1,000
# peers) at scale, the IPAM simulations (gossip bytes up to 5000 peers, which
# need about 16 GiB of memory and 12 minutes, left out where the memory is
# not there) and 20, 50 and 100 real daemons on simulated hosts (docs/scale.md).
# One table with the ratios at the end; see docs/performance.md. The Go
# micro-benchmarks of the packages run first.
bench: deps
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...
	$(GO) test -tags bench -count=1 -timeout 90m -run '^TestBench$$' -v ./bench/
	$(GO) test -count=1 -run '^TestThroughput$$' -v ./policy/

# The IPAM simulations at length: more peers, steps and seeds than in
# `make test` (print the seed of any failure; replay with -ipam.sim.seed=N),
# 50 real memberlist instances on loopback, every figure (docs/scale.md),
# then the fault injection on real daemons with a long schedule (replay
# with MESH_FAULT_SEED=N).
soak: deps
	MESH_SOAK=1 $(GO) test -count=1 -timeout 150m -run '^TestSimulation' -v ./ipam/
	MESH_SOAK=1 $(GO) test -count=1 -timeout 60m -run '^TestScale(GossipBytes|Convergence)$$' -v ./ipam/
	MESH_SOAK=1 $(GO) test -count=1 -timeout 40m -run '^TestScaleMembershipLoopback$$' -v ./mesh/
	MESH_SOAK=1 $(GO) test -count=1 -timeout 60m -run '^(TestFaultInjection|TestConvergence)$$' -v ./e2e/

clean:
	rm -rf $(BIN)

# Container image of mesh, mesh-kube, mesh-cni and mesh-dataplane, built
# without Docker: an empty base plus the static binaries in /usr/local/bin.
# Load it with `ctr -n k8s.io images import bin/mesh-image.tar`.
IMAGE ?= localhost/mesh:dev

.PHONY: image e2e-k8s e2e-ctr

image: build
	$(GO) run ./tools/mkimage -o $(BIN)/mesh-image.tar -name '$(IMAGE)' \
		-entrypoint '["/usr/local/bin/mesh","launch"]' \
		$(BIN)/mesh $(BIN)/mesh-kube $(BIN)/mesh-cni $(BIN)/mesh-dataplane

# Two-node Kubernetes cluster on simulated hosts, mesh installed with
# deploy/kubernetes/mesh.yaml (needs root). The Kubernetes binaries are built
# once from the Go module proxy and cached by version in MESH_E2E_CACHE
# (default /var/cache/mesh-e2e). E2E_K8S_CNI=bridge runs the same cluster and
# pod checks with the reference bridge plugin instead of mesh.
# E2E_K8S_PROXY_MODE=iptables runs kube-proxy in iptables mode instead of
# nftables (also for conformance).
E2E_K8S_CNI ?= mesh
E2E_K8S_PROXY_MODE ?= nftables

e2e-k8s: deps image
	./scripts/deps.sh k8s
	./e2e/k8s/build.sh $(if $(filter mesh,$(E2E_K8S_CNI)),conformance)
	$(GO) vet -tags e2ek8s ./e2e/k8s/
	MESH_E2E_CNI=$(E2E_K8S_CNI) MESH_E2E_IMAGE='$(IMAGE)' MESH_E2E_PROXY_MODE=$(E2E_K8S_PROXY_MODE) \
		$(GO) test -count=1 -tags e2ek8s -timeout 25m -v -run '^Test(MeshImage|Kubernetes)$$' ./e2e/k8s/

# The upstream Kubernetes e2e suite's sig-network [Conformance] specs on the
# same two-node mesh cluster (needs root): e2e.test, agnhost and CoreDNS are
# built from the Go module proxy at the cluster's version and cached in
# MESH_E2E_CACHE; the suite's images are built here and never pulled. Prints
# passed/failed/skipped; the skipped specs are conformanceSkips in
# e2e/k8s/conformance_test.go. See docs/kubernetes.md.
.PHONY: conformance
conformance: deps image
	./scripts/deps.sh k8s
	./e2e/k8s/build.sh conformance
	$(GO) vet -tags e2ek8s ./e2e/k8s/
	MESH_E2E_IMAGE='$(IMAGE)' MESH_E2E_PROXY_MODE=$(E2E_K8S_PROXY_MODE) $(GO) test -count=1 -tags e2ek8s -timeout 100m -v -run '^TestConformance$$' ./e2e/k8s/

# Install for a standalone host (see docs/standalone.md): the binaries, the
# CNI plugin where runtimes look for it (/opt/cni/bin, and a link in
# /usr/lib/cni, the default of Debian's containerd), the systemd unit, the
# settings file (never overwritten) and /etc/mesh (0700) for the password.
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
CNIBINDIR  ?= /opt/cni/bin
CNILIBDIR  ?= /usr/lib/cni
CNICONFDIR ?= /etc/cni/net.d

.PHONY: install uninstall deb

install: build
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/default \
		$(DESTDIR)$(CNIBINDIR) $(DESTDIR)$(CNILIBDIR) $(DESTDIR)$(CNICONFDIR)
	install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/mesh
	install -m 0755 $(BIN)/mesh $(BIN)/mesh-kube $(BIN)/mesh-cni $(BIN)/mesh-dataplane $(DESTDIR)$(BINDIR)/
	install -m 0755 $(BIN)/mesh-cni $(DESTDIR)$(CNIBINDIR)/mesh-cni
	ln -sfn $(CNIBINDIR)/mesh-cni $(DESTDIR)$(CNILIBDIR)/mesh-cni
	sed 's|/usr/local/bin/|$(BINDIR)/|g' deploy/systemd/mesh.service > $(DESTDIR)$(UNITDIR)/mesh.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mesh.service
	[ -e $(DESTDIR)$(SYSCONFDIR)/default/mesh ] || install -m 0644 deploy/systemd/mesh.env $(DESTDIR)$(SYSCONFDIR)/default/mesh

# Removes what install put there, but not /etc/default/mesh, /etc/mesh (the
# password) or the state dir: `mesh reset --state` and rm do that. On the
# real system (no DESTDIR) a running daemon first leaves the mesh
# gracefully (`mesh leave`; a plain stop would be a restart).
uninstall:
	if [ -z "$(DESTDIR)" ] && [ -x $(BINDIR)/mesh ]; then $(BINDIR)/mesh leave || true; fi
	rm -f $(DESTDIR)$(BINDIR)/mesh $(DESTDIR)$(BINDIR)/mesh-kube $(DESTDIR)$(BINDIR)/mesh-cni $(DESTDIR)$(BINDIR)/mesh-dataplane $(DESTDIR)$(UNITDIR)/mesh.service \
		$(DESTDIR)$(CNIBINDIR)/mesh-cni $(DESTDIR)$(CNILIBDIR)/mesh-cni

# Debian package of the same files (nfpm, pinned; fetched through the Go
# module proxy on first use): $(BIN)/mesh_VERSION_ARCH.deb.
NFPM       ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
DEB_ARCH   ?= $(shell $(GO) env GOARCH)
# Debian versions start with a digit: v1.2.3 -> 1.2.3, v1.2.3-4-gabc -> 1.2.3+4+gabc
# (after 1.2.3), a bare commit -> 0.0.0~COMMIT (before any release).
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -e '/^v\{0,1\}[0-9][0-9]*\./!s/^/0.0.0~/' -e 's/^v//' -e 's/-/+/g')

deb: build
	rm -rf $(BIN)/debroot
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(BIN))/debroot PREFIX=/usr BIN=$(BIN)
	sed -e 's|$${MESH_DEBROOT}|$(abspath $(BIN))/debroot|g' -e 's|$${MESH_DEB_ARCH}|$(DEB_ARCH)|g' \
		-e 's|$${MESH_DEB_VERSION}|$(DEB_VERSION)|g' deploy/nfpm.yaml > $(BIN)/nfpm.yaml
	$(NFPM) package --config $(BIN)/nfpm.yaml --packager deb --target $(BIN)/
	rm -rf $(BIN)/debroot $(BIN)/nfpm.yaml

# Busybox containers started with containerd's `ctr run --cni` on two
# simulated hosts running `mesh launch` (needs root, containerd and runc).
e2e-ctr: deps build
	./scripts/deps.sh k8s
	$(GO) test -count=1 -tags e2ek8s -timeout 15m -v -run '^TestCtrRunCNI$$' ./e2e/k8s/

# The kernel WireGuard data plane for real, with userspace peers: a QEMU VM
# with Debian's stock kernel (needs root; KVM where it really boots, plain
# emulation otherwise). The kernel package is cached in MESH_E2E_CACHE
# (default /var/cache/mesh-e2e). See docs/architecture.md, "Kernel data
# plane in a VM".
.PHONY: e2e-kernel
e2e-kernel: deps
	./scripts/deps.sh kernel
	$(GO) vet -tags e2ekernel ./e2e/kernel/
	$(GO) vet -tags kernelvm ./e2e/kernel/vm/
	$(GO) test -count=1 -tags e2ekernel -timeout 50m -v -run '^Test(ProbeNoVM|KernelVM)$$' ./e2e/kernel/
