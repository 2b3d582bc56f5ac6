//! The approval actor: the rules of governance that do not depend on state. It checks the
//! roles a command needs and what a valid request looks like under the `[policy]`, then sends
//! the registry one command carrying the principal; the registry checks the rules that depend
//! on the state (self-approval, requester, owner) and records the change in the same step. On
//! an approval, once it is committed, the provisioner is told to do the work.

use std::collections::BTreeMap;

use actix::prelude::*;
use uuid::Uuid;

use super::provisioner::{Provision, Provisioner};
use super::registry::{Command, Decision, Registry, RequestStatus, TopicRequest, ValidateOnly};
use crate::config::Policy;
use crate::error::{Error, Result};
use crate::events::{TopicSpec, Visibility};
use crate::identity::{Principal, Role};

/// Kafka's own limit on a topic name's length.
const KAFKA_MAX_NAME_LEN: usize = 249;

/// `POST /api/v1/topic-requests`, as parsed: sizes and config still unchecked.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct RequestTopic {
    pub principal: Principal,
    pub topic: String,
    pub partitions: Option<i64>,
    pub replication_factor: Option<i64>,
    pub config: BTreeMap<String, serde_json::Value>,
    pub reason: Option<String>,
    /// `policy.default_visibility` when absent.
    pub visibility: Option<Visibility>,
    /// Run every check and answer with the request that would be filed, filing nothing.
    pub validate_only: bool,
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct RequestDeletion {
    pub principal: Principal,
    pub topic: String,
    pub reason: Option<String>,
    /// Run every check and answer with the request that would be filed, filing nothing.
    pub validate_only: bool,
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct Approve {
    pub principal: Principal,
    pub id: Uuid,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct Reject {
    pub principal: Principal,
    pub id: Uuid,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct Withdraw {
    pub principal: Principal,
    pub id: Uuid,
}

pub struct Approval {
    policy: Policy,
    registry: Addr<Registry>,
    provisioner: Addr<Provisioner>,
}

impl Approval {
    pub fn new(policy: Policy, registry: Addr<Registry>, provisioner: Addr<Provisioner>) -> Self {
        Approval {
            policy,
            registry,
            provisioner,
        }
    }
}

impl Actor for Approval {
    type Context = Context<Self>;
}

/// A reason that is present and not blank, trimmed.
fn required_reason(reason: Option<String>) -> Result<String> {
    match reason.map(|r| r.trim().to_string()) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(Error::ReasonRequired),
    }
}

fn optional_text(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// Kafka's rules for a topic name, then the policy's pattern.
pub fn check_topic_name(policy: &Policy, name: &str) -> Result<()> {
    let invalid = |why: &str| Err(Error::InvalidTopicName(format!("{name:?} {why}")));
    if name.is_empty() {
        return invalid("is empty");
    }
    if name.len() > KAFKA_MAX_NAME_LEN {
        return invalid("is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("is not allowed by Kafka");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    if name.starts_with("__") {
        return invalid("is reserved for Kafka's internal topics");
    }
    if let Some(pattern) = &policy.name_regex {
        if !pattern.is_match(name) {
            return Err(Error::InvalidTopicName(format!(
                "{name:?} does not match the policy pattern {}",
                policy.topic_name_pattern
            )));
        }
    }
    Ok(())
}

/// Fills defaults and checks limits.
pub fn check_spec(policy: &Policy, request: &RequestTopic) -> Result<TopicSpec> {
    let partitions = request
        .partitions
        .unwrap_or(i64::from(policy.default_partitions));
    if !(1..=i64::from(policy.max_partitions)).contains(&partitions) {
        return Err(Error::InvalidPartitions(format!(
            "{partitions} is outside 1..={}",
            policy.max_partitions
        )));
    }
    let replication_factor = request
        .replication_factor
        .unwrap_or(i64::from(policy.default_replication_factor));
    if !(1..=i64::from(policy.max_replication_factor)).contains(&replication_factor) {
        return Err(Error::InvalidReplicationFactor(format!(
            "{replication_factor} is outside 1..={}",
            policy.max_replication_factor
        )));
    }
    let mut config = BTreeMap::new();
    for (key, value) in &request.config {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
        if !key_ok {
            return Err(Error::InvalidConfig(format!(
                "{key:?} is not a Kafka config name"
            )));
        }
        let serde_json::Value::String(value) = value else {
            return Err(Error::InvalidConfig(format!(
                "the value of {key} must be a string, as Kafka takes it"
            )));
        };
        config.insert(key.clone(), value.clone());
    }
    // Both checked against i32 limits above.
    Ok(TopicSpec {
        partitions: partitions as i32,
        replication_factor: replication_factor as i32,
        config: config.into(),
    })
}

/// Files a request, or with `validate_only` runs the registry's checks of it and files nothing.
async fn file(
    registry: &Addr<Registry>,
    command: Command,
    validate_only: bool,
) -> Result<TopicRequest> {
    if validate_only {
        registry.send(ValidateOnly(command)).await?
    } else {
        registry.send(command).await?
    }
}

impl Handler<RequestTopic> for Approval {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: RequestTopic, _: &mut Context<Self>) -> Self::Result {
        let checked = msg
            .principal
            .require_any(&[Role::Producer, Role::Admin])
            .and_then(|_| check_topic_name(&self.policy, &msg.topic))
            .and_then(|_| check_spec(&self.policy, &msg));
        let registry = self.registry.clone();
        let visibility = msg.visibility.unwrap_or(self.policy.default_visibility);
        Box::pin(async move {
            let spec = checked?;
            let command = Command::FileCreate {
                actor: msg.principal.name,
                topic: msg.topic,
                spec,
                reason: optional_text(msg.reason),
                visibility,
            };
            file(&registry, command, msg.validate_only).await
        })
    }
}

impl Handler<RequestDeletion> for Approval {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: RequestDeletion, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            let reason = required_reason(msg.reason)?;
            let command = Command::FileDeletion {
                principal: msg.principal,
                topic: msg.topic,
                reason,
            };
            file(&registry, command, msg.validate_only).await
        })
    }
}

impl Handler<Approve> for Approval {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: Approve, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        let provisioner = self.provisioner.clone();
        Box::pin(async move {
            msg.principal.require_any(&[Role::Admin])?;
            let decision = Decision::Approve {
                note: optional_text(msg.note),
            };
            let request = registry
                .send(Command::Decide {
                    principal: msg.principal,
                    id: msg.id,
                    decision,
                })
                .await??;
            // The approval is committed: the Kafka work it owes may start.
            if request.status == RequestStatus::Approved {
                provisioner.do_send(Provision(request.clone()));
            }
            Ok(request)
        })
    }
}

impl Handler<Reject> for Approval {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: Reject, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            msg.principal.require_any(&[Role::Admin])?;
            let decision = Decision::Reject {
                reason: required_reason(msg.reason)?,
            };
            registry
                .send(Command::Decide {
                    principal: msg.principal,
                    id: msg.id,
                    decision,
                })
                .await?
        })
    }
}

impl Handler<Withdraw> for Approval {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: Withdraw, _: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            registry
                .send(Command::Withdraw {
                    principal: msg.principal,
                    id: msg.id,
                })
                .await?
        })
    }
}

/// The limits a topic request must keep, for forms that show them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub topic_name_pattern: String,
    pub default_partitions: i32,
    pub max_partitions: i32,
    pub default_replication_factor: i32,
    pub max_replication_factor: i32,
    pub default_visibility: Visibility,
}

#[derive(Message)]
#[rtype(result = "PolicyView")]
pub struct GetPolicy;

impl Handler<GetPolicy> for Approval {
    type Result = MessageResult<GetPolicy>;

    fn handle(&mut self, _: GetPolicy, _: &mut Context<Self>) -> Self::Result {
        let p = &self.policy;
        MessageResult(PolicyView {
            topic_name_pattern: p.topic_name_pattern.clone(),
            default_partitions: p.default_partitions,
            max_partitions: p.max_partitions,
            default_replication_factor: p.default_replication_factor,
            max_replication_factor: p.max_replication_factor,
            default_visibility: p.default_visibility,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut p = Policy {
            topic_name_pattern: "^[a-z][a-z0-9.-]*$".into(),
            max_partitions: 10,
            max_replication_factor: 3,
            ..Policy::default()
        };
        p.name_regex = regex::Regex::new(&p.topic_name_pattern).ok();
        p
    }

    fn request(partitions: Option<i64>, config: serde_json::Value) -> RequestTopic {
        RequestTopic {
            principal: Principal {
                name: "alice".into(),
                roles: [Role::Producer].into(),
            },
            topic: "orders".into(),
            partitions,
            replication_factor: None,
            config: serde_json::from_value(config).expect("map"),
            reason: None,
            visibility: None,
            validate_only: false,
        }
    }

    #[test]
    fn topic_names_follow_kafka_and_policy() {
        let p = policy();
        assert!(check_topic_name(&p, "orders.v1").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "Upper",
            "__consumer",
            "é",
            &"a".repeat(250),
        ] {
            assert!(
                matches!(check_topic_name(&p, bad), Err(Error::InvalidTopicName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spec_takes_defaults_and_enforces_limits() {
        let p = policy();
        let spec = check_spec(&p, &request(None, serde_json::json!({}))).expect("defaults");
        assert_eq!((spec.partitions, spec.replication_factor), (3, 1));
        assert!(matches!(
            check_spec(&p, &request(Some(11), serde_json::json!({}))),
            Err(Error::InvalidPartitions(_))
        ));
        assert!(matches!(
            check_spec(&p, &request(Some(0), serde_json::json!({}))),
            Err(Error::InvalidPartitions(_))
        ));
        assert!(matches!(
            check_spec(&p, &request(None, serde_json::json!({"retention.ms": 5}))),
            Err(Error::InvalidConfig(_))
        ));
        let spec = check_spec(
            &p,
            &request(Some(4), serde_json::json!({"retention.ms": "5"})),
        )
        .expect("valid");
        assert_eq!(&spec.config["retention.ms"], "5");
    }

    #[test]
    fn reasons_must_say_something() {
        assert!(matches!(required_reason(None), Err(Error::ReasonRequired)));
        assert!(matches!(
            required_reason(Some("  ".into())),
            Err(Error::ReasonRequired)
        ));
        assert_eq!(required_reason(Some(" ok ".into())).expect("reason"), "ok");
    }

    mod validate_only {
        use super::*;
        use crate::actors::event_store::EventStore;
        use crate::actors::registry::{Governance, ListRequests, Outcome, RequestKind};
        use crate::config::KafkaConfig;
        use crate::events::{Durability, Store};
        use crate::paging::PageOf;
        use crate::shutdown::Fatal;

        fn who(name: &str, roles: &[Role]) -> Principal {
            Principal {
                name: name.into(),
                roles: roles.iter().copied().collect(),
            }
        }

        fn ask(
            principal: Principal,
            topic: &str,
            partitions: Option<i64>,
            validate_only: bool,
        ) -> RequestTopic {
            RequestTopic {
                principal,
                topic: topic.into(),
                partitions,
                replication_factor: None,
                config: BTreeMap::new(),
                reason: None,
                visibility: None,
                validate_only,
            }
        }

        fn delete(principal: Principal, topic: &str, reason: Option<&str>) -> RequestDeletion {
            RequestDeletion {
                principal,
                topic: topic.into(),
                reason: reason.map(str::to_string),
                validate_only: true,
            }
        }

        /// The last seq of the log in `dir`: what was appended.
        fn appended(dir: &std::path::Path) -> u64 {
            crate::events::verify(dir).expect("chain").seq
        }

        #[actix::test]
        async fn a_validate_only_request_runs_every_check_and_appends_nothing() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path(), Durability::Normal).expect("open");
            let head = store.replay(|_| {}).expect("replay");
            let (writer, _thread) = store.into_writer(head).expect("writer");
            let events = EventStore::new(writer, Fatal::detached()).start();
            let registry = Registry::new(Governance::default(), events).start();
            // Never reached: nothing here is approved through the approval actor.
            let kafka = KafkaConfig {
                bootstrap_servers: "127.0.0.1:1".into(),
                ..KafkaConfig::default()
            };
            let provisioner = Provisioner::new(&kafka, registry.clone())
                .expect("provisioner")
                .start();
            let approval = Approval::new(policy(), registry.clone(), provisioner).start();
            let alice = who("alice", &[Role::Producer]);

            let would = approval
                .send(ask(alice.clone(), "orders", Some(4), true))
                .await
                .expect("alive")
                .expect("valid");
            assert_eq!(
                (
                    would.kind,
                    would.topic.as_str(),
                    would.partitions,
                    would.status
                ),
                (RequestKind::Create, "orders", 4, RequestStatus::Pending)
            );
            assert_eq!(would.requested_by, "alice");
            assert_eq!(appended(dir.path()), 0, "nothing is appended");
            let listed = registry
                .send(ListRequests(Default::default(), PageOf::all()))
                .await
                .expect("alive")
                .expect("listed")
                .items;
            assert!(listed.is_empty(), "nothing is filed");

            // The same refusals as a real request: role, name, policy.
            let refusals = [
                ask(who("erin", &[Role::Consumer]), "orders", None, true),
                ask(alice.clone(), "Bad Name", None, true),
                ask(alice.clone(), "orders", Some(11), true),
            ];
            let codes = ["forbidden", "invalid_topic_name", "invalid_partitions"];
            for (request, code) in refusals.into_iter().zip(codes) {
                let refused = approval.send(request).await.expect("alive");
                assert_eq!(refused.expect_err(code).code(), code);
            }

            // Against the registry's state: an open request is seen.
            let filed = approval
                .send(ask(alice.clone(), "orders", None, false))
                .await
                .expect("alive")
                .expect("filed");
            assert_eq!(appended(dir.path()), 1);
            let refused = approval
                .send(ask(alice.clone(), "orders", None, true))
                .await;
            assert!(matches!(
                refused.expect("alive"),
                Err(Error::RequestPending { request_id, .. }) if request_id == filed.id
            ));

            // Deletion: the reason, the topic's state and its owner are checked.
            let refused = approval
                .send(delete(alice.clone(), "orders", Some("done")))
                .await;
            assert_eq!(
                refused.expect("alive").expect_err("pending").code(),
                "not_found"
            );
            let carol = who("carol", &[Role::Admin]);
            for command in [
                Command::Decide {
                    principal: carol,
                    id: filed.id,
                    decision: Decision::Approve { note: None },
                },
                Command::RecordOutcome {
                    id: filed.id,
                    outcome: Outcome::Provisioned {
                        spec: filed.spec(),
                        already_existed: false,
                    },
                },
            ] {
                registry
                    .send(command)
                    .await
                    .expect("alive")
                    .expect("recorded");
            }
            let before = appended(dir.path());
            let refused = approval.send(delete(alice.clone(), "orders", None)).await;
            assert_eq!(
                refused.expect("alive").expect_err("no reason").code(),
                "reason_required"
            );
            let bob = who("bob", &[Role::Producer]);
            let refused = approval.send(delete(bob, "orders", Some("mine now"))).await;
            assert_eq!(
                refused.expect("alive").expect_err("not hers").code(),
                "not_owner"
            );
            let would = approval
                .send(delete(alice, "orders", Some("done")))
                .await
                .expect("alive")
                .expect("valid");
            assert_eq!(
                (would.kind, would.partitions, would.reason.as_deref()),
                (RequestKind::Delete, 3, Some("done"))
            );
            assert_eq!(appended(dir.path()), before, "nothing is appended");
            let open = registry
                .send(ListRequests(Default::default(), PageOf::all()))
                .await
                .expect("alive")
                .expect("listed")
                .items;
            assert!(
                open.iter().all(|r| r.kind == RequestKind::Create),
                "{open:?}"
            );
        }
    }
}
