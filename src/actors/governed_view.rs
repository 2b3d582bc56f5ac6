//! The governed view: what the access rules need of every topic, readable without a message
//! to the registry.
//!
//! A facade that answers every Kafka Produce, Fetch and Metadata request cannot ask the
//! registry's mailbox each time. The registry keeps this view for it: one `TopicFacts` per
//! topic, rebuilt from the committed state each time an event of that topic commits (the
//! journal calls back after it applies the event, the same `apply` replay uses), so a reader
//! sees only what the log has, and a revocation that was answered is seen by the next read.
//! The registry is its only writer; readers take a read lock for one lookup or one pass.
//! The rules are those of the registry's own handlers (`access::produce_rule`,
//! `access::consume_rule`); the view adds the role checks their callers make.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use rustc_hash::FxHashMap;

use super::access::{consume_rule, produce_rule, TopicFacts};
use super::history::NameBuf;
use super::registry::{closed_why, Governance, RequestStatus, Topic, TopicRoute};
use crate::error::{Error, Result};
use crate::identity::{Principal, Role};

/// Where a principal's records for a topic go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceRoute {
    /// The topic is live in Kafka (active, or being deleted).
    Active,
    /// Its create request is pending, approved or being provisioned: records are held.
    Pending,
}

/// A topic as a principal sees it in Kafka's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleTopic {
    pub name: String,
    pub status: VisibleStatus,
    /// Of a pending topic, what its create request asks for.
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisibleStatus {
    Active,
    Pending,
}

/// Read-only; cheap to clone. See the module's comment.
#[derive(Debug, Clone, Default)]
pub struct GovernedView {
    topics: Arc<RwLock<Known>>,
    /// What `GET /topics/{name}` shows of each topic approved once or asked for and pending
    /// (`Governance::topic_or_pending`), so that a topic read costs no message to the registry.
    shown: Arc<RwLock<HashMap<String, Topic>>>,
}

/// The facts of every topic KafFlow has heard of.
#[derive(Debug, Default, PartialEq, Eq)]
struct Known {
    /// Topics that are live, asked for, or closed with something left to show (a topic in
    /// Kafka's past, a grant).
    topics: BTreeMap<String, TopicFacts>,
    /// Topics whose create request was decided without a topic (`Governance::closed_bare`).
    closed: ClosedNames,
}

impl Known {
    fn get(&self, topic: &str) -> Option<Cow<'_, TopicFacts>> {
        if let Some(facts) = self.topics.get(topic) {
            return Some(Cow::Borrowed(facts));
        }
        let status = self.closed.get(topic)?;
        Some(Cow::Owned(TopicFacts {
            route: TopicRoute::Closed(closed_why(status).to_string()),
            owner: None,
            shown: None,
            grants: Default::default(),
        }))
    }
}

/// The names closed for good, each with the status of the create request that closed it: all
/// there is to know of them. A long history is mostly these, so they are kept compactly: the
/// names in one buffer (`NameBuf`, no allocation per name) and their indexes with the status in
/// a `Vec` in name order (8 bytes a name, built at start in one pass and looked up by binary
/// search), with the changes since in a small map that is merged in once it holds `MERGE_AT`
/// names.
#[derive(Debug, Default)]
struct ClosedNames {
    names: NameBuf,
    sorted: Vec<(u32, RequestStatus)>,
    /// Since the last merge: closed (`Some`), or no longer closed (`None`).
    changed: FxHashMap<Box<str>, Option<RequestStatus>>,
}

/// A merge costs a pass over every closed name, under the view's write lock: rare enough that
/// it is nothing per change, and the map it empties stays small.
const MERGE_AT: usize = 4096;

impl ClosedNames {
    /// From names each given once.
    fn new<'a>(closed: impl Iterator<Item = (&'a str, RequestStatus)>) -> Self {
        let mut names = NameBuf::default();
        let mut sorted: Vec<(u32, RequestStatus)> = closed
            .map(|(name, status)| (names.push(name), status))
            .collect();
        // In name order when they come from the history's base; the names met since its last
        // fold follow.
        sorted.sort_by(|a, b| names.get(a.0).cmp(names.get(b.0)));
        sorted.shrink_to_fit();
        names.shrink_to_fit();
        ClosedNames {
            names,
            sorted,
            changed: FxHashMap::default(),
        }
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.sorted
            .binary_search_by(|(k, _)| self.names.get(*k).cmp(name))
    }

    fn get(&self, name: &str) -> Option<RequestStatus> {
        match self.changed.get(name) {
            Some(change) => *change,
            None => self.find(name).ok().map(|i| self.sorted[i].1),
        }
    }

    fn insert(&mut self, name: &str, status: RequestStatus) {
        self.changed.insert(name.into(), Some(status));
        self.merge_if_due();
    }

    fn remove(&mut self, name: &str) {
        if let Some(change) = self.changed.get_mut(name) {
            *change = None;
        } else if self.find(name).is_ok() {
            self.changed.insert(name.into(), None);
            self.merge_if_due();
        }
    }

    fn merge_if_due(&mut self) {
        if self.changed.len() < MERGE_AT {
            return;
        }
        let mut added = Vec::new();
        let mut gone = Vec::new();
        for (name, change) in std::mem::take(&mut self.changed) {
            match (self.find(&name), change) {
                (Ok(i), Some(status)) => self.sorted[i].1 = status,
                (Ok(i), None) => gone.push(i),
                // A name closed again after it was removed is stored again: the buffer only
                // grows, by the few names that are reopened and closed.
                (Err(_), Some(status)) => added.push((self.names.push(&name), status)),
                (Err(_), None) => {}
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            let mut gone = gone.into_iter().peekable();
            let mut at = 0;
            self.sorted.retain(|_| {
                let keep = gone.next_if_eq(&at).is_none();
                at += 1;
                keep
            });
        }
        if !added.is_empty() {
            let names = &self.names;
            added.sort_unstable_by(|a, b| names.get(a.0).cmp(names.get(b.0)));
            // Two sorted runs: the stable sort merges them in one pass.
            self.sorted.reserve_exact(added.len());
            self.sorted.extend(added);
            self.sorted
                .sort_by(|a, b| names.get(a.0).cmp(names.get(b.0)));
        }
    }

    /// Every closed name with its status, in name order.
    fn all(&self) -> BTreeMap<&str, RequestStatus> {
        let mut all: BTreeMap<&str, RequestStatus> = self
            .sorted
            .iter()
            .map(|(k, s)| (self.names.get(*k), *s))
            .collect();
        for (name, change) in &self.changed {
            match change {
                Some(status) => all.insert(name, *status),
                None => all.remove(&**name),
            };
        }
        all
    }
}

impl PartialEq for ClosedNames {
    fn eq(&self, other: &Self) -> bool {
        self.all() == other.all()
    }
}

impl Eq for ClosedNames {}

impl GovernedView {
    /// The view of a state replay rebuilt.
    pub(super) fn of(state: &Governance) -> Self {
        let mut topics = BTreeMap::new();
        let mut closed = Vec::new();
        let mut shown = HashMap::new();
        for (name, status) in state.topic_names_closed() {
            match status {
                Some(status) => closed.push((name, status)),
                None => {
                    if let Some(facts) = state.facts(name) {
                        topics.insert(name.to_string(), facts);
                    }
                    if let Ok(topic) = state.topic_or_pending(name) {
                        shown.insert(name.to_string(), topic);
                    }
                }
            }
        }
        let known = Known {
            topics,
            closed: ClosedNames::new(closed.into_iter()),
        };
        GovernedView {
            topics: Arc::new(RwLock::new(known)),
            shown: Arc::new(RwLock::new(shown)),
        }
    }

    /// Brings `topic` up to `state`, the committed state that has just applied an event of it.
    pub(super) fn refresh(&self, state: &Governance, topic: &str) {
        // Built before the lock is taken: readers wait only for the insert.
        let bare = state.closed_bare(topic);
        let facts = match bare {
            Some(_) => None,
            None => state.facts(topic),
        };
        let shown = state.topic_or_pending(topic).ok();
        {
            let mut known = self
                .topics
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match (bare, facts) {
                (Some(status), _) => {
                    known.topics.remove(topic);
                    known.closed.insert(topic, status);
                }
                (None, Some(facts)) => {
                    known.closed.remove(topic);
                    known.topics.insert(topic.to_string(), facts);
                }
                (None, None) => {
                    known.closed.remove(topic);
                    known.topics.remove(topic);
                }
            }
        }
        let mut all = self
            .shown
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match shown {
            Some(shown) => all.insert(topic.to_string(), shown),
            None => all.remove(topic),
        };
    }

    /// The topic as `GET /topics/{name}` shows it: the answer of the registry's `GetTopic`
    /// (`Governance::topic_or_pending`) for the committed state, without a message.
    pub fn topic(&self, name: &str) -> Result<Topic> {
        self.shown
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("topic {name}")))
    }

    fn read(&self) -> RwLockReadGuard<'_, Known> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where records for `topic` go, as the committed state says: for the publisher, which is
    /// told the route of a topic closed for good only when it asks.
    pub fn route(&self, topic: &str) -> TopicRoute {
        self.read()
            .get(topic)
            .map_or(TopicRoute::Unknown, |facts| facts.route.clone())
    }

    /// Where `principal`'s records for `topic` go, or why they may not be sent: the role
    /// (`forbidden`, as ingest checks it), then the rule of the registry's `MayProduce`,
    /// except that an unknown topic is `unknown_topic` and a rejected, withdrawn, failed or
    /// deleted one `topic_closed` (the publisher's answers, given here at once).
    pub fn may_produce(&self, principal: &Principal, topic: &str) -> Result<ProduceRoute> {
        principal.require_any(&[Role::Producer])?;
        produce_rule(self.read().get(topic).as_deref(), principal, topic)
    }

    /// Whether `principal` may read `topic` now: the role (`forbidden`, as a subscription
    /// checks it), then the rule of the registry's `MayConsume` (`not_found`,
    /// `topic_not_active`, `no_access`).
    pub fn may_consume(&self, principal: &Principal, topic: &str) -> Result<()> {
        principal.require_any(&[Role::Consumer])?;
        consume_rule(self.read().get(topic).as_deref(), principal, topic)
    }

    /// What `principal` sees in Kafka's metadata, in name order: the live topics it may send
    /// to or read, and the pending ones (create request pending or approved, or provisioning)
    /// it asked for or holds a grant on.
    pub fn visible(&self, principal: &Principal) -> Vec<VisibleTopic> {
        // A topic closed for good is never visible: only the others are walked.
        self.read()
            .topics
            .iter()
            .filter_map(|(name, facts)| visible_to(facts, principal, name))
            .collect()
    }

    /// `topic`'s entry for `principal`, if it sees it (see `visible`).
    pub fn visible_topic(&self, principal: &Principal, topic: &str) -> Option<VisibleTopic> {
        visible_to(&*self.read().get(topic)?, principal, topic)
    }
}

fn visible_to(facts: &TopicFacts, principal: &Principal, name: &str) -> Option<VisibleTopic> {
    let shown = facts.shown?;
    let status = match facts.route {
        TopicRoute::Active => {
            let may_produce =
                principal.has(Role::Producer) && produce_rule(Some(facts), principal, name).is_ok();
            let may_consume =
                principal.has(Role::Consumer) && consume_rule(Some(facts), principal, name).is_ok();
            (may_produce || may_consume).then_some(VisibleStatus::Active)?
        }
        TopicRoute::Pending => {
            // Its owner while the request is open is the requester.
            let asked = facts.owner.as_deref() == Some(principal.name.as_str());
            (asked || facts.granted_any(principal)).then_some(VisibleStatus::Pending)?
        }
        TopicRoute::Closed(_) | TopicRoute::Unknown => return None,
    };
    Some(VisibleTopic {
        name: name.to_string(),
        status,
        partitions: shown.partitions,
        replication_factor: shown.replication_factor,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actix::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::actors::access::{AccessCommand, MayConsume, MayProduce, RevokeGrant};
    use crate::actors::event_store::EventStore;
    use crate::actors::registry::{Command, Decision, Outcome, Registry, RouteOf, TopicRequest};
    use crate::error::Error;
    use crate::events::{Access, Durability, Store, TopicSpec, Visibility};
    use crate::shutdown::Fatal;

    /// The closed names answer as a plain map does through closes, reopenings and merges,
    /// whichever order they were built in.
    #[test]
    fn closed_names_merge_their_changes_and_answer_as_a_map() {
        let name = |n: usize| -> Arc<str> { Arc::from(format!("t-{:06}", n * 7919 % 100_000)) };
        let status = |n: usize| match n % 3 {
            0 => RequestStatus::Rejected,
            1 => RequestStatus::Withdrawn,
            _ => RequestStatus::Failed,
        };
        // In hash order, as after a full replay.
        let start: Vec<(Arc<str>, RequestStatus)> =
            (0..3 * MERGE_AT).map(|n| (name(n), status(n))).collect();
        let mut model: BTreeMap<String, RequestStatus> =
            start.iter().map(|(k, s)| (k.to_string(), *s)).collect();
        let mut closed = ClosedNames::new(start.iter().map(|(k, s)| (&**k, *s)));
        for n in 0..5 * MERGE_AT {
            let k = name(n * 3 + 1);
            if n % 4 == 0 {
                closed.remove(&k);
                model.remove(&*k);
            } else {
                closed.insert(&k, status(n + 1));
                model.insert(k.to_string(), status(n + 1));
            }
        }
        assert!(closed.changed.len() < MERGE_AT, "merged along the way");
        for n in 0..20 * MERGE_AT {
            let k = name(n);
            assert_eq!(closed.get(&k), model.get(&*k).copied(), "{k}");
        }
        let all: BTreeMap<String, RequestStatus> = closed
            .all()
            .into_iter()
            .map(|(k, s)| (k.to_string(), s))
            .collect();
        assert_eq!(all, model);
        assert!(closed
            .sorted
            .windows(2)
            .all(|w| closed.names.get(w[0].0) < closed.names.get(w[1].0)));
    }

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
    fn carol() -> Principal {
        who("carol", &[Role::Admin])
    }
    fn erin() -> Principal {
        who("erin", &[Role::Consumer])
    }

    fn everyone() -> Vec<Principal> {
        vec![
            alice(),
            bob(),
            carol(),
            erin(),
            who("dave", &[Role::Producer, Role::Consumer]),
            who("frank", &[]),
            who("gina", &[Role::Consumer]),
            who("root", &[Role::Admin, Role::Producer, Role::Consumer]),
        ]
    }

    /// A registry over the log in `dir`, started from what replay rebuilds of it; with
    /// `max_pages`, a log that refuses a large commit as a full disk does.
    fn start(
        dir: &std::path::Path,
        max_pages: Option<u32>,
    ) -> (Addr<Registry>, GovernedView, Governance) {
        let store = Store::open(dir, Durability::Normal).expect("open");
        if let Some(pages) = max_pages {
            store.limit_pages(pages).expect("limit");
        }
        let mut state = Governance::default();
        let head = store
            .replay(|event| state.apply(event.body))
            .expect("replay");
        let (writer, _thread) = store.into_writer(head).expect("writer");
        let events = EventStore::new(writer, Fatal::detached()).start();
        let registry = Registry::new(state.clone(), events);
        let view = registry.view();
        (registry.start(), view, state)
    }

    struct World {
        registry: Addr<Registry>,
    }

    impl World {
        async fn run(&self, command: Command) -> TopicRequest {
            self.registry
                .send(command)
                .await
                .expect("alive")
                .expect("recorded")
        }

        async fn file(&self, topic: &str, visibility: Visibility) -> TopicRequest {
            self.run(Command::FileCreate {
                actor: "alice".into(),
                topic: topic.into(),
                spec: TopicSpec {
                    partitions: 4,
                    replication_factor: 1,
                    config: Default::default(),
                },
                reason: None,
                visibility,
            })
            .await
        }

        async fn decide(&self, id: Uuid, decision: Decision) {
            self.run(Command::Decide {
                principal: carol(),
                id,
                decision,
            })
            .await;
        }

        async fn outcome(&self, id: Uuid, outcome: Outcome) {
            self.run(Command::RecordOutcome { id, outcome }).await;
        }

        async fn active(&self, topic: &str, visibility: Visibility) -> TopicRequest {
            let r = self.file(topic, visibility).await;
            self.decide(r.id, Decision::Approve { note: None }).await;
            let spec = TopicSpec {
                partitions: 6,
                ..r.spec()
            };
            self.outcome(
                r.id,
                Outcome::Provisioned {
                    spec,
                    already_existed: false,
                },
            )
            .await;
            r
        }

        async fn access(&self, command: AccessCommand) -> Uuid {
            let request = self.registry.send(command).await.expect("alive");
            request.expect("access recorded").id
        }

        /// `user` asks for `access` to `topic`, and `decider` approves it.
        async fn grant(
            &self,
            user: Principal,
            topic: &str,
            access: Access,
            decider: Principal,
        ) -> Uuid {
            let id = self
                .access(AccessCommand::File {
                    principal: user,
                    topic: topic.into(),
                    access,
                    reason: None,
                })
                .await;
            self.access(AccessCommand::Decide {
                principal: decider,
                id,
                decision: Decision::Approve { note: None },
            })
            .await
        }

        async fn delete(&self, topic: &str) -> TopicRequest {
            let d = self
                .run(Command::FileDeletion {
                    principal: alice(),
                    topic: topic.into(),
                    reason: "done".into(),
                })
                .await;
            self.decide(d.id, Decision::Approve { note: None }).await;
            d
        }
    }

    /// Every state a topic can be in, each with its grants: the grid's topics.
    async fn every_state(world: &World) {
        world.file("p-open", Visibility::Open).await;
        world.file("p-restr", Visibility::Restricted).await;
        world
            .grant(erin(), "p-restr", Access::Consume, alice())
            .await;
        world
            .grant(bob(), "p-restr", Access::Produce, carol())
            .await;
        let r = world.file("prov", Visibility::Open).await;
        world.decide(r.id, Decision::Approve { note: None }).await;
        world.active("a-open", Visibility::Open).await;
        world.active("a-restr", Visibility::Restricted).await;
        world
            .grant(erin(), "a-restr", Access::Consume, alice())
            .await;
        world.active("granted", Visibility::Open).await;
        world
            .grant(bob(), "granted", Access::Produce, alice())
            .await;
        world.active("revoked", Visibility::Open).await;
        let id = world
            .grant(bob(), "revoked", Access::Produce, alice())
            .await;
        let revoked = world.registry.send(RevokeGrant {
            principal: alice(),
            id,
            reason: None,
        });
        revoked.await.expect("alive").expect("revoked");
        let r = world.file("rej", Visibility::Open).await;
        let no = Decision::Reject {
            reason: "no".into(),
        };
        world.decide(r.id, no).await;
        let r = world.file("wd", Visibility::Open).await;
        world
            .run(Command::Withdraw {
                principal: alice(),
                id: r.id,
            })
            .await;
        let r = world.file("failed", Visibility::Open).await;
        world.decide(r.id, Decision::Approve { note: None }).await;
        let failed = Outcome::ProvisioningFailed {
            error: "broker said no".into(),
        };
        world.outcome(r.id, failed).await;
        world.active("del", Visibility::Open).await;
        let d = world.delete("del").await;
        let deleted = Outcome::Deleted {
            already_absent: false,
        };
        world.outcome(d.id, deleted).await;
        world.active("deleting", Visibility::Restricted).await;
        world.delete("deleting").await;
        world.active("handed", Visibility::Open).await;
        let id = world
            .access(AccessCommand::FileOwnership {
                principal: alice(),
                topic: "handed".into(),
                to: "bob".into(),
                reason: None,
            })
            .await;
        world
            .access(AccessCommand::Decide {
                principal: bob(),
                id,
                decision: Decision::Approve { note: None },
            })
            .await;
    }

    const TOPICS: [&str; 14] = [
        "p-open",
        "p-restr",
        "prov",
        "a-open",
        "a-restr",
        "granted",
        "revoked",
        "rej",
        "wd",
        "failed",
        "del",
        "deleting",
        "handed",
        "never-asked",
    ];

    /// The view answers as the registry's handlers do, for every principal and topic, the
    /// role its callers check first aside.
    async fn agree(registry: &Addr<Registry>, view: &GovernedView) {
        for topic in TOPICS {
            let handler = registry
                .send(super::super::registry::GetTopic(topic.into()))
                .await
                .expect("alive");
            match (view.topic(topic), handler) {
                (Ok(seen), Ok(asked)) => assert_eq!(seen, asked, "GET /topics/{topic}"),
                (Err(seen), Err(asked)) => assert_eq!(
                    (seen.code(), seen.to_string()),
                    (asked.code(), asked.to_string()),
                    "GET /topics/{topic}"
                ),
                (seen, asked) => panic!("GET /topics/{topic}: view {seen:?}, registry {asked:?}"),
            }
        }
        for principal in everyone() {
            for topic in TOPICS {
                let case = format!("{} on {topic}", principal.name);
                let handler = registry.send(MayProduce {
                    principal: principal.clone(),
                    topic: topic.into(),
                });
                let handler = handler.await.expect("alive");
                let route = registry.send(RouteOf(topic.into())).await.expect("alive");
                match (
                    view.may_produce(&principal, topic),
                    principal.has(Role::Producer),
                ) {
                    (Err(Error::Forbidden(_)), false) => {}
                    (Ok(ProduceRoute::Active), true) => {
                        assert!(handler.is_ok() && route == TopicRoute::Active, "{case}")
                    }
                    (Ok(ProduceRoute::Pending), true) => {
                        assert!(handler.is_ok() && route == TopicRoute::Pending, "{case}")
                    }
                    // The handler leaves these to the publisher, which answers from the route.
                    (Err(Error::UnknownTopic(_)), true) => {
                        assert!(handler.is_ok() && route == TopicRoute::Unknown, "{case}")
                    }
                    (Err(Error::TopicClosed { why, .. }), true) => {
                        assert!(handler.is_ok(), "{case}");
                        assert_eq!(route, TopicRoute::Closed(why), "{case}");
                    }
                    (Err(e), true) => {
                        let h = handler.expect_err(&case);
                        assert_eq!(
                            (e.code(), e.to_string()),
                            (h.code(), h.to_string()),
                            "{case}"
                        );
                    }
                    (other, role) => panic!("{case}: {other:?} with the role {role}"),
                }

                let handler = registry.send(MayConsume {
                    principal: principal.clone(),
                    topic: topic.into(),
                });
                let handler = handler.await.expect("alive");
                match (
                    view.may_consume(&principal, topic),
                    principal.has(Role::Consumer),
                ) {
                    (Err(Error::Forbidden(_)), false) => {}
                    (Ok(()), true) => assert!(handler.is_ok(), "{case}: {handler:?}"),
                    (Err(e), true) => {
                        let h = handler.expect_err(&case);
                        assert_eq!(
                            (e.code(), e.to_string()),
                            (h.code(), h.to_string()),
                            "{case}"
                        );
                    }
                    (other, role) => panic!("{case}: {other:?} with the role {role}"),
                }
            }
        }
    }

    fn names(view: &GovernedView, principal: &Principal) -> BTreeSet<String> {
        let visible = view.visible(principal);
        for topic in &visible {
            assert_eq!(
                view.visible_topic(principal, &topic.name).as_ref(),
                Some(topic)
            );
        }
        visible.into_iter().map(|t| t.name).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[actix::test]
    async fn the_view_agrees_with_the_handlers_on_every_topic_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, view, _) = start(dir.path(), None);
        let world = World {
            registry: registry.clone(),
        };
        every_state(&world).await;
        agree(&registry, &view).await;

        // What each one sees in Kafka's metadata.
        assert_eq!(
            names(&view, &alice()),
            set(&[
                "a-open", "a-restr", "deleting", "granted", "p-open", "p-restr", "prov", "revoked"
            ])
        );
        assert_eq!(names(&view, &bob()), set(&["granted", "handed", "p-restr"]));
        assert_eq!(
            names(&view, &erin()),
            set(&["a-open", "a-restr", "granted", "handed", "p-restr", "revoked"])
        );
        assert!(names(&view, &who("frank", &[])).is_empty());
        assert!(
            names(&view, &carol()).is_empty(),
            "an admin needs a role to send or read"
        );
        let pending = view
            .visible_topic(&alice(), "p-open")
            .expect("alice asked for it");
        assert_eq!(
            (
                pending.status,
                pending.partitions,
                pending.replication_factor
            ),
            (VisibleStatus::Pending, 4, 1)
        );
        let active = view
            .visible_topic(&erin(), "a-open")
            .expect("open to readers");
        assert_eq!(
            (active.status, active.partitions),
            (VisibleStatus::Active, 6)
        );
        assert_eq!(view.visible_topic(&erin(), "p-open"), None);

        // Kept one topic at a time, it equals the view built whole from the log, and a
        // registry started again from the log answers the same.
        drop(world);
        drop(registry);
        let (registry, restarted, replayed) = start(dir.path(), None);
        assert_eq!(*view.read(), *GovernedView::of(&replayed).read());
        assert_eq!(*view.read(), *restarted.read());
        agree(&registry, &restarted).await;
    }

    #[actix::test]
    async fn a_change_is_seen_once_committed_and_a_failed_commit_never() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, view, _) = start(dir.path(), Some(24));
        let world = World {
            registry: registry.clone(),
        };
        let big = Command::FileCreate {
            actor: "alice".into(),
            topic: "big".into(),
            spec: TopicSpec {
                partitions: 1,
                replication_factor: 1,
                config: Default::default(),
            },
            reason: Some("x".repeat(512 * 1024)),
            visibility: Visibility::Open,
        };
        let failed = registry.send(big).await.expect("alive");
        assert!(matches!(failed, Err(Error::StorageFull(_))), "{failed:?}");
        assert!(matches!(
            view.may_produce(&alice(), "big"),
            Err(Error::UnknownTopic(_))
        ));
        assert!(view.visible(&alice()).is_empty());

        let r = world.file("t", Visibility::Open).await;
        // Answered means committed: the view has it.
        assert_eq!(
            view.may_produce(&alice(), "t").expect("hers"),
            ProduceRoute::Pending
        );
        world.decide(r.id, Decision::Approve { note: None }).await;
        world
            .outcome(
                r.id,
                Outcome::Provisioned {
                    spec: r.spec(),
                    already_existed: false,
                },
            )
            .await;
        assert_eq!(
            view.may_produce(&alice(), "t").expect("hers"),
            ProduceRoute::Active
        );
        assert!(matches!(
            view.may_produce(&bob(), "t"),
            Err(Error::NoAccess(_))
        ));
        let id = world.grant(bob(), "t", Access::Produce, alice()).await;
        assert_eq!(
            view.may_produce(&bob(), "t").expect("granted"),
            ProduceRoute::Active
        );
        let revoked = registry.send(RevokeGrant {
            principal: alice(),
            id,
            reason: None,
        });
        revoked.await.expect("alive").expect("revoked");
        assert!(
            matches!(view.may_produce(&bob(), "t"), Err(Error::NoAccess(_))),
            "a revocation that was answered is seen by the next read"
        );
    }
}
