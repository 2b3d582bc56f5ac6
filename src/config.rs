//! The config file, with flag overrides, validated once at startup.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::events::Durability;
use crate::identity::jwt::{JwksSource, JwtConfig, MAX_LEEWAY_S};
use crate::identity::{Directory, Principal, Role};
use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad config: {0}")]
    Invalid(String),
}

/// What `kafflow serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The TCP ingest listener for high-rate producers.
    pub ingest_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    pub durability: Durability,
    /// A snapshot of the rebuilt state every this many events (`[store] snapshot_every`);
    /// 0 turns snapshots off, written and read.
    pub snapshot_every: u64,
    pub policy: Policy,
    pub principals: Directory,
    pub spool: SpoolLimits,
    pub publisher: PublisherConfig,
    pub watcher: WatcherConfig,
    pub feeds: FeedConfig,
    pub server: ServerConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    /// Both listeners speak TLS with these files.
    pub tls: Option<TlsFiles>,
    /// The Kafka-protocol gateway (`[gateway]`); off unless `listen` is set.
    pub gateway: GatewayConfig,
}

/// The Kafka-protocol gateway (`[gateway]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where Kafka clients connect (their `bootstrap.servers`); unset: no gateway.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The host clients are told to connect to in Metadata and FindCoordinator answers.
    /// Default: the listen address's IP (127.0.0.1 when it listens on every address).
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Each upstream broker is reached through a port of its own: `broker_port_base + node id`.
    /// Unset: each broker gets a free port picked at first sight.
    #[serde(default)]
    pub broker_port_base: Option<u16>,
    /// A producer's Metadata request for a topic KafFlow has never heard of files a create
    /// request with the policy defaults (like `?request=true` on HTTP ingest).
    #[serde(default)]
    pub request_unknown_topics: bool,
}

/// How callers sign in (`[auth]`), beyond the config's principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Failed sign-ins of one client address within a minute before it is refused (429).
    pub max_failures_per_minute: u32,
    /// Single sign-on with the JWTs of an identity provider (`[auth.jwt]`).
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_failures_per_minute: default_max_failures_per_minute(),
            jwt: None,
        }
    }
}

fn default_max_failures_per_minute() -> u32 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default = "default_max_failures_per_minute")]
    max_failures_per_minute: u32,
    jwt: Option<JwtFile>,
}

impl Default for AuthFile {
    fn default() -> Self {
        AuthFile {
            max_failures_per_minute: default_max_failures_per_minute(),
            jwt: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    issuer: String,
    audience: String,
    #[serde(default = "default_name_claim")]
    name_claim: String,
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
    #[serde(default)]
    role_map: BTreeMap<String, Role>,
    #[serde(default = "default_leeway_s")]
    leeway_s: u64,
}

fn default_name_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_leeway_s() -> u64 {
    30
}

fn validate_auth(file: AuthFile) -> Result<AuthConfig, ConfigError> {
    if file.max_failures_per_minute == 0 {
        return Err(ConfigError::Invalid(
            "auth.max_failures_per_minute must be at least 1".into(),
        ));
    }
    let jwt = match file.jwt {
        None => None,
        Some(j) => {
            let jwks = match (j.jwks_file, j.jwks_url) {
                (Some(path), None) => JwksSource::File(path),
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                    JwksSource::Url(url)
                }
                (None, Some(url)) => {
                    return Err(ConfigError::Invalid(format!(
                        "auth.jwt.jwks_url must be an http:// or https:// URL, not {url:?}"
                    )))
                }
                _ => {
                    return Err(ConfigError::Invalid(
                        "auth.jwt needs exactly one of jwks_file and jwks_url".into(),
                    ))
                }
            };
            for (key, value) in [
                ("issuer", &j.issuer),
                ("audience", &j.audience),
                ("name_claim", &j.name_claim),
                ("roles_claim", &j.roles_claim),
            ] {
                if value.trim().is_empty() {
                    return Err(ConfigError::Invalid(format!("auth.jwt.{key} is empty")));
                }
            }
            if j.leeway_s > MAX_LEEWAY_S {
                return Err(ConfigError::Invalid(format!(
                    "auth.jwt.leeway_s must be at most {MAX_LEEWAY_S}"
                )));
            }
            Some(JwtConfig {
                jwks,
                issuer: j.issuer,
                audience: j.audience,
                name_claim: j.name_claim,
                roles_claim: j.roles_claim,
                role_map: j.role_map,
                leeway_s: j.leeway_s,
            })
        }
    };
    Ok(AuthConfig {
        max_failures_per_minute: file.max_failures_per_minute,
        jwt,
    })
}

/// How the service as a whole behaves (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// On SIGTERM or Ctrl-C, how long in-flight work may take to be answered before the
    /// service stops anyway.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// The PEM certificate chain of both listeners; with `tls_key`, they speak TLS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Browser origins (`https://host[:port]`) that may call the API from their own pages.
    /// Empty (the default): no CORS headers at all, so only the console KafFlow serves
    /// itself can call it from a browser.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Worker threads of the runtime that serves HTTP, websockets, feeds' Kafka readers and
    /// the gateway (the actors keep their own thread). Default: one per core.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
            worker_threads: None,
        }
    }
}

/// Both TLS files or neither, from the flags or else from `[server]`.
fn tls_files(
    server: &ServerConfig,
    overrides: &Overrides,
) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, key) = if overrides.tls_cert.is_some() || overrides.tls_key.is_some() {
        (overrides.tls_cert.clone(), overrides.tls_key.clone())
    } else {
        (server.tls_cert.clone(), server.tls_key.clone())
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid(
            "a TLS certificate needs its key: give both tls_cert and tls_key (--tls-cert and --tls-key), or neither".into(),
        )),
        (None, Some(_)) => Err(ConfigError::Invalid(
            "a TLS key needs its certificate: give both tls_cert and tls_key (--tls-cert and --tls-key), or neither".into(),
        )),
    }
}

/// Each origin as a browser sends it in `Origin`: a scheme, a host, perhaps a port, no path.
fn validate_cors_origins(origins: &[String]) -> Result<Vec<String>, ConfigError> {
    origins
        .iter()
        .map(|origin| {
            let lower = origin.trim().to_ascii_lowercase();
            let host = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            match host {
                Some(host)
                    if !host.is_empty()
                        && !host.contains(['/', '?', '#', '*', ' ', '@']) =>
                {
                    Ok(lower)
                }
                _ => Err(ConfigError::Invalid(format!(
                    "server.cors_origins: {origin:?} is not an origin like \"https://console.example.com\" (a scheme and a host, perhaps a port, no path, no wildcard)"
                ))),
            }
        })
        .collect()
}

/// What one caller may send or hold open. Each limit is refused with a clear error: 413 for
/// a size, 429 with `Retry-After` for a count, `ERR ... too_many_requests` on TCP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON body of every route but record ingest.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest body of `POST /topics/{name}/records`.
    #[serde(default = "default_max_ingest_body_bytes")]
    pub max_ingest_body_bytes: u64,
    /// Most records in one ingest call.
    #[serde(default = "default_max_records_per_call")]
    pub max_records_per_call: usize,
    /// Largest record (key, value and headers), over HTTP and TCP: the file's
    /// `limits.max_record_bytes`, or its older name `publisher.max_record_bytes`.
    #[serde(skip)]
    pub max_record_bytes: usize,
    #[serde(default, rename = "max_record_bytes")]
    pub(crate) max_record_bytes_given: Option<usize>,
    /// Most headers on one record.
    #[serde(default = "default_max_headers_per_record")]
    pub max_headers_per_record: usize,
    /// Most bytes of names and values of the headers of one HTTP request.
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// Most websocket feeds one user has open at once.
    #[serde(default = "default_max_feeds_per_user")]
    pub max_feeds_per_user: usize,
    /// Most TCP ingest connections open at once.
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// Most TCP ingest connections one principal has open at once.
    #[serde(default = "default_max_tcp_connections_per_principal")]
    pub max_tcp_connections_per_principal: usize,
    /// Most HTTP requests handled at once; past it a request is answered 429 at once.
    #[serde(default = "default_max_concurrent_http_requests")]
    pub max_concurrent_http_requests: usize,
    /// The `Retry-After` of a 429 for one of these limits, in seconds.
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body_bytes(),
            max_ingest_body_bytes: default_max_ingest_body_bytes(),
            max_records_per_call: default_max_records_per_call(),
            max_record_bytes: default_max_record_bytes(),
            max_record_bytes_given: None,
            max_headers_per_record: default_max_headers_per_record(),
            max_request_header_bytes: default_max_request_header_bytes(),
            max_feeds_per_user: default_max_feeds_per_user(),
            max_tcp_connections: default_max_tcp_connections(),
            max_tcp_connections_per_principal: default_max_tcp_connections_per_principal(),
            max_concurrent_http_requests: default_max_concurrent_http_requests(),
            retry_after_s: default_retry_after_s(),
        }
    }
}

fn default_shutdown_timeout_ms() -> u64 {
    10_000
}

fn default_max_body_bytes() -> u64 {
    64 * 1024
}
fn default_max_ingest_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_records_per_call() -> usize {
    100_000
}
fn default_max_headers_per_record() -> usize {
    64
}
fn default_max_request_header_bytes() -> usize {
    16 * 1024
}
fn default_max_feeds_per_user() -> usize {
    16
}
fn default_max_tcp_connections() -> usize {
    1024
}
fn default_max_tcp_connections_per_principal() -> usize {
    256
}
fn default_max_concurrent_http_requests() -> usize {
    1024
}
fn default_retry_after_s() -> u64 {
    1
}

/// Every limit must let at least something through.
fn validate_limits(limits: &Limits) -> Result<(), ConfigError> {
    let zero = [
        ("max_body_bytes", limits.max_body_bytes == 0),
        ("max_ingest_body_bytes", limits.max_ingest_body_bytes == 0),
        ("max_records_per_call", limits.max_records_per_call == 0),
        ("max_record_bytes", limits.max_record_bytes == 0),
        (
            "max_request_header_bytes",
            limits.max_request_header_bytes == 0,
        ),
        ("max_feeds_per_user", limits.max_feeds_per_user == 0),
        ("max_tcp_connections", limits.max_tcp_connections == 0),
        (
            "max_tcp_connections_per_principal",
            limits.max_tcp_connections_per_principal == 0,
        ),
        (
            "max_concurrent_http_requests",
            limits.max_concurrent_http_requests == 0,
        ),
    ];
    if let Some((key, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
        return Err(ConfigError::Invalid(format!(
            "limits.{key} must be at least 1"
        )));
    }
    // Tokio's semaphore refuses more permits than this.
    if limits.max_concurrent_http_requests > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(ConfigError::Invalid(
            "limits.max_concurrent_http_requests is too large".into(),
        ));
    }
    Ok(())
}

/// Bounds of the held-record spool; past them ingest answers 429 until space frees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolLimits {
    #[serde(default = "default_max_records_per_topic")]
    pub max_records_per_topic: u64,
    #[serde(default = "default_max_bytes_total")]
    pub max_bytes_total: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_records_per_topic: default_max_records_per_topic(),
            max_bytes_total: default_max_bytes_total(),
        }
    }
}

fn default_max_records_per_topic() -> u64 {
    1_000_000
}
fn default_max_bytes_total() -> u64 {
    1 << 30
}

/// The shared Kafka producer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// How long Kafka may take to acknowledge a record before it goes to the spool instead.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// The codec of the record batches sent to Kafka (librdkafka's `compression.type`).
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits for more records before it sends a batch (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// The older name of `limits.max_record_bytes`, still read.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            delivery_timeout_ms: default_delivery_timeout_ms(),
            compression: Compression::default(),
            linger_ms: default_linger_ms(),
            max_record_bytes: None,
        }
    }
}

/// A codec Kafka's record batches may be compressed with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The default: every Kafka client reads it, also those built without a codec library.
    #[default]
    None,
    Gzip,
    Snappy,
    /// Cheap to compress and to read back: small records of a stream, sent as one batch,
    /// shrink a lot, and the broker has less to write and send.
    Lz4,
    Zstd,
}

impl Compression {
    /// The value of librdkafka's `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// An ingest call is answered once Kafka has acknowledged its records, so the linger is part
/// of every answer's latency: an HTTP client with a few calls in flight waits it out on each,
/// while a busy stream fills its batches without it (the ingest benchmark, docs/benchmarks.md).
fn default_linger_ms() -> u64 {
    1
}

/// librdkafka's ceiling for `linger.ms`.
const MAX_LINGER_MS: u64 = 900_000;

fn default_delivery_timeout_ms() -> u64 {
    10_000
}
/// Below librdkafka's default `message.max.bytes` (1,000,000), which also counts the key,
/// the headers and the record overhead.
fn default_max_record_bytes() -> usize {
    900_000
}

/// Reconciliation with Kafka's real metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            reconcile_interval_ms: default_reconcile_interval_ms(),
        }
    }
}

fn default_reconcile_interval_ms() -> u64 {
    30_000
}

/// Websocket feeds and the per-user consumers behind them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Records a feed may have waiting for its socket before the user's partitions pause
    /// (a `records` frame counts its records).
    #[serde(default = "default_buffer_frames")]
    pub buffer_frames: usize,
    /// A feed with frames waiting that writes nothing for this long is closed.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// A user's consumer stops after this long without a feed.
    #[serde(default = "default_idle_consumer_ms")]
    pub idle_consumer_ms: u64,
    /// How often each user's positions written to every feed are committed to Kafka. A crash
    /// sends again at most what was written since the last commit (at-least-once).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            buffer_frames: default_buffer_frames(),
            stall_timeout_ms: default_stall_timeout_ms(),
            idle_consumer_ms: default_idle_consumer_ms(),
            commit_interval_ms: default_commit_interval_ms(),
        }
    }
}

fn default_buffer_frames() -> usize {
    8192
}
fn default_stall_timeout_ms() -> u64 {
    30_000
}
fn default_idle_consumer_ms() -> u64 {
    30_000
}
fn default_commit_interval_ms() -> u64 {
    1_000
}

fn validate_feeds(feeds: FeedConfig) -> Result<FeedConfig, ConfigError> {
    if feeds.buffer_frames == 0 || feeds.stall_timeout_ms == 0 {
        return Err(ConfigError::Invalid(
            "feeds.buffer_frames and feeds.stall_timeout_ms must be at least 1".into(),
        ));
    }
    if !(10..=60_000).contains(&feeds.commit_interval_ms) {
        return Err(ConfigError::Invalid(format!(
            "feeds.commit_interval_ms must be between 10 and 60000, not {}",
            feeds.commit_interval_ms
        )));
    }
    Ok(feeds)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Passed through to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap(),
            properties: BTreeMap::new(),
        }
    }
}

fn default_bootstrap() -> String {
    "127.0.0.1:9092".to_string()
}

/// Defaults and limits for topic requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_pattern")]
    pub topic_name_pattern: String,
    #[serde(default = "default_partitions")]
    pub default_partitions: i32,
    #[serde(default = "default_max_partitions")]
    pub max_partitions: i32,
    #[serde(default = "one")]
    pub default_replication_factor: i32,
    #[serde(default = "one")]
    pub max_replication_factor: i32,
    /// Of a topic whose create request names none.
    #[serde(default)]
    pub default_visibility: crate::events::Visibility,
    #[serde(skip)]
    pub name_regex: Option<regex::Regex>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            topic_name_pattern: default_pattern(),
            default_partitions: default_partitions(),
            max_partitions: default_max_partitions(),
            default_replication_factor: 1,
            max_replication_factor: 1,
            default_visibility: crate::events::Visibility::Open,
            name_regex: None,
        }
    }
}

fn default_pattern() -> String {
    "^[a-z0-9][a-z0-9._-]*$".to_string()
}
fn default_partitions() -> i32 {
    3
}
fn default_max_partitions() -> i32 {
    64
}
fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    ingest_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    principals: Vec<PrincipalFile>,
    #[serde(default)]
    spool: SpoolLimits,
    #[serde(default)]
    publisher: PublisherConfig,
    #[serde(default)]
    watcher: WatcherConfig,
    #[serde(default)]
    feeds: FeedConfig,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    gateway: GatewayConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    synchronous: Durability,
    #[serde(default = "default_snapshot_every")]
    snapshot_every: u64,
}

impl Default for StoreFile {
    fn default() -> Self {
        StoreFile {
            synchronous: Durability::default(),
            snapshot_every: default_snapshot_every(),
        }
    }
}

/// Often enough that a start replays at most a tenth of a second of events, rarely enough
/// that the snapshot thread stays idle under a steady load.
fn default_snapshot_every() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    name: String,
    roles: Vec<Role>,
    token_sha256: String,
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub ingest_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub bootstrap_servers: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub gateway_listen: Option<SocketAddr>,
}

impl Config {
    pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, overrides).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str, overrides: Overrides) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            let message = e.message().replace('\n', "; ");
            ConfigError::Parse {
                path: PathBuf::new(),
                message: match line {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            }
        })?;
        let mut kafka = file.kafka;
        if let Some(servers) = overrides.bootstrap_servers.clone() {
            kafka.bootstrap_servers = servers;
        }
        if kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.bootstrap_servers is empty".into(),
            ));
        }
        let policy = validate_policy(file.policy)?;
        if file.watcher.reconcile_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "watcher.reconcile_interval_ms must be at least 100".into(),
            ));
        }
        if file.publisher.delivery_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "publisher.delivery_timeout_ms must be positive".into(),
            ));
        }
        if file.publisher.linger_ms > MAX_LINGER_MS {
            return Err(ConfigError::Invalid(format!(
                "publisher.linger_ms must be at most {MAX_LINGER_MS}"
            )));
        }
        let mut limits = file.limits;
        limits.max_record_bytes = match (
            limits.max_record_bytes_given,
            file.publisher.max_record_bytes,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give limits.max_record_bytes or publisher.max_record_bytes, not both".into(),
                ))
            }
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => default_max_record_bytes(),
        };
        validate_limits(&limits)?;
        let principals = validate_principals(file.principals)?;
        let auth = validate_auth(file.auth)?;
        let tls = tls_files(&file.server, &overrides)?;
        let mut server = file.server;
        server.cors_origins = validate_cors_origins(&server.cors_origins)?;
        if server.worker_threads == Some(0) {
            return Err(ConfigError::Invalid(
                "server.worker_threads: must be at least 1 (leave it out for one per core)".into(),
            ));
        }
        let mut gateway = file.gateway;
        gateway.listen = overrides.gateway_listen.or(gateway.listen);
        if gateway.listen.is_some() {
            let protocol = kafka
                .properties
                .get("security.protocol")
                .map(|p| p.to_ascii_lowercase());
            if protocol.as_deref().is_some_and(|p| p != "plaintext") {
                return Err(ConfigError::Invalid(format!(
                    "the gateway reaches the brokers over PLAINTEXT only, and \
                     kafka.properties sets security.protocol = {:?}; give the gateway a \
                     PLAINTEXT listener of the cluster or turn the gateway off",
                    kafka
                        .properties
                        .get("security.protocol")
                        .cloned()
                        .unwrap_or_default()
                )));
            }
        }
        if matches!(&gateway.advertised_host, Some(host) if host.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "gateway.advertised_host is empty".into(),
            ));
        }
        Ok(Config {
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            ingest_listen: overrides
                .ingest_listen
                .or(file.ingest_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            kafka,
            durability: file.store.synchronous,
            snapshot_every: file.store.snapshot_every,
            policy,
            principals,
            spool: file.spool,
            publisher: file.publisher,
            watcher: file.watcher,
            feeds: validate_feeds(file.feeds)?,
            server,
            limits,
            auth,
            tls,
            gateway,
        })
    }
}

fn validate_policy(mut policy: Policy) -> Result<Policy, ConfigError> {
    let regex = regex::Regex::new(&policy.topic_name_pattern).map_err(|e| {
        ConfigError::Invalid(format!("policy.topic_name_pattern is not a regex: {e}"))
    })?;
    policy.name_regex = Some(regex);
    if policy.max_partitions < 1 || policy.max_replication_factor < 1 {
        return Err(ConfigError::Invalid(
            "policy.max_partitions and policy.max_replication_factor must be at least 1".into(),
        ));
    }
    if !(1..=policy.max_partitions).contains(&policy.default_partitions) {
        return Err(ConfigError::Invalid(
            "policy.default_partitions must be between 1 and policy.max_partitions".into(),
        ));
    }
    if !(1..=policy.max_replication_factor).contains(&policy.default_replication_factor) {
        return Err(ConfigError::Invalid(
            "policy.default_replication_factor must be between 1 and policy.max_replication_factor"
                .into(),
        ));
    }
    Ok(policy)
}

fn validate_principals(entries: Vec<PrincipalFile>) -> Result<Directory, ConfigError> {
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    let mut directory = Vec::new();
    for p in entries {
        if p.name.trim().is_empty() || p.name == "system" {
            return Err(ConfigError::Invalid(format!(
                "principal name {:?} is not allowed",
                p.name
            )));
        }
        if !names.insert(p.name.clone()) {
            return Err(ConfigError::Invalid(format!(
                "principal {} appears twice",
                p.name
            )));
        }
        let hash = p.token_sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ConfigError::Invalid(format!(
                "principal {}: token_sha256 must be 64 hex digits (kafflow hash-token TOKEN)",
                p.name
            )));
        }
        if !hashes.insert(hash.clone()) {
            return Err(ConfigError::Invalid(format!(
                "principal {} shares its token with another principal",
                p.name
            )));
        }
        if p.roles.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "principal {} has no roles",
                p.name
            )));
        }
        directory.push((
            hash,
            Principal {
                name: p.name,
                roles: p.roles.into_iter().collect::<BTreeSet<_>>(),
            },
        ));
    }
    Ok(Directory::new(directory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every key the file knows, by section ("" for the top level).
    const KEYS: &[(&str, &str)] = &[
        ("", "listen"),
        ("", "ingest_listen"),
        ("", "data_dir"),
        ("kafka", "bootstrap_servers"),
        ("store", "synchronous"),
        ("store", "snapshot_every"),
        ("policy", "topic_name_pattern"),
        ("policy", "default_partitions"),
        ("policy", "max_partitions"),
        ("policy", "default_replication_factor"),
        ("policy", "max_replication_factor"),
        ("spool", "max_records_per_topic"),
        ("spool", "max_bytes_total"),
        ("publisher", "delivery_timeout_ms"),
        ("publisher", "compression"),
        ("publisher", "linger_ms"),
        ("publisher", "max_record_bytes"),
        ("watcher", "reconcile_interval_ms"),
        ("feeds", "buffer_frames"),
        ("feeds", "stall_timeout_ms"),
        ("feeds", "idle_consumer_ms"),
        ("feeds", "commit_interval_ms"),
        ("limits", "max_body_bytes"),
        ("limits", "max_ingest_body_bytes"),
        ("limits", "max_records_per_call"),
        ("limits", "max_record_bytes"),
        ("limits", "max_headers_per_record"),
        ("limits", "max_request_header_bytes"),
        ("limits", "max_feeds_per_user"),
        ("limits", "max_tcp_connections"),
        ("gateway", "listen"),
        ("gateway", "advertised_host"),
        ("gateway", "broker_port_base"),
        ("gateway", "request_unknown_topics"),
        ("limits", "max_tcp_connections_per_principal"),
        ("limits", "max_concurrent_http_requests"),
        ("limits", "retry_after_s"),
        ("limits", "unknown_key"),
        ("server", "shutdown_timeout_ms"),
        ("auth", "max_failures_per_minute"),
        ("server", "tls_cert"),
        ("server", "tls_key"),
        ("server", "cors_origins"),
        ("server", "worker_threads"),
    ];

    /// A TOML value of any type, with the numbers that break arithmetic.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            prop_oneof![
                Just(0i64),
                Just(-1),
                Just(1),
                Just(i64::MAX),
                Just(i64::MIN)
            ]
            .prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            ".{0,16}".prop_map(|s| toml::Value::String(s).to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("\"(\"".to_string()),
            Just("\"127.0.0.1:0\"".to_string()),
            Just("\"normal\"".to_string()),
            Just("\"zstd\"".to_string()),
        ]
    }

    fn edited_config() -> impl Strategy<Value = String> {
        proptest::collection::vec((proptest::sample::select(KEYS), toml_value()), 0..6).prop_map(
            |edits| {
                let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for ((section, key), value) in edits {
                    sections
                        .entry(section)
                        .or_default()
                        .push(format!("{key} = {value}"));
                }
                let mut text = sections.remove("").unwrap_or_default().join("\n");
                for (section, lines) in sections {
                    text.push_str(&format!("\n[{section}]\n{}\n", lines.join("\n")));
                }
                text.push_str(&format!(
                    "\n[[principals]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"{HASH}\"\n"
                ));
                text
            },
        )
    }

    proptest! {
        #[test]
        fn any_text_is_a_config_or_an_error(text in ".{0,200}") {
            let _ = Config::parse(&text, Overrides::default());
        }

        #[test]
        fn any_bytes_cut_from_a_config_are_a_config_or_an_error(
            text in edited_config(),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(text.len() + 1);
            let text = text.get(..cut).unwrap_or(&text);
            let _ = Config::parse(text, Overrides::default());
        }

        #[test]
        fn any_edit_is_a_valid_config_or_an_error(text in edited_config()) {
            if let Ok(config) = Config::parse(&text, Overrides::default()) {
                let limits = &config.limits;
                prop_assert!(limits.max_body_bytes >= 1 && limits.max_record_bytes >= 1);
                prop_assert!(limits.max_concurrent_http_requests >= 1);
                prop_assert!(config.policy.default_partitions <= config.policy.max_partitions);
            }
        }
    }

    #[test]
    fn limits_have_safe_defaults_and_the_older_record_key_still_works() {
        let principal = format!(
            "[[principals]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"{HASH}\"\n"
        );
        let config = Config::parse(&principal, Overrides::default()).expect("valid");
        assert_eq!(config.limits.max_record_bytes, 900_000);
        assert_eq!(config.limits.max_body_bytes, 64 * 1024);
        let older = format!("[publisher]\nmax_record_bytes = 1000\n{principal}");
        let config = Config::parse(&older, Overrides::default()).expect("valid");
        assert_eq!(config.limits.max_record_bytes, 1000);
        let newer =
            format!("[limits]\nmax_record_bytes = 2000\nmax_feeds_per_user = 2\n{principal}");
        let config = Config::parse(&newer, Overrides::default()).expect("valid");
        assert_eq!(config.limits.max_record_bytes, 2000);
        assert_eq!(config.limits.max_feeds_per_user, 2);
        let both = format!(
            "[publisher]\nmax_record_bytes = 1\n[limits]\nmax_record_bytes = 2\n{principal}"
        );
        assert!(Config::parse(&both, Overrides::default()).is_err());
        for zero in [
            "max_tcp_connections",
            "max_concurrent_http_requests",
            "max_body_bytes",
        ] {
            let text = format!("[limits]\n{zero} = 0\n{principal}");
            assert!(
                Config::parse(&text, Overrides::default()).is_err(),
                "{zero} = 0"
            );
        }
    }

    #[test]
    fn auth_defaults_and_the_jwt_table() {
        let config = Config::parse("", Overrides::default()).expect("valid");
        assert_eq!(config.auth.max_failures_per_minute, 30);
        assert!(config.auth.jwt.is_none());
        let text = "[auth]\nmax_failures_per_minute = 5\n[auth.jwt]\njwks_url = \"http://idp/jwks\"\nissuer = \"https://idp\"\naudience = \"kafflow\"\nroles_claim = \"realm_access.roles\"\n[auth.jwt.role_map]\n\"kafka-admins\" = \"admin\"\n";
        let config = Config::parse(text, Overrides::default()).expect("valid");
        assert_eq!(config.auth.max_failures_per_minute, 5);
        let jwt = config.auth.jwt.expect("jwt");
        assert_eq!(jwt.jwks, JwksSource::Url("http://idp/jwks".into()));
        assert_eq!(jwt.name_claim, "sub");
        assert_eq!(jwt.roles_claim, "realm_access.roles");
        assert_eq!(jwt.leeway_s, 30);
        assert_eq!(jwt.role_map.get("kafka-admins"), Some(&Role::Admin));
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn flags_override_the_file() {
        let text = format!(
            "listen = \"127.0.0.1:9000\"\n[kafka]\nbootstrap_servers = \"k:1\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n[[principals]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"{HASH}\"\n"
        );
        let config = Config::parse(
            &text,
            Overrides {
                bootstrap_servers: Some("b:2".into()),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.kafka.bootstrap_servers, "b:2");
        assert_eq!(config.kafka.properties["security.protocol"], "SSL");
        assert!(config.principals.authenticate("test").is_ok());
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            "[policy]\ntopic_name_pattern = \"(\"",
            "[policy]\ndefault_partitions = 10\nmax_partitions = 2",
            "[[principals]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"abc\"",
            "[[principals]]\nname = \"a\"\nroles = [\"wizard\"]\ntoken_sha256 = \"abc\"",
            "unknown_key = 1",
            "[store]\nsynchronous = \"sometimes\"",
            "[feeds]\nbuffer_frames = 0",
            "[feeds]\ncommit_interval_ms = 0",
            "[feeds]\ncommit_interval_ms = 60001",
            "[auth]\nmax_failures_per_minute = 0",
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"",
            "[auth.jwt]\njwks_file = \"j\"\njwks_url = \"http://x\"\nissuer = \"i\"\naudience = \"a\"",
            "[auth.jwt]\njwks_url = \"ftp://x\"\nissuer = \"i\"\naudience = \"a\"",
            "[auth.jwt]\njwks_file = \"j\"\nissuer = \"i\"\naudience = \"a\"\nleeway_s = 9999",
            "[auth.jwt]\njwks_file = \"j\"\nissuer = \"i\"\naudience = \"a\"\n[auth.jwt.role_map]\nx = \"wizard\"",
            "[server]\ntls_cert = \"c.pem\"",
            "[server]\ntls_key = \"k.pem\"",
            "[server]\ncors_origins = [\"*\"]",
            "[server]\ncors_origins = [\"https://a.example/console\"]",
            "[server]\ncors_origins = [\"a.example\"]",
            "[server]\nworker_threads = 0",
            "[publisher]\ncompression = \"brotli\"",
            "[publisher]\nlinger_ms = 900001",
        ] {
            assert!(Config::parse(bad, Overrides::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_feed_commit_interval() {
        let default = Config::parse("", Overrides::default()).expect("valid");
        assert_eq!(default.feeds.commit_interval_ms, 1_000);
        let set = Config::parse("[feeds]\ncommit_interval_ms = 200\n", Overrides::default())
            .expect("valid");
        assert_eq!(set.feeds.commit_interval_ms, 200);
    }

    #[test]
    fn the_publisher_codec_and_linger() {
        let default = Config::parse("", Overrides::default()).expect("valid");
        assert_eq!(default.publisher.compression, Compression::None);
        assert_eq!(default.publisher.linger_ms, 1);
        let set = Config::parse(
            "[publisher]\ncompression = \"zstd\"\nlinger_ms = 20\n",
            Overrides::default(),
        )
        .expect("valid");
        assert_eq!(set.publisher.compression.name(), "zstd");
        assert_eq!(set.publisher.linger_ms, 20);
    }

    #[test]
    fn tls_takes_both_files_from_the_flags_or_else_from_the_file() {
        let text = "[server]\ntls_cert = \"file.crt\"\ntls_key = \"file.key\"\n";
        let from_file = Config::parse(text, Overrides::default()).expect("valid");
        assert_eq!(
            from_file.tls,
            Some(TlsFiles {
                cert: "file.crt".into(),
                key: "file.key".into()
            })
        );
        let flags = Overrides {
            tls_cert: Some("flag.crt".into()),
            tls_key: Some("flag.key".into()),
            ..Default::default()
        };
        let from_flags = Config::parse(text, flags).expect("valid");
        assert_eq!(from_flags.tls.map(|t| t.cert), Some("flag.crt".into()));
        // A flag pair never mixes with a file half.
        let half = Overrides {
            tls_cert: Some("flag.crt".into()),
            ..Default::default()
        };
        let error = Config::parse(text, half).expect_err("refused").to_string();
        assert!(error.contains("needs its key"), "{error}");
        assert!(Config::parse("", Overrides::default())
            .expect("valid")
            .tls
            .is_none());
    }

    #[test]
    fn cors_origins_are_kept_as_browsers_send_them() {
        let text = "[server]\ncors_origins = [\"HTTPS://Console.Example:8443\", \"http://localhost:3000\"]\n";
        let config = Config::parse(text, Overrides::default()).expect("valid");
        assert_eq!(
            config.server.cors_origins,
            ["https://console.example:8443", "http://localhost:3000"]
        );
    }

    #[test]
    fn the_gateway_section_and_flag() {
        let base = "[kafka]\nbootstrap_servers = \"b:1\"\n";
        let off = Config::parse(base, Overrides::default()).expect("no gateway");
        assert_eq!(off.gateway.listen, None);
        let on = Config::parse(
            &format!("{base}[gateway]\nlisten = \"127.0.0.1:19092\"\nbroker_port_base = 19100\nrequest_unknown_topics = true\n"),
            Overrides::default(),
        )
        .expect("gateway");
        assert_eq!(
            on.gateway.listen,
            Some("127.0.0.1:19092".parse().expect("addr"))
        );
        assert_eq!(on.gateway.broker_port_base, Some(19100));
        assert!(on.gateway.request_unknown_topics);
        let flag = Config::parse(
            base,
            Overrides {
                gateway_listen: Some("127.0.0.1:0".parse().expect("addr")),
                ..Overrides::default()
            },
        )
        .expect("flag");
        assert_eq!(
            flag.gateway.listen,
            Some("127.0.0.1:0".parse().expect("addr"))
        );
        let sasl = Config::parse(
            "[kafka]\nbootstrap_servers = \"b:1\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n",
            Overrides::default(),
        );
        let Err(ConfigError::Invalid(why)) = sasl else {
            panic!("a gateway in front of a SASL_SSL-only cluster is refused: {sasl:?}");
        };
        assert!(why.contains("PLAINTEXT"), "{why}");
    }
}
