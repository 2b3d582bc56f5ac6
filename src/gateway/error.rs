//! The one mapping from domain errors to Kafka error codes (as `http::error` is for HTTP).

use crate::error::Error;

pub(crate) const NONE: i16 = 0;
pub(crate) const UNKNOWN_SERVER_ERROR: i16 = -1;
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub(crate) const RECORD_LIST_TOO_LARGE: i16 = 18;
pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub(crate) const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub(crate) const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
pub(crate) const INVALID_PARTITIONS: i16 = 37;
pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
pub(crate) const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
pub(crate) const INVALID_CONFIG: i16 = 40;
pub(crate) const INVALID_REQUEST: i16 = 42;
pub(crate) const POLICY_VIOLATION: i16 = 44;
pub(crate) const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
pub(crate) const INVALID_RECORD: i16 = 87;
pub(crate) const THROTTLING_QUOTA_EXCEEDED: i16 = 89;

/// The Kafka error code that tells a client what `error` means.
pub(crate) fn kafka_code(error: &Error) -> i16 {
    match error {
        Error::UnknownTopic(_) | Error::NotFound(_) => UNKNOWN_TOPIC_OR_PARTITION,
        Error::TopicClosed { .. }
        | Error::NoAccess(_)
        | Error::Forbidden(_)
        | Error::NotOwner(_)
        | Error::Unauthorized
        | Error::TokenRefused(_) => TOPIC_AUTHORIZATION_FAILED,
        Error::GroupNotAllowed { .. } => GROUP_AUTHORIZATION_FAILED,
        Error::InvalidTopicName(_) => INVALID_TOPIC_EXCEPTION,
        Error::InvalidPartitions(_) => INVALID_PARTITIONS,
        Error::InvalidReplicationFactor(_) => INVALID_REPLICATION_FACTOR,
        Error::InvalidConfig(_) => INVALID_CONFIG,
        Error::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        // An open request or a decision the caller cannot take: the policy says no.
        Error::RequestPending { .. }
        | Error::SelfApproval
        | Error::NotRequester
        | Error::NotPending(_)
        | Error::TopicNotActive { .. }
        | Error::ReasonRequired => POLICY_VIOLATION,
        Error::InvalidRecord(_) | Error::BadRecord { .. } => INVALID_RECORD,
        Error::PayloadTooLarge(_) | Error::TooLarge { .. } => RECORD_LIST_TOO_LARGE,
        Error::SpoolFull(_) | Error::StorageFull(_) | Error::Spool(_) => KAFKA_STORAGE_ERROR,
        Error::TooMany { .. } => THROTTLING_QUOTA_EXCEEDED,
        Error::InvalidJson(_) | Error::InvalidId(_) | Error::InvalidQuery(_) => INVALID_REQUEST,
        Error::InvalidTokenRequest(_)
        | Error::NameTaken(_)
        | Error::AlreadyRevoked(_)
        | Error::AlreadyGranted(_)
        | Error::UpgradeRequired => INVALID_REQUEST,
        Error::Internal(_)
        | Error::Store(_)
        | Error::Unavailable
        | Error::ConsumerUnavailable(_)
        | Error::KafkaRead(_) => UNKNOWN_SERVER_ERROR,
    }
}
