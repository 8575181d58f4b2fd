# Aegis. `make demo` and `make test` do all the set-up on a fresh node.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
CACHE ?= $(or $(AEGIS_CACHE),/var/cache/aegis)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/aegis-cni/aegis/daemon/agent.Version=$(VERSION) -X main.Version=$(VERSION)
CNI_PLUGINS := $(CACHE)/cni-plugins-v1.9.1
# e2e tests find the binaries and peers here.
export AEGIS_BIN := $(BIN)
export AEGIS_CNI_PLUGINS := $(CNI_PLUGINS)

.PHONY: all build deps generate check-generated peers test unit e2e demo bench clean

all: build

deps:
	@./scripts/deps.sh

build:
	@echo "build: aegis-cni aegis-ipam aegisd aegis -> $(BIN)"
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aegis-cni ./plugin
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aegis-ipam ./ipam
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aegisd ./daemon/cmd/aegisd
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aegis ./daemon/cmd/aegis

# The primary plugins the e2e chains run in front of aegis-cni, built once
# into the cache: the CNI reference plugins at the version go.mod pins, and
# the real Azure CNI (azure-vnet v1.7.0) with its CNS stand-in; and the real
# kube-apiserver v1.37.2 with Debian's etcd for the Kubernetes API source;
# and the stock hubble CLI and hubble-relay, which must work against aegisd
# unchanged.
peers:
	@if [ -x $(CNI_PLUGINS)/ptp ] && [ -x $(CNI_PLUGINS)/host-local ]; then \
		echo "peers: CNI reference plugins v1.9.1 cached in $(CNI_PLUGINS)"; \
	else \
		echo "peers: building CNI reference plugins v1.9.1 into $(CNI_PLUGINS)"; \
		mkdir -p $(CNI_PLUGINS) && \
		$(GO) build -o $(CNI_PLUGINS)/ptp github.com/containernetworking/plugins/plugins/main/ptp && \
		$(GO) build -o $(CNI_PLUGINS)/host-local github.com/containernetworking/plugins/plugins/ipam/host-local; \
	fi
	@./scripts/build-azure-vnet.sh
	@AEGIS_KUBECTL=0 ./scripts/build-kube-apiserver.sh
	@./scripts/build-hubble-cli.sh
	@./scripts/build-hubble-relay.sh
	@./scripts/build-coredns.sh

generate:
	cd bpf && BPF_CLANG=clang $(GO) generate ./
	clang -dumpversion | cut -d. -f1 > bpf/CLANG_VERSION

check-generated:
	@./scripts/check-generated.sh

unit:
	$(GO) vet ./...
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: build peers
	$(GO) test -count=1 -p 1 -timeout 20m ./e2e/...

test: deps build peers check-generated
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 25m ./...
	cd e2e/azurecns && $(GO) vet ./... && AZURE_VNET_BIN=$(CACHE)/azure-vnet-v1.7.0/azure-vnet $(GO) test -count=1 ./...

demo: deps build peers
	@./scripts/demo.sh

bench: deps build peers
	$(GO) test -count=1 -run '^$$' -bench Established -benchtime 3000000x ./bpf/
	$(GO) test -count=1 -p 1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./e2e/bench/

clean:
	rm -rf $(BIN)
