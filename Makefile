# KafFlow: `make run` starts the broker and the service with a demo config;
# `make test` starts the broker and runs the whole suite against it.

CARGO ?= cargo
include mk/kafka.mk

.PHONY: build run test chaos fuzz bench lint fmt clean-data ui-deps client-deps

build:
	$(CARGO) build --release

run: kafka-up
	bash scripts/run-demo.sh

# Debian's headless Chromium for tests/ui.rs, which skips without it.
ui-deps:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
	  || echo "ui-deps: could not install chromium; the browser test will report itself skipped"

# Kafka clients that KafFlow did not write, for tests/gateway_clients.rs: Debian's kcat
# (librdkafka 2.0.2) and kafka-python (tests/clients/requirements.txt) in .venv/. A test whose
# client is missing fails under CI=true and reports itself skipped otherwise.
VENV ?= .venv
PYTHON ?= python3
client-deps:
	@command -v kcat >/dev/null || (apt-get update && apt-get install -y kcat) \
	  || echo "client-deps: could not install kcat; its gateway tests will fail under CI, skip otherwise"
	@cmp -s tests/clients/requirements.txt $(VENV)/.requirements 2>/dev/null || ( \
	  ( [ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV) \
	    || (apt-get update && apt-get install -y python3-venv && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)) ) \
	  && $(VENV)/bin/pip install -q --disable-pip-version-check -r tests/clients/requirements.txt \
	  && cp tests/clients/requirements.txt $(VENV)/.requirements ) \
	  || echo "client-deps: could not install the Python client in $(VENV); its gateway tests will fail under CI, skip otherwise"

# The tests and benchmarks run on a broker of their own (own data in .kafka-test/, own ports),
# so nothing they create is seen by `make run`, whose broker is .kafka/ on 9092. The jars are
# fetched once into .kafka/libs and read by both.
TEST_KAFKA_ENV = KAFKA_HOME_DIR=$(CURDIR)/.kafka-test KAFKA_LIBS_DIR=$(CURDIR)/.kafka/libs \
	KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_CONTROLLER_PORT=$(TEST_KAFKA_CONTROLLER_PORT) \
	KAFKA_SASL_PORT=$(TEST_KAFKA_SASL_PORT) KAFKA_BOOTSTRAP=127.0.0.1:$(TEST_KAFKA_PORT)
TEST_KAFKA_PORT ?= 29092
TEST_KAFKA_CONTROLLER_PORT ?= 29093
TEST_KAFKA_SASL_PORT ?= 29094

.PHONY: test-kafka-up test-kafka-down
test-kafka-up:
	$(TEST_KAFKA_ENV) $(KAFKA_SH) up

test-kafka-down:
	$(TEST_KAFKA_ENV) $(KAFKA_SH) down

test: test-kafka-up ui-deps client-deps
	$(TEST_KAFKA_ENV) $(CARGO) test --lib --bins --tests -- --test-threads=4

# The parser property tests (`make test` runs 256 cases of each) with many more cases.
# A failing case is saved under proptest-regressions/ and replayed first from then on.
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --lib -- --test-threads=2 \
	  http:: actors::listener:: config:: record::

# The long chaos run (docs/faults.md): 20 kill -9 of KafFlow, 4 of them with a broker restart,
# on a broker of the test's own. `make test` runs the short form (5 kills).
chaos: test-kafka-up
	$(TEST_KAFKA_ENV) KAFFLOW_CHAOS_KILLS=$${KAFFLOW_CHAOS_KILLS:-20} KAFFLOW_CHAOS_BROKER_RESTARTS=$${KAFFLOW_CHAOS_BROKER_RESTARTS:-4} \
	KAFFLOW_CHAOS_PHASE_MS=$${KAFFLOW_CHAOS_PHASE_MS:-4000} $(CARGO) test --test chaos -- --nocapture

# Figures go to docs/benchmarks.md; see there for the machine and how to read them.
# Each benchmark appends its rows to target/bench-rows.jsonl; `report` prints them as one table
# and writes it into docs/benchmarks.md.
BENCHES ?= ingest feed gateway startup reads http eventlog
# Each benchmark gets a broker of its own on fresh data (.kafka-bench/, own ports), so that no
# figure depends on what the tests or an earlier benchmark left on a broker (thousands of
# partitions and gigabytes of records make the broker's pauses longer). It is stopped after.
BENCH_KAFKA_ENV = KAFKA_HOME_DIR=$(CURDIR)/.kafka-bench KAFKA_LIBS_DIR=$(CURDIR)/.kafka/libs \
	KAFKA_PORT=$(BENCH_KAFKA_PORT) KAFKA_CONTROLLER_PORT=$(BENCH_KAFKA_CONTROLLER_PORT) \
	KAFKA_SASL_PORT=$(BENCH_KAFKA_SASL_PORT) KAFKA_BOOTSTRAP=127.0.0.1:$(BENCH_KAFKA_PORT)
BENCH_KAFKA_PORT ?= 29192
BENCH_KAFKA_CONTROLLER_PORT ?= 29193
BENCH_KAFKA_SASL_PORT ?= 29194

bench:
	rm -f target/bench-rows.jsonl
	$(CARGO) bench --no-run $(foreach b,$(BENCHES),--bench $(b))
	set -e; for b in $(BENCHES); do \
	  $(BENCH_KAFKA_ENV) $(KAFKA_SH) down; rm -rf $(CURDIR)/.kafka-bench/data; \
	  $(BENCH_KAFKA_ENV) $(KAFKA_SH) up; \
	  $(BENCH_KAFKA_ENV) $(CARGO) bench --bench $$b || { $(BENCH_KAFKA_ENV) $(KAFKA_SH) down; exit 1; }; \
	done; \
	$(BENCH_KAFKA_ENV) $(KAFKA_SH) down
	$(CARGO) bench --bench report

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-data:
	rm -rf .demo
