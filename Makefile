# Everything a newcomer or CI runs. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CLUSTERS ?= 2
# `make test` uses a test bed of its own so that it never stops one you brought up by hand.
TEST_TESTBED_DIR := $(CURDIR)/target/testbed-test
TESTBED := target/debug/testbed
# The shipped proxy-waiter: no std, glibc linked statically, size-optimised (see proxy-waiter/).
WAITER := target/x86_64-unknown-linux-gnu/waiter/proxy-waiter
WAITER_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static -C link-arg=-lgcc_eh -C link-arg=-lgcc
# buildah builds images without a daemon; containerd, runc, the CNI plugins and iproute2 run the
# test bed's real nodes; busybox-static and gcc's static libc make their busybox and pause images.
APT_PACKAGES := buildah busybox-static file containerd runc containernetworking-plugins iproute2 gcc libc6-dev
# Load generator and Go baseline of the webhook benchmark, cached outside the checkout.
OHA_VERSION := 1.16.0
OHA := $(HOME)/.cache/delegate-pods/cargo-tools/oha-$(OHA_VERSION)/bin/oha
GO_WEBHOOK := target/bench-tools/go-webhook
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: prerequisites
prerequisites: ## Install what a fresh machine lacks (Rust components; Go must be present)
	@command -v go >/dev/null || { echo "Go is required (go1.24 or newer) to build the test bed's tools" >&2; exit 1; }
	@command -v cargo >/dev/null || { echo "Rust (rustup) is required" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

.PHONY: packages
packages: ## Install the Debian packages that images and benchmarks use
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

.PHONY: waiter
waiter: ## Build the shipped static proxy-waiter and print its size
	@[ -x $(WAITER) ] || echo "building the static proxy-waiter (first time: about 1 minute) ..."
	@RUSTFLAGS="$(WAITER_RUSTFLAGS)" $(CARGO) build --quiet --locked --profile waiter -p proxy-waiter \
	  --features tiny --target x86_64-unknown-linux-gnu
	@echo "proxy-waiter: $$(stat -c %s $(WAITER)) bytes (static, stripped): $(WAITER)"

.PHONY: images
images: waiter packages ## OCI archives of webhook, delegate-sync, certs and proxy-waiter in target/images/ (buildah, no daemon)
	@e2e/images/build-all.sh $(WAITER)

.PHONY: node-images
node-images: waiter packages ## Images every real node of the test bed imports (pause, busybox, proxy-waiter), in target/images/node/
	@e2e/images/node-images.sh $(WAITER)

.PHONY: tools
tools: ## Build the pinned Kubernetes (kubelet included), etcd, kwok, helm and Argo binaries (cached by version)
	@e2e/tools/build.sh

$(TESTBED): FORCE
	@[ -x $(TESTBED) ] || echo "building the test bed's command (first time: about 4 minutes on 2 cores) ..."
	@$(CARGO) build --quiet -p e2e --bin testbed --bin testbed-gateway

.PHONY: testbed-up
testbed-up: tools node-images $(TESTBED) ## Start CLUSTERS local clusters (default 2) in target/testbed; REAL_NODES per cluster (default: the preset's, 3)
	@$(TESTBED) up --clusters $(CLUSTERS) $(if $(REAL_NODES),--real-nodes $(REAL_NODES))

.PHONY: testbed-down
testbed-down: $(TESTBED) ## Stop the test bed and remove its state
	@$(TESTBED) down

.PHONY: lint
lint: prerequisites ## Formatting and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --profile waiter -p proxy-waiter --features tiny --bin proxy-waiter --locked -- -D warnings

.PHONY: test
test: prerequisites packages lint tools node-images $(TESTBED) ## Everything CI checks: lint, unit and integration tests on a test bed
	@trap 'TESTBED_DIR=$(TEST_TESTBED_DIR) $(TESTBED) down >/dev/null' EXIT; \
	TESTBED_DIR=$(TEST_TESTBED_DIR) $(TESTBED) up --clusters 2 --real-nodes 1; \
	TESTBED_DIR=$(TEST_TESTBED_DIR) $(CARGO) test --workspace --locked --no-fail-fast
	@echo "proxy-waiter process tests against the shipped static binary:"
	PROXY_WAITER_BIN=$(CURDIR)/$(WAITER) $(CARGO) test --locked -p proxy-waiter --test process
	@size=$$(stat -c %s $(WAITER)); [ $$size -le 1048576 ] || { echo "proxy-waiter is $$size bytes, over 1 MiB" >&2; exit 1; }

FAULTS_TESTBED_DIR := $(CURDIR)/target/testbed-faults
FAULTS_TESTS := --test faults_sigkill --test faults_apiserver_restart --test faults_webhook --test least_privilege

.PHONY: faults
faults: tools $(TESTBED) ## Fault injection at the issue's sizes (500 pods, 10 SIGKILLs, 30 s outage); `make test` runs it reduced
	@$(CARGO) build --quiet --locked -p delegate-sync -p certs -p webhook --bins
	@trap 'TESTBED_DIR=$(FAULTS_TESTBED_DIR) $(TESTBED) down >/dev/null' EXIT; \
	TESTBED_DIR=$(FAULTS_TESTBED_DIR) $(TESTBED) up --clusters 2; \
	FAULTS_FULL=1 TESTBED_DIR=$(FAULTS_TESTBED_DIR) $(CARGO) test --locked -p e2e $(FAULTS_TESTS) -- --nocapture

ARGO_TESTBED_DIR := $(CURDIR)/target/testbed-argo

.PHONY: argo-examples
argo-examples: tools node-images $(TESTBED) ## Argo's examples at home and through proxies, the whole list on Argo 3.7 and 4.0 (`make test` runs 4.0's short list)
	@trap 'TESTBED_DIR=$(ARGO_TESTBED_DIR) $(TESTBED) down >/dev/null' EXIT; \
	TESTBED_DIR=$(ARGO_TESTBED_DIR) $(TESTBED) up --clusters 2 --real-nodes 1; \
	ARGO_EXAMPLES_FULL=1 TESTBED_DIR=$(ARGO_TESTBED_DIR) $(CARGO) test --locked -p e2e --test argo_examples -- --nocapture

BENCH_TESTBED_DIR := $(CURDIR)/target/bench-testbed
COMMA := ,

$(OHA):
	$(CARGO) install --quiet --locked oha@$(OHA_VERSION) --root $(HOME)/.cache/delegate-pods/cargo-tools/oha-$(OHA_VERSION)

$(GO_WEBHOOK): FORCE
	@mkdir -p $(dir $(GO_WEBHOOK))
	@cd e2e/bench/go-webhook && CGO_ENABLED=0 go build -trimpath -o $(CURDIR)/$(GO_WEBHOOK) .

.PHONY: bench
bench: tools node-images $(TESTBED) waiter packages $(OHA) $(GO_WEBHOOK) ## Benchmarks; results in target/bench/summary.md (BENCH_QUICK=1: shorter)
	@$(CARGO) build --quiet --locked --release -p webhook -p certs --bins --examples
	@rm -f target/bench/*.json
	@e2e/bench/testbed-startup.sh
	@e2e/bench/waiter_footprint.py
	@OHA=$(OHA) GO_WEBHOOK=$(GO_WEBHOOK) e2e/bench/webhook_load.py
	@# The binary alone first: the examples' dev-dependencies (kube's `ws`) must not be in it.
	@$(CARGO) build --quiet --locked --release -p delegate-sync --bins
	@$(CARGO) build --quiet --locked --release -p delegate-sync --examples
	@trap 'TESTBED_DIR=$(BENCH_TESTBED_DIR) $(TESTBED) down >/dev/null' EXIT; \
	TESTBED_DIR=$(BENCH_TESTBED_DIR) $(TESTBED) up --clusters 3 --preset e2e/testbed/presets/bench.json >/dev/null && \
	target/release/examples/propagation --testbed-dir $(BENCH_TESTBED_DIR) \
	  --counts $(if $(filter 1,$(BENCH_QUICK)),1$(COMMA)100$(COMMA)1000,1$(COMMA)100$(COMMA)1000$(COMMA)10000) \
	  --unrelated $(if $(filter 1,$(BENCH_QUICK)),2000,20000) --webhook target/release/webhook && \
	echo "last hop on real nodes, downward API and exec fast path in alternating rounds:" && \
	target/release/examples/last_hop --testbed-dir $(BENCH_TESTBED_DIR) \
	  --pods $(if $(filter 1,$(BENCH_QUICK)),20,100) && \
	echo "log relay on real nodes: latency, then one stream and 50 at once:" && \
	target/release/examples/log_relay --testbed-dir $(BENCH_TESTBED_DIR) \
	  --pods 20 --streams $(if $(filter 1,$(BENCH_QUICK)),10,50)
	@e2e/bench/summary.py

CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(HOME)/.cache/delegate-pods/cargo-tools/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
FUZZ_INPUTS ?= 1000000
FUZZ_TARGETS := webhook manifest result downward

$(CARGO_FUZZ):
	$(CARGO) install --quiet --locked cargo-fuzz@$(CARGO_FUZZ_VERSION) --root $(HOME)/.cache/delegate-pods/cargo-tools/cargo-fuzz-$(CARGO_FUZZ_VERSION)

.PHONY: fuzz
fuzz: $(CARGO_FUZZ) ## Fuzz the webhook and the contract's decoders: FUZZ_INPUTS (1000000) per target, libFuzzer then the seeded runner
	@$(CARGO) build --quiet --locked --release -p fuzz
	@rm -rf target/fuzz/corpus && target/release/fuzz seeds target/fuzz/corpus
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz/artifacts/$$t; \
	  $(CARGO_FUZZ) fuzz run --fuzz-dir fuzz/libfuzzer --target-dir target/libfuzzer --sanitizer none $$t target/fuzz/corpus/$$t -- \
	    -runs=$(FUZZ_INPUTS) -max_len=524288 -seed=1 -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=target/fuzz/artifacts/$$t/ > target/fuzz/libfuzzer-$$t.log 2>&1 \
	    || { tail -40 target/fuzz/libfuzzer-$$t.log >&2; exit 1; }; \
	  echo "libFuzzer $$t: $$(grep -E '^Done' target/fuzz/libfuzzer-$$t.log), $$(grep -oE 'cov: [0-9]+ ft: [0-9]+' target/fuzz/libfuzzer-$$t.log | tail -1)"; \
	done
	@target/release/fuzz run --inputs $(FUZZ_INPUTS) --seed 1

.PHONY: demo
demo: testbed-up ## The blog's scenarios A and B on the local clusters (KEEP=1 leaves everything up)
	@if [ "$(KEEP)" != 1 ]; then trap 'echo; $(TESTBED) down; echo "(make demo KEEP=1 leaves everything up)"' EXIT; fi; \
	echo "building webhook, delegate-sync, certs and the demo (debug) ..."; \
	$(CARGO) build --quiet --locked -p webhook -p delegate-sync -p certs --bins; \
	$(CARGO) build --quiet --locked -p e2e --bin demo; \
	target/debug/demo $(if $(filter 1,$(KEEP)),--keep)

.PHONY: FORCE
FORCE:
