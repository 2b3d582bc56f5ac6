//! The watcher: keeps the publisher's routes in step with governance, and the cluster in
//! view.
//!
//! It follows the log: each committed governance event makes it ask the registry where that
//! topic's records go now and tell the publisher at once, so held records start draining the
//! moment a topic turns active. On an interval it also reconciles with Kafka's own metadata
//! (Klaw's sync view): managed topics missing in Kafka, topics in Kafka that KafFlow does not
//! manage, and managed topics whose partitions or config differ. Each change in that picture
//! is recorded as a `drift_detected` or `drift_resolved` event, through the watcher's journal:
//! the drift book changes only by applying those events, once they are committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde::{Deserialize, Serialize};

use super::event_store::{Committed, EventStore};
use super::journal::{self, Journal, Journaled, Journaling, Owner};
use super::publisher::{Publisher, SetRoute};
use super::registry::{ListTopics, Registry, RouteOf, Topic, TopicStatus, SYSTEM};
use crate::events::{EventKind, NewEvent};
use crate::kafka;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The drift the last reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DriftReport {
    /// Managed topics (active or deleting) that Kafka does not have.
    pub missing_in_kafka: Vec<String>,
    /// Topics in Kafka that KafFlow does not manage.
    pub unmanaged_in_kafka: Vec<String>,
    /// Managed topics whose shape or config in Kafka differs from what was approved.
    pub config_differs: Vec<ConfigDiff>,
    /// When Kafka was last compared; absent before the first reconciliation.
    pub checked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConfigDiff {
    pub topic: String,
    pub key: String,
    pub expected: String,
    pub actual: Option<String>,
}

/// The drift recorded in the log: (kind, topic) → detail. Rebuilt by replay so that a restart
/// records only what changed while KafFlow was down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftBook(BTreeMap<(String, String), String>);

impl Journaled for DriftBook {
    fn apply(&mut self, event: &NewEvent) {
        DriftBook::apply(self, event);
    }
}

impl DriftBook {
    pub fn apply(&mut self, event: &NewEvent) {
        let Some(topic) = &event.topic else { return };
        match &event.kind {
            EventKind::DriftDetected { drift, detail } => {
                self.0
                    .insert((drift.clone(), topic.clone()), detail.clone());
            }
            EventKind::DriftResolved { drift } => {
                self.0.remove(&(drift.clone(), topic.clone()));
            }
            _ => {}
        }
    }
}

#[derive(Message)]
#[rtype(result = "DriftReport")]
pub struct GetDrift;

/// Compare with Kafka now (also done on the interval).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconcile;

#[derive(Message)]
#[rtype(result = "()")]
struct Reconciled(DriftReport);

pub struct Watcher {
    registry: Addr<Registry>,
    publisher: Addr<Publisher>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    interval: Duration,
    report: DriftReport,
    journal: Journal<DriftBook>,
    reconciling: bool,
}

impl Watcher {
    pub fn new(
        registry: Addr<Registry>,
        publisher: Addr<Publisher>,
        event_store: Addr<EventStore>,
        admin: AdminClient<DefaultClientContext>,
        interval: Duration,
        book: DriftBook,
    ) -> Self {
        Watcher {
            registry,
            publisher,
            admin: Arc::new(admin),
            interval,
            report: DriftReport::default(),
            journal: Journal::new(Owner::Watcher, book, event_store),
            reconciling: false,
        }
    }
}

impl Journaling for Watcher {
    type State = DriftBook;

    fn journal(&mut self) -> &mut Journal<DriftBook> {
        &mut self.journal
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |_, ctx| ctx.notify(Reconcile));
    }
}

/// Governance events are the ones that can change where a topic's records go.
fn changes_route(kind: &EventKind) -> bool {
    journal::owner(kind) == Owner::Registry
}

impl Handler<Committed> for Watcher {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let mut topics: Vec<String> = msg
            .0
            .iter()
            .filter(|e| changes_route(&e.body.kind))
            .filter_map(|e| e.body.topic.clone())
            .collect();
        topics.dedup();
        if topics.is_empty() {
            return;
        }
        let registry = self.registry.clone();
        let publisher = self.publisher.clone();
        // One batch at a time, so the publisher hears about a topic's changes in order.
        ctx.wait(
            async move {
                for topic in topics {
                    if let Ok(route) = registry.send(RouteOf(topic.clone())).await {
                        publisher.do_send(SetRoute { topic, route });
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<GetDrift> for Watcher {
    type Result = MessageResult<GetDrift>;

    fn handle(&mut self, _: GetDrift, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.report.clone())
    }
}

impl Handler<Reconcile> for Watcher {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        if self.reconciling {
            return;
        }
        self.reconciling = true;
        let admin = self.admin.clone();
        let registry = self.registry.clone();
        let me = ctx.address();
        actix::spawn(async move {
            match compare(admin, registry).await {
                Ok(report) => me.do_send(Reconciled(report)),
                Err(e) => {
                    tracing::warn!(error = %e, "Reconciliation with Kafka failed; will retry.");
                    me.do_send(Reconciled(DriftReport::default()));
                }
            }
        });
    }
}

/// Each drift as (kind, topic) → detail, the unit that events are recorded for.
fn drift_items(report: &DriftReport) -> BTreeMap<(String, String), String> {
    let mut items = BTreeMap::new();
    for topic in &report.missing_in_kafka {
        items.insert(
            ("missing_in_kafka".to_string(), topic.clone()),
            "managed topic is not in Kafka".to_string(),
        );
    }
    for topic in &report.unmanaged_in_kafka {
        items.insert(
            ("unmanaged_in_kafka".to_string(), topic.clone()),
            "topic in Kafka is not managed by KafFlow".to_string(),
        );
    }
    for diff in &report.config_differs {
        let detail = format!(
            "{} is {} in Kafka, {} was approved",
            diff.key,
            diff.actual.as_deref().unwrap_or("unset"),
            diff.expected
        );
        let entry = items
            .entry(("config_differs".to_string(), diff.topic.clone()))
            .or_insert_with(String::new);
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(&detail);
    }
    items
}

impl Handler<Reconciled> for Watcher {
    type Result = ();

    fn handle(&mut self, msg: Reconciled, ctx: &mut Context<Self>) {
        self.reconciling = false;
        let report = msg.0;
        if report.checked_at.is_none() {
            return;
        }
        let Ok(book) = self.journal.staged() else {
            // A drift commit failed and is being cleared: the next reconciliation records it.
            self.report = report;
            return;
        };
        let before = &book.0;
        let after = drift_items(&report);
        let mut events = Vec::new();
        for ((drift, topic), detail) in &after {
            if before.get(&(drift.clone(), topic.clone())) != Some(detail) {
                let kind = EventKind::DriftDetected {
                    drift: drift.clone(),
                    detail: detail.clone(),
                };
                events.push(NewEvent::now(SYSTEM, Some(topic), None, kind));
            }
        }
        for (drift, topic) in before.keys() {
            if !after.contains_key(&(drift.clone(), topic.clone())) {
                let kind = EventKind::DriftResolved {
                    drift: drift.clone(),
                };
                events.push(NewEvent::now(SYSTEM, Some(topic), None, kind));
            }
        }
        self.report = report;
        if events.is_empty() {
            return;
        }
        tracing::info!(changes = events.len(), "Drift with Kafka changed.");
        // The book follows the log: a change that fails to commit is not in it, so the next
        // reconciliation records it again.
        journal::persist(self, ctx, events, |_, result| {
            if let Err(e) = result {
                tracing::warn!(error = %e, "Drift events not recorded; will retry.");
            }
        });
    }
}

async fn compare(
    admin: Arc<AdminClient<DefaultClientContext>>,
    registry: Addr<Registry>,
) -> Result<DriftReport, String> {
    let blocking = admin.clone();
    let in_kafka =
        tokio::task::spawn_blocking(move || kafka::list_topics(&blocking, METADATA_TIMEOUT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let topics: Vec<Topic> = registry.send(ListTopics).await.map_err(|e| e.to_string())?;
    let managed: BTreeMap<&str, &Topic> = topics
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                TopicStatus::Provisioning | TopicStatus::Active | TopicStatus::Deleting
            )
        })
        .map(|t| (t.name.as_str(), t))
        .collect();

    let now = Utc::now();
    let mut report = DriftReport {
        checked_at: DateTime::from_timestamp_micros(now.timestamp_micros()).or(Some(now)),
        ..DriftReport::default()
    };
    for (name, topic) in &managed {
        if topic.status == TopicStatus::Active && !in_kafka.contains_key(*name) {
            report.missing_in_kafka.push(name.to_string());
        }
    }
    for name in in_kafka.keys() {
        if !managed.contains_key(name.as_str()) {
            report.unmanaged_in_kafka.push(name.clone());
        }
    }
    let active: Vec<&Topic> = managed
        .values()
        .copied()
        .filter(|t| t.status == TopicStatus::Active && in_kafka.contains_key(&t.name))
        .collect();
    for topic in &active {
        let partitions = in_kafka.get(&topic.name).copied().unwrap_or(0);
        if partitions != topic.partitions {
            report.config_differs.push(ConfigDiff {
                topic: topic.name.clone(),
                key: "partitions".into(),
                expected: topic.partitions.to_string(),
                actual: Some(partitions.to_string()),
            });
        }
    }
    let with_config: Vec<&Topic> = active
        .into_iter()
        .filter(|t| !t.config.is_empty())
        .collect();
    if !with_config.is_empty() {
        let specs: Vec<ResourceSpecifier> = with_config
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
        let results = admin
            .describe_configs(specs.iter(), &options)
            .await
            .map_err(|e| e.to_string())?;
        for (topic, result) in with_config.iter().zip(results) {
            let Ok(resource) = result else { continue };
            for (key, expected) in topic.config.iter() {
                let actual = resource.get(key).and_then(|e| e.value.clone());
                if actual.as_deref() != Some(expected) {
                    report.config_differs.push(ConfigDiff {
                        topic: topic.name.clone(),
                        key: key.to_string(),
                        expected: expected.to_string(),
                        actual,
                    });
                }
            }
        }
    }
    Ok(report)
}
