//! The registry: owner of governance state (requests and topics).
//!
//! It is the single writer of governance events, through its journal: a command is checked
//! against the staged state (committed plus in flight, so concurrent commands see each other
//! and are group-committed), including who may do it (the self-approval, requester and owner
//! rules travel with the command, so the check and the change are one step); its event is
//! persisted; and only then applied to the committed state that every query reads, and the
//! caller answered. A failed commit changes nothing that anyone can see.
//!
//! Access requests, grants and ownership are part of the same state (every access decision
//! needs the topic's owner); their types, commands and handlers are in `access`.

use std::collections::btree_map::{Entry, OccupiedEntry};
use std::collections::{BTreeMap, BTreeSet};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::AccessBook;
use super::event_store::{EventStore, RequestEvents};
pub use super::governed_view::{GovernedView, ProduceRoute, VisibleStatus, VisibleTopic};
use super::history::{Decided, History};
use super::journal::{self, Journal, Journaled, Journaling, Owner};
use crate::error::{Error, Result};
use crate::events::{EventKind, NewEvent, TopicConfig, TopicSpec, Visibility};
use crate::identity::{Principal, Role};
use crate::paging::{Page, PageOf};

/// The principal name on events that KafFlow itself caused.
pub const SYSTEM: &str = "system";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Create,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for an administrator.
    Pending,
    /// Decided; the Kafka work is under way.
    Approved,
    Rejected,
    Withdrawn,
    /// Done in Kafka.
    Completed,
    Failed,
}

impl RequestStatus {
    fn name(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Withdrawn => "withdrawn",
            RequestStatus::Completed => "completed",
            RequestStatus::Failed => "failed",
        }
    }

    /// Pending or approved: the request still has something to do.
    pub(super) fn is_open(self) -> bool {
        matches!(self, RequestStatus::Pending | RequestStatus::Approved)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopicStatus {
    /// Asked for and not yet approved: shown by `GET /topics/{name}` only, so that held
    /// records can be counted before the topic exists; never stored.
    Pending,
    Provisioning,
    Active,
    Failed,
    Deleting,
    Deleted,
}

impl TopicStatus {
    pub(super) fn name(self) -> &'static str {
        match self {
            TopicStatus::Pending => "pending",
            TopicStatus::Provisioning => "provisioning",
            TopicStatus::Active => "active",
            TopicStatus::Failed => "failed",
            TopicStatus::Deleting => "deleting",
            TopicStatus::Deleted => "deleted",
        }
    }

    /// The topic exists in Kafka or is about to.
    fn is_live(self) -> bool {
        matches!(
            self,
            TopicStatus::Provisioning | TopicStatus::Active | TopicStatus::Deleting
        )
    }
}

/// A create or delete request, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopicRequest {
    pub id: Uuid,
    pub kind: RequestKind,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    #[schema(value_type = BTreeMap<String, String>)]
    pub config: TopicConfig,
    pub visibility: Visibility,
    pub reason: Option<String>,
    pub status: RequestStatus,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_note: Option<String>,
    pub error: Option<String>,
}

impl TopicRequest {
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            config: self.config.clone(),
        }
    }
}

/// A governed topic, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Topic {
    pub name: String,
    pub status: TopicStatus,
    pub partitions: i32,
    pub replication_factor: i32,
    #[schema(value_type = BTreeMap<String, String>)]
    pub config: TopicConfig,
    pub visibility: Visibility,
    pub owner: String,
    /// When the topic was created in Kafka; absent while provisioning.
    pub created_at: Option<DateTime<Utc>>,
    /// The create request that brought the topic in.
    pub request_id: Uuid,
}

/// The state rebuilt from the log: what every decision needs of the requests and topics
/// KafFlow governs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    /// The open (pending or approved) requests, whole: a page of them walks these, not every
    /// request ever filed. Each is its topic's latest request (a topic has one open request
    /// at most), so a topic's open request is found from the history (`open_request`), with
    /// no map by name to keep beside these.
    pub(super) requests: BTreeMap<Uuid, TopicRequest>,
    /// The decided deletion requests, whole (one per topic ever deleted; their shape is the
    /// topic's at filing time, which the log alone does not give back).
    pub(super) deletions: BTreeMap<Uuid, TopicRequest>,
    /// Every topic name's latest request, and every create request, reduced (see `history`).
    pub(super) history: History,
    pub(super) topics: BTreeMap<String, Topic>,
    /// Access requests, ownership requests and grants.
    pub(super) access: AccessBook,
    /// Set on a state that folds a few requests' events to show them whole (a reply, a read
    /// of a decided request): it reduces nothing.
    #[serde(skip)]
    keep_whole: bool,
}

/// A request as the registry keeps it: whole, or reduced once decided.
#[derive(Debug, Clone, Copy)]
pub enum Kept<'a> {
    Whole(&'a TopicRequest),
    Decided(Uuid, Decided<'a>),
}

impl Kept<'_> {
    pub fn id(&self) -> Uuid {
        match self {
            Kept::Whole(r) => r.id,
            Kept::Decided(id, _) => *id,
        }
    }
    pub fn topic(&self) -> &str {
        match self {
            Kept::Whole(r) => &r.topic,
            Kept::Decided(_, d) => d.topic,
        }
    }
    pub fn kind(&self) -> RequestKind {
        match self {
            Kept::Whole(r) => r.kind,
            Kept::Decided(_, d) => d.kind,
        }
    }
    pub fn status(&self) -> RequestStatus {
        match self {
            Kept::Whole(r) => r.status,
            Kept::Decided(_, d) => d.status,
        }
    }
    pub fn requested_by(&self) -> &str {
        match self {
            Kept::Whole(r) => &r.requested_by,
            Kept::Decided(_, d) => d.requested_by,
        }
    }
}

/// An item of a page of requests: whole, or the id of a decided request whose details are read
/// from the log (`RequestDetails`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Whole(Box<TopicRequest>),
    InLog(Uuid),
}

/// Where records for a topic go, as the governance state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRoute {
    /// Live in Kafka: publish.
    Active,
    /// A create request is pending or being provisioned: hold.
    Pending,
    /// Rejected, withdrawn, failed or deleted: refuse, and dead-letter what is held.
    Closed(String),
    /// KafFlow has never heard of it.
    Unknown,
}

impl Governance {
    /// Turns one of the registry's events into state. Replay and live appends both come here.
    /// It cannot fail: the registry only writes events that fit the state, so a valid log
    /// always applies. The event is taken by value: a filing's strings become the request's.
    pub fn apply(&mut self, event: NewEvent) {
        if let EventKind::TopicRequested { .. } | EventKind::DeletionRequested { .. } = event.kind {
            if let Some(request) = self.filed_from(event) {
                self.file(request);
            }
            return;
        }
        let event = &event;
        // Governance events always name a topic and a request.
        let (Some(topic), Some(id)) = (event.topic.as_deref(), event.request_id) else {
            return;
        };
        match &event.kind {
            // Filed above, where the event is still whole to take its strings.
            EventKind::TopicRequested { .. } | EventKind::DeletionRequested { .. } => {}
            EventKind::RequestApproved { note } => {
                let Some(kind) = self.decide(id, RequestStatus::Approved, note.as_deref(), event)
                else {
                    return;
                };
                match kind {
                    RequestKind::Create => {
                        // Approved is still open: the request is kept whole.
                        let Some(request) = self.requests.get(&id) else {
                            return;
                        };
                        let topic = Topic {
                            name: request.topic.clone(),
                            status: TopicStatus::Provisioning,
                            partitions: request.partitions,
                            replication_factor: request.replication_factor,
                            config: request.config.clone(),
                            visibility: request.visibility,
                            owner: request.requested_by.clone(),
                            created_at: None,
                            request_id: request.id,
                        };
                        self.topics.insert(topic.name.clone(), topic);
                    }
                    RequestKind::Delete => self.set_topic_status(topic, TopicStatus::Deleting),
                }
            }
            EventKind::RequestRejected { reason } => {
                let kind = self.decide(id, RequestStatus::Rejected, Some(reason), event);
                if kind == Some(RequestKind::Create) {
                    self.access.end_grants(topic);
                }
            }
            EventKind::RequestWithdrawn {} => {
                let kind = self.finish(id, RequestStatus::Withdrawn, None);
                if kind == Some(RequestKind::Create) {
                    self.access.end_grants(topic);
                }
            }
            EventKind::TopicProvisioned { spec, .. } => {
                self.finish(id, RequestStatus::Completed, None);
                if let Some(t) = self.topics.get_mut(topic) {
                    t.status = TopicStatus::Active;
                    t.partitions = spec.partitions;
                    t.replication_factor = spec.replication_factor;
                    t.created_at = Some(event.at);
                }
            }
            EventKind::ProvisioningFailed { error } => {
                self.finish(id, RequestStatus::Failed, Some(error.clone()));
                self.set_topic_status(topic, TopicStatus::Failed);
                self.access.end_grants(topic);
            }
            EventKind::TopicDeleted { .. } => {
                self.finish(id, RequestStatus::Completed, None);
                self.set_topic_status(topic, TopicStatus::Deleted);
                // Grants end with the topic: a topic made again under the name starts bare.
                self.access.end_grants(topic);
            }
            EventKind::DeletionFailed { error } => {
                self.finish(id, RequestStatus::Failed, Some(error.clone()));
                // The topic is still in Kafka: it stays usable.
                self.set_topic_status(topic, TopicStatus::Active);
            }
            // Owned by other actors (`journal::owner`); never handed to the registry.
            EventKind::HeldDiscarded { .. }
            | EventKind::DriftDetected { .. }
            | EventKind::DriftResolved { .. }
            | EventKind::Subscribed {}
            | EventKind::Unsubscribed { .. }
            | EventKind::TokenIssued { .. }
            | EventKind::TokenRevoked { .. } => {}
            EventKind::AccessRequested { .. }
            | EventKind::AccessApproved { .. }
            | EventKind::AccessRejected { .. }
            | EventKind::AccessWithdrawn {}
            | EventKind::GrantRevoked { .. } => self.apply_access(topic, id, event),
        }
    }

    /// The request a `topic_requested` or `deletion_requested` event files, as `apply` records
    /// it; `None` for any other event. A validate-only filing answers with it and records
    /// nothing.
    fn filed(&self, event: &NewEvent) -> Option<TopicRequest> {
        match event.kind {
            EventKind::TopicRequested { .. } | EventKind::DeletionRequested { .. } => {
                self.filed_from(event.clone())
            }
            _ => None,
        }
    }

    /// `filed`, taking the event's strings over.
    fn filed_from(&self, event: NewEvent) -> Option<TopicRequest> {
        let NewEvent {
            at,
            actor,
            topic: Some(topic),
            request_id: Some(id),
            kind,
            ..
        } = event
        else {
            return None;
        };
        let (kind, spec, visibility, reason) = match kind {
            EventKind::TopicRequested {
                spec,
                reason,
                visibility,
            } => (RequestKind::Create, spec, visibility, reason),
            EventKind::DeletionRequested { reason } => {
                // A deletion request shows the shape of the topic it deletes.
                let (spec, visibility) = match self.topics.get(&topic) {
                    Some(t) => (
                        TopicSpec {
                            partitions: t.partitions,
                            replication_factor: t.replication_factor,
                            config: t.config.clone(),
                        },
                        t.visibility,
                    ),
                    None => (
                        TopicSpec {
                            partitions: 0,
                            replication_factor: 0,
                            config: TopicConfig::default(),
                        },
                        Visibility::Open,
                    ),
                };
                (RequestKind::Delete, spec, visibility, Some(reason))
            }
            _ => return None,
        };
        Some(TopicRequest {
            id,
            kind,
            topic,
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            config: spec.config,
            visibility,
            reason,
            status: RequestStatus::Pending,
            requested_by: actor,
            requested_at: at,
            decided_by: None,
            decided_at: None,
            decision_note: None,
            error: None,
        })
    }

    fn file(&mut self, request: TopicRequest) {
        self.history.file(
            request.id,
            &request.topic,
            &request.requested_by,
            request.kind,
        );
        self.requests.insert(request.id, request);
    }

    /// A request decided for good leaves the open ones, taken from its entry (no second
    /// look-up). A create request keeps only what decisions need, in the history, which has it
    /// since its filing; the rest is in the log. A deletion request stays whole (see
    /// `deletions`).
    fn close(
        entry: OccupiedEntry<'_, Uuid, TopicRequest>,
        deletions: &mut BTreeMap<Uuid, TopicRequest>,
    ) {
        let request = entry.remove();
        if request.kind == RequestKind::Delete {
            deletions.insert(request.id, request);
        }
    }

    /// The request `event` leaves, `before` being the request before it (the staged one, when
    /// the command was checked): how a command's reply is built from the event just committed,
    /// whether or not the committed state then keeps the request whole.
    pub(super) fn after(before: &TopicRequest, event: &NewEvent) -> TopicRequest {
        if matches!(
            event.kind,
            EventKind::TopicRequested { .. } | EventKind::DeletionRequested { .. }
        ) {
            return before.clone();
        }
        let mut scratch = Governance {
            keep_whole: true,
            ..Default::default()
        };
        scratch.requests.insert(before.id, before.clone());
        scratch.apply(event.clone());
        scratch
            .requests
            .remove(&before.id)
            .unwrap_or_else(|| before.clone())
    }

    /// The requests the events of the log give, whole: each request's events, in seq order
    /// (other requests' events between them change nothing). Only for create requests: a
    /// deletion request's shape is the topic's at filing time, and those are kept whole.
    pub(super) fn fold(events: impl IntoIterator<Item = NewEvent>) -> BTreeMap<Uuid, TopicRequest> {
        let mut scratch = Governance {
            keep_whole: true,
            ..Default::default()
        };
        for event in events {
            scratch.apply(event);
        }
        scratch.requests
    }

    /// Runs every check `command` (a filing) runs against this state and answers with the
    /// request it would file, without filing it.
    pub(super) fn validate(&self, command: &Command) -> Result<TopicRequest> {
        let event = self.event_for(command)?;
        self.filed(&event).ok_or_else(|| {
            Error::Internal("only a create or deletion request can be validated".into())
        })
    }

    /// Records the decision on request `id`; answers with its kind (no copy of the request:
    /// a replay decides hundreds of thousands of them).
    fn decide(
        &mut self,
        id: Uuid,
        status: RequestStatus,
        note: Option<&str>,
        event: &NewEvent,
    ) -> Option<RequestKind> {
        let Entry::Occupied(mut entry) = self.requests.entry(id) else {
            return None;
        };
        let request = entry.get_mut();
        request.status = status;
        let kind = request.kind;
        let closed = !status.is_open() && !self.keep_whole;
        // A create request reduced at once (`close`) keeps none of the decision's details: no
        // copies.
        if !(closed && kind == RequestKind::Create) {
            request.decided_by = Some(event.actor.clone());
            request.decided_at = Some(event.at);
            request.decision_note = note.map(str::to_string);
        }
        if kind == RequestKind::Create {
            self.history.decide(id, status);
        }
        if closed {
            Self::close(entry, &mut self.deletions);
        }
        Some(kind)
    }

    /// Records the outcome of request `id`; answers with its kind.
    fn finish(
        &mut self,
        id: Uuid,
        status: RequestStatus,
        error: Option<String>,
    ) -> Option<RequestKind> {
        let Entry::Occupied(mut entry) = self.requests.entry(id) else {
            return None;
        };
        let request = entry.get_mut();
        request.status = status;
        request.error = error;
        let kind = request.kind;
        if kind == RequestKind::Create {
            self.history.decide(id, status);
        }
        if !status.is_open() && !self.keep_whole {
            Self::close(entry, &mut self.deletions);
        }
        Some(kind)
    }

    fn set_topic_status(&mut self, topic: &str, status: TopicStatus) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.status = status;
        }
    }

    /// The request, whole or reduced.
    pub fn kept(&self, id: Uuid) -> Result<Kept<'_>> {
        if let Some(r) = self.whole(id) {
            return Ok(Kept::Whole(r));
        }
        self.history
            .get(&id)
            .map(|d| Kept::Decided(id, d))
            .ok_or_else(|| Error::NotFound(format!("request {id}")))
    }

    /// The request, when it is kept whole (open, or a deletion); a decided create request is
    /// read from the log (`RequestDetails`).
    pub fn whole(&self, id: Uuid) -> Option<&TopicRequest> {
        self.requests.get(&id).or_else(|| self.deletions.get(&id))
    }

    pub fn topic(&self, name: &str) -> Result<&Topic> {
        self.topics
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("topic {name}")))
    }

    fn pending(&self, id: Uuid) -> Result<Kept<'_>> {
        let request = self.kept(id)?;
        if request.status() != RequestStatus::Pending {
            return Err(Error::NotPending(request.status().name().to_string()));
        }
        Ok(request)
    }

    /// The topic's open request: its latest one, while that is open.
    pub(super) fn open_request(&self, topic: &str) -> Option<&TopicRequest> {
        let latest = self.history.latest_of(topic)?;
        if latest.decided.is_some() {
            return None;
        }
        self.requests.get(&latest.id)
    }

    /// The topics with an open request.
    fn open_topics(&self) -> impl Iterator<Item = &str> {
        self.requests.values().map(|r| r.topic.as_str())
    }

    fn no_open_request(&self, topic: &str) -> Result<()> {
        match self.open_request(topic) {
            Some(open) => Err(Error::RequestPending {
                topic: topic.to_string(),
                request_id: open.id,
            }),
            None => Ok(()),
        }
    }

    /// The event a command produces, if the state allows it.
    pub(super) fn event_for(&self, command: &Command) -> Result<NewEvent> {
        match command {
            Command::FileCreate {
                actor,
                topic,
                spec,
                reason,
                visibility,
            } => {
                if let Some(t) = self.topics.get(topic) {
                    if t.status.is_live() {
                        return Err(Error::TopicExists(topic.clone()));
                    }
                }
                self.no_open_request(topic)?;
                let kind = EventKind::TopicRequested {
                    spec: spec.clone(),
                    reason: reason.clone(),
                    visibility: *visibility,
                };
                Ok(NewEvent::now(
                    actor,
                    Some(topic),
                    Some(Uuid::now_v7()),
                    kind,
                ))
            }
            Command::FileDeletion {
                principal,
                topic,
                reason,
            } => {
                let t = self.topic(topic)?;
                if t.owner != principal.name && !principal.has(Role::Admin) {
                    return Err(Error::NotOwner("request its deletion"));
                }
                if t.status != TopicStatus::Active {
                    return Err(Error::TopicNotActive {
                        topic: topic.clone(),
                        status: t.status.name().to_string(),
                    });
                }
                self.no_open_request(topic)?;
                let kind = EventKind::DeletionRequested {
                    reason: reason.clone(),
                };
                Ok(NewEvent::now(
                    &principal.name,
                    Some(topic),
                    Some(Uuid::now_v7()),
                    kind,
                ))
            }
            Command::Decide {
                principal,
                id,
                decision,
            } => {
                principal.require_any(&[Role::Admin])?;
                let request = self.kept(*id)?;
                if request.requested_by() == principal.name {
                    return Err(Error::SelfApproval);
                }
                let request = self.pending(*id)?;
                let kind = match decision {
                    Decision::Approve { note } => EventKind::RequestApproved { note: note.clone() },
                    Decision::Reject { reason } => EventKind::RequestRejected {
                        reason: reason.clone(),
                    },
                };
                Ok(NewEvent::now(
                    &principal.name,
                    Some(request.topic()),
                    Some(*id),
                    kind,
                ))
            }
            Command::Withdraw { principal, id } => {
                if self.kept(*id)?.requested_by() != principal.name {
                    return Err(Error::NotRequester);
                }
                let request = self.pending(*id)?;
                let kind = EventKind::RequestWithdrawn {};
                Ok(NewEvent::now(
                    &principal.name,
                    Some(request.topic()),
                    Some(*id),
                    kind,
                ))
            }
            Command::RecordOutcome { id, outcome } => {
                let request = self.kept(*id)?;
                if request.status() != RequestStatus::Approved {
                    return Err(Error::NotPending(request.status().name().to_string()));
                }
                let kind = match outcome.clone() {
                    Outcome::Provisioned {
                        spec,
                        already_existed,
                    } => EventKind::TopicProvisioned {
                        spec,
                        already_existed,
                    },
                    Outcome::ProvisioningFailed { error } => {
                        EventKind::ProvisioningFailed { error }
                    }
                    Outcome::Deleted { already_absent } => {
                        EventKind::TopicDeleted { already_absent }
                    }
                    Outcome::DeletionFailed { error } => EventKind::DeletionFailed { error },
                };
                Ok(NewEvent::now(
                    SYSTEM,
                    Some(request.topic()),
                    Some(*id),
                    kind,
                ))
            }
        }
    }

    /// The topic, or, while its create request waits for a decision, what it would be.
    pub fn topic_or_pending(&self, name: &str) -> Result<Topic> {
        let live = self.topics.get(name).filter(|t| t.status.is_live());
        let pending = self
            .open_request(name)
            .filter(|r| r.kind == RequestKind::Create && r.status == RequestStatus::Pending);
        match (live, pending) {
            (None, Some(r)) => Ok(Topic {
                name: r.topic.clone(),
                status: TopicStatus::Pending,
                partitions: r.partitions,
                replication_factor: r.replication_factor,
                config: r.config.clone(),
                visibility: r.visibility,
                owner: r.requested_by.clone(),
                created_at: None,
                request_id: r.id,
            }),
            _ => self.topic(name).cloned(),
        }
    }

    /// Where records for `topic` go now.
    pub fn route_of(&self, topic: &str) -> TopicRoute {
        match self.topics.get(topic).map(|t| t.status) {
            Some(TopicStatus::Active | TopicStatus::Deleting) => return TopicRoute::Active,
            Some(TopicStatus::Provisioning) => return TopicRoute::Pending,
            _ => {}
        }
        let Some(latest) = self.history.latest(topic).and_then(|id| self.kept(id).ok()) else {
            return TopicRoute::Unknown;
        };
        match (latest.kind(), latest.status()) {
            (RequestKind::Create, RequestStatus::Pending | RequestStatus::Approved) => {
                TopicRoute::Pending
            }
            (RequestKind::Create, status) => TopicRoute::Closed(closed_why(status).into()),
            (RequestKind::Delete, _) => TopicRoute::Closed("it was deleted".into()),
        }
    }

    /// Why `topic` is closed, when that is all there is to know of it: its latest request is a
    /// decided create request that left no topic and no grant behind. Most names a long history
    /// leaves are these; the governed view and the start-up wiring keep them apart, compactly.
    pub(super) fn closed_bare(&self, topic: &str) -> Option<RequestStatus> {
        if self.topics.contains_key(topic) || self.open_request(topic).is_some() {
            return None;
        }
        let status = self.history.latest_of(topic)?.decided?;
        self.access.grants_on(topic).is_empty().then_some(status)
    }

    /// Every topic name KafFlow has had a request for, with the status of its latest
    /// request when the name is closed for good and that is all there is to know of it
    /// (`closed_bare`, for all names in one pass). The names with a topic, an open request or
    /// a grant are few; each of the others costs a look-up in a set of those.
    pub(super) fn topic_names_closed(&self) -> impl Iterator<Item = (&str, Option<RequestStatus>)> {
        let mut kept = self.access.granted_topics();
        kept.extend(self.topics.keys().map(String::as_str));
        kept.extend(self.open_topics());
        self.history.topics().map(move |(name, latest)| {
            let why = latest.decided.filter(|_| !kept.contains(name));
            (name, why)
        })
    }

    /// Every topic, in name order.
    pub fn topics(&self) -> Vec<Topic> {
        self.topics.values().cloned().collect()
    }

    /// One page of the topics, in name order.
    pub fn topics_page(&self, page: &PageOf<String>) -> Page<String, Topic> {
        let rest = self.topics.range::<String, _>(page.range()).map(|(_, t)| t);
        Page::take(rest, page.limit, |t| t.name.clone()).map(Topic::clone)
    }

    /// The open requests that pass `filter`, oldest first (ids are UUID v7).
    pub fn open_requests(&self, filter: &RequestFilter) -> Vec<TopicRequest> {
        // The open requests only: decided requests are never unfinished work.
        self.requests
            .values()
            .filter(|r| filter.status.is_none_or(|s| r.status == s))
            .filter(|r| filter.kind.is_none_or(|k| r.kind == k))
            .filter(|r| filter.topic.as_ref().is_none_or(|t| &r.topic == t))
            .filter(|r| {
                filter
                    .requested_by
                    .as_ref()
                    .is_none_or(|p| &r.requested_by == p)
            })
            .cloned()
            .collect()
    }

    /// Every request, whole or reduced, in id order.
    pub fn every_request(&self) -> impl Iterator<Item = Kept<'_>> {
        self.kept_after(&PageOf::all())
    }

    fn kept_after<'a>(&'a self, page: &PageOf<Uuid>) -> impl Iterator<Item = Kept<'a>> + 'a {
        let whole = |map: &'a BTreeMap<Uuid, TopicRequest>| {
            map.range(page.range()).map(|(_, r)| Kept::Whole(r))
        };
        let decided = self
            .history
            .range(page)
            .map(|(id, d)| Kept::Decided(*id, d));
        in_id_order(
            in_id_order(whole(&self.requests), whole(&self.deletions)),
            decided,
        )
    }

    /// One page of the requests that pass `filter`, oldest first: the page's ids follow the
    /// cursor's, so a request filed meanwhile comes at the end. A decided create request is
    /// listed by id; its details are in the log (`RequestDetails`).
    pub fn requests_page(&self, filter: &RequestFilter, page: &PageOf<Uuid>) -> Page<Uuid, Listed> {
        // Open requests are few beside the decided ones a long history leaves: a page of them
        // walks the open ids only.
        let ids: Box<dyn Iterator<Item = Kept<'_>>> = match filter.status {
            Some(s) if s.is_open() => Box::new(
                self.requests
                    .range(page.range())
                    .map(|(_, r)| Kept::Whole(r)),
            ),
            _ => Box::new(self.kept_after(page)),
        };
        let rest = ids
            .filter(|r| filter.status.is_none_or(|s| r.status() == s))
            .filter(|r| filter.kind.is_none_or(|k| r.kind() == k))
            .filter(|r| filter.topic.as_ref().is_none_or(|t| r.topic() == t))
            .filter(|r| {
                filter
                    .requested_by
                    .as_ref()
                    .is_none_or(|p| r.requested_by() == p)
            });
        Page::take(rest, page.limit, Kept::id).map(|r| match r {
            Kept::Whole(r) => Listed::Whole(Box::new(r.clone())),
            Kept::Decided(id, _) => Listed::InLog(id),
        })
    }
}

/// Two id-ordered runs of requests (each id in one of them) as one.
fn in_id_order<'a>(
    a: impl Iterator<Item = Kept<'a>>,
    b: impl Iterator<Item = Kept<'a>>,
) -> impl Iterator<Item = Kept<'a>> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.id() < y.id(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_a {
            a.next()
        } else {
            b.next()
        }
    })
}

/// Why a topic whose create request was decided without a topic takes no records.
pub(super) fn closed_why(status: RequestStatus) -> &'static str {
    match status {
        RequestStatus::Pending => "its request was pending",
        RequestStatus::Approved => "its request was approved",
        RequestStatus::Rejected => "its request was rejected",
        RequestStatus::Withdrawn => "its request was withdrawn",
        RequestStatus::Completed => "its request was completed",
        RequestStatus::Failed => "its request was failed",
    }
}

/// What an administrator decided.
#[derive(Debug, Clone)]
pub enum Decision {
    Approve { note: Option<String> },
    Reject { reason: String },
}

/// What the provisioner found when it did the Kafka work of an approved request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Provisioned {
        spec: TopicSpec,
        already_existed: bool,
    },
    ProvisioningFailed {
        error: String,
    },
    Deleted {
        already_absent: bool,
    },
    DeletionFailed {
        error: String,
    },
}

/// A change to governance state. The registry checks it against the state (is the request
/// pending, is the topic free) and, where the answer depends on the state, whether the
/// principal may make it (self-approval, requester, owner), in the same step that records it.
/// The policy (names, sizes) and the roles a command needs are checked by the approval actor
/// before it sends one.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TopicRequest>")]
pub enum Command {
    FileCreate {
        actor: String,
        topic: String,
        spec: TopicSpec,
        reason: Option<String>,
        visibility: Visibility,
    },
    /// Only the topic's owner or an admin.
    FileDeletion {
        principal: Principal,
        topic: String,
        reason: String,
    },
    /// Only an admin, and never on their own request.
    Decide {
        principal: Principal,
        id: Uuid,
        decision: Decision,
    },
    /// Only the requester.
    Withdraw {
        principal: Principal,
        id: Uuid,
    },
    RecordOutcome {
        id: Uuid,
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFilter {
    pub status: Option<RequestStatus>,
    pub kind: Option<RequestKind>,
    pub topic: Option<String>,
    pub requested_by: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct GetRequest(pub Uuid);

/// One page of the requests that pass the filter.
#[derive(Message)]
#[rtype(result = "Result<Page<Uuid, TopicRequest>>")]
pub struct ListRequests(pub RequestFilter, pub PageOf<Uuid>);

#[derive(Message)]
#[rtype(result = "Result<Topic>")]
pub struct GetTopic(pub String);

/// Every topic, for the actors that go through them all (the watcher, subscriptions).
#[derive(Message)]
#[rtype(result = "Vec<Topic>")]
pub struct ListTopics;

/// One page of the topics, in name order (`GET /topics`).
#[derive(Message)]
#[rtype(result = "Page<String, Topic>")]
pub struct TopicsPage(pub PageOf<String>);

/// Where records for a topic go now, including every commit made before the question.
#[derive(Message)]
#[rtype(result = "TopicRoute")]
pub struct RouteOf(pub String);

/// The route of every topic KafFlow has heard of that may still take records (a topic closed
/// for good is answered by the governed view when asked), and of the topics named (those with
/// records held, whatever their route).
#[derive(Message)]
#[rtype(result = "Vec<(String, TopicRoute)>")]
pub struct AllRoutes(pub Vec<String>);

/// Checks a filing (`Command::FileCreate` or `Command::FileDeletion`) exactly as sending it
/// would, against the same state, and answers with the request it would file. Nothing is
/// appended: the answer's id is not a filed request's.
#[derive(Message)]
#[rtype(result = "Result<TopicRequest>")]
pub struct ValidateOnly(pub Command);

/// Approved requests whose Kafka work is not done: resumed after a restart.
#[derive(Message)]
#[rtype(result = "Vec<TopicRequest>")]
pub struct UnfinishedWork;

pub struct Registry {
    pub(super) journal: Journal<Governance>,
    view: GovernedView,
}

impl Registry {
    pub fn new(state: Governance, store: Addr<EventStore>) -> Self {
        let view = GovernedView::of(&state);
        let mut journal = Journal::new(Owner::Registry, state, store);
        let kept = view.clone();
        journal.on_commit(move |committed, event| {
            if let Some(topic) = event.topic.as_deref() {
                kept.refresh(committed, topic);
            }
        });
        Registry { journal, view }
    }

    /// The read-only view of the committed state that the registry keeps current; take it
    /// before the registry starts, and clone it freely.
    pub fn view(&self) -> GovernedView {
        self.view.clone()
    }

    pub(super) fn state(&self) -> &Governance {
        self.journal.committed()
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Journaled for Governance {
    fn apply(&mut self, event: &NewEvent) {
        // The journal applies each event to two states and keeps it for its callbacks: a copy
        // per state (a replay hands its events over instead).
        Governance::apply(self, event.clone());
    }

    fn wants_fold(&self) -> bool {
        self.history.wants_fold()
    }

    fn fold(&mut self) {
        self.history.fold();
    }
}

impl Journaling for Registry {
    type State = Governance;

    fn journal(&mut self) -> &mut Journal<Governance> {
        &mut self.journal
    }
}

impl Handler<Command> for Registry {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, command: Command, ctx: &mut Context<Self>) -> Self::Result {
        let event = match self
            .journal
            .staged()
            .and_then(|state| state.event_for(&command))
        {
            Ok(event) => event,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // The request as the event will leave it, built from the staged request it changes
        // (or files): the committed state may keep only its reduced form.
        let before = match self.journal.staged() {
            Ok(staged) => staged
                .filed(&event)
                .or_else(|| event.request_id.and_then(|id| staged.whole(id)).cloned()),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let Some(before) = before else {
            return Box::pin(async { Err(Error::Internal("a command on no open request".into())) });
        };
        let reply_event = event.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        journal::persist(self, ctx, vec![event], move |_, result| {
            let _ = reply.send(result.map(|()| Governance::after(&before, &reply_event)));
        });
        Box::pin(async move { answer.await.unwrap_or(Err(Error::Unavailable)) })
    }
}

impl Handler<ValidateOnly> for Registry {
    type Result = Result<TopicRequest>;

    /// Checked against the staged state, as a real filing is: a filing in flight counts.
    fn handle(&mut self, msg: ValidateOnly, _: &mut Context<Self>) -> Self::Result {
        self.journal.staged()?.validate(&msg.0)
    }
}

impl Registry {
    /// Fills in the decided requests of `page` from the log: one read for the whole page, off
    /// the registry's thread.
    fn fill_from_log(
        &self,
        page: Page<Uuid, Listed>,
    ) -> ResponseFuture<Result<Page<Uuid, TopicRequest>>> {
        let ids: Vec<Uuid> = page
            .items
            .iter()
            .filter_map(|item| match item {
                Listed::InLog(id) => Some(*id),
                Listed::Whole(_) => None,
            })
            .collect();
        let read = (!ids.is_empty()).then(|| self.journal.store().send(RequestEvents(ids)));
        Box::pin(async move {
            let mut folded = match read {
                Some(read) => Governance::fold(read.await.map_err(|_| Error::Unavailable)??),
                None => BTreeMap::new(),
            };
            let mut items = Vec::with_capacity(page.items.len());
            for item in page.items {
                items.push(match item {
                    Listed::Whole(r) => *r,
                    Listed::InLog(id) => folded.remove(&id).ok_or_else(|| {
                        Error::Internal(format!("request {id} is decided but not in the log"))
                    })?,
                });
            }
            Ok(Page {
                items,
                next: page.next,
            })
        })
    }
}

impl Handler<GetRequest> for Registry {
    type Result = ResponseFuture<Result<TopicRequest>>;

    fn handle(&mut self, msg: GetRequest, _: &mut Context<Self>) -> Self::Result {
        let item = match self.state().kept(msg.0) {
            Ok(Kept::Whole(r)) => Listed::Whole(Box::new(r.clone())),
            Ok(Kept::Decided(id, _)) => Listed::InLog(id),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let page = self.fill_from_log(Page {
            items: vec![item],
            next: None,
        });
        Box::pin(async move {
            page.await?
                .items
                .pop()
                .ok_or_else(|| Error::NotFound(format!("request {}", msg.0)))
        })
    }
}

impl Handler<ListRequests> for Registry {
    type Result = ResponseFuture<Result<Page<Uuid, TopicRequest>>>;

    fn handle(&mut self, msg: ListRequests, _: &mut Context<Self>) -> Self::Result {
        let page = self.state().requests_page(&msg.0, &msg.1);
        self.fill_from_log(page)
    }
}

impl Handler<GetTopic> for Registry {
    type Result = Result<Topic>;

    fn handle(&mut self, msg: GetTopic, _: &mut Context<Self>) -> Self::Result {
        self.state().topic_or_pending(&msg.0)
    }
}

impl Handler<ListTopics> for Registry {
    type Result = MessageResult<ListTopics>;

    fn handle(&mut self, _: ListTopics, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().topics())
    }
}

impl Handler<TopicsPage> for Registry {
    type Result = MessageResult<TopicsPage>;

    fn handle(&mut self, msg: TopicsPage, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().topics_page(&msg.0))
    }
}

impl Handler<RouteOf> for Registry {
    type Result = ResponseFuture<TopicRoute>;

    /// Asked by the watcher right after a commit: answered once that commit is settled here.
    fn handle(&mut self, msg: RouteOf, _: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = tokio::sync::oneshot::channel();
        journal::settled(self, move |state| {
            let _ = reply.send(state.route_of(&msg.0));
        });
        Box::pin(async move { answer.await.unwrap_or(TopicRoute::Unknown) })
    }
}

impl Handler<AllRoutes> for Registry {
    type Result = MessageResult<AllRoutes>;

    fn handle(&mut self, msg: AllRoutes, _: &mut Context<Self>) -> Self::Result {
        let state = self.state();
        // Live and pending topics are few: they are the topics map and the open requests.
        let mut names: BTreeSet<&str> = state.topics.keys().map(String::as_str).collect();
        names.extend(state.open_topics());
        names.extend(msg.0.iter().map(String::as_str));
        let routes = names
            .into_iter()
            .map(|topic| (topic.to_string(), state.route_of(topic)))
            .filter(|(_, route)| *route != TopicRoute::Unknown)
            .collect();
        MessageResult(routes)
    }
}

impl Handler<UnfinishedWork> for Registry {
    type Result = MessageResult<UnfinishedWork>;

    fn handle(&mut self, _: UnfinishedWork, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state().open_requests(&RequestFilter {
            status: Some(RequestStatus::Approved),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopicSpec {
        TopicSpec {
            partitions: 2,
            replication_factor: 1,
            config: TopicConfig::default(),
        }
    }

    fn admin(name: &str) -> Principal {
        Principal {
            name: name.into(),
            roles: [Role::Admin].into(),
        }
    }

    fn producer(name: &str) -> Principal {
        Principal {
            name: name.into(),
            roles: [Role::Producer].into(),
        }
    }

    /// As the registry answers a command: the request as the event leaves it, built from the
    /// request before it.
    fn run(state: &mut Governance, command: Command) -> Result<TopicRequest> {
        let event = state.event_for(&command)?;
        let before = state
            .filed(&event)
            .or_else(|| event.request_id.and_then(|id| state.whole(id)).cloned())
            .expect("a request");
        state.apply(event.clone());
        Ok(Governance::after(&before, &event))
    }

    fn id_of(item: &Listed) -> Uuid {
        match item {
            Listed::Whole(r) => r.id,
            Listed::InLog(id) => *id,
        }
    }

    fn create(state: &mut Governance, topic: &str) -> Result<TopicRequest> {
        run(
            state,
            Command::FileCreate {
                actor: "alice".into(),
                topic: topic.into(),
                spec: spec(),
                reason: None,
                visibility: Visibility::Open,
            },
        )
    }

    fn decide(state: &mut Governance, id: Uuid, decision: Decision) -> Result<TopicRequest> {
        run(
            state,
            Command::Decide {
                principal: admin("carol"),
                id,
                decision,
            },
        )
    }

    /// `run`, keeping the event it appends in `log`.
    fn logged(state: &mut Governance, log: &mut Vec<NewEvent>, command: Command) -> Uuid {
        let event = state.event_for(&command).expect("allowed");
        log.push(event.clone());
        let id = event.request_id.expect("a request");
        state.apply(event);
        id
    }

    /// What every route answers of a state, in one value to compare.
    fn answers(s: &Governance) -> impl PartialEq + std::fmt::Debug {
        let every: Vec<_> = s
            .every_request()
            .map(|r| (r.id(), r.kind(), r.status(), r.topic().to_string()))
            .collect();
        let names: Vec<String> = (0..6).map(|n| format!("t{n}")).collect();
        let routes: Vec<_> = names.iter().map(|t| s.route_of(t)).collect();
        let closed: Vec<_> = names.iter().map(|t| s.closed_bare(t)).collect();
        let shown: Vec<_> = names.iter().map(|t| s.topic_or_pending(t).ok()).collect();
        let pages: Vec<Vec<Uuid>> = [RequestStatus::Pending, RequestStatus::Approved]
            .into_iter()
            .chain([RequestStatus::Rejected, RequestStatus::Completed])
            .map(|status| {
                let filter = RequestFilter {
                    status: Some(status),
                    ..Default::default()
                };
                s.requests_page(&filter, &PageOf::all())
                    .items
                    .iter()
                    .map(id_of)
                    .collect()
            })
            .collect();
        let unfinished = s.open_requests(&RequestFilter::default());
        (every, routes, closed, shown, pages, unfinished, s.topics())
    }

    /// The state a replay rebuilds (every event applied in one go), the one a start from a
    /// snapshot rebuilds (encoded and decoded) and the one built live with the journal's folds
    /// are the same, and stay the same when requests filed before the fold or the snapshot
    /// are decided after it: a filing is recorded once and its decisions update it in place.
    #[test]
    fn replayed_snapshotted_and_live_states_agree() {
        let mut live = Governance::default();
        let mut log = Vec::new();
        let ids: Vec<Uuid> = (0..6)
            .map(|n| {
                let command = Command::FileCreate {
                    actor: "alice".into(),
                    topic: format!("t{n}"),
                    spec: spec(),
                    reason: Some("r".into()),
                    visibility: Visibility::Open,
                };
                logged(&mut live, &mut log, command)
            })
            .collect();
        let decide = |id, decision| Command::Decide {
            principal: admin("carol"),
            id,
            decision,
        };
        let outcome = |id, outcome| Command::RecordOutcome { id, outcome };
        let provisioned = Outcome::Provisioned {
            spec: spec(),
            already_existed: false,
        };
        let reject = || Decision::Reject {
            reason: "no".into(),
        };
        let approve = || Decision::Approve { note: None };
        logged(&mut live, &mut log, decide(ids[0], reject()));
        let withdraw = Command::Withdraw {
            principal: producer("alice"),
            id: ids[1],
        };
        logged(&mut live, &mut log, withdraw);
        logged(&mut live, &mut log, decide(ids[2], approve()));
        logged(&mut live, &mut log, outcome(ids[2], provisioned.clone()));
        logged(&mut live, &mut log, decide(ids[3], approve()));
        let failed = Outcome::ProvisioningFailed { error: "no".into() };
        logged(&mut live, &mut log, outcome(ids[3], failed));
        logged(&mut live, &mut log, decide(ids[5], approve()));
        // t4 stays pending and t5 approved across the fold, as the journal folds when idle.
        live.history.fold();
        let deletion = Command::FileDeletion {
            principal: producer("alice"),
            topic: "t2".into(),
            reason: "done".into(),
        };
        let d = logged(&mut live, &mut log, deletion);
        logged(&mut live, &mut log, decide(d, approve()));
        let deleted = Outcome::Deleted {
            already_absent: false,
        };
        logged(&mut live, &mut log, outcome(d, deleted));
        let again = Command::FileCreate {
            actor: "bob".into(),
            topic: "t0".into(),
            spec: spec(),
            reason: None,
            visibility: Visibility::Restricted,
        };
        let t0 = logged(&mut live, &mut log, again);

        let mut replayed = Governance::default();
        for event in &log {
            replayed.apply(event.clone());
        }
        let mut snapshotted: Governance =
            postcard::from_bytes(&postcard::to_stdvec(&live).expect("encode")).expect("decode");
        assert_eq!(replayed, live);
        assert_eq!(snapshotted, live);
        assert_eq!(answers(&replayed), answers(&live));
        assert_eq!(answers(&snapshotted), answers(&live));
        assert_eq!(live.deletions.len(), 1, "a decided deletion is kept whole");
        assert_eq!(live.requests.len(), 3, "t4, t5 and t0 again are open");

        // Decisions of requests filed before the fold and before the snapshot.
        let later = [
            decide(ids[4], reject()),
            outcome(ids[5], provisioned),
            decide(t0, approve()),
        ];
        for command in later {
            let event = live.event_for(&command).expect("allowed");
            for state in [&mut live, &mut replayed, &mut snapshotted] {
                state.apply(event.clone());
            }
        }
        assert_eq!(replayed, live);
        assert_eq!(snapshotted, live);
        assert_eq!(answers(&snapshotted), answers(&live));
        assert_eq!(answers(&replayed), answers(&live));
        assert_eq!(
            live.kept(ids[4]).map(|r| r.status()).ok(),
            Some(RequestStatus::Rejected)
        );
        assert!(live.whole(ids[4]).is_none(), "decided: kept reduced");
        assert_eq!(live.route_of("t5"), TopicRoute::Active);
        assert_eq!(live.route_of("t0"), TopicRoute::Pending);
        live.history.fold();
        snapshotted.history.fold();
        assert_eq!(snapshotted, live);
        assert_eq!(answers(&snapshotted), answers(&live));
    }

    #[test]
    fn a_page_of_open_requests_walks_the_open_ones_only() {
        let mut s = Governance::default();
        let ids: Vec<Uuid> = ["a", "b", "c", "d"]
            .iter()
            .map(|t| create(&mut s, t).expect("filed").id)
            .collect();
        decide(
            &mut s,
            ids[1],
            Decision::Reject {
                reason: "no".into(),
            },
        )
        .expect("rejected");
        decide(&mut s, ids[2], Decision::Approve { note: None }).expect("approved");
        let pending = RequestFilter {
            status: Some(RequestStatus::Pending),
            ..Default::default()
        };
        let mut page = PageOf {
            after: None,
            limit: 1,
        };
        let mut seen = Vec::new();
        loop {
            let got = s.requests_page(&pending, &page);
            seen.extend(got.items.iter().map(id_of));
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, vec![ids[0], ids[3]]);
        let approved = RequestFilter {
            status: Some(RequestStatus::Approved),
            ..Default::default()
        };
        assert_eq!(s.requests_page(&approved, &PageOf::all()).items.len(), 1);
        assert_eq!(s.requests.len(), 3, "the open requests only");
        assert_eq!(s.open_request("c").map(|r| r.id), Some(ids[2]));
        assert!(s.open_request("b").is_none(), "rejected");
        let rejected = RequestFilter {
            status: Some(RequestStatus::Rejected),
            ..Default::default()
        };
        assert_eq!(
            id_of(&s.requests_page(&rejected, &PageOf::all()).items[0]),
            ids[1]
        );
    }

    #[test]
    fn create_lifecycle_walks_the_state_machine() {
        let mut s = Governance::default();
        let r = create(&mut s, "orders").expect("filed");
        assert_eq!(r.status, RequestStatus::Pending);
        assert!(matches!(
            create(&mut s, "orders"),
            Err(Error::RequestPending { .. })
        ));
        let r = decide(&mut s, r.id, Decision::Approve { note: None }).expect("approved");
        assert_eq!(r.status, RequestStatus::Approved);
        assert_eq!(
            s.topic("orders").expect("topic").status,
            TopicStatus::Provisioning
        );
        assert!(matches!(
            create(&mut s, "orders"),
            Err(Error::TopicExists(_))
        ));
        assert!(matches!(
            decide(&mut s, r.id, Decision::Approve { note: None }),
            Err(Error::NotPending(_))
        ));
        let done = run(
            &mut s,
            Command::RecordOutcome {
                id: r.id,
                outcome: Outcome::Provisioned {
                    spec: spec(),
                    already_existed: false,
                },
            },
        )
        .expect("recorded");
        assert_eq!(done.status, RequestStatus::Completed);
        let topic = s.topic("orders").expect("topic");
        assert_eq!(
            (topic.status, topic.owner.as_str()),
            (TopicStatus::Active, "alice")
        );
        assert!(topic.created_at.is_some());
    }

    #[test]
    fn deletion_needs_an_active_topic_and_frees_the_name() {
        let mut s = Governance::default();
        let deletion = |s: &mut Governance| {
            run(
                s,
                Command::FileDeletion {
                    principal: producer("alice"),
                    topic: "logs".into(),
                    reason: "done".into(),
                },
            )
        };
        assert!(matches!(deletion(&mut s), Err(Error::NotFound(_))));
        let r = create(&mut s, "logs").expect("filed");
        decide(&mut s, r.id, Decision::Approve { note: None }).expect("approved");
        assert!(matches!(
            deletion(&mut s),
            Err(Error::TopicNotActive { .. })
        ));
        run(
            &mut s,
            Command::RecordOutcome {
                id: r.id,
                outcome: Outcome::Provisioned {
                    spec: spec(),
                    already_existed: true,
                },
            },
        )
        .expect("recorded");
        let d = deletion(&mut s).expect("filed");
        assert!(matches!(
            deletion(&mut s),
            Err(Error::RequestPending { .. })
        ));
        assert_eq!((d.kind, d.partitions), (RequestKind::Delete, 2));
        decide(&mut s, d.id, Decision::Approve { note: None }).expect("approved");
        assert_eq!(
            s.topic("logs").expect("topic").status,
            TopicStatus::Deleting
        );
        run(
            &mut s,
            Command::RecordOutcome {
                id: d.id,
                outcome: Outcome::Deleted {
                    already_absent: false,
                },
            },
        )
        .expect("recorded");
        assert_eq!(s.topic("logs").expect("topic").status, TopicStatus::Deleted);
        assert!(
            create(&mut s, "logs").is_ok(),
            "a deleted topic can be asked for again"
        );
    }

    #[test]
    fn routes_follow_the_lifecycle() {
        let mut s = Governance::default();
        assert_eq!(s.route_of("r"), TopicRoute::Unknown);
        let r = create(&mut s, "r").expect("filed");
        assert_eq!(s.route_of("r"), TopicRoute::Pending);
        let view = s.topic_or_pending("r").expect("pending view");
        assert_eq!(
            (view.status, view.owner.as_str()),
            (TopicStatus::Pending, "alice")
        );
        assert!(s.topic("r").is_err(), "a pending topic is not stored");
        decide(&mut s, r.id, Decision::Approve { note: None }).expect("approved");
        assert_eq!(s.route_of("r"), TopicRoute::Pending);
        let provisioned = Outcome::Provisioned {
            spec: spec(),
            already_existed: false,
        };
        run(
            &mut s,
            Command::RecordOutcome {
                id: r.id,
                outcome: provisioned,
            },
        )
        .expect("done");
        assert_eq!(s.route_of("r"), TopicRoute::Active);
        let r2 = create(&mut s, "r2").expect("filed");
        decide(
            &mut s,
            r2.id,
            Decision::Reject {
                reason: "no".into(),
            },
        )
        .expect("rejected");
        assert!(matches!(s.route_of("r2"), TopicRoute::Closed(_)));
    }

    #[test]
    fn reject_and_withdraw_close_the_request() {
        let mut s = Governance::default();
        let r = create(&mut s, "a").expect("filed");
        let r = decide(
            &mut s,
            r.id,
            Decision::Reject {
                reason: "no".into(),
            },
        )
        .expect("rejected");
        assert_eq!(r.status, RequestStatus::Rejected);
        assert_eq!(r.decision_note.as_deref(), Some("no"));
        assert!(s.topic("a").is_err());
        let r = create(&mut s, "a").expect("filed again");
        let w = run(
            &mut s,
            Command::Withdraw {
                principal: producer("alice"),
                id: r.id,
            },
        )
        .expect("withdrawn");
        assert_eq!(w.status, RequestStatus::Withdrawn);
        assert!(matches!(
            run(
                &mut s,
                Command::Withdraw {
                    principal: producer("alice"),
                    id: r.id
                }
            ),
            Err(Error::NotPending(_))
        ));
    }
}

#[cfg(test)]
mod actor_tests {
    use super::*;
    use crate::events::{Durability, Store};
    use crate::shutdown::Fatal;

    fn registry(dir: &std::path::Path) -> Addr<Registry> {
        let store = Store::open(dir, Durability::Normal).expect("open");
        // Room for a few small events, not for a large one: a commit fails as on a full disk.
        store.limit_pages(24).expect("limit");
        let head = store.replay(|_| {}).expect("replay");
        let (writer, _thread) = store.into_writer(head).expect("writer");
        let events = EventStore::new(writer, Fatal::detached()).start();
        Registry::new(Governance::default(), events).start()
    }

    fn create(topic: &str, reason: String) -> Command {
        Command::FileCreate {
            actor: "alice".into(),
            topic: topic.into(),
            spec: TopicSpec {
                partitions: 1,
                replication_factor: 1,
                config: TopicConfig::default(),
            },
            reason: Some(reason),
            visibility: Visibility::Open,
        }
    }

    #[actix::test]
    async fn no_query_sees_a_change_whose_commit_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = registry(dir.path());
        // Asked while the large request is in flight, and again once it has failed.
        let (filed, during) = tokio::join!(
            registry.send(create("big", "x".repeat(512 * 1024))),
            registry.send(ListRequests(RequestFilter::default(), PageOf::all()))
        );
        assert!(
            matches!(filed.expect("alive"), Err(Error::StorageFull(_))),
            "a commit that does not fit is storage_full"
        );
        assert!(
            during.expect("alive").expect("listed").items.is_empty(),
            "in-flight change seen"
        );
        assert!(registry
            .send(ListRequests(RequestFilter::default(), PageOf::all()))
            .await
            .expect("alive")
            .expect("listed")
            .items
            .is_empty());
        assert_eq!(
            registry.send(RouteOf("big".into())).await.expect("alive"),
            TopicRoute::Unknown
        );
        // The name is free again and the registry goes on without a restart.
        let again = registry
            .send(create("big", "small".into()))
            .await
            .expect("alive")
            .expect("filed once space allows");
        assert_eq!(again.status, RequestStatus::Pending);
        let listed = registry
            .send(ListRequests(RequestFilter::default(), PageOf::all()))
            .await
            .expect("alive")
            .expect("listed")
            .items;
        assert_eq!(listed, vec![again]);
        assert_eq!(crate::events::verify(dir.path()).expect("chain").seq, 1);
    }

    #[actix::test]
    async fn concurrent_commands_are_checked_against_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = registry(dir.path());
        let (a, b) = tokio::join!(
            registry.send(create("twice", "a".into())),
            registry.send(create("twice", "b".into()))
        );
        let results = [a.expect("alive"), b.expect("alive")];
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(Error::RequestPending { .. }))));
    }

    #[actix::test]
    async fn who_may_decide_is_checked_with_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = registry(dir.path());
        let carol = Principal {
            name: "carol".into(),
            roles: [Role::Admin, Role::Producer].into(),
        };
        let mut own = create("own", "mine".into());
        if let Command::FileCreate { actor, .. } = &mut own {
            *actor = "carol".into();
        }
        let request = registry.send(own).await.expect("alive").expect("filed");
        let approve = Command::Decide {
            principal: carol.clone(),
            id: request.id,
            decision: Decision::Approve { note: None },
        };
        assert!(matches!(
            registry.send(approve).await.expect("alive"),
            Err(Error::SelfApproval)
        ));
        let withdraw = Command::Withdraw {
            principal: Principal {
                name: "alice".into(),
                roles: [Role::Producer].into(),
            },
            id: request.id,
        };
        assert!(matches!(
            registry.send(withdraw).await.expect("alive"),
            Err(Error::NotRequester)
        ));
    }
}
