# Comet: the one entry point. `make run` starts the system on embedded defaults; `make test` installs what the
# tests need and runs every lint and test.
SHELL := /bin/bash
CARGO ?= cargo
JOBS ?= $(shell nproc)

.PHONY: run test setup lint fmt check-layering build-tests nextest bench bench-store clean

## run: start Comet on embedded defaults (see README)
run:
	$(CARGO) run --release -p comet-store --bin comet-store -- demo

## setup: install the system packages and tools the tests need (idempotent)
setup:
	@bash scripts/setup.sh

## test: everything CI checks
test: setup lint check-layering nextest

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

check-layering:
	python3 scripts/check-layering.py

nextest:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast --test-threads $(JOBS); \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

## bench: every benchmark; results go to docs/benchmarks.md by hand
bench: bench-store

bench-store:
	$(CARGO) bench -p comet-store --bench append -- $(BENCH_ARGS)

clean:
	$(CARGO) clean
