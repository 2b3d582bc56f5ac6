# KafFlow: `make run` starts the broker and the service with a demo config;
# `make test` starts the broker and runs the whole suite against it.

CARGO ?= cargo
include mk/kafka.mk

.PHONY: build run test bench lint fmt clean-data

build:
	$(CARGO) build --release

run: kafka-up
	bash scripts/run-demo.sh

test: kafka-up
	$(CARGO) test --lib --bins --tests -- --test-threads=4

# Figures go to docs/benchmarks.md; see there for the machine and how to read them.
bench: kafka-up
	$(CARGO) bench --bench ingest --bench feed

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-data:
	rm -rf .demo
