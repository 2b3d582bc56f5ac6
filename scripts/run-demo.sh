#!/usr/bin/env bash
# Starts KafFlow with a demo config: four principals with fresh random tokens, printed below.
# The tokens are kept in .demo/tokens (ignored by git) so a second run reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=.demo
mkdir -p "$demo"
bin=target/release/kafflow
if [ ! -x "$bin" ]; then
  echo "Building KafFlow (release). The first build compiles librdkafka and every dependency"
  echo "from source and takes several minutes; later runs rebuild only what changed."
fi
cargo build --release

# A principal missing from an older tokens file gets its token now; the others keep theirs.
touch "$demo/tokens"
for who in alice carol dave erin; do
  if ! grep -q "^$who=" "$demo/tokens"; then
    printf '%s=%s\n' "$who" "$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$demo/tokens"
  fi
done
# shellcheck disable=SC1091
source "$demo/tokens"

cat >"$demo/kafflow.toml" <<TOML
listen = "127.0.0.1:${KAFFLOW_PORT:-8080}"
ingest_listen = "127.0.0.1:${KAFFLOW_INGEST_PORT:-7070}"
data_dir = "$demo/data"

[kafka]
bootstrap_servers = "127.0.0.1:${KAFKA_PORT:-9092}"

# Kafka clients (kafka-topics.sh, console producer, librdkafka, ...) connect here.
[gateway]
listen = "127.0.0.1:${KAFFLOW_GATEWAY_PORT:-9192}"

[policy]
topic_name_pattern = "^[a-z0-9][a-z0-9._-]*$"
default_partitions = 3
max_partitions = 24
default_replication_factor = 1
max_replication_factor = 1

[[principals]]
name = "alice"
roles = ["producer", "consumer"]
token_sha256 = "$("$bin" hash-token "$alice")"

[[principals]]
name = "carol"
roles = ["admin"]
token_sha256 = "$("$bin" hash-token "$carol")"

[[principals]]
name = "dave"
roles = ["admin"]
token_sha256 = "$("$bin" hash-token "$dave")"

[[principals]]
name = "erin"
roles = ["consumer"]
token_sha256 = "$("$bin" hash-token "$erin")"
TOML

cat <<INFO
KafFlow demo on http://127.0.0.1:${KAFFLOW_PORT:-8080}
  alice (producer, consumer): $alice
  carol (admin):              $carol
  dave  (admin):              $dave   (an admin never decides their own request: carol's go to dave)
  erin  (consumer):           $erin
TCP ingest on tcp://127.0.0.1:${KAFFLOW_INGEST_PORT:-7070}
Kafka clients: bootstrap.servers=127.0.0.1:${KAFFLOW_GATEWAY_PORT:-9192}, SASL/PLAIN, user = name, password = token
Try:
  curl -s -H "Authorization: Bearer $alice" -d '{"topic":"orders","reason":"demo"}' http://127.0.0.1:${KAFFLOW_PORT:-8080}/api/v1/topic-requests
  seq 1 1000 | $bin produce --topic orders --ingest tcp://127.0.0.1:${KAFFLOW_INGEST_PORT:-7070} --server http://127.0.0.1:${KAFFLOW_PORT:-8080} --token $alice
INFO
exec "$bin" serve --config "$demo/kafflow.toml"
