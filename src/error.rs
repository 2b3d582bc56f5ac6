//! The crate's domain errors. Each has a stable `code`; `http::error` alone turns them into
//! HTTP statuses.

use crate::events::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A token of a known kind that is not (or no longer) good; the code says why.
    #[error("{0}")]
    TokenRefused(crate::identity::Refusal),
    #[error("invalid token request: {0}")]
    InvalidTokenRequest(String),
    #[error("{0} is the name of a principal of the config file")]
    NameTaken(String),
    #[error("token {0} is already revoked")]
    AlreadyRevoked(uuid::Uuid),
    /// Something that cannot happen did (no randomness from the OS, ...).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the requester of a request cannot decide it")]
    SelfApproval,
    #[error("only the requester can withdraw a request")]
    NotRequester,
    /// Says what only the topic's owner or an admin may do.
    #[error("only the topic's owner or an admin can {0}")]
    NotOwner(&'static str),
    /// The principal has the role, but not the right on this topic (no grant, not the owner).
    #[error("{0}")]
    NoAccess(String),
    #[error("{0}")]
    AlreadyGranted(String),
    /// A consumer group id a principal may not use: only its own name and a dot begin it.
    #[error("group {group:?} is not allowed: a principal may use only consumer groups whose id begins with its own name and a dot")]
    GroupNotAllowed { group: String },
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    #[error("a non-empty reason is required")]
    ReasonRequired,
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// A call carries more of something than one call may (records per call, ...).
    #[error("{what}: more than the limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("record {index}: {reason}")]
    BadRecord { index: usize, reason: String },
    #[error("topic {0} is not known; add ?request=true to ask for it")]
    UnknownTopic(String),
    #[error("topic {topic} takes no records: {why}")]
    TopicClosed { topic: String, why: String },
    #[error("spool full: {0}")]
    SpoolFull(String),
    #[error("spool: {0}")]
    Spool(String),
    #[error("invalid id: {0}")]
    InvalidId(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("topic {topic} already has an open request {request_id}")]
    RequestPending {
        topic: String,
        request_id: uuid::Uuid,
    },
    #[error("request is {0}, only a pending request can be changed")]
    NotPending(String),
    #[error("topic {topic} is {status}, not active")]
    TopicNotActive { topic: String, status: String },
    #[error("event log: {0}")]
    Store(StoreError),
    #[error("service is shutting down")]
    Unavailable,
    #[error("this route is a websocket: send an Upgrade request")]
    UpgradeRequired,
    #[error("cannot start the Kafka consumer: {0}")]
    ConsumerUnavailable(String),
    /// Kafka did not answer a read of records, metadata or offsets (browsing a topic).
    #[error("cannot read from Kafka: {0}")]
    KafkaRead(rdkafka::error::KafkaError),
    /// The disk under the data dir is full: nothing was made durable, nothing was applied.
    /// Retrying once space is freed succeeds without a restart.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// A configured limit was reached; the caller may retry after `retry_after_s` seconds.
    #[error("{what}: limit of {limit} reached")]
    TooMany {
        what: &'static str,
        limit: u64,
        retry_after_s: u64,
    },
}

impl Error {
    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized => "unauthorized",
            Error::TokenRefused(refusal) => refusal.code(),
            Error::InvalidTokenRequest(_) => "invalid_token_request",
            Error::NameTaken(_) => "name_taken",
            Error::AlreadyRevoked(_) => "already_revoked",
            Error::Internal(_) => "internal_error",
            Error::Forbidden(_) => "forbidden",
            Error::SelfApproval => "self_approval",
            Error::NotRequester => "not_requester",
            Error::NotOwner(_) => "not_owner",
            Error::NoAccess(_) => "no_access",
            Error::AlreadyGranted(_) => "already_granted",
            Error::GroupNotAllowed { .. } => "group_not_allowed",
            Error::InvalidTopicName(_) => "invalid_topic_name",
            Error::InvalidPartitions(_) => "invalid_partitions",
            Error::InvalidReplicationFactor(_) => "invalid_replication_factor",
            Error::InvalidConfig(_) => "invalid_config",
            Error::ReasonRequired => "reason_required",
            Error::InvalidJson(_) => "invalid_json",
            Error::PayloadTooLarge(_) | Error::TooLarge { .. } => "payload_too_large",
            Error::InvalidRecord(_) | Error::BadRecord { .. } => "invalid_record",
            Error::UnknownTopic(_) => "unknown_topic",
            Error::TopicClosed { .. } => "topic_closed",
            Error::SpoolFull(_) => "spool_full",
            Error::Spool(_) => "spool_error",
            Error::InvalidId(_) => "invalid_id",
            Error::InvalidQuery(_) => "invalid_query",
            Error::NotFound(_) => "not_found",
            Error::TopicExists(_) => "topic_exists",
            Error::RequestPending { .. } => "request_pending",
            Error::NotPending(_) => "not_pending",
            Error::TopicNotActive { .. } => "topic_not_active",
            Error::Store(_) => "store_error",
            Error::Unavailable => "unavailable",
            Error::UpgradeRequired => "upgrade_required",
            Error::ConsumerUnavailable(_) => "consumer_unavailable",
            Error::KafkaRead(_) => "kafka_unavailable",
            Error::StorageFull(_) => "storage_full",
            Error::TooMany { .. } => "too_many_requests",
        }
    }
}

impl From<StoreError> for Error {
    /// A full disk is the caller's `storage_full`; anything else is the log's own error.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full(why) => Error::StorageFull(why),
            other => Error::Store(other),
        }
    }
}

impl From<actix::MailboxError> for Error {
    fn from(_: actix::MailboxError) -> Self {
        Error::Unavailable
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
