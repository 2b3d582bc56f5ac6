use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TopicConfig;
use crate::identity::Role;

/// Version of the `data` layout written with each event. Replay reads every older version
/// through `upcast`, and refuses versions it does not know.
///
/// - 1: KafFlow 0.1.
/// - 2: `held_discarded` names the last spool id it discards (`up_to_id`), because the event
///   is now committed before the rows are deleted. A version 1 discard was finished before its
///   event was written, so it reads as `up_to_id: null` (nothing left to finish).
/// - 3: the `data` layout of 2; the row's hash input is its column bytes with length prefixes
///   instead of their JSON encoding (see `store.rs` and docs/architecture.md). Rows of 1 and 2
///   keep verifying with the JSON input.
pub const EVENT_VERSION: u32 = 3;

/// Whether `upcast` would change (or refuse) the `data` of a `kind` event stored at `version`;
/// replay parses the others straight into the current layout.
pub(crate) fn needs_upcast(version: u32, kind: &str) -> bool {
    version == 0 || version > EVENT_VERSION || (version < 2 && kind == "held_discarded")
}

/// Rewrites the `data` of an event stored at `version` into the current layout. The stored
/// row (and so its hash) is never changed; only what replay decodes.
pub(crate) fn upcast(
    version: u32,
    kind: &str,
    mut data: serde_json::Value,
) -> Result<serde_json::Value, String> {
    if version == 0 || version > EVENT_VERSION {
        return Err(format!("unknown event version {version}"));
    }
    if version < 2 && kind == "held_discarded" {
        if let Some(fields) = data.as_object_mut() {
            fields.entry("up_to_id").or_insert(serde_json::Value::Null);
        }
    }
    Ok(data)
}

/// The shape of a topic as requested and as provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub partitions: i32,
    pub replication_factor: i32,
    #[serde(default)]
    pub config: TopicConfig,
}

/// Who may read a topic: any consumer (`open`), or holders of a `consume` grant.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Also what topics requested before visibility existed read as.
    #[default]
    Open,
    Restricted,
}

/// What an access request asks for: a grant to send or to read, or the topic itself.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Produce,
    Consume,
    Ownership,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Produce => "produce",
            Access::Consume => "consume",
            Access::Ownership => "ownership",
        }
    }
}

/// Everything that can happen to governance state. The serde tag is the event's `kind` column
/// and the content is its `data` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventKind {
    /// A principal asked for a new topic.
    TopicRequested {
        #[serde(flatten)]
        spec: TopicSpec,
        reason: Option<String>,
        /// Absent in events written before visibility existed: those topics are open.
        #[serde(default)]
        visibility: Visibility,
    },
    /// A principal asked for an active topic to be deleted.
    DeletionRequested { reason: String },
    /// An administrator approved a pending request; Kafka work is now owed.
    RequestApproved { note: Option<String> },
    /// An administrator declined a pending request.
    RequestRejected { reason: String },
    /// The requester took a pending request back.
    RequestWithdrawn {},
    /// The topic exists in Kafka with the requested shape.
    TopicProvisioned {
        #[serde(flatten)]
        spec: TopicSpec,
        /// True when Kafka already had the topic (a retry after a crash, or a manual create).
        already_existed: bool,
    },
    /// Kafka refused the topic for good (bad config, shape conflict, ...).
    ProvisioningFailed { error: String },
    /// The topic is gone from Kafka.
    TopicDeleted { already_absent: bool },
    /// Kafka refused to delete the topic for good.
    DeletionFailed { error: String },
    /// An admin discarded the dead-lettered records of a topic: `count` of them, the dead
    /// records of the topic up to spool id `up_to_id`. The spool deletes them after the commit
    /// (at the next start if a crash came in between). Events written before `up_to_id`
    /// existed have none: their rows were deleted before the event.
    HeldDiscarded {
        count: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up_to_id: Option<i64>,
    },
    /// The watcher found the cluster out of line with KafFlow (`drift` names how).
    DriftDetected { drift: String, detail: String },
    /// A drift the watcher had reported is gone.
    DriftResolved { drift: String },
    /// A consumer (the actor) subscribed to the topic.
    Subscribed {},
    /// A subscription ended: the consumer's own (`reason` "user"), or, with actor `system`,
    /// every subscription to a deleted topic (`reason` "topic_deleted").
    Unsubscribed {
        reason: String,
        /// With actor `system`: the one user whose subscription ended (`reason`
        /// "grant_revoked"); absent when every reader of the topic lost it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// A principal (the actor) asked for access to the topic (`request_id` is the request):
    /// a `produce` or `consume` grant, or, for `ownership`, that the topic pass to `to`.
    AccessRequested {
        access: Access,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        reason: Option<String>,
    },
    /// The owner, an admin, or (for ownership) the new owner approved the access request: a
    /// grant with the request's id now exists, or the topic has its new owner.
    AccessApproved { note: Option<String> },
    /// The access request was declined.
    AccessRejected { reason: String },
    /// The requester took the access request back.
    AccessWithdrawn {},
    /// The grant `request_id` of `user` was revoked by the owner or an admin (the actor).
    GrantRevoked {
        user: String,
        access: Access,
        reason: Option<String>,
    },
    /// An admin (the actor) issued a bearer token. Only the SHA-256 of its secret is kept.
    TokenIssued {
        token_id: Uuid,
        name: String,
        roles: BTreeSet<Role>,
        sha256: String,
        expires_at: Option<DateTime<Utc>>,
    },
    /// An admin (the actor) revoked an issued token.
    TokenRevoked { token_id: Uuid },
}

impl EventKind {
    /// The `kind` column for this event.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::TopicRequested { .. } => "topic_requested",
            EventKind::DeletionRequested { .. } => "deletion_requested",
            EventKind::RequestApproved { .. } => "request_approved",
            EventKind::RequestRejected { .. } => "request_rejected",
            EventKind::RequestWithdrawn {} => "request_withdrawn",
            EventKind::TopicProvisioned { .. } => "topic_provisioned",
            EventKind::ProvisioningFailed { .. } => "provisioning_failed",
            EventKind::TopicDeleted { .. } => "topic_deleted",
            EventKind::DeletionFailed { .. } => "deletion_failed",
            EventKind::HeldDiscarded { .. } => "held_discarded",
            EventKind::DriftDetected { .. } => "drift_detected",
            EventKind::DriftResolved { .. } => "drift_resolved",
            EventKind::Subscribed {} => "subscribed",
            EventKind::Unsubscribed { .. } => "unsubscribed",
            EventKind::TokenIssued { .. } => "token_issued",
            EventKind::TokenRevoked { .. } => "token_revoked",
            EventKind::AccessRequested { .. } => "access_requested",
            EventKind::AccessApproved { .. } => "access_approved",
            EventKind::AccessRejected { .. } => "access_rejected",
            EventKind::AccessWithdrawn {} => "access_withdrawn",
            EventKind::GrantRevoked { .. } => "grant_revoked",
        }
    }

    /// Splits the event into its `kind` and its `data` JSON.
    pub(crate) fn to_columns(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        let mut value = serde_json::to_value(self)?;
        let data = value
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_else(|| serde_json::json!({}));
        Ok((self.name().to_string(), data))
    }

    /// Rebuilds an event from its `kind` column and its `data` column as stored, in the current
    /// layout, parsing `data` in place: no `{"kind": .., "data": ..}` copy to parse, and the
    /// two kinds with a flattened `TopicSpec` through a plain struct (serde's `flatten` buffers
    /// every field of the object before it reads any).
    pub(crate) fn from_data(kind: &str, data: &str) -> Result<Self, serde_json::Error> {
        match kind {
            "topic_requested" => {
                let d: TopicRequestedData = parse_data(data)?;
                Ok(EventKind::TopicRequested {
                    spec: TopicSpec {
                        partitions: d.partitions,
                        replication_factor: d.replication_factor,
                        config: d.config,
                    },
                    reason: d.reason,
                    visibility: d.visibility,
                })
            }
            "topic_provisioned" => {
                let d: TopicProvisionedData = parse_data(data)?;
                Ok(EventKind::TopicProvisioned {
                    spec: TopicSpec {
                        partitions: d.partitions,
                        replication_factor: d.replication_factor,
                        config: d.config,
                    },
                    already_existed: d.already_existed,
                })
            }
            _ => EventKind::deserialize(KindAndData { kind, data }),
        }
    }

    /// Rebuilds an event from its `kind` and `data` columns.
    pub(crate) fn from_columns(
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "data": data }))
    }
}

fn parse_data<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(data)
}

/// The `data` of `topic_requested`, as `EventKind::TopicRequested` reads it with its flattened
/// spec (unknown fields ignored, the same defaults).
#[derive(Deserialize)]
struct TopicRequestedData {
    partitions: i32,
    replication_factor: i32,
    #[serde(default)]
    config: TopicConfig,
    reason: Option<String>,
    #[serde(default)]
    visibility: Visibility,
}

/// The `data` of `topic_provisioned` (see `TopicRequestedData`).
#[derive(Deserialize)]
struct TopicProvisionedData {
    partitions: i32,
    replication_factor: i32,
    #[serde(default)]
    config: TopicConfig,
    already_existed: bool,
}

/// The two columns of an event as the map `{"kind": kind, "data": data}` that `EventKind`'s
/// derived (adjacently tagged) `Deserialize` reads: the kind first, so the variant is known
/// before its content, which is then parsed straight from the stored text.
struct KindAndData<'a> {
    kind: &'a str,
    data: &'a str,
}

impl<'de> serde::Deserializer<'de> for KindAndData<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(KindAndDataFields {
            columns: self,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct KindAndDataFields<'a> {
    columns: KindAndData<'a>,
    /// 0 before `kind`, 1 before `data`, 2 at the end.
    next: u8,
}

impl<'de> serde::de::MapAccess<'de> for KindAndDataFields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.next {
            0 => "kind",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.next += 1;
        if self.next == 1 {
            return seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(
                self.columns.kind,
            ));
        }
        let mut data = serde_json::Deserializer::from_str(self.columns.data);
        let value = seed.deserialize(&mut data)?;
        data.end()?;
        Ok(value)
    }
}

/// An event about to be appended: the store gives it its `seq` and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub topic: Option<String>,
    pub request_id: Option<Uuid>,
    pub kind: EventKind,
}

impl NewEvent {
    pub fn now(
        actor: &str,
        topic: Option<&str>,
        request_id: Option<Uuid>,
        kind: EventKind,
    ) -> Self {
        // Microsecond precision: what the log keeps, so live and replayed state agree exactly.
        let now = Utc::now();
        let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        NewEvent {
            id: Uuid::now_v7(),
            at,
            actor: actor.to_string(),
            topic: topic.map(str::to_string),
            request_id,
            kind,
        }
    }

    pub fn with_seq(self, seq: u64) -> Event {
        Event { seq, body: self }
    }
}

/// An event as it stands in the log: its place in the chain and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub body: NewEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_for_every_kind() {
        let spec = TopicSpec {
            partitions: 3,
            replication_factor: 1,
            config: [("retention.ms", "1000")].into(),
        };
        let kinds = vec![
            EventKind::TopicRequested {
                spec: spec.clone(),
                reason: Some("orders".into()),
                visibility: Visibility::Restricted,
            },
            EventKind::DeletionRequested {
                reason: "gone".into(),
            },
            EventKind::RequestApproved { note: None },
            EventKind::RequestRejected {
                reason: "no".into(),
            },
            EventKind::RequestWithdrawn {},
            EventKind::TopicProvisioned {
                spec,
                already_existed: true,
            },
            EventKind::ProvisioningFailed { error: "x".into() },
            EventKind::TopicDeleted {
                already_absent: false,
            },
            EventKind::DeletionFailed { error: "y".into() },
            EventKind::HeldDiscarded {
                count: 3,
                up_to_id: Some(7),
            },
            EventKind::HeldDiscarded {
                count: 0,
                up_to_id: None,
            },
            EventKind::DriftDetected {
                drift: "missing_in_kafka".into(),
                detail: "gone".into(),
            },
            EventKind::DriftResolved {
                drift: "missing_in_kafka".into(),
            },
            EventKind::Subscribed {},
            EventKind::Unsubscribed {
                reason: "topic_deleted".into(),
                user: None,
            },
            EventKind::Unsubscribed {
                reason: "grant_revoked".into(),
                user: Some("erin".into()),
            },
            EventKind::AccessRequested {
                access: Access::Consume,
                to: None,
                reason: Some("dashboards".into()),
            },
            EventKind::AccessRequested {
                access: Access::Ownership,
                to: Some("bob".into()),
                reason: None,
            },
            EventKind::AccessApproved { note: None },
            EventKind::AccessRejected {
                reason: "no".into(),
            },
            EventKind::AccessWithdrawn {},
            EventKind::GrantRevoked {
                user: "erin".into(),
                access: Access::Consume,
                reason: None,
            },
            EventKind::TokenIssued {
                token_id: Uuid::now_v7(),
                name: "loader".into(),
                roles: BTreeSet::from([Role::Producer, Role::Consumer]),
                sha256: "ab".repeat(32),
                expires_at: Some(Utc::now()),
            },
            EventKind::TokenRevoked {
                token_id: Uuid::now_v7(),
            },
        ];
        for kind in kinds {
            let (name, data) = kind.to_columns().expect("serialize");
            assert_eq!(name, kind.name());
            assert_eq!(
                EventKind::from_data(&name, &data.to_string()).expect("parse in place"),
                kind
            );
            assert_eq!(EventKind::from_columns(&name, data).expect("parse"), kind);
        }
    }

    #[test]
    fn version_1_discards_read_as_finished() {
        let data = upcast(1, "held_discarded", serde_json::json!({"count": 4})).expect("v1");
        assert_eq!(data, serde_json::json!({"count": 4, "up_to_id": null}));
        let kind = EventKind::from_columns("held_discarded", data).expect("decodes");
        assert!(matches!(
            kind,
            EventKind::HeldDiscarded {
                count: 4,
                up_to_id: None
            }
        ));
        // Other kinds pass unchanged; versions from the future are refused.
        let same = serde_json::json!({"reason": "x"});
        assert_eq!(
            upcast(1, "request_rejected", same.clone()).expect("v1"),
            same
        );
        assert!(upcast(EVENT_VERSION + 1, "request_rejected", same).is_err());
    }

    #[test]
    fn held_discarded_without_up_to_id_still_reads() {
        let old = EventKind::from_columns("held_discarded", serde_json::json!({"count": 31}));
        assert_eq!(
            old.expect("parse"),
            EventKind::HeldDiscarded {
                count: 31,
                up_to_id: None
            }
        );
    }

    #[test]
    fn topic_requests_before_visibility_read_as_open() {
        let old = serde_json::json!({"partitions": 1, "replication_factor": 1, "reason": null});
        let kind = EventKind::from_columns("topic_requested", old).expect("parse");
        assert!(matches!(
            kind,
            EventKind::TopicRequested {
                visibility: Visibility::Open,
                ..
            }
        ));
        let old = EventKind::from_columns("unsubscribed", serde_json::json!({"reason": "user"}));
        assert!(matches!(
            old.expect("parse"),
            EventKind::Unsubscribed { user: None, .. }
        ));
    }

    #[test]
    fn older_layouts_read_in_place_as_through_the_value() {
        for (kind, data) in [
            (
                "topic_requested",
                r#"{"partitions":1,"replication_factor":1,"reason":null}"#,
            ),
            (
                "topic_requested",
                r#"{"partitions":2,"replication_factor":1,"config":{"b":"1","a":"2","b":"3"},"reason":"x","visibility":"restricted","extra":[1]}"#,
            ),
            (
                "topic_provisioned",
                r#"{"partitions":1,"replication_factor":1,"already_existed":false}"#,
            ),
            ("unsubscribed", r#"{"reason":"user"}"#),
            ("held_discarded", r#"{"count":31}"#),
        ] {
            let value: serde_json::Value = serde_json::from_str(data).expect("json");
            assert_eq!(
                EventKind::from_data(kind, data).expect("in place"),
                EventKind::from_columns(kind, value).expect("value"),
                "{kind} {data}"
            );
        }
        assert!(EventKind::from_data("topic_requested", r#"{"partitions":1}"#).is_err());
        assert!(EventKind::from_data("request_rejected", r#"{"reason":"x"} x"#).is_err());
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert!(EventKind::from_data("topic_exploded", "{}").is_err());
        assert!(EventKind::from_columns("topic_exploded", serde_json::json!({})).is_err());
    }
}
