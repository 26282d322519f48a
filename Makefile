# mesh: an encrypted mesh overlay network for containers.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin

.PHONY: all build test lint demo bench soak deps clean

all: build

# The daemon and CLI, and the CNI plugin the daemon installs from its own
# directory: a user's build and the tests' build are this same target.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh ./cmd/mesh
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh-cni ./cmd/mesh-cni

deps:
	./scripts/deps.sh

# Unit tests and the simulated-host tests (these need root; under CI=true a
# missing capability fails instead of skipping).
test: deps lint
	$(GO) test -count=1 -timeout 20m ./...
	./scripts/fuzz.sh

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# A small mesh of simulated hosts on this machine, status printed, torn down.
demo: deps
	$(GO) test -count=1 -tags demo -run '^TestDemo$$' -v ./internal/demo/

# Side-by-side benchmarks on simulated hosts (needs root; a few minutes):
# CNI ADD+DEL against the reference bridge + host-local plugins, IPAM through
# the control socket and its gossiped state size, iperf3 over the underlay,
# the mesh overlay and a bare wireguard-go pair, and the daemon's memory.
# One table with the ratios at the end; see docs/performance.md. The Go
# micro-benchmarks of the packages run first.
bench: deps
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...
	$(GO) test -tags bench -count=1 -timeout 30m -run '^TestBench$$' -v ./bench/
	$(GO) test -count=1 -run '^TestThroughput$$' -v ./policy/

# The IPAM simulations at length: more peers, steps and seeds than in
# `make test` (print the seed of any failure; replay with -ipam.sim.seed=N),
# then the fault injection on real daemons with a long schedule (replay
# with MESH_FAULT_SEED=N).
soak: deps
	MESH_SOAK=1 $(GO) test -count=1 -timeout 90m -run '^TestSimulation' -v ./ipam/
	MESH_SOAK=1 $(GO) test -count=1 -timeout 60m -run '^TestFaultInjection$$' -v ./e2e/

clean:
	rm -rf $(BIN)

# Container image of mesh and mesh-cni, built
# without Docker: an empty base plus the static binaries in /usr/local/bin.
# Load it with `ctr -n k8s.io images import bin/mesh-image.tar`.
IMAGE ?= localhost/mesh:dev

.PHONY: image e2e-k8s

image: build
	$(GO) run ./tools/mkimage -o $(BIN)/mesh-image.tar -name '$(IMAGE)' \
		-entrypoint '["/usr/local/bin/mesh","launch"]' \
		$(BIN)/mesh $(BIN)/mesh-cni

# Two-node Kubernetes cluster on simulated hosts, mesh installed with
# deploy/kubernetes/mesh.yaml (needs root). The Kubernetes binaries are built
# once from the Go module proxy and cached by version in MESH_E2E_CACHE
# (default /var/cache/mesh-e2e). E2E_K8S_CNI=bridge runs the same cluster and
# pod checks with the reference bridge plugin instead of mesh.
E2E_K8S_CNI ?= mesh

e2e-k8s: deps image
	./scripts/deps.sh k8s
	./e2e/k8s/build.sh
	$(GO) vet -tags e2ek8s ./e2e/k8s/
	MESH_E2E_CNI=$(E2E_K8S_CNI) MESH_E2E_IMAGE='$(IMAGE)' \
		$(GO) test -count=1 -tags e2ek8s -timeout 25m -v -run '^Test(MeshImage|Kubernetes)$$' ./e2e/k8s/
