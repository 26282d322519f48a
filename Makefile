# mesh: an encrypted mesh overlay network for containers.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin

.PHONY: all build test lint demo bench deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mesh ./cmd/mesh

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

bench: deps
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...

clean:
	rm -rf $(BIN)
