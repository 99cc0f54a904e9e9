# Weft. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang
MULTIARCH := $(shell gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
# Used by bpf2go (see bpf/gen.go); set once here.
export BPF2GO_CC := $(CLANG)
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/$(MULTIARCH)
BIN := bin
GOTEST_FLAGS ?= -count=1
FUZZTIME ?= 30s
# fuzz-long: executions per target; two targets make >= 10 million in total.
FUZZ_LONG_EXECS ?= 5000000

# Debian packages a fresh machine with Go lacks; installed only when missing.
DEPS_BUILD := clang llvm libbpf-dev
DEPS_TEST := iproute2 iperf3 ethtool bpftool iputils-ping procps util-linux nftables iptables
DEPS_BENCH := sockperf
# make profile: perf record (Debian ships perf in linux-perf).
DEPS_PROFILE := linux-perf
# make profile: one data plane and metric, on one underlay.
PROFILE ?= weft-tc:tcp_1_gbps
PROFILE_CONFIG ?= wire
# nft goes into the image (weftd --ip-masq runs it); TestImage builds the image.
DEPS_IMAGE := nftables

.PHONY: help deps deps-build generate build test fuzz bench profile demo demo-kube lab-up lab-down install-cni lint clean check-generate kube-bins image fuzz-long

help: ## show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

deps-build: ## install clang/llvm/libbpf-dev if missing (needs root)
	@./.ci/ensure-deps.sh $(DEPS_BUILD)

deps: ## install everything the tests and the lab need, if missing (needs root)
	@./.ci/ensure-deps.sh $(DEPS_BUILD) $(DEPS_TEST) $(DEPS_IMAGE)

# Packages with a //go:generate bpf2go line: the data plane and the benchmark's collect_md comparison.
BPF_GEN_DIRS := bpf test/cluster/collectmd

generate: deps-build ## rebuild the BPF objects and Go bindings with bpf2go
	for d in $(BPF_GEN_DIRS); do (cd $$d && $(GO) generate .) || exit 1; done

check-generate: generate ## fail if the committed BPF objects are stale
	git diff --exit-code -- $(BPF_GEN_DIRS) || { echo "generated BPF files are stale: run make generate and commit"; exit 1; }

build: ## build weftd, weftctl, weft-cni, weft-install-cni and weft-lab into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# The real kube-apiserver and kube-proxy (test/kubetest): built from the
# pinned k8s.io/kubernetes release once per machine (~4 min cold) into
# /var/cache/weft/kube-<version>, or $$WEFT_KUBE_BIN_DIR; instant afterwards.
kube-bins: ## build, once per machine, the kube-apiserver and kube-proxy the Kubernetes tests run
	GO=$(GO) $(GO) run ./test/kubetest/kubebins

test: deps build kube-bins ## run every test, including the privileged end-to-end ones (needs root)
	$(GO) vet ./...
	$(GO) test $(GOTEST_FLAGS) -timeout 40m ./...
	$(MAKE) fuzz

demo: deps build ## run the lab demo: a mixed Weft/flannel cluster in namespaces, proven and torn down (needs root)
	./$(BIN)/weft-lab demo --bin-dir $(BIN)

demo-ipv6: deps build ## the demo with dual-stack pods over a dual-stack underlay: a ping matrix per family, a transfer over each (needs root)
	./$(BIN)/weft-lab demo --ipv6 --bin-dir $(BIN)

demo-kube: deps build kube-bins ## the demo with Node objects on a real kube-apiserver (weftd --kube-subnet-mgr) instead of etcd (needs root)
	./$(BIN)/weft-lab demo --store=kube --bin-dir $(BIN)

lab-up: deps build ## build a lab cluster and keep it running until Ctrl-C (weft-lab status / down from another shell)
	./$(BIN)/weft-lab up --bin-dir $(BIN)

lab-down: ## remove what the last lab run made, also after a crash
	./$(BIN)/weft-lab down

bench: deps build kube-bins ## data planes side by side and the control plane at 100 to 50,000 nodes, etcd and kube stores (test/bench/out; needs root)
	@./.ci/ensure-deps.sh $(DEPS_BENCH)
	$(GO) run ./test/bench $(BENCH_FLAGS)
	$(GO) run ./test/bench/scale --bin-dir $(BIN) $(SCALE_FLAGS)

profile: deps ## perf record -a -g and BPF run times over one measured window: PROFILE=weft-tc:tcp_1_gbps PROFILE_CONFIG=wire (test/bench/out; needs root)
	@./.ci/ensure-deps.sh $(DEPS_BENCH) $(DEPS_PROFILE)
	$(GO) run ./test/bench --only $(PROFILE) --config $(PROFILE_CONFIG) --bpf-stats \
		--perf test/bench/out/perf-$(subst :,-,$(PROFILE))-$(PROFILE_CONFIG).data $(BENCH_FLAGS)

IMAGE ?= $(BIN)/weft-image.tar
image: ## write the container image (static binaries + nft, no Docker needed) to $(IMAGE): docker load -i / ctr images import
	@./.ci/ensure-deps.sh $(DEPS_IMAGE)
	GO=$(GO) $(GO) run ./deploy/image --out $(IMAGE) $(if $(IMAGE_VERSION),--version $(IMAGE_VERSION))

fuzz: ## run the decap and encap fuzz targets for $(FUZZTIME) each (CI's short run)
	$(GO) test -run '^$$' -fuzz '^FuzzDecap$$' -fuzztime $(FUZZTIME) ./bpf/
	$(GO) test -run '^$$' -fuzz '^FuzzEncap$$' -fuzztime $(FUZZTIME) ./bpf/

fuzz-long: ## run each fuzz target for $(FUZZ_LONG_EXECS) executions (>= 10 million in total); prints executions and findings (needs root)
	./.ci/fuzz-long.sh $(FUZZ_LONG_EXECS) FuzzDecap FuzzEncap

CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
install-cni: ## build weft-cni, install it to $(CNI_BIN_DIR) and its conflist to $(CNI_CONF_DIR) (needs root)
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/weft-cni ./cmd/weft-cni
	install -D -m 0755 $(BIN)/weft-cni $(CNI_BIN_DIR)/weft-cni
	install -D -m 0644 cmd/weft-cni/10-weft.conflist $(CNI_CONF_DIR)/10-weft.conflist

lint: ## go vet and gofmt
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

clean: ## remove build output
	rm -rf $(BIN) test/bench/out
