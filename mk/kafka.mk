# Local Apache Kafka broker for development and tests (see scripts/kafka.sh).
# Included from the main Makefile: `include mk/kafka.mk`.
# KAFKA_HOME_DIR, KAFKA_PORT and KAFKA_CONTROLLER_PORT pass through the environment.

KAFKA_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
KAFKA_SH ?= bash $(abspath $(KAFKA_MK_DIR)../scripts/kafka.sh)

.PHONY: kafka-up kafka-down kafka-status kafka-topics

kafka-up:
	$(KAFKA_SH) up

kafka-down:
	$(KAFKA_SH) down

# "not running" is an answer, not a failure of make.
kafka-status:
	@$(KAFKA_SH) status || true

kafka-topics:
	$(KAFKA_SH) topics
