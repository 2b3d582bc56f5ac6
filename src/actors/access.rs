//! Access: who may send to and read a topic beyond its owner, and who owns it.
//!
//! The registry owns this state with the topics it guards (every decision needs the topic's
//! owner), so a check and the change it allows are one step in one actor. This file holds the
//! access part of `Governance`: access requests (`produce`, `consume`, and `ownership` for a
//! handover), the grants approved requests make, their events, and the registry's handlers
//! for them. The rules:
//!
//! - a producer sends records to a topic it owns or holds a `produce` grant on; a consumer
//!   reads an `open` topic, or a `restricted` one with a `consume` grant; an admin needs
//!   neither (its roles still gate);
//! - the topic's owner or an admin decides an access request, never its requester; an
//!   ownership request is approved by an admin or accepted by the principal it names;
//! - the owner or an admin revokes a grant; grants end with their topic (deleted, or its
//!   create request closed without a topic).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::governed_view::ProduceRoute;
use super::journal;
use super::registry::{Decision, Governance, Registry, TopicRoute, TopicStatus};
use crate::error::{Error, Result};
use crate::events::{Access, AuditScope, EventKind, NewEvent, Visibility};
use crate::identity::{Principal, Role};
use crate::paging::{Page, PageOf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessStatus {
    Pending,
    Approved,
    Rejected,
    Withdrawn,
}

impl AccessStatus {
    fn name(self) -> &'static str {
        match self {
            AccessStatus::Pending => "pending",
            AccessStatus::Approved => "approved",
            AccessStatus::Rejected => "rejected",
            AccessStatus::Withdrawn => "withdrawn",
        }
    }
}

/// An access or ownership request, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessRequest {
    pub id: Uuid,
    pub topic: String,
    pub access: Access,
    /// For `ownership`: who takes the topic over.
    pub to: Option<String>,
    pub reason: Option<String>,
    pub status: AccessStatus,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_note: Option<String>,
}

/// Where a grant sorts in lists: topic, user, access.
pub type GrantKey = (String, String, Access);

/// A right to send to (`produce`) or read (`consume`) a topic; its id is its request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub topic: String,
    pub user: String,
    pub access: Access,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
}

impl Grant {
    pub fn key(&self) -> GrantKey {
        (self.topic.clone(), self.user.clone(), self.access)
    }
}

/// The access part of the governance state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessBook {
    requests: BTreeMap<Uuid, AccessRequest>,
    grants: BTreeMap<Uuid, Grant>,
    /// (topic, user, access) to the grant: the check made for every batch of records.
    held: BTreeMap<(String, String, Access), Uuid>,
}

impl AccessBook {
    /// Drops every grant on `topic`: it was deleted, or will not exist.
    pub(super) fn end_grants(&mut self, topic: &str) {
        // Called for every create request that closes without a topic (most of a long log, each
        // in a replay): the grants on `topic` are found through the index, which sorts by
        // topic first, not by a walk over every grant; and with no grant at all, no key is made.
        if self.held.is_empty() {
            return;
        }
        let from = (topic.to_string(), String::new(), Access::Produce);
        let ended: Vec<Uuid> = self
            .held
            .range(from..)
            .take_while(|((t, _, _), _)| t == topic)
            .map(|(_, &id)| id)
            .collect();
        for id in ended {
            self.remove_grant(id);
        }
    }

    fn remove_grant(&mut self, id: Uuid) {
        if let Some(g) = self.grants.remove(&id) {
            self.held.remove(&(g.topic, g.user, g.access));
        }
    }

    /// The (user, topic) pairs granted `consume` that hold no such grant now: revoked, or
    /// ended with their topic.
    pub fn lost_consume_grants(&self) -> Vec<(String, String)> {
        let lost: std::collections::BTreeSet<(String, String)> = self
            .requests
            .values()
            .filter(|r| r.access == Access::Consume && r.status == AccessStatus::Approved)
            .filter(|r| !self.holds(&r.topic, &r.requested_by, Access::Consume))
            .map(|r| (r.requested_by.clone(), r.topic.clone()))
            .collect();
        lost.into_iter().collect()
    }

    /// Every topic with a grant on it.
    pub(super) fn granted_topics(&self) -> rustc_hash::FxHashSet<&str> {
        self.held
            .keys()
            .map(|(topic, _, _)| topic.as_str())
            .collect()
    }

    /// Every (user, access) granted on `topic`.
    pub(super) fn grants_on(&self, topic: &str) -> BTreeSet<(String, Access)> {
        // Keys sort by topic first; "" and `Produce` are the least user and access, so the
        // range starts at the topic's first grant.
        let from = (topic.to_string(), String::new(), Access::Produce);
        self.held
            .range(from..)
            .take_while(|((t, _, _), _)| t == topic)
            .map(|((_, user, access), _)| (user.clone(), *access))
            .collect()
    }

    pub fn holds(&self, topic: &str, user: &str, access: Access) -> bool {
        self.held
            .contains_key(&(topic.to_string(), user.to_string(), access))
    }

    pub fn request(&self, id: Uuid) -> Result<&AccessRequest> {
        self.requests
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("access request {id}")))
    }

    pub fn grant(&self, id: Uuid) -> Result<&Grant> {
        self.grants
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("grant {id}")))
    }

    fn open_request(&self, topic: &str, user: &str, access: Access) -> Option<Uuid> {
        self.requests
            .values()
            .find(|r| {
                r.status == AccessStatus::Pending
                    && r.topic == topic
                    && r.access == access
                    && (access == Access::Ownership || r.requested_by == user)
            })
            .map(|r| r.id)
    }

    pub fn requests(
        &self,
        filter: &AccessFilter,
        page: &PageOf<Uuid>,
    ) -> Page<Uuid, AccessRequest> {
        let rest = self
            .requests
            .range(page.range())
            .map(|(_, r)| r)
            .filter(|r| filter.status.is_none_or(|s| r.status == s))
            .filter(|r| filter.access.is_none_or(|a| r.access == a))
            .filter(|r| filter.topic.as_ref().is_none_or(|t| &r.topic == t))
            .filter(|r| {
                filter
                    .requested_by
                    .as_ref()
                    .is_none_or(|p| &r.requested_by == p)
            });
        Page::take(rest, page.limit, |r| r.id).map(AccessRequest::clone)
    }
}

impl Governance {
    /// Who owns `topic` now: the owner of the live topic; while a create request is open, its
    /// requester; otherwise the last owner it had (a deleted topic keeps its owner).
    pub fn owner_of(&self, topic: &str) -> Option<&str> {
        let live = self.topics.get(topic).filter(|t| {
            matches!(
                t.status,
                TopicStatus::Provisioning | TopicStatus::Active | TopicStatus::Deleting
            )
        });
        if let Some(t) = live {
            return Some(&t.owner);
        }
        let asked = self.open_request(topic).map(|r| r.requested_by.as_str());
        asked.or_else(|| self.topics.get(topic).map(|t| t.owner.as_str()))
    }

    fn owns_or_admin(&self, principal: &Principal, topic: &str) -> bool {
        principal.has(Role::Admin) || self.owner_of(topic) == Some(principal.name.as_str())
    }

    /// What the access rules read of `topic`, from this state; `None` for a topic KafFlow
    /// has never had a request for.
    pub(super) fn facts(&self, topic: &str) -> Option<TopicFacts> {
        let route = self.route_of(topic);
        if route == TopicRoute::Unknown {
            return None;
        }
        let shown = self.topic_or_pending(topic).ok().map(|t| Shown {
            status: t.status,
            visibility: t.visibility,
            partitions: t.partitions,
            replication_factor: t.replication_factor,
        });
        Some(TopicFacts {
            route,
            owner: self.owner_of(topic).map(str::to_string),
            shown,
            grants: self.access.grants_on(topic),
        })
    }

    /// Passes when `principal` may send records to `topic`. A topic that takes no records
    /// (unknown, closed) passes: the publisher gives the reason, after `?request=true` has had
    /// its chance. The role is checked by the caller.
    pub fn may_produce(&self, principal: &Principal, topic: &str) -> Result<()> {
        match produce_rule(self.facts(topic).as_ref(), principal, topic) {
            Err(Error::UnknownTopic(_) | Error::TopicClosed { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Passes when `principal` may subscribe to `topic` now: the topic is active, and open or
    /// granted. The role is checked by the caller.
    pub fn may_consume(&self, principal: &Principal, topic: &str) -> Result<()> {
        consume_rule(self.facts(topic).as_ref(), principal, topic)
    }

    /// What `principal` may read of the audit trail; `None` for everything (an admin).
    pub fn audit_scope(&self, principal: &Principal) -> Option<AuditScope> {
        if principal.has(Role::Admin) {
            return None;
        }
        let me = principal.name.as_str();
        let mut topics = BTreeSet::new();
        let mut request_ids = BTreeSet::new();
        for t in self.topics.values().filter(|t| t.owner == me) {
            topics.insert(t.name.clone());
        }
        for r in self.every_request().filter(|r| r.requested_by() == me) {
            request_ids.insert(r.id());
            if r.kind() == super::registry::RequestKind::Create {
                topics.insert(r.topic().to_string());
            }
        }
        for g in self.access.grants.values().filter(|g| g.user == me) {
            topics.insert(g.topic.clone());
        }
        for r in self.access.requests.values() {
            if r.requested_by == me || r.to.as_deref() == Some(me) {
                request_ids.insert(r.id);
            }
        }
        Some(AuditScope {
            topics: topics.into_iter().collect(),
            request_ids: request_ids.iter().map(Uuid::to_string).collect(),
            actor: me.to_string(),
        })
    }

    /// The grants `principal` may see, on `topic` or on every topic.
    pub fn grants_for(&self, principal: &Principal, topic: Option<&str>) -> Vec<Grant> {
        self.grants_page(principal, topic, &PageOf::all()).items
    }

    /// One page of the grants `principal` may see, by topic, then user, then access: the
    /// order of the `held` index, so a page costs its length plus the grants skipped.
    pub fn grants_page(
        &self,
        principal: &Principal,
        topic: Option<&str>,
        page: &PageOf<GrantKey>,
    ) -> Page<GrantKey, Grant> {
        let book = &self.access;
        // With a topic, start at its first grant unless the cursor is already past it; ""
        // and `Produce` are the least user and access.
        let first_of_topic = topic
            .filter(|t| {
                page.after
                    .as_ref()
                    .is_none_or(|(after, _, _)| after.as_str() < *t)
            })
            .map(|t| (t.to_string(), String::new(), Access::Produce));
        let range = match &first_of_topic {
            Some(first) => (Bound::Included(first), Bound::Unbounded),
            None => page.range(),
        };
        let rest = book
            .held
            .range(range)
            .take_while(|((t, _, _), _)| topic.is_none_or(|topic| t == topic))
            .filter_map(|(_, id)| book.grants.get(id))
            .filter(|g| g.user == principal.name || self.owns_or_admin(principal, &g.topic));
        Page::take(rest, page.limit, |g| g.key()).map(Grant::clone)
    }

    /// Turns an access event into state; called from `Governance::apply`.
    pub(super) fn apply_access(&mut self, topic: &str, id: Uuid, event: &NewEvent) {
        match &event.kind {
            EventKind::AccessRequested { access, to, reason } => {
                self.access.requests.insert(
                    id,
                    AccessRequest {
                        id,
                        topic: topic.to_string(),
                        access: *access,
                        to: to.clone(),
                        reason: reason.clone(),
                        status: AccessStatus::Pending,
                        requested_by: event.actor.clone(),
                        requested_at: event.at,
                        decided_by: None,
                        decided_at: None,
                        decision_note: None,
                    },
                );
            }
            EventKind::AccessApproved { note } => {
                let Some(request) = self.decide_access(id, AccessStatus::Approved, note, event)
                else {
                    return;
                };
                match (request.access, request.to) {
                    (Access::Ownership, Some(to)) => {
                        if let Some(t) = self.topics.get_mut(topic) {
                            t.owner = to;
                        }
                    }
                    (Access::Ownership, None) => {}
                    (access, _) => {
                        let key = (topic.to_string(), request.requested_by.clone(), access);
                        // One grant per user, topic and access: a newer one replaces it.
                        if let Some(old) = self.access.held.get(&key).copied() {
                            self.access.remove_grant(old);
                        }
                        self.access.held.insert(key, id);
                        self.access.grants.insert(
                            id,
                            Grant {
                                id,
                                topic: topic.to_string(),
                                user: request.requested_by,
                                access,
                                granted_by: event.actor.clone(),
                                granted_at: event.at,
                            },
                        );
                    }
                }
            }
            EventKind::AccessRejected { reason } => {
                self.decide_access(id, AccessStatus::Rejected, &Some(reason.clone()), event);
            }
            EventKind::AccessWithdrawn {} => {
                if let Some(r) = self.access.requests.get_mut(&id) {
                    r.status = AccessStatus::Withdrawn;
                }
            }
            EventKind::GrantRevoked { .. } => self.access.remove_grant(id),
            _ => {}
        }
    }

    fn decide_access(
        &mut self,
        id: Uuid,
        status: AccessStatus,
        note: &Option<String>,
        event: &NewEvent,
    ) -> Option<AccessRequest> {
        let r = self.access.requests.get_mut(&id)?;
        r.status = status;
        r.decided_by = Some(event.actor.clone());
        r.decided_at = Some(event.at);
        r.decision_note = note.clone();
        Some(r.clone())
    }

    /// The topic may still be asked for and granted: live, or asked for.
    fn require_grantable(&self, topic: &str) -> Result<()> {
        let found = self.topic_or_pending(topic)?;
        if matches!(found.status, TopicStatus::Failed | TopicStatus::Deleted) {
            let status = serde_json::to_value(found.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(Error::TopicNotActive {
                topic: topic.to_string(),
                status,
            });
        }
        Ok(())
    }

    /// The event an access command produces, if the state and the caller allow it.
    pub(super) fn access_event_for(&self, command: &AccessCommand) -> Result<NewEvent> {
        let event = |actor: &str, topic: &str, id: Uuid, kind| {
            NewEvent::now(actor, Some(topic), Some(id), kind)
        };
        match command {
            AccessCommand::File {
                principal,
                topic,
                access,
                reason,
            } => {
                let role = match access {
                    Access::Produce => Role::Producer,
                    Access::Consume => Role::Consumer,
                    Access::Ownership => {
                        return Err(Error::InvalidJson(
                            "access must be produce or consume; hand a topic over with POST /api/v1/topics/{name}/ownership-requests".into(),
                        ))
                    }
                };
                principal.require_any(&[role, Role::Admin])?;
                self.require_grantable(topic)?;
                let me = principal.name.as_str();
                if *access == Access::Produce && self.owner_of(topic) == Some(me) {
                    return Err(Error::AlreadyGranted(format!(
                        "{me} owns topic {topic} and needs no produce grant"
                    )));
                }
                if self.access.holds(topic, me, *access) {
                    return Err(Error::AlreadyGranted(format!(
                        "{me} already holds a {} grant on topic {topic}",
                        access.name()
                    )));
                }
                if let Some(request_id) = self.access.open_request(topic, me, *access) {
                    return Err(Error::RequestPending {
                        topic: topic.clone(),
                        request_id,
                    });
                }
                let kind = EventKind::AccessRequested {
                    access: *access,
                    to: None,
                    reason: reason.clone(),
                };
                Ok(event(me, topic, Uuid::now_v7(), kind))
            }
            AccessCommand::FileOwnership {
                principal,
                topic,
                to,
                reason,
            } => {
                let to = to.trim();
                if to.is_empty() {
                    return Err(Error::InvalidJson("\"to\" must name a principal".into()));
                }
                let t = self.topic(topic)?;
                if !self.owns_or_admin(principal, topic) {
                    return Err(Error::NotOwner("hand it over"));
                }
                if !matches!(
                    t.status,
                    TopicStatus::Provisioning | TopicStatus::Active | TopicStatus::Deleting
                ) {
                    return Err(Error::TopicNotActive {
                        topic: topic.clone(),
                        status: serde_json::to_value(t.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    });
                }
                if t.owner == to {
                    return Err(Error::AlreadyGranted(format!(
                        "{to} already owns topic {topic}"
                    )));
                }
                if let Some(request_id) = self.access.open_request(topic, to, Access::Ownership) {
                    return Err(Error::RequestPending {
                        topic: topic.clone(),
                        request_id,
                    });
                }
                let kind = EventKind::AccessRequested {
                    access: Access::Ownership,
                    to: Some(to.to_string()),
                    reason: reason.clone(),
                };
                Ok(event(&principal.name, topic, Uuid::now_v7(), kind))
            }
            AccessCommand::Decide {
                principal,
                id,
                decision,
            } => {
                let request = self.access.request(*id)?;
                if request.requested_by == principal.name {
                    return Err(Error::SelfApproval);
                }
                let may = match request.access {
                    Access::Ownership => {
                        principal.has(Role::Admin)
                            || request.to.as_deref() == Some(principal.name.as_str())
                    }
                    _ => self.owns_or_admin(principal, &request.topic),
                };
                if !may {
                    return Err(Error::NotOwner("decide its access requests"));
                }
                if request.status != AccessStatus::Pending {
                    return Err(Error::NotPending(request.status.name().to_string()));
                }
                let kind = match decision {
                    Decision::Approve { note } => {
                        self.require_grantable(&request.topic)?;
                        EventKind::AccessApproved { note: note.clone() }
                    }
                    Decision::Reject { reason } => EventKind::AccessRejected {
                        reason: reason.clone(),
                    },
                };
                Ok(event(&principal.name, &request.topic, *id, kind))
            }
            AccessCommand::Withdraw { principal, id } => {
                let request = self.access.request(*id)?;
                if request.requested_by != principal.name {
                    return Err(Error::NotRequester);
                }
                if request.status != AccessStatus::Pending {
                    return Err(Error::NotPending(request.status.name().to_string()));
                }
                let kind = EventKind::AccessWithdrawn {};
                Ok(event(&principal.name, &request.topic, *id, kind))
            }
        }
    }

    fn revoke_event_for(&self, msg: &RevokeGrant) -> Result<NewEvent> {
        let grant = self.access.grant(msg.id)?;
        if !self.owns_or_admin(&msg.principal, &grant.topic) {
            return Err(Error::NotOwner("revoke its grants"));
        }
        let kind = EventKind::GrantRevoked {
            user: grant.user.clone(),
            access: grant.access,
            reason: msg.reason.clone(),
        };
        Ok(NewEvent::now(
            &msg.principal.name,
            Some(&grant.topic),
            Some(grant.id),
            kind,
        ))
    }
}

/// Passes when `principal` may use the consumer group `group_id`: only ids that begin with its
/// own name and a dot (`dave.orders-reader`), so that nobody reads another team's offsets or
/// joins its group. Needs no state: the name alone decides.
pub fn may_use_group(principal: &Principal, group_id: &str) -> Result<()> {
    let own = group_id
        .strip_prefix(principal.name.as_str())
        .is_some_and(|rest| rest.starts_with('.'));
    if own {
        Ok(())
    } else {
        Err(Error::GroupNotAllowed {
            group: group_id.to_string(),
        })
    }
}

/// What the access rules read of one topic: who owns it, who holds which grant on it, and
/// where its records go. The registry's handlers build it from their committed state per
/// question; the governed view keeps one per topic, rebuilt from the committed state each
/// time an event of that topic commits. Both answer with the same rules below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicFacts {
    pub(crate) route: TopicRoute,
    /// `Governance::owner_of`: the live topic's owner, or the requester of its open create
    /// request.
    pub(crate) owner: Option<String>,
    /// The topic as `GET /topics/{name}` shows it, live or asked for; `None` when that finds
    /// nothing (its create request was closed without a topic).
    pub(crate) shown: Option<Shown>,
    /// (user, access) of every grant on the topic.
    pub(crate) grants: BTreeSet<(String, Access)>,
}

/// The part of a shown topic the rules and the Kafka metadata read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) status: TopicStatus,
    pub(crate) visibility: Visibility,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i32,
}

impl TopicFacts {
    fn owned_by(&self, principal: &Principal) -> bool {
        self.owner.as_deref() == Some(principal.name.as_str())
    }

    fn granted(&self, principal: &Principal, access: Access) -> bool {
        self.grants.contains(&(principal.name.clone(), access))
    }

    /// Whether `principal` holds any grant on the topic.
    pub(crate) fn granted_any(&self, principal: &Principal) -> bool {
        self.grants.iter().any(|(user, _)| user == &principal.name)
    }
}

/// Where records of `principal` for `topic` go, or why they may not be sent: the topic is
/// unknown (`unknown_topic`) or closed (`topic_closed`), or the principal neither owns it nor
/// holds a produce grant (`no_access`); an admin needs neither. The role is checked by the
/// caller. `facts` is `None` for a topic KafFlow does not know.
pub(crate) fn produce_rule(
    facts: Option<&TopicFacts>,
    principal: &Principal,
    topic: &str,
) -> Result<ProduceRoute> {
    let route = match facts.map(|f| &f.route) {
        Some(TopicRoute::Active) => ProduceRoute::Active,
        Some(TopicRoute::Pending) => ProduceRoute::Pending,
        Some(TopicRoute::Closed(why)) => {
            return Err(Error::TopicClosed {
                topic: topic.to_string(),
                why: why.clone(),
            })
        }
        None | Some(TopicRoute::Unknown) => return Err(Error::UnknownTopic(topic.to_string())),
    };
    let may = facts.is_some_and(|f| {
        principal.has(Role::Admin) || f.owned_by(principal) || f.granted(principal, Access::Produce)
    });
    if may {
        return Ok(route);
    }
    Err(Error::NoAccess(format!(
        "{} does not own topic {topic} and holds no produce grant on it; ask for one with POST /api/v1/access-requests",
        principal.name
    )))
}

/// Passes when `principal` may read `topic` now: it is active, and open, or restricted and
/// the principal holds a consume grant or is an admin. The role is checked by the caller.
pub(crate) fn consume_rule(
    facts: Option<&TopicFacts>,
    principal: &Principal,
    topic: &str,
) -> Result<()> {
    let Some((facts, shown)) = facts.and_then(|f| f.shown.map(|s| (f, s))) else {
        return Err(Error::NotFound(format!("topic {topic}")));
    };
    if shown.status != TopicStatus::Active {
        return Err(Error::TopicNotActive {
            topic: topic.to_string(),
            status: shown.status.name().to_string(),
        });
    }
    if shown.visibility == Visibility::Restricted
        && !principal.has(Role::Admin)
        && !facts.granted(principal, Access::Consume)
    {
        return Err(Error::NoAccess(format!(
            "topic {topic} is restricted and {} holds no consume grant on it; ask for one with POST /api/v1/access-requests",
            principal.name
        )));
    }
    Ok(())
}

/// A change to access state. The roles, the owner and the requester are checked against the
/// state in the step that records the change.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<AccessRequest>")]
pub enum AccessCommand {
    /// `produce` or `consume`, for the caller.
    File {
        principal: Principal,
        topic: String,
        access: Access,
        reason: Option<String>,
    },
    /// Hand `topic` over to `to`: its owner or an admin.
    FileOwnership {
        principal: Principal,
        topic: String,
        to: String,
        reason: Option<String>,
    },
    /// The topic's owner or an admin (for ownership: an admin or `to`), never the requester.
    Decide {
        principal: Principal,
        id: Uuid,
        decision: Decision,
    },
    /// Only the requester.
    Withdraw { principal: Principal, id: Uuid },
}

/// Revokes a grant: the topic's owner or an admin.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Grant>")]
pub struct RevokeGrant {
    pub principal: Principal,
    pub id: Uuid,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFilter {
    pub status: Option<AccessStatus>,
    pub access: Option<Access>,
    pub topic: Option<String>,
    pub requested_by: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<AccessRequest>")]
pub struct GetAccessRequest(pub Uuid);

#[derive(Message)]
#[rtype(result = "Page<Uuid, AccessRequest>")]
pub struct ListAccessRequests(pub AccessFilter, pub PageOf<Uuid>);

#[derive(Message)]
#[rtype(result = "Page<GrantKey, Grant>")]
pub struct ListGrants {
    pub principal: Principal,
    pub topic: Option<String>,
    pub page: PageOf<GrantKey>,
}

/// Whether `principal` may send records to `topic` now (committed state: a revocation that
/// was answered is seen).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct MayProduce {
    pub principal: Principal,
    pub topic: String,
}

/// Whether `principal` may subscribe to `topic` now.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct MayConsume {
    pub principal: Principal,
    pub topic: String,
}

#[derive(Message)]
#[rtype(result = "Option<AuditScope>")]
pub struct AuditScopeOf(pub Principal);

/// Who lost a `consume` grant (user, topic): the subscriptions actor ends what a revocation
/// committed just before a crash left behind.
#[derive(Message)]
#[rtype(result = "Vec<(String, String)>")]
pub struct LostConsumeGrants;

impl Handler<AccessCommand> for Registry {
    type Result = ResponseFuture<Result<AccessRequest>>;

    fn handle(&mut self, command: AccessCommand, ctx: &mut Context<Self>) -> Self::Result {
        let event = match self
            .journal
            .staged()
            .and_then(|state| state.access_event_for(&command))
        {
            Ok(event) => event,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let id = event.request_id.unwrap_or_default();
        let (reply, answer) = tokio::sync::oneshot::channel();
        journal::persist(self, ctx, vec![event], move |committed, result| {
            let _ = reply.send(result.and_then(|()| committed.access.request(id).cloned()));
        });
        Box::pin(async move { answer.await.unwrap_or(Err(Error::Unavailable)) })
    }
}

impl Handler<RevokeGrant> for Registry {
    type Result = ResponseFuture<Result<Grant>>;

    fn handle(&mut self, msg: RevokeGrant, ctx: &mut Context<Self>) -> Self::Result {
        let checked = self.journal.staged().and_then(|state| {
            let grant = state.access.grant(msg.id)?.clone();
            Ok((state.revoke_event_for(&msg)?, grant))
        });
        let (event, grant) = match checked {
            Ok(found) => found,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        journal::persist(self, ctx, vec![event], move |_, result| {
            let _ = reply.send(result.map(|()| grant));
        });
        Box::pin(async move { answer.await.unwrap_or(Err(Error::Unavailable)) })
    }
}

impl Handler<GetAccessRequest> for Registry {
    type Result = Result<AccessRequest>;

    fn handle(&mut self, msg: GetAccessRequest, _: &mut Context<Self>) -> Self::Result {
        self.state().access.request(msg.0).cloned()
    }
}

impl Handler<ListAccessRequests> for Registry {
    type Result = MessageResult<ListAccessRequests>;

    fn handle(&mut self, msg: ListAccessRequests, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().access.requests(&msg.0, &msg.1))
    }
}

impl Handler<ListGrants> for Registry {
    type Result = MessageResult<ListGrants>;

    fn handle(&mut self, msg: ListGrants, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.state()
                .grants_page(&msg.principal, msg.topic.as_deref(), &msg.page),
        )
    }
}

impl Handler<MayProduce> for Registry {
    type Result = Result<()>;

    fn handle(&mut self, msg: MayProduce, _: &mut Context<Self>) -> Self::Result {
        self.state().may_produce(&msg.principal, &msg.topic)
    }
}

impl Handler<MayConsume> for Registry {
    type Result = Result<()>;

    fn handle(&mut self, msg: MayConsume, _: &mut Context<Self>) -> Self::Result {
        self.state().may_consume(&msg.principal, &msg.topic)
    }
}

impl Handler<LostConsumeGrants> for Registry {
    type Result = MessageResult<LostConsumeGrants>;

    fn handle(&mut self, _: LostConsumeGrants, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().access.lost_consume_grants())
    }
}

impl Handler<AuditScopeOf> for Registry {
    type Result = MessageResult<AuditScopeOf>;

    fn handle(&mut self, msg: AuditScopeOf, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().audit_scope(&msg.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::registry::{Command, Outcome, RequestStatus};
    use crate::events::TopicSpec;

    fn who(name: &str, roles: &[Role]) -> Principal {
        Principal {
            name: name.into(),
            roles: roles.iter().copied().collect(),
        }
    }

    fn alice() -> Principal {
        who("alice", &[Role::Producer])
    }
    fn bob() -> Principal {
        who("bob", &[Role::Producer])
    }
    fn erin() -> Principal {
        who("erin", &[Role::Consumer])
    }
    fn carol() -> Principal {
        who("carol", &[Role::Admin])
    }

    fn step(state: &mut Governance, event: NewEvent) -> Uuid {
        let id = event.request_id.unwrap_or_default();
        state.apply(event);
        id
    }

    fn run(state: &mut Governance, command: AccessCommand) -> Result<AccessRequest> {
        let event = state.access_event_for(&command)?;
        let id = step(state, event);
        state.access.request(id).cloned()
    }

    /// A topic `name` asked for by alice; active when `active`.
    fn topic(state: &mut Governance, name: &str, visibility: Visibility, active: bool) {
        let spec = TopicSpec {
            partitions: 1,
            replication_factor: 1,
            config: Default::default(),
        };
        let file = Command::FileCreate {
            actor: "alice".into(),
            topic: name.into(),
            spec: spec.clone(),
            reason: None,
            visibility,
        };
        let event = state.event_for(&file).expect("filed");
        let id = step(state, event);
        if !active {
            return;
        }
        let approve = Command::Decide {
            principal: carol(),
            id,
            decision: Decision::Approve { note: None },
        };
        let event = state.event_for(&approve).expect("approved");
        step(state, event);
        let done = Command::RecordOutcome {
            id,
            outcome: Outcome::Provisioned {
                spec,
                already_existed: false,
            },
        };
        let event = state.event_for(&done).expect("done");
        step(state, event);
        assert_eq!(
            state.kept(id).expect("req").status(),
            RequestStatus::Completed
        );
    }

    fn ask(who: Principal, topic: &str, access: Access) -> AccessCommand {
        AccessCommand::File {
            principal: who,
            topic: topic.into(),
            access,
            reason: None,
        }
    }

    fn decide(who: Principal, id: Uuid) -> AccessCommand {
        AccessCommand::Decide {
            principal: who,
            id,
            decision: Decision::Approve { note: None },
        }
    }

    #[test]
    fn a_principal_uses_only_groups_named_after_itself() {
        let dave = who("dave", &[Role::Consumer]);
        assert!(may_use_group(&dave, "dave.orders-reader").is_ok());
        assert!(may_use_group(&dave, "dave.").is_ok());
        for other in [
            "dave",
            "davey.x",
            "erin.orders",
            "",
            ".dave",
            "x.dave.y",
            "Dave.x",
        ] {
            let refused = may_use_group(&dave, other);
            assert!(
                matches!(&refused, Err(Error::GroupNotAllowed { group }) if group == other),
                "{other:?}: {refused:?}"
            );
        }
        let refused = may_use_group(&dave, "erin.orders").expect_err("refused");
        assert_eq!(refused.code(), "group_not_allowed");
        assert!(refused
            .to_string()
            .contains("begins with its own name and a dot"));
    }

    #[test]
    fn a_revoked_consume_grant_is_lost_until_granted_again() {
        let mut s = Governance::default();
        topic(&mut s, "r", Visibility::Restricted, true);
        assert!(s.access.lost_consume_grants().is_empty());
        let r = run(&mut s, ask(erin(), "r", Access::Consume)).expect("filed");
        run(&mut s, decide(alice(), r.id)).expect("granted");
        assert!(s.access.lost_consume_grants().is_empty(), "erin holds it");
        let revoke = RevokeGrant {
            principal: alice(),
            id: r.id,
            reason: None,
        };
        let revoked = s.revoke_event_for(&revoke).expect("revoked");
        step(&mut s, revoked);
        assert_eq!(
            s.access.lost_consume_grants(),
            vec![("erin".to_string(), "r".to_string())]
        );
        let again = run(&mut s, ask(erin(), "r", Access::Consume)).expect("filed");
        run(&mut s, decide(carol(), again.id)).expect("granted again");
        assert!(s.access.lost_consume_grants().is_empty(), "granted again");
    }

    #[test]
    fn produce_needs_ownership_or_a_grant_and_revocation_ends_it() {
        let mut s = Governance::default();
        topic(&mut s, "t", Visibility::Open, true);
        assert!(s.may_produce(&alice(), "t").is_ok(), "the owner sends");
        assert!(matches!(
            s.may_produce(&bob(), "t"),
            Err(Error::NoAccess(_))
        ));
        assert!(
            s.may_produce(&bob(), "unknown").is_ok(),
            "publisher says unknown"
        );
        assert!(matches!(
            run(&mut s, ask(alice(), "t", Access::Produce)),
            Err(Error::AlreadyGranted(_))
        ));
        let r = run(&mut s, ask(bob(), "t", Access::Produce)).expect("filed");
        assert!(matches!(
            run(&mut s, ask(bob(), "t", Access::Produce)),
            Err(Error::RequestPending { .. })
        ));
        assert!(matches!(
            run(&mut s, decide(bob(), r.id)),
            Err(Error::SelfApproval)
        ));
        assert!(matches!(
            run(&mut s, decide(who("frank", &[Role::Producer]), r.id)),
            Err(Error::NotOwner(_))
        ));
        let r = run(&mut s, decide(alice(), r.id)).expect("owner approves");
        assert_eq!(r.status, AccessStatus::Approved);
        assert!(s.may_produce(&bob(), "t").is_ok());
        assert_eq!(s.grants_for(&bob(), None).len(), 1);
        assert!(s.grants_for(&who("frank", &[]), None).is_empty());
        let revoke = RevokeGrant {
            principal: bob(),
            id: r.id,
            reason: None,
        };
        assert!(matches!(
            s.revoke_event_for(&revoke),
            Err(Error::NotOwner(_))
        ));
        let revoke = RevokeGrant {
            principal: carol(),
            ..revoke
        };
        let event = s.revoke_event_for(&revoke).expect("admin revokes");
        step(&mut s, event);
        assert!(matches!(
            s.may_produce(&bob(), "t"),
            Err(Error::NoAccess(_))
        ));
        assert!(matches!(
            s.revoke_event_for(&revoke),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn restricted_topics_need_a_consume_grant_asked_for_while_pending() {
        let mut s = Governance::default();
        topic(&mut s, "r", Visibility::Restricted, false);
        let r = run(&mut s, ask(erin(), "r", Access::Consume)).expect("filed while pending");
        assert!(matches!(
            run(&mut s, ask(alice(), "r", Access::Consume)),
            Err(Error::Forbidden(_))
        ));
        run(&mut s, decide(alice(), r.id)).expect("the requester of the topic decides");
        assert!(matches!(
            s.may_consume(&erin(), "r"),
            Err(Error::TopicNotActive { .. })
        ));
        // The create request is approved and provisioned: the grant now works.
        let create = s.topic_or_pending("r").expect("pending").request_id;
        let approve = Command::Decide {
            principal: carol(),
            id: create,
            decision: Decision::Approve { note: None },
        };
        let event = s.event_for(&approve).expect("approved");
        step(&mut s, event);
        let done = Command::RecordOutcome {
            id: create,
            outcome: Outcome::Provisioned {
                spec: TopicSpec {
                    partitions: 1,
                    replication_factor: 1,
                    config: Default::default(),
                },
                already_existed: false,
            },
        };
        let event = s.event_for(&done).expect("done");
        step(&mut s, event);
        assert!(s.may_consume(&erin(), "r").is_ok());
        assert!(matches!(
            s.may_consume(&who("gina", &[Role::Consumer]), "r"),
            Err(Error::NoAccess(_))
        ));
        assert!(s.may_consume(&carol(), "r").is_ok(), "admins read all");
        topic(&mut s, "o", Visibility::Open, true);
        assert!(s.may_consume(&who("gina", &[Role::Consumer]), "o").is_ok());
    }

    #[test]
    fn ownership_passes_when_the_new_owner_accepts() {
        let mut s = Governance::default();
        topic(&mut s, "t", Visibility::Open, true);
        let hand = |who: Principal, to: &str| AccessCommand::FileOwnership {
            principal: who,
            topic: "t".into(),
            to: to.into(),
            reason: None,
        };
        assert!(matches!(
            run(&mut s, hand(bob(), "bob")),
            Err(Error::NotOwner(_))
        ));
        assert!(matches!(
            run(&mut s, hand(alice(), "alice")),
            Err(Error::AlreadyGranted(_))
        ));
        let r = run(&mut s, hand(alice(), "bob")).expect("filed");
        assert!(matches!(
            run(&mut s, hand(alice(), "frank")),
            Err(Error::RequestPending { .. })
        ));
        assert!(matches!(
            run(&mut s, decide(alice(), r.id)),
            Err(Error::SelfApproval)
        ));
        assert!(matches!(
            run(&mut s, decide(who("frank", &[Role::Producer]), r.id)),
            Err(Error::NotOwner(_))
        ));
        run(&mut s, decide(bob(), r.id)).expect("bob accepts");
        assert_eq!(s.topic("t").expect("topic").owner, "bob");
        assert!(s.may_produce(&bob(), "t").is_ok());
        assert!(matches!(
            s.may_produce(&alice(), "t"),
            Err(Error::NoAccess(_))
        ));
        let scope = s.audit_scope(&alice()).expect("scoped");
        assert!(
            scope.topics.contains(&"t".to_string()),
            "alice asked for it"
        );
        assert!(scope.request_ids.contains(&r.id.to_string()));
        assert!(s.audit_scope(&carol()).is_none());
        assert!(s.audit_scope(&erin()).expect("scoped").topics.is_empty());
    }

    #[test]
    fn grants_end_with_their_topic() {
        let mut s = Governance::default();
        // Topics whose names sort next to it keep theirs.
        for other in ["o", "pq"] {
            topic(&mut s, other, Visibility::Restricted, false);
            let r = run(&mut s, ask(bob(), other, Access::Produce)).expect("filed");
            run(&mut s, decide(carol(), r.id)).expect("approved");
        }
        topic(&mut s, "p", Visibility::Restricted, false);
        let r = run(&mut s, ask(bob(), "p", Access::Produce)).expect("filed");
        run(&mut s, decide(carol(), r.id)).expect("approved");
        let consume = run(&mut s, ask(erin(), "p", Access::Consume)).expect("filed");
        run(&mut s, decide(carol(), consume.id)).expect("approved");
        assert!(
            s.may_produce(&bob(), "p").is_ok(),
            "holds for a pending topic"
        );
        let create = s.topic_or_pending("p").expect("pending").request_id;
        let reject = Command::Decide {
            principal: carol(),
            id: create,
            decision: Decision::Reject {
                reason: "no".into(),
            },
        };
        let event = s.event_for(&reject).expect("rejected");
        step(&mut s, event);
        assert!(s.grants_for(&carol(), Some("p")).is_empty());
        assert!(s.access.grants_on("p").is_empty());
        for other in ["o", "pq"] {
            assert!(
                s.may_produce(&bob(), other).is_ok(),
                "{other} keeps its grant"
            );
        }
        assert!(matches!(
            run(&mut s, ask(erin(), "p", Access::Consume)),
            Err(Error::NotFound(_))
        ));
    }
}
