"""A Kafka client that KafFlow did not write, for tests/gateway_clients.rs: kafka-python
(tests/clients/requirements.txt), driven from the command line, answering with one JSON object
on stdout.

    kafka_client.py --bootstrap HOST:PORT [--user U --password P] COMMAND ...

    produce --topic T --count N [--partitions P] [--start I]
        sends values n-<i> with keys k<i>, record i to partition i mod P (the client's choice;
        without --partitions the client's partitioner picks); answers {"acks": [[p, offset], ...]}
    consume --topic T --group G --count N [--timeout S]
        subscribes as member of G from the earliest offset, reads N records and commits them;
        answers {"records": [{"partition", "offset", "key", "value"}, ...]}
    describe --topic T
        a Metadata request for T; answers {"error_code": n, "partitions": k}
    check-auth
        connects and asks for the cluster's metadata; answers {"brokers": [...]}

Every answer also carries "peers": the remote host:port of each TCP connection this process
holds open when it answers (read from /proc), so a test can see where the client connected,
and "log": the distinct errors kafka-python logged on the way (it logs a refused SASL login
and retries the bootstrap until it gives up with a timeout).
A failure answers {"error": "<exception class>", "message": "...", "log": [...]} with exit
status 1.
"""

import argparse
import json
import logging
import os
import socket
import struct
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


class Errors(logging.Handler):
    """The distinct error lines kafka-python logs, in order."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.lines = []

    def emit(self, record):
        line = record.getMessage()
        if line not in self.lines:
            self.lines.append(line)


LOGGED = Errors()
logging.getLogger("kafka").addHandler(LOGGED)
logging.getLogger("kafka").setLevel(logging.ERROR)
logging.getLogger("kafka").propagate = False
# With KAFFLOW_TEST_LOG_DIR set, kafka-python's whole debug log goes to <dir>/py-<pid>.log.
if os.environ.get("KAFFLOW_TEST_LOG_DIR"):
    KEPT = logging.FileHandler(
        os.path.join(os.environ["KAFFLOW_TEST_LOG_DIR"], f"py-{os.getpid()}.log")
    )
    KEPT.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("kafka").addHandler(KEPT)
    logging.getLogger("kafka").setLevel(logging.DEBUG)


def security(args):
    """The connection settings shared by every client: SASL/PLAIN when a user is given."""
    settings = {
        "bootstrap_servers": args.bootstrap.split(","),
        "request_timeout_ms": 20000,
        "client_id": "kafflow-test-kafka-python",
    }
    if args.user is not None:
        settings.update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username=args.user,
            sasl_plain_password=args.password,
        )
    return settings


def socket_inodes():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def decode_v4(hex_addr):
    address, port = hex_addr.split(":")
    ip = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
    return f"{ip}:{int(port, 16)}"


def decode_v6(hex_addr):
    address, port = hex_addr.split(":")
    raw = bytes.fromhex(address)
    # /proc prints the address as four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    ip = socket.inet_ntop(socket.AF_INET6, words)
    if ip.startswith("::ffff:"):
        ip = ip[len("::ffff:") :]
    return f"{ip}:{int(port, 16)}"


def peers():
    """The remote end of every established TCP connection of this process."""
    mine = socket_inodes()
    found = []
    for table, decode in (("/proc/net/tcp", decode_v4), ("/proc/net/tcp6", decode_v6)):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    # state 01 is ESTABLISHED
                    if fields[3] == "01" and fields[9] in mine:
                        found.append(decode(fields[2]))
        except OSError:
            continue
    return sorted(found)


def produce(args):
    producer = KafkaProducer(acks="all", max_block_ms=15000, linger_ms=5, **security(args))
    futures = []
    for i in range(args.start, args.start + args.count):
        partition = i % args.partitions if args.partitions else None
        futures.append(
            producer.send(
                args.topic,
                key=f"k{i}".encode(),
                value=f"n-{i}".encode(),
                partition=partition,
            )
        )
    acks = []
    for future in futures:
        meta = future.get(timeout=60)
        acks.append([meta.partition, meta.offset])
    producer.flush()
    answer = {"acks": acks, "peers": peers()}
    producer.close()
    return answer


def consume(args):
    consumer = KafkaConsumer(
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **security(args),
    )
    # kafka-python 3.0 can leave a member half-joined for good: when the leader joins before it
    # has the topic's metadata, it assigns nothing and re-joins once the metadata arrives; if
    # that second join outlives the poll() that started it, the assignment it did makes
    # need_rejoin() false, so no later poll() finishes the join: no assignment, no heartbeat,
    # evicted after the session timeout (the broker and the gateway answered everything, in
    # order). A metadata update after subscribe() (topics() always asks the cluster) gives the
    # first join the topic's partitions, and a poll() of a second leaves a join room to finish.
    consumer.subscribe([args.topic])
    consumer.topics()
    records = []
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=1000)
        for messages in batch.values():
            for m in messages:
                records.append(
                    {
                        "partition": m.partition,
                        "offset": m.offset,
                        "key": m.key.decode() if m.key is not None else None,
                        "value": m.value.decode(),
                    }
                )
        if len(records) >= args.count:
            break
    consumer.commit()
    committed = {}
    for partition in consumer.partitions_for_topic(args.topic) or []:
        committed[str(partition)] = consumer.committed(TopicPartition(args.topic, partition))
    answer = {"records": records, "committed": committed, "peers": peers()}
    consumer.close()
    return answer


def describe(args):
    admin = KafkaAdminClient(**security(args))
    topics = admin.describe_topics([args.topic])
    topic = next(t for t in topics if t["name"] == args.topic)
    answer = {
        "error_code": topic["error_code"],
        "partitions": len(topic.get("partitions") or []),
        "peers": peers(),
    }
    admin.close()
    return answer


def check_auth(args):
    admin = KafkaAdminClient(**security(args))
    cluster = admin.describe_cluster()
    brokers = [f"{b['host']}:{b['port']}" for b in cluster["brokers"]]
    answer = {"brokers": brokers, "peers": peers()}
    admin.close()
    return answer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("produce")
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--partitions", type=int)
    p.add_argument("--start", type=int, default=0)
    c = commands.add_parser("consume")
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, default=60)
    d = commands.add_parser("describe")
    d.add_argument("--topic", required=True)
    commands.add_parser("check-auth")
    args = parser.parse_args()
    run = {
        "produce": produce,
        "consume": consume,
        "describe": describe,
        "check-auth": check_auth,
    }[args.command]
    try:
        answer = run(args)
    except Exception as error:  # the test reads the class name: that is the client's verdict
        answer = {"error": type(error).__name__, "message": str(error), "log": LOGGED.lines[:200]}
        print(json.dumps(answer))
        sys.stdout.flush()
        os._exit(1)
    answer["log"] = LOGGED.lines[:200]
    print(json.dumps(answer))
    sys.stdout.flush()
    # kafka-python's background threads may linger on a refused connection: leave now
    os._exit(0)


if __name__ == "__main__":
    main()
