//! Prometheus metrics. Counters where a gauge would miss spikes: records pushed into and
//! drained out of the spool, not just its size.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Records accepted by ingest (HTTP and TCP).
    pub ingested: IntCounter,
    /// Records acknowledged by Kafka (direct or drained).
    pub published: IntCounter,
    /// Records written to consumers' feeds.
    pub delivered: IntCounter,
    /// Records written to the spool.
    pub held: IntCounter,
    /// Records taken out of the spool into Kafka.
    pub drained: IntCounter,
    /// Records moved to the dead-letter state.
    pub dead_lettered: IntCounter,
    /// Dead records discarded by an admin.
    pub discarded: IntCounter,
    /// Ingest refused because the spool was full.
    pub spool_full: IntCounter,
    /// Spool writes refused because the disk was full.
    pub storage_full: IntCounter,
    /// Held records whose stored headers could not be read back (dead-lettered, not sent).
    pub undecodable_held: IntCounter,
    /// Failed sign-ins (HTTP 401s of calls with a token, refused TCP `AUTH` lines).
    pub signin_failures: IntCounter,
    /// Calls and `AUTH` lines refused because their address failed to sign in too often.
    pub signin_refused: IntCounter,
    /// Full checks of the hash chain for `GET /audit/verify` (cached answers not counted).
    pub audit_verify_runs: IntCounter,
    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    /// TLS handshakes that failed or timed out, on either listener.
    pub tls_handshake_failures: IntCounter,
    /// Kafka-protocol gateway requests answered, by API.
    pub gateway_requests: IntCounterVec,
    /// From a request's last byte read to its answer's last byte written, by API.
    pub gateway_latency: HistogramVec,
    pub gateway_bytes_in: IntCounter,
    pub gateway_bytes_out: IntCounter,
    /// Open gateway connections, and all ever opened (a gauge alone misses short ones).
    pub gateway_connections: IntGauge,
    pub gateway_connections_opened: IntCounter,
    /// SASL authentications the gateway refused.
    pub gateway_auth_failures: IntCounter,
    /// Topics read by a shared topic reader (one Kafka fetch for every user reading them).
    pub feed_topic_readers: IntGauge,
    /// A user's topics read by the user's own catch-up reader, behind the shared window.
    pub feed_catchup_topics: IntGauge,
    /// Times a user's topic joined its shared reader, and left it because the feeds were slow.
    pub feed_joins: IntCounter,
    pub feed_fallbacks: IntCounter,
    /// Times a topic that fell back joined its shared reader again from the reader's window.
    pub feed_rejoins: IntCounter,
    /// Times a user's topic started reading on its own from Kafka (behind the shared window).
    pub feed_catchups: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Names are constants below, registered once: this cannot fail.
    let _ = registry.register(Box::new(counter.clone()));
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(gauge.clone()));
    gauge
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    Metrics {
        ingested: counter(
            &r,
            "kafflow_ingested_records_total",
            "Records accepted by ingest.",
        ),
        published: counter(
            &r,
            "kafflow_published_records_total",
            "Records acknowledged by Kafka.",
        ),
        delivered: counter(
            &r,
            "kafflow_delivered_records_total",
            "Records written to consumers' feeds.",
        ),
        held: counter(
            &r,
            "kafflow_held_records_total",
            "Records written to the spool.",
        ),
        drained: counter(
            &r,
            "kafflow_drained_records_total",
            "Records drained from the spool into Kafka.",
        ),
        dead_lettered: counter(
            &r,
            "kafflow_dead_lettered_records_total",
            "Records moved to the dead-letter state.",
        ),
        discarded: counter(
            &r,
            "kafflow_discarded_records_total",
            "Dead records discarded.",
        ),
        spool_full: counter(
            &r,
            "kafflow_spool_full_total",
            "Ingest calls refused because the spool was full.",
        ),
        storage_full: counter(
            &r,
            "kafflow_storage_full_total",
            "Spool writes refused because the disk was full.",
        ),
        undecodable_held: counter(
            &r,
            "kafflow_undecodable_held_records_total",
            "Held records whose stored headers could not be decoded; dead-lettered, not sent.",
        ),
        signin_failures: counter(
            &r,
            "kafflow_signin_failures_total",
            "Failed sign-ins over HTTP and TCP.",
        ),
        signin_refused: counter(
            &r,
            "kafflow_signin_refused_total",
            "Sign-ins refused because their address failed too often.",
        ),
        audit_verify_runs: counter(
            &r,
            "kafflow_audit_verify_runs_total",
            "Full checks of the event log's hash chain made for GET /audit/verify.",
        ),
        spool_records: gauge(
            &r,
            "kafflow_spool_records",
            "Records in the spool (held and dead).",
        ),
        spool_bytes: gauge(
            &r,
            "kafflow_spool_bytes",
            "Bytes in the spool (held and dead).",
        ),
        tls_handshake_failures: counter(
            &r,
            "kafflow_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out, on the HTTP and TCP ingest listeners.",
        ),
        gateway_requests: {
            let v = IntCounterVec::new(
                Opts::new(
                    "kafflow_gateway_requests_total",
                    "Kafka-protocol gateway requests answered, by API.",
                ),
                &["api"],
            )
            .unwrap_or_else(|e| panic!("metric kafflow_gateway_requests_total: {e}"));
            let _ = r.register(Box::new(v.clone()));
            v
        },
        gateway_latency: {
            let v = HistogramVec::new(
                HistogramOpts::new(
                    "kafflow_gateway_request_seconds",
                    "Time from a gateway request read to its answer written, by API.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["api"],
            )
            .unwrap_or_else(|e| panic!("metric kafflow_gateway_request_seconds: {e}"));
            let _ = r.register(Box::new(v.clone()));
            v
        },
        gateway_bytes_in: counter(
            &r,
            "kafflow_gateway_bytes_in_total",
            "Bytes of Kafka requests read by the gateway.",
        ),
        gateway_bytes_out: counter(
            &r,
            "kafflow_gateway_bytes_out_total",
            "Bytes of Kafka answers written by the gateway.",
        ),
        gateway_connections: gauge(
            &r,
            "kafflow_gateway_connections",
            "Open client connections of the gateway.",
        ),
        gateway_connections_opened: counter(
            &r,
            "kafflow_gateway_connections_opened_total",
            "Client connections the gateway accepted.",
        ),
        gateway_auth_failures: counter(
            &r,
            "kafflow_gateway_auth_failures_total",
            "SASL authentications the gateway refused.",
        ),
        feed_topic_readers: gauge(
            &r,
            "kafflow_feed_topic_readers",
            "Shared topic readers running: one Kafka fetch per topic for every feed.",
        ),
        feed_catchup_topics: gauge(
            &r,
            "kafflow_feed_catchup_topics",
            "User topics read by a catch-up reader of their own, behind the shared window.",
        ),
        feed_joins: counter(
            &r,
            "kafflow_feed_joins_total",
            "Times a user's topic joined the topic's shared reader.",
        ),
        feed_fallbacks: counter(
            &r,
            "kafflow_feed_fallbacks_total",
            "Times a user's topic left the shared reader because its feeds were slow.",
        ),
        feed_rejoins: counter(
            &r,
            "kafflow_feed_rejoins_total",
            "Times a topic that fell back rejoined its shared reader from the reader's window.",
        ),
        feed_catchups: counter(
            &r,
            "kafflow_feed_catchups_total",
            "Times a user's topic started reading on its own from Kafka, behind the shared window.",
        ),
        registry: r,
    }
});

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
