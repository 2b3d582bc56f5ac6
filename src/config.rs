//! The config file, with flag overrides, validated once at startup.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::events::Durability;
use crate::identity::{Directory, Principal, Role};

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
    pub policy: Policy,
    pub principals: Directory,
    pub spool: SpoolLimits,
    pub publisher: PublisherConfig,
    pub watcher: WatcherConfig,
    pub feeds: FeedConfig,
    pub server: ServerConfig,
}

/// How the service as a whole behaves (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// On SIGTERM or Ctrl-C, how long in-flight work may take to be answered before the
    /// service stops anyway.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

fn default_shutdown_timeout_ms() -> u64 {
    10_000
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
    /// Largest record value accepted, in bytes.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            delivery_timeout_ms: default_delivery_timeout_ms(),
            max_record_bytes: default_max_record_bytes(),
        }
    }
}

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
    /// Frames a feed may have waiting for its socket before the user's partitions pause.
    #[serde(default = "default_buffer_frames")]
    pub buffer_frames: usize,
    /// A feed with frames waiting that writes nothing for this long is closed.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// A user's consumer stops after this long without a feed.
    #[serde(default = "default_idle_consumer_ms")]
    pub idle_consumer_ms: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            buffer_frames: default_buffer_frames(),
            stall_timeout_ms: default_stall_timeout_ms(),
            idle_consumer_ms: default_idle_consumer_ms(),
        }
    }
}

fn default_buffer_frames() -> usize {
    1000
}
fn default_stall_timeout_ms() -> u64 {
    30_000
}
fn default_idle_consumer_ms() -> u64 {
    30_000
}

fn validate_feeds(feeds: FeedConfig) -> Result<FeedConfig, ConfigError> {
    if feeds.buffer_frames == 0 || feeds.stall_timeout_ms == 0 {
        return Err(ConfigError::Invalid(
            "feeds.buffer_frames and feeds.stall_timeout_ms must be at least 1".into(),
        ));
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    synchronous: Durability,
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
        if let Some(servers) = overrides.bootstrap_servers {
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
        if file.publisher.max_record_bytes == 0 || file.publisher.delivery_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "publisher.max_record_bytes and publisher.delivery_timeout_ms must be positive"
                    .into(),
            ));
        }
        let principals = validate_principals(file.principals)?;
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
            policy,
            principals,
            spool: file.spool,
            publisher: file.publisher,
            watcher: file.watcher,
            feeds: validate_feeds(file.feeds)?,
            server: file.server,
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
        ] {
            assert!(Config::parse(bad, Overrides::default()).is_err(), "{bad}");
        }
    }
}
