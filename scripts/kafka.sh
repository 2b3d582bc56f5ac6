#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, broker+controller in one JVM)
# for KafFlow development and tests. Everything about the broker lives behind
# this one script, so another Kafka-compatible broker could stand in.
#
#   scripts/kafka.sh up                 start (idempotent) and wait until it answers
#   scripts/kafka.sh down               stop (idempotent); data survives
#   scripts/kafka.sh status             exit 0 if running and answering
#   scripts/kafka.sh topics             list topics
#   scripts/kafka.sh describe TOPIC     describe one topic
#   scripts/kafka.sh create TOPIC [PARTITIONS]
#   scripts/kafka.sh delete TOPIC
#   scripts/kafka.sh bootstrap          print the bootstrap address (host:port)
#   scripts/kafka.sh sasl               print the client settings of the SASL_SSL listener
#                                       (bootstrap=..., then librdkafka properties, one per line)
#   scripts/kafka.sh tool CLASS [ARGS]  run a Kafka CLI main class on the broker's classpath,
#                                       e.g. tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server ...
#
# A second, separate cluster of TWO brokers, for the tests that need partitions led by different
# brokers (one JVM each, reading the same jars; it shares nothing else with the broker above):
#
#   scripts/kafka.sh cluster up         start both nodes on fresh data and wait until both brokers
#                                       are registered (idempotent: a running cluster is kept)
#   scripts/kafka.sh cluster down       stop both nodes and remove their data (idempotent)
#   scripts/kafka.sh cluster status     exit 0 if both brokers are registered
#   scripts/kafka.sh cluster bootstrap  print the bootstrap addresses (host:port,host:port)
#   scripts/kafka.sh cluster describe TOPIC   describe one topic (leader of each partition)
#   scripts/kafka.sh cluster create TOPIC [PARTITIONS]
#
#   Node 1 is broker and KRaft controller, node 2 a broker only; both listen on 127.0.0.1 with
#   PLAINTEXT, and every topic (internal ones too) has one replica.
#
# Environment:
#   KAFKA_HOME_DIR         cache/state folder (default <repo>/.kafka): libs/, data/, logs/, broker.pid
#   KAFKA_LIBS_DIR         where the jars are fetched and read (default $KAFKA_HOME_DIR/libs); point a second
#                          broker instance (own KAFKA_HOME_DIR and ports) at the first one's jars
#   KAFKA_PORT             PLAINTEXT listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1 (default 9093)
#   KAFKA_SASL_PORT        SASL_SSL listener on 127.0.0.1 (default 9094): SCRAM-SHA-512 for the user
#                          KAFKA_SASL_USER (default kafflow) with KAFKA_SASL_PASSWORD (default
#                          kafflow-secret), inside TLS with a self-signed certificate made by keytool
#                          on the first start (its PEM, to trust: $KAFKA_HOME_DIR/tls/ca.pem)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 60)
#   JAVA                   java binary (default: java on PATH)
#   KAFKA_CLUSTER_DIR      the cluster's folder (default $KAFKA_HOME_DIR/cluster): node1/ and node2/
#                          with server.properties, data/, logs/ and the pid file of each node
#   KAFKA_CLUSTER_PORT_1   node 1's PLAINTEXT listener (default 19092)
#   KAFKA_CLUSTER_PORT_2   node 2's PLAINTEXT listener (default 19192)
#   KAFKA_CLUSTER_CONTROLLER_PORT  node 1's controller listener (default 19093)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

KHOME="${KAFKA_HOME_DIR:-$REPO_ROOT/.kafka}"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
SPORT="${KAFKA_SASL_PORT:-9094}"
SASL_USER="${KAFKA_SASL_USER:-kafflow}"
SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-kafflow-secret}"
HOST=127.0.0.1
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"
JAVA="${JAVA:-java}"

die() { echo "kafka: error: $*" >&2; exit 1; }
say() { echo "kafka: $*"; }

case "$PORT$CPORT$SPORT" in *[!0-9]*) die "KAFKA_PORT, KAFKA_CONTROLLER_PORT and KAFKA_SASL_PORT must be numbers";; esac
[ "$PORT" != "$CPORT" ] && [ "$SPORT" != "$PORT" ] && [ "$SPORT" != "$CPORT" ] \
  || die "KAFKA_PORT, KAFKA_CONTROLLER_PORT and KAFKA_SASL_PORT must differ"

mkdir -p "$KHOME"
KHOME="$(cd "$KHOME" && pwd)"   # absolute, whatever was given
LIBS="${KAFKA_LIBS_DIR:-$KHOME/libs}"
mkdir -p "$(dirname "$LIBS")"
LIBS="$(cd "$(dirname "$LIBS")" && pwd)/$(basename "$LIBS")"
DATA="$KHOME/data"
LOGS="$KHOME/logs"
PIDFILE="$KHOME/broker.pid"
CONF="$KHOME/server.properties"
LOG4J_BROKER="$KHOME/log4j2-broker.xml"
LOG4J_TOOLS="$KHOME/log4j2-tools.xml"
ADMIN_PROBE="$KHOME/admin-probe.properties"
BOOTSTRAP="$HOST:$PORT"
SASL_BOOTSTRAP="$HOST:$SPORT"
TLS_DIR="$KHOME/tls"
KEYSTORE="$TLS_DIR/broker.p12"
CA_PEM="$TLS_DIR/ca.pem"
# Guards a throwaway self-signed key of a local test broker, nothing else.
KEYSTORE_PASSWORD="kafflow-local-broker"

# ---------------------------------------------------------------- helpers

# Is $1 the pid of a live kafka.Kafka running with our config?
is_our_broker() {
  kill -0 "$1" 2>/dev/null &&
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = java ] &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $CONF"
}

# Pid of the broker this script started, if it is alive (empty otherwise).
# A lost or stale pid file is repaired from the process list (our config path
# is unique to this KAFKA_HOME_DIR).
broker_pid() {
  local pid="" p
  [ -f "$PIDFILE" ] && pid="$(tr -dc '0-9' <"$PIDFILE")"
  if [ -n "$pid" ] && is_our_broker "$pid"; then
    echo "$pid"
    return 0
  fi
  for p in $(pgrep -f -- "kafka.Kafka $CONF" || true); do
    if is_our_broker "$p"; then
      echo "$p" >"$PIDFILE"
      echo "$p"
      return 0
    fi
  done
}

# Does something accept TCP connections on HOST:$1 ?
port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Run a Kafka CLI main class with the cached jars (quiet logging on stderr).
run_tool() {
  local cls="$1"; shift
  [ -f "$LIBS/.complete" ] || die "jars not fetched yet: run '$0 up' first"
  write_tools_log4j
  "$JAVA" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" \
    -cp "$LIBS/*" "$cls" "$@"
}

# A metadata round trip: list topics through the admin client.
answers() {
  port_open "$PORT" || return 1
  write_admin_probe
  timeout 30 "$JAVA" -Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --command-config "$ADMIN_PROBE" --list >/dev/null 2>&1
}

log_tail() {
  local out
  if [ -s "$LOGS/server.log" ]; then
    echo "---- last lines of $LOGS/server.log ----" >&2
    tail -n 40 "$LOGS/server.log" >&2
  fi
  # the JVM's own stdout/stderr since the last start (crashes before logging is set up)
  if [ -s "$LOGS/stdout.log" ]; then
    out="$(awk '/^==== /{buf=""; next} {buf=buf $0 "\n"} END{printf "%s", buf}' "$LOGS/stdout.log" | tail -n 20)"
    if [ -n "$out" ]; then
      echo "---- $LOGS/stdout.log since the last start ----" >&2
      echo "$out" >&2
    fi
  fi
}

# ---------------------------------------------------------------- files

fetch_jars() {
  local want have=""
  want="$(sha256sum "$POM" | cut -d' ' -f1)"
  [ -f "$LIBS/.complete" ] && have="$(cat "$LIBS/.complete")"
  [ "$want" = "$have" ] && return 0
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
  say "fetching Kafka jars with Maven into $LIBS ..."
  rm -rf "$LIBS.tmp"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$KHOME/mvn.log" 2>&1; then
    tail -n 30 "$KHOME/mvn.log" >&2
    die "could not fetch the Kafka jars with Maven (full output in $KHOME/mvn.log)"
  fi
  echo "$want" >"$LIBS.tmp/.complete"
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
}

write_tools_log4j() {
  [ -f "$LOG4J_TOOLS" ] && return 0
  cat >"$LOG4J_TOOLS" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stderr"/></Root>
  </Loggers>
</Configuration>
EOF
}

write_admin_probe() {
  cat >"$ADMIN_PROBE" <<'EOF'
# admin client settings for the readiness probe: fail fast
request.timeout.ms=5000
default.api.timeout.ms=10000
socket.connection.setup.timeout.ms=2000
socket.connection.setup.timeout.max.ms=2000
EOF
}

# The SASL_SSL listener's key and self-signed certificate (valid for 127.0.0.1 and localhost),
# made once per KAFKA_HOME_DIR; clients trust $CA_PEM.
make_keystore() {
  [ -s "$KEYSTORE" ] && [ -s "$CA_PEM" ] && return 0
  command -v keytool >/dev/null || die "keytool not found (it comes with the JDK; needed once for the SASL_SSL listener)"
  mkdir -p "$TLS_DIR"
  rm -f "$KEYSTORE" "$CA_PEM"
  say "making the SASL_SSL listener's self-signed certificate in $TLS_DIR"
  keytool -genkeypair -alias kafka-local -keyalg RSA -keysize 2048 -validity 3650 \
    -dname "CN=localhost" -ext "SAN=ip:127.0.0.1,dns:localhost" \
    -keystore "$KEYSTORE" -storetype PKCS12 \
    -storepass "$KEYSTORE_PASSWORD" -keypass "$KEYSTORE_PASSWORD" >"$TLS_DIR/keytool.log" 2>&1 \
    || { cat "$TLS_DIR/keytool.log" >&2; die "keytool could not make the broker's key"; }
  keytool -exportcert -rfc -alias kafka-local -keystore "$KEYSTORE" -storetype PKCS12 \
    -storepass "$KEYSTORE_PASSWORD" -file "$CA_PEM.tmp" >>"$TLS_DIR/keytool.log" 2>&1 \
    || { cat "$TLS_DIR/keytool.log" >&2; die "keytool could not export the broker's certificate"; }
  mv "$CA_PEM.tmp" "$CA_PEM"
}

write_config() {
  mkdir -p "$DATA" "$LOGS"
  cat >"$CONF" <<EOF
# Written by scripts/kafka.sh on every 'up'; edits here are lost.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT,SASL_SSL://$HOST:$SPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_SSL://$HOST:$SPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$DATA

# a second listener for clients that authenticate: SCRAM-SHA-512 inside TLS
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$KEYSTORE_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$KEYSTORE_PASSWORD

# topics are created explicitly, never by a produce or a metadata request
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# single node: every internal topic with one replica (and few partitions)
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# tests: no 3 s wait before the first consumer-group rebalance
group.initial.rebalance.delay.ms=0
EOF

  cat >"$LOG4J_BROKER" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="$LOGS/server.log" filePattern="$LOGS/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="50 MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

format_once() {
  [ -f "$DATA/meta.properties" ] && return 0
  local id
  say "formatting $DATA (first start)"
  id="$(run_tool kafka.tools.StorageTool random-uuid 2>>"$LOGS/format.log" | tail -n 1)" \
    || die "could not make a cluster id (see $LOGS/format.log)"
  [ -n "$id" ] || die "could not make a cluster id (see $LOGS/format.log)"
  if ! run_tool kafka.tools.StorageTool format --standalone -t "$id" -c "$CONF" \
        >>"$LOGS/format.log" 2>&1; then
    tail -n 20 "$LOGS/format.log" >&2
    die "formatting $DATA failed (see $LOGS/format.log)"
  fi
}

# The first group request on a new data dir makes the broker create __consumer_offsets, and
# its group coordinator needs a moment to load it. A client whose offset fetch lands in that
# moment may fail it (librdkafka then never starts the partition), so the script makes that
# first request itself, once per data dir, before it declares the broker ready: describing an
# unknown group answers "not found" only once the coordinator is loaded.
warm_group_coordinator() {
  local mark="$DATA/.group-coordinator-ready" deadline=$((SECONDS + START_TIMEOUT)) out
  [ -f "$mark" ] && return 0
  write_admin_probe
  while :; do
    out="$(timeout 30 "$JAVA" -Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
      org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BOOTSTRAP" \
      --command-config "$ADMIN_PROBE" --describe --group kafka-sh-warm-up 2>&1 || true)"
    case "$out" in
      *GroupIdNotFound*|*"does not exist"*|*"no active members"*)
        touch "$mark"
        return 0 ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$out" | tail -n 5 >&2
      die "the group coordinator on $BOOTSTRAP did not answer within ${START_TIMEOUT}s"
    fi
    sleep 1
  done
}

# The SCRAM user of the SASL_SSL listener, stored in the cluster's metadata: added through the
# PLAINTEXT listener once per data dir (and again if the password changes).
add_scram_user() {
  local mark="$DATA/.scram-user" want
  want="$(printf '%s\n%s\n' "$SASL_USER" "$SASL_PASSWORD" | sha256sum | cut -d' ' -f1)"
  [ -f "$mark" ] && [ "$(cat "$mark")" = "$want" ] && return 0
  write_admin_probe
  if ! timeout 60 "$JAVA" -Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
      kafka.admin.ConfigCommand --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_PROBE" \
      --alter --entity-type users --entity-name "$SASL_USER" \
      --add-config "SCRAM-SHA-512=[iterations=4096,password=$SASL_PASSWORD]" \
      >"$LOGS/scram.log" 2>&1; then
    tail -n 10 "$LOGS/scram.log" >&2
    die "could not add the SCRAM user $SASL_USER (see $LOGS/scram.log)"
  fi
  echo "$want" >"$mark"
}

# A broker started by an older version of this script has no SASL_SSL listener.
check_sasl_listener() {
  port_open "$SPORT" && return 0
  echo "kafka: warning: the running broker has no SASL_SSL listener on $SASL_BOOTSTRAP" \
    "(started by an older scripts/kafka.sh?); '$0 down' then '$0 up' adds it" >&2
}

cmd_sasl() {
  echo "bootstrap=$SASL_BOOTSTRAP"
  echo "security.protocol=SASL_SSL"
  echo "sasl.mechanism=SCRAM-SHA-512"
  echo "sasl.username=$SASL_USER"
  echo "sasl.password=$SASL_PASSWORD"
  echo "ssl.ca.location=$CA_PEM"
}

# ---------------------------------------------------------------- commands

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      log_tail
      die "broker (pid $pid) exited during startup; logs in $LOGS"
    fi
    answers && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail
      die "broker (pid $pid) did not answer on $BOOTSTRAP within ${START_TIMEOUT}s; logs in $LOGS ('$0 down' to stop it)"
    fi
    sleep 1
  done
}

cmd_up() {
  # One 'up' at a time (e.g. parallel make). fd 9 is closed for the broker.
  exec 9>"$KHOME/.lock"
  flock 9

  local pid started
  pid="$(broker_pid)"
  if [ -n "$pid" ]; then
    if answers; then
      warm_group_coordinator
      if check_sasl_listener; then add_scram_user; fi
      say "already running on $BOOTSTRAP (pid $pid)"
      return 0
    fi
    # Alive but not answering yet: perhaps still starting.
    wait_ready "$pid"
    warm_group_coordinator
    if check_sasl_listener; then add_scram_user; fi
    say "ready on $BOOTSTRAP (pid $pid)"
    return 0
  fi
  rm -f "$PIDFILE"

  if port_open "$PORT"; then
    die "port $PORT is already in use by a process this script did not start (set KAFKA_PORT to use another)"
  fi
  if port_open "$CPORT"; then
    die "controller port $CPORT is already in use by a process this script did not start (set KAFKA_CONTROLLER_PORT)"
  fi
  if port_open "$SPORT"; then
    die "SASL port $SPORT is already in use by a process this script did not start (set KAFKA_SASL_PORT)"
  fi
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ is needed)"

  started=$SECONDS
  fetch_jars
  make_keystore
  write_config
  format_once

  {
    echo
    echo "==== $(date -u '+%Y-%m-%dT%H:%M:%SZ') starting kafka.Kafka $CONF"
  } >>"$LOGS/stdout.log"
  # In a non-interactive shell the background job is not a process-group
  # leader, so setsid does not fork and $! is the JVM's pid.
  (
    cd "$KHOME"
    exec setsid nohup "$JAVA" -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J_BROKER" \
      -Dkafka.logs.dir="$LOGS" \
      -cp "$LIBS/*" kafka.Kafka "$CONF" \
      </dev/null >>"$LOGS/stdout.log" 2>&1 9>&-
  ) &
  pid=$!
  echo "$pid" >"$PIDFILE"
  sleep 0.5
  # If setsid forked after all, $! is not the JVM: broker_pid finds it by its config.
  local found
  found="$(broker_pid)"
  [ -n "$found" ] && pid="$found"
  say "started broker (pid $pid), waiting up to ${START_TIMEOUT}s for $BOOTSTRAP ..."
  wait_ready "$pid"
  warm_group_coordinator
  port_open "$SPORT" || { log_tail; die "the broker answers on $BOOTSTRAP but not on its SASL_SSL listener $SASL_BOOTSTRAP"; }
  add_scram_user
  say "ready on $BOOTSTRAP and SASL_SSL $SASL_BOOTSTRAP (pid $pid, $((SECONDS - started))s, data in $DATA)"
}

cmd_down() {
  exec 9>"$KHOME/.lock"
  flock 9

  local pid deadline
  pid="$(broker_pid)"
  if [ -z "$pid" ]; then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  say "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka: broker did not stop within ${STOP_TIMEOUT}s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$PIDFILE"
  say "stopped"
}

cmd_status() {
  local pid
  pid="$(broker_pid)"
  if [ -z "$pid" ]; then
    say "not running"
    return 1
  fi
  if answers; then
    say "running on $BOOTSTRAP (pid $pid)"
    return 0
  fi
  say "process $pid is alive but $BOOTSTRAP does not answer"
  return 1
}

# ---------------------------------------------------------------- the two-broker cluster

CLUSTER_DIR="${KAFKA_CLUSTER_DIR:-$KHOME/cluster}"
CPORT_1="${KAFKA_CLUSTER_PORT_1:-19092}"
CPORT_2="${KAFKA_CLUSTER_PORT_2:-19192}"
CCPORT="${KAFKA_CLUSTER_CONTROLLER_PORT:-19093}"
CLUSTER_BOOTSTRAP="$HOST:$CPORT_1,$HOST:$CPORT_2"

cluster_check_ports() {
  case "$CPORT_1$CPORT_2$CCPORT" in *[!0-9]*) die "the KAFKA_CLUSTER_*PORT* variables must be numbers";; esac
  [ "$CPORT_1" != "$CPORT_2" ] && [ "$CPORT_1" != "$CCPORT" ] && [ "$CPORT_2" != "$CCPORT" ] \
    || die "KAFKA_CLUSTER_PORT_1, KAFKA_CLUSTER_PORT_2 and KAFKA_CLUSTER_CONTROLLER_PORT must differ"
  mkdir -p "$CLUSTER_DIR"
  CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
}

cluster_conf() { echo "$CLUSTER_DIR/node$1/server.properties"; }

# Pid of node $1 if it runs (empty otherwise); the config path is unique to this cluster folder.
cluster_node_pid() {
  local conf pid="" p pidfile="$CLUSTER_DIR/node$1/broker.pid"
  conf="$(cluster_conf "$1")"
  [ -f "$pidfile" ] && pid="$(tr -dc '0-9' <"$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $conf"; then
    echo "$pid"
    return 0
  fi
  for p in $(pgrep -f -- "kafka.Kafka $conf" || true); do
    if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = java ]; then
      echo "$p" >"$pidfile"
      echo "$p"
      return 0
    fi
  done
}

cluster_write_config() {
  local node="$1" port roles listeners
  local dir="$CLUSTER_DIR/node$node"
  mkdir -p "$dir/data" "$dir/logs"
  if [ "$node" = 1 ]; then
    port="$CPORT_1"
    roles="broker,controller"
    listeners="PLAINTEXT://$HOST:$CPORT_1,CONTROLLER://$HOST:$CCPORT"
  else
    port="$CPORT_2"
    roles="broker"
    listeners="PLAINTEXT://$HOST:$CPORT_2"
  fi
  cat >"$(cluster_conf "$node")" <<CONF
# Written by scripts/kafka.sh cluster up; edits here are lost.
process.roles=$roles
node.id=$node
controller.quorum.voters=1@$HOST:$CCPORT
listeners=$listeners
advertised.listeners=PLAINTEXT://$HOST:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data

auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
CONF
  cat >"$dir/log4j2.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="server" fileName="$dir/logs/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
XML
}

cluster_start_node() {
  local node="$1" dir="$CLUSTER_DIR/node$1" conf pid
  conf="$(cluster_conf "$node")"
  (
    cd "$dir"
    exec setsid nohup "$JAVA" -Xms128m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$dir/log4j2.xml" \
      -Dkafka.logs.dir="$dir/logs" \
      -cp "$LIBS/*" kafka.Kafka "$conf" \
      </dev/null >>"$dir/logs/stdout.log" 2>&1 9>&-
  ) &
  echo "$!" >"$dir/broker.pid"
  sleep 0.5
  pid="$(cluster_node_pid "$node")"
  [ -n "$pid" ] || { tail -n 20 "$dir/logs/stdout.log" >&2; die "cluster node $node exited at once"; }
  say "cluster node $node started (pid $pid, port $([ "$node" = 1 ] && echo "$CPORT_1" || echo "$CPORT_2"))"
}

# How many brokers the cluster's metadata lists (0 when it does not answer).
cluster_brokers() {
  write_admin_probe
  timeout 30 "$JAVA" -Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
    org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$CLUSTER_BOOTSTRAP" \
    --command-config "$ADMIN_PROBE" 2>/dev/null | grep -c '(id: ' || true
}

cluster_log_tail() {
  local node
  for node in 1 2; do
    if [ -s "$CLUSTER_DIR/node$node/logs/server.log" ]; then
      echo "---- last lines of node $node's server.log ----" >&2
      tail -n 20 "$CLUSTER_DIR/node$node/logs/server.log" >&2
    fi
  done
}

cluster_stop() {
  local node pid deadline
  # the broker-only node first: its controlled shutdown needs the controller
  for node in 2 1; do
    pid="$(cluster_node_pid "$node")"
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        break
      fi
      sleep 0.3
    done
    say "cluster node $node stopped"
  done
  rm -f "$CLUSTER_DIR/node1/broker.pid" "$CLUSTER_DIR/node2/broker.pid"
}

cmd_cluster_up() {
  cluster_check_ports
  exec 9>"$CLUSTER_DIR/.lock"
  flock 9
  local p1 p2 id node started=$SECONDS deadline n
  p1="$(cluster_node_pid 1)"
  p2="$(cluster_node_pid 2)"
  if [ -n "$p1" ] && [ -n "$p2" ] && [ "$(cluster_brokers)" -ge 2 ]; then
    say "cluster already running on $CLUSTER_BOOTSTRAP"
    return 0
  fi
  # Half a cluster, or one that does not answer: start over on fresh data.
  cluster_stop
  for port in "$CPORT_1" "$CPORT_2" "$CCPORT"; do
    port_open "$port" && die "cluster port $port is already in use by a process this script did not start (set KAFKA_CLUSTER_PORT_1, KAFKA_CLUSTER_PORT_2, KAFKA_CLUSTER_CONTROLLER_PORT)"
  done
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ is needed)"
  fetch_jars
  write_tools_log4j
  rm -rf "$CLUSTER_DIR/node1" "$CLUSTER_DIR/node2"
  id="$(run_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  [ -n "$id" ] || die "could not make a cluster id"
  for node in 1 2; do
    cluster_write_config "$node"
    if ! run_tool kafka.tools.StorageTool format -t "$id" -c "$(cluster_conf "$node")" \
          >"$CLUSTER_DIR/node$node/logs/format.log" 2>&1; then
      tail -n 20 "$CLUSTER_DIR/node$node/logs/format.log" >&2
      die "formatting cluster node $node failed"
    fi
  done
  cluster_start_node 1
  cluster_start_node 2
  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    for node in 1 2; do
      if [ -z "$(cluster_node_pid "$node")" ]; then
        cluster_log_tail
        cluster_stop
        die "cluster node $node exited during startup; logs in $CLUSTER_DIR/node$node/logs"
      fi
    done
    n=0
    port_open "$CPORT_1" && port_open "$CPORT_2" && n="$(cluster_brokers)"
    [ "$n" -ge 2 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      cluster_log_tail
      die "the cluster did not list two brokers within ${START_TIMEOUT}s ('$0 cluster down' to stop it)"
    fi
    sleep 1
  done
  cluster_warm_group_coordinator
  say "cluster ready on $CLUSTER_BOOTSTRAP ($((SECONDS - started))s, data in $CLUSTER_DIR)"
}

# As warm_group_coordinator does for the single broker: the first group request creates
# __consumer_offsets, and the cluster is ready once its coordinator answers.
cluster_warm_group_coordinator() {
  local deadline=$((SECONDS + START_TIMEOUT)) out
  while :; do
    out="$(timeout 30 "$JAVA" -Xms32m -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
      org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$CLUSTER_BOOTSTRAP" \
      --command-config "$ADMIN_PROBE" --describe --group kafka-sh-warm-up 2>&1 || true)"
    case "$out" in
      *GroupIdNotFound*|*"does not exist"*|*"no active members"*) return 0 ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$out" | tail -n 5 >&2
      die "the cluster's group coordinator did not answer within ${START_TIMEOUT}s"
    fi
    sleep 1
  done
}

cmd_cluster_down() {
  cluster_check_ports
  exec 9>"$CLUSTER_DIR/.lock"
  flock 9
  cluster_stop
  rm -rf "$CLUSTER_DIR/node1" "$CLUSTER_DIR/node2"
  say "cluster down"
}

cmd_cluster_status() {
  cluster_check_ports
  local n
  if [ -z "$(cluster_node_pid 1)" ] || [ -z "$(cluster_node_pid 2)" ]; then
    say "cluster not running"
    return 1
  fi
  n="$(cluster_brokers)"
  if [ "$n" -ge 2 ]; then
    say "cluster running on $CLUSTER_BOOTSTRAP"
    return 0
  fi
  say "cluster processes are alive but $n of 2 brokers answer"
  return 1
}

cmd_cluster() {
  local sub="${1:-}"
  [ $# -gt 0 ] && shift
  case "$sub" in
    up)        cmd_cluster_up ;;
    down|stop) cmd_cluster_down ;;
    status)    cmd_cluster_status ;;
    bootstrap) cluster_check_ports; echo "$CLUSTER_BOOTSTRAP" ;;
    describe)
      [ $# -ge 1 ] || die "usage: $0 cluster describe TOPIC"
      cluster_check_ports
      run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CLUSTER_BOOTSTRAP" --describe --topic "$1" ;;
    create)
      [ $# -ge 1 ] || die "usage: $0 cluster create TOPIC [PARTITIONS]"
      cluster_check_ports
      run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CLUSTER_BOOTSTRAP" --create \
        --topic "$1" --partitions "${2:-1}" --replication-factor 1 ;;
    *) usage >&2; die "unknown cluster command '$sub' (up, down, status, bootstrap, describe, create)" ;;
  esac
}

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
  up)        cmd_up ;;
  down|stop) cmd_down ;;
  status)    cmd_status ;;
  topics)    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list ;;
  describe)
    [ $# -ge 1 ] || die "usage: $0 describe TOPIC"
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --describe --topic "$1" ;;
  create)
    [ $# -ge 1 ] || die "usage: $0 create TOPIC [PARTITIONS]"
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create \
      --topic "$1" --partitions "${2:-1}" --replication-factor 1 ;;
  delete)
    [ $# -ge 1 ] || die "usage: $0 delete TOPIC"
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --delete --topic "$1" ;;
  bootstrap) echo "$BOOTSTRAP" ;;
  sasl)      cmd_sasl ;;
  cluster)   cmd_cluster "$@" ;;
  tool)
    [ $# -ge 1 ] || die "usage: $0 tool MAIN_CLASS [ARGS...]"
    run_tool "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; die "unknown command '$sub'" ;;
esac
