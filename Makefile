# Comet: the one entry point. `make run` starts the system on embedded defaults; `make test` installs what the
# tests need and runs every lint and test.
SHELL := /bin/bash
CARGO ?= cargo
JOBS ?= $(shell nproc)
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: run run-nameserver run-broker test setup lint fmt check-layering check-deploy check-image k8s-manifests nextest bench bench-store bench-nameserver bench-remoting bench-broker bench-ha bench-messaging bench-v2 bench-ab fuzz-remoting clean

## run: Comet on embedded defaults (see README): a store demo in data/demo-store, then a NameServer (memory
## backend) on 127.0.0.1:9876 in the background and a broker on 127.0.0.1:8081 (data in data/broker) in the
## foreground, registered with it, until ctrl-c (which stops both).
BROKER_ADDR ?= 127.0.0.1:8081
NAMESRV_ADDR ?= 127.0.0.1:9876
run:
	$(CARGO) build --release -p comet-store -p comet-nameserver -p comet-broker -p comet
	$(TARGET_DIR)/release/comet-store demo data/demo-store
	@set -euo pipefail; mkdir -p data; \
	COMET_NAMESERVER_LISTEN=$(NAMESRV_ADDR) COMET_METRICS_LISTEN=127.0.0.1:5558 \
		setsid $(TARGET_DIR)/release/comet-nameserver > data/nameserver.out 2> data/nameserver.log & ns=$$!; \
	trap 'kill $$ns 2>/dev/null; wait $$ns 2>/dev/null || true' EXIT; \
	for _ in $$(seq 200); do grep -q listening data/nameserver.out && break; sleep 0.05; done; \
	grep -q listening data/nameserver.out || { cat data/nameserver.log; exit 1; }; \
	echo "NameServer on $(NAMESRV_ADDR) (log: data/nameserver.log); broker on $(BROKER_ADDR) (data: data/broker)."; \
	echo "ctrl-c stops both. In another shell (grpcurl comes with 'make setup'; the README's tour goes on from here):"; \
	echo "  .venv/bin/grpcurl -plaintext -d '{\"topic\":\"demo\",\"queueId\":0,\"messages\":[{\"body\":\"aGVsbG8=\"}]}' $(BROKER_ADDR) comet.v1.Broker/SendMessage"; \
	echo "  .venv/bin/grpcurl -plaintext -d '{\"group\":\"g1\",\"topic\":\"demo\",\"queueId\":0,\"maxWaitMillis\":5000}' $(BROKER_ADDR) comet.v1.Broker/PullMessage"; \
	echo "  $(TARGET_DIR)/release/comet --namesrv $(NAMESRV_ADDR) route demo"; \
	echo "  $(TARGET_DIR)/release/comet --namesrv $(NAMESRV_ADDR) send demo 'hi from comet' --count 3"; \
	echo "  $(TARGET_DIR)/release/comet --namesrv $(NAMESRV_ADDR) consume demo --group tour --from begin --count 4"; \
	echo "  curl -s 127.0.0.1:5557/metrics | grep ^rocketmq_   # broker metrics (NameServer: 127.0.0.1:5558)"; \
	COMET_BROKER_LISTEN=$(BROKER_ADDR) COMET_BROKER_NAMESERVER_ADDRESSES=$(NAMESRV_ADDR) \
		COMET_METRICS_LISTEN=127.0.0.1:5557 $(TARGET_DIR)/release/comet-broker

## run-nameserver: a memory-mode NameServer on 127.0.0.1:9876 (ctrl-c to stop)
run-nameserver:
	COMET_NAMESERVER_LISTEN=$${COMET_NAMESERVER_LISTEN:-127.0.0.1:9876} \
		$(CARGO) run --release -p comet-nameserver --bin comet-nameserver

## run-broker: a single-node broker on 127.0.0.1:8081 with data in data/broker, no NameServer (ctrl-c to stop)
run-broker:
	COMET_BROKER_LISTEN=$${COMET_BROKER_LISTEN:-127.0.0.1:8081} \
		$(CARGO) run --release -p comet-broker --bin comet-broker

## setup: install the system packages and tools the tests need (idempotent)
setup:
	@bash scripts/setup.sh

## test: everything CI checks
test: setup lint check-layering nextest check-deploy

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

check-layering:
	python3 scripts/check-layering.py

## check-deploy: Helm chart (lint, render, strict schema validation, checkov), its configs run by the real binaries,
## the Dockerfile's build context, and k8s/ current with the chart (tools from `make setup`; see the script)
check-deploy:
	@bash scripts/check-deploy.sh

## check-image: build the Dockerfile for real with podman, its two base images assembled here (debootstrap; the
## host's rustup toolchain), and run the image: user, every binary, a NameServer and a broker from it as the chart
## runs them, one message sent and consumed (root; slow: ~8 min the first time, then ~1 min; NOT part of `make test`;
## CHECK_IMAGE_ARGS=--purge also drops the base images and the build cache; see docs/operations.md, "Image")
check-image:
	@bash scripts/check-image.sh $(CHECK_IMAGE_ARGS)

## k8s-manifests: re-render k8s/comet.yaml from helm/comet with its default values
k8s-manifests:
	@bash scripts/check-deploy.sh render

## The system tests run the binaries of three packages, which tests/src/harness/binary.rs builds when stale, with
## this same command (another package set unifies features differently and the harness would build again): built
## here first, no test waits for a build inside its timeouts and no build competes with timed tests.
nextest:
	$(CARGO) build --locked -p comet-nameserver -p comet-broker -p comet --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast --test-threads $(JOBS); \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

## bench: every benchmark; results go to docs/benchmarks.md by hand
bench: bench-store bench-nameserver bench-remoting bench-broker bench-ha bench-messaging bench-v2

bench-store:
	$(CARGO) bench -p comet-store --bench append -- $(BENCH_ARGS)

## bench-remoting: comet-remoting beside a tonic unary echo and raw TCP on loopback, same run (release build;
## env BENCH_SECS, BENCH_ROUNDS, BENCH_FILTER)
bench-remoting:
	$(CARGO) bench -p comet-remoting --bench echo

## fuzz-remoting: the frame decoder's arbitrary-bytes property tests with 200 000 cases each (bounded, stable
## toolchain; a cargo-fuzz target would need nightly)
fuzz-remoting:
	PROPTEST_CASES=$${PROPTEST_CASES:-200000} $(CARGO) test --release -p comet-remoting --lib -- garbage truncat

## bench-nameserver: start a release NameServer on a free port, run `comet bench nameserver` against it, stop it
bench-nameserver:
	$(CARGO) build --release -p comet-nameserver -p comet
	@set -euo pipefail; dir=$$(mktemp -d); \
	COMET_NAMESERVER_LISTEN=127.0.0.1:0 COMET_NAMESERVER_KV_CONFIG_PATH=$$dir/kvConfig.json COMET_LOG_LEVEL=warn \
		COMET_METRICS_LISTEN=127.0.0.1:0 $(TARGET_DIR)/release/comet-nameserver > $$dir/out 2> $$dir/err & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; rm -rf $$dir' EXIT; \
	for _ in $$(seq 200); do grep -q listening $$dir/out && break; sleep 0.05; done; \
	addr=$$(awk '/listening/ {print $$NF}' $$dir/out); \
	test -n "$$addr" || { cat $$dir/err; exit 1; }; \
	echo "NameServer (release, memory backend) on $$addr"; \
	$(TARGET_DIR)/release/comet --namesrv $$addr bench nameserver $(NS_BENCH_ARGS)

## bench-broker: release NameServer + broker (async, then sync flush) and NATS JetStream driven by the same
## `comet bench produce|consume|e2e` workloads in one run; prints a markdown table (BROKER_BENCH_ARGS, e.g.
## --secs 5 --sizes 1024 --skip-nats; see scripts/bench-broker.py)
bench-broker:
	@bash scripts/setup-bench.sh
	$(CARGO) build --release -p comet-nameserver -p comet-broker -p comet
	CARGO_TARGET_DIR=$(TARGET_DIR) python3 scripts/bench-broker.py $(BROKER_BENCH_ARGS)

## bench-ha: one broker group (release build) without a slave, with async and with sync replication, driven by
## the same `comet bench produce` workloads in one run; prints a markdown table (HA_BENCH_ARGS, e.g. --secs 5)
bench-ha:
	$(CARGO) build --release -p comet-nameserver -p comet-broker -p comet
	CARGO_TARGET_DIR=$(TARGET_DIR) python3 scripts/bench-ha.py $(HA_BENCH_ARGS)

## bench-messaging: delayed (scheduled, delivered, lateness) and transactional (send + commit) 1 KiB messages
## beside plain sends, one release broker, one run; prints a markdown table (MSG_BENCH_ARGS, e.g. --secs 5)
bench-messaging:
	$(CARGO) build --release -p comet-nameserver -p comet-broker -p comet
	CARGO_TARGET_DIR=$(TARGET_DIR) python3 scripts/bench-messaging.py $(MSG_BENCH_ARGS)

## bench-v2: the RocketMQ 5 API (`comet bench produce|consume --api v2`: SendMessage, ReceiveMessage + AckMessage as
## an official SDK speaks it) beside native comet.v1 from the same run, one release broker, 1 KiB; prints a markdown
## table with ratios (V2_BENCH_ARGS, e.g. --secs 5 --backlog 100000)
bench-v2:
	$(CARGO) build --release -p comet-nameserver -p comet-broker -p comet
	CARGO_TARGET_DIR=$(TARGET_DIR) python3 scripts/bench-rocketmq-v2.py $(V2_BENCH_ARGS)

## bench-ab: one `comet bench produce` workload against two broker builds, a fresh broker per run, alternating;
## prints throughput and broker CPU per message per run and their medians. AB_ARGS needs --a PATH or --a-rev REV
## (built in a worktree under target/ab), e.g. AB_ARGS="--a-rev HEAD~1 --runs 4 -- --batch 64 --concurrency 8"
bench-ab:
	$(CARGO) build --release -p comet-nameserver -p comet-broker -p comet
	CARGO_TARGET_DIR=$(TARGET_DIR) python3 scripts/bench-ab.py $(AB_ARGS)

clean:
	$(CARGO) clean
