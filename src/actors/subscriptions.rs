//! The subscriptions actor: who reads which topic, and the door to each user's consumer.
//!
//! The user-to-topic mapping is state kept as events: `subscribed` (actor: the user) and
//! `unsubscribed` (actor: the user, reason `user`; or actor `system`, reason `topic_deleted`,
//! which ends every subscription to the topic). This actor is their single writer; like the
//! registry it goes through its journal: a change is checked against the staged book,
//! persisted, and only then applied to the book that reads see, and answered. Only active
//! topics can be subscribed (asked of the registry).
//!
//! It follows the log: when a `topic_deleted` event is committed, the topic's subscriptions end
//! with an event and the readers' consumers are told, so their feeds get `topic_deleted`.
//!
//! It also starts each user's `consumer` when a feed opens, tells it of subscription changes,
//! and stops it once it has had no feed for `feeds.idle_consumer_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::access::{LostConsumeGrants, MayConsume};
use super::consumer::{
    Attach, Consumer, FeedClosed, FeedFormat, FeedHandle, FeedStart, SetTopics, Stop, TopicGone,
};
use super::event_store::{Committed, EventStore, Follow};
use super::journal::{self, Journal, Journaled, Journaling, Owner};
use super::registry::{GetTopic, ListTopics, Registry, TopicStatus, SYSTEM};
use super::topic_reader::TopicReaders;
use crate::config::{FeedConfig, KafkaConfig};
use crate::error::{Error, Result};
use crate::events::{Access, EventKind, NewEvent, Visibility};
use crate::identity::{Principal, Role};
use crate::paging::{Page, PageOf};
use crate::shutdown::{Guard, Shutdown};

/// The `unsubscribed` reason when the user asked.
pub const REASON_USER: &str = "user";
/// The `unsubscribed` reason when the topic was deleted.
pub const REASON_TOPIC_DELETED: &str = "topic_deleted";
/// A `consume` grant on a restricted topic was revoked: one user's subscription ends.
pub const REASON_GRANT_REVOKED: &str = "grant_revoked";

/// One user-topic mapping, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub user: String,
    pub topic: String,
    pub since: DateTime<Utc>,
}

/// The state rebuilt from the log: each user's subscribed topics, with when they subscribed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionBook {
    by_user: BTreeMap<String, BTreeMap<String, DateTime<Utc>>>,
}

impl Journaled for SubscriptionBook {
    fn apply(&mut self, event: &NewEvent) {
        SubscriptionBook::apply(self, event);
    }
}

impl SubscriptionBook {
    /// Turns one of this actor's events into state; replay and live appends both come here.
    pub fn apply(&mut self, event: &NewEvent) {
        let Some(topic) = event.topic.as_deref() else {
            return;
        };
        match &event.kind {
            EventKind::Subscribed {} => {
                self.by_user
                    .entry(event.actor.clone())
                    .or_default()
                    .insert(topic.to_string(), event.at);
            }
            EventKind::Unsubscribed {
                user: Some(user), ..
            } if event.actor == SYSTEM => {
                if let Some(topics) = self.by_user.get_mut(user) {
                    topics.remove(topic);
                    if topics.is_empty() {
                        self.by_user.remove(user);
                    }
                }
            }
            EventKind::Unsubscribed { .. } if event.actor == SYSTEM => {
                for topics in self.by_user.values_mut() {
                    topics.remove(topic);
                }
                self.by_user.retain(|_, topics| !topics.is_empty());
            }
            EventKind::Unsubscribed { .. } => {
                if let Some(topics) = self.by_user.get_mut(&event.actor) {
                    topics.remove(topic);
                    if topics.is_empty() {
                        self.by_user.remove(&event.actor);
                    }
                }
            }
            // Owned by other actors (`journal::owner`); never handed to this book.
            _ => {}
        }
    }

    /// The topics `user` reads, in name order.
    pub fn topics_of(&self, user: &str) -> BTreeSet<String> {
        self.by_user
            .get(user)
            .map(|topics| topics.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Who reads `topic`.
    pub fn readers_of(&self, topic: &str) -> Vec<String> {
        self.by_user
            .iter()
            .filter(|(_, topics)| topics.contains_key(topic))
            .map(|(user, _)| user.clone())
            .collect()
    }

    /// Every mapping (of one topic, if given), by user then topic.
    pub fn list(&self, topic: Option<&str>) -> Vec<Subscription> {
        self.list_page(topic, &PageOf::all()).items
    }

    /// One page of the mappings (of one topic, if given), by user then topic. With a topic,
    /// each user costs one lookup.
    pub fn list_page(
        &self,
        topic: Option<&str>,
        page: &PageOf<(String, String)>,
    ) -> Page<(String, String), Subscription> {
        let after = page.after.as_ref();
        let users = self.by_user.range::<String, _>((
            after.map_or(Bound::Unbounded, |(u, _)| Bound::Included(u)),
            Bound::Unbounded,
        ));
        let rest = users.flat_map(|(user, topics)| {
            // Within the cursor's own user, only the topics after its topic.
            let from = match after {
                Some((u, t)) if u == user => Bound::Excluded(t),
                _ => Bound::Unbounded,
            };
            let wanted: Box<dyn Iterator<Item = (&String, &DateTime<Utc>)>> = match topic {
                Some(t) => Box::new(
                    topics
                        .get_key_value(t)
                        .filter(|(t, _)| match from {
                            Bound::Excluded(after) => *t > after,
                            _ => true,
                        })
                        .into_iter(),
                ),
                None => Box::new(topics.range::<String, _>((from, Bound::Unbounded))),
            };
            wanted.map(move |(t, since)| Subscription {
                user: user.clone(),
                topic: t.clone(),
                since: *since,
            })
        });
        Page::take(rest, page.limit, |s| (s.user.clone(), s.topic.clone()))
    }

    /// One page of the topics `user` reads, in name order.
    pub fn topics_page(&self, user: &str, page: &PageOf<String>) -> Page<String, String> {
        let rest = self.by_user.get(user).into_iter().flat_map(|topics| {
            topics
                .range::<String, _>(page.range())
                .map(|(t, _)| t.clone())
        });
        Page::take(rest, page.limit, String::clone)
    }

    /// The events that take `user` from its current set to the one `change` asks for.
    fn events_for(&self, user: &str, change: &Change) -> Result<Vec<NewEvent>> {
        let current = self.topics_of(user);
        let subscribe = |t: &String| NewEvent::now(user, Some(t), None, EventKind::Subscribed {});
        let unsubscribe = |t: &String| {
            NewEvent::now(
                user,
                Some(t),
                None,
                EventKind::Unsubscribed {
                    reason: REASON_USER.to_string(),
                    user: None,
                },
            )
        };
        Ok(match change {
            Change::Add(topic) if current.contains(topic) => Vec::new(),
            Change::Add(topic) => vec![subscribe(topic)],
            Change::Remove(topic) if !current.contains(topic) => {
                return Err(Error::NotFound(format!(
                    "subscription of {user} to topic {topic}"
                )))
            }
            Change::Remove(topic) => vec![unsubscribe(topic)],
            Change::Replace(wanted) => current
                .difference(wanted)
                .map(unsubscribe)
                .chain(wanted.difference(&current).map(subscribe))
                .collect(),
        })
    }
}

/// `GET /api/v1/me/subscriptions`: one page of the caller's topics.
#[derive(Message)]
#[rtype(result = "Result<Page<String, String>>")]
pub struct MySubscriptions {
    pub principal: Principal,
    pub page: PageOf<String>,
}

/// `POST /api/v1/me/subscriptions/{topic}`: answered with the new set.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>>")]
pub struct Subscribe {
    pub principal: Principal,
    pub topic: String,
}

/// `DELETE /api/v1/me/subscriptions/{topic}`: answered with the new set.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>>")]
pub struct Unsubscribe {
    pub principal: Principal,
    pub topic: String,
}

/// `PUT /api/v1/me/subscriptions`: all or nothing, answered with the new set.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>>")]
pub struct ReplaceSubscriptions {
    pub principal: Principal,
    pub topics: Vec<String>,
}

/// `GET /api/v1/subscriptions` (admin): one page, by user then topic.
#[derive(Message)]
#[rtype(result = "Result<Page<(String, String), Subscription>>")]
pub struct ListSubscriptions {
    pub principal: Principal,
    pub topic: Option<String>,
    pub page: PageOf<(String, String)>,
}

/// `GET /api/v1/me/feed`: a feed on the caller's consumer, started if needed.
#[derive(Message)]
#[rtype(result = "Result<FeedHandle>")]
pub struct OpenFeed {
    pub principal: Principal,
    pub from: FeedStart,
    pub format: FeedFormat,
}

/// A change of one user's set.
enum Change {
    Add(String),
    Remove(String),
    Replace(BTreeSet<String>),
}

/// Tell `user`'s consumer, if running, its current set (sent once a change is committed).
#[derive(Message)]
#[rtype(result = "()")]
struct Notify {
    user: String,
}

/// The subscriptions of `topic` ended because it was deleted (sent once committed).
#[derive(Message)]
#[rtype(result = "()")]
struct Ended {
    topic: String,
    readers: Vec<String>,
}

/// A running consumer and how many feeds it has.
struct Live {
    addr: Addr<Consumer>,
    feeds: usize,
    generation: u64,
    /// Since when it has had no feed.
    idle_since: Option<Instant>,
}

pub struct Subscriptions {
    journal: Journal<SubscriptionBook>,
    store: Addr<EventStore>,
    registry: Addr<Registry>,
    kafka: KafkaConfig,
    settings: FeedConfig,
    /// The shared topic readers the consumers join.
    readers: TopicReaders,
    consumers: HashMap<String, Live>,
    generations: u64,
    shutdown: Shutdown,
    /// Cloned into every consumer, so that a shutdown waits for their last commits; dropped
    /// itself when the shutdown begins.
    consumers_done: Option<Guard>,
    tasks: tokio::runtime::Handle,
    /// The threads the consumers run on, one per core, started with the first feed. Consumers
    /// are independent of each other (one per user, each owning its state), and at 500 users
    /// their fan-out of the shared readers' batches took all of one thread.
    arbiters: Vec<Arbiter>,
}

impl Subscriptions {
    /// `tasks` is the runtime each consumer's Kafka reader task runs on (it renders frames,
    /// which is work for the facade runtime, not for this actor's thread).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        book: SubscriptionBook,
        store: Addr<EventStore>,
        registry: Addr<Registry>,
        kafka: KafkaConfig,
        settings: FeedConfig,
        shutdown: Shutdown,
        consumers_done: Guard,
        tasks: tokio::runtime::Handle,
    ) -> Self {
        Subscriptions {
            journal: Journal::new(Owner::Subscriptions, book, store.clone()),
            store,
            registry,
            readers: TopicReaders::new(kafka.clone(), settings.clone(), tasks.clone()),
            kafka,
            settings,
            consumers: HashMap::new(),
            generations: 0,
            shutdown,
            consumers_done: Some(consumers_done),
            tasks,
            arbiters: Vec::new(),
        }
    }

    /// The thread the next consumer runs on: each in turn.
    fn consumer_arbiter(&mut self) -> ArbiterHandle {
        if self.arbiters.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.arbiters = (0..cores).map(|_| Arbiter::new()).collect();
        }
        let turn = self.generations as usize % self.arbiters.len();
        self.arbiters[turn].handle()
    }

    /// What reads see: the committed book.
    fn book(&self) -> &SubscriptionBook {
        self.journal.committed()
    }

    /// Checks, records and answers one change of `principal`'s set. The registry check and the
    /// apply run with the actor's mailbox held, so no other change or deletion slips between.
    fn change(
        &mut self,
        principal: Principal,
        change: Change,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Vec<String>>> {
        if let Err(e) = principal.require_any(&[Role::Consumer]) {
            return Box::pin(async move { Err(e) });
        }
        let current = match self.journal.staged() {
            Ok(book) => book.topics_of(&principal.name),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let to_check: Vec<String> = match &change {
            Change::Add(topic) if !current.contains(topic) => vec![topic.clone()],
            Change::Replace(wanted) => wanted.difference(&current).cloned().collect(),
            _ => Vec::new(),
        };
        let registry = self.registry.clone();
        let asker = principal.clone();
        let checked = async move {
            for topic in to_check {
                registry
                    .send(MayConsume {
                        principal: asker.clone(),
                        topic,
                    })
                    .await??;
            }
            Ok(())
        };
        let (reply, answer) = oneshot::channel();
        let user = principal.name;
        ctx.wait(
            checked
                .into_actor(self)
                .map(move |checked: Result<()>, act, ctx| {
                    let events = checked.and_then(|()| {
                        act.journal
                            .staged()
                            .and_then(|book| book.events_for(&user, &change))
                    });
                    let events = match events {
                        Ok(events) => events,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    };
                    let changed = !events.is_empty();
                    let me = ctx.address();
                    journal::persist(act, ctx, events, move |book, result| {
                        let view: Vec<String> = book.topics_of(&user).into_iter().collect();
                        if result.is_ok() && changed {
                            tracing::info!(%user, topics = ?view, "Subscriptions changed.");
                            me.do_send(Notify { user });
                        }
                        let _ = reply.send(result.map(|()| view));
                    });
                }),
        );
        Box::pin(async move { answer.await.unwrap_or(Err(Error::Unavailable)) })
    }

    /// Ends `user`'s subscription to `topic` after its `consume` grant was revoked, if the
    /// topic is restricted (an open topic needs no grant). Open feeds drop the topic.
    fn end_revoked(&mut self, user: String, topic: String, ctx: &mut Context<Self>) {
        let registry = self.registry.clone();
        let name = topic.clone();
        ctx.wait(
            async move { registry.send(GetTopic(name)).await }
                .into_actor(self)
                .map(move |found, act, ctx| {
                    let restricted = matches!(
                        found,
                        Ok(Ok(ref t)) if t.visibility == Visibility::Restricted
                    );
                    let subscribed = act
                        .journal
                        .staged()
                        .is_ok_and(|book| book.topics_of(&user).contains(&topic));
                    if !restricted || !subscribed {
                        return;
                    }
                    tracing::info!(%user, %topic, "Consume grant revoked; ending the subscription.");
                    let event = NewEvent::now(
                        SYSTEM,
                        Some(&topic),
                        None,
                        EventKind::Unsubscribed {
                            reason: REASON_GRANT_REVOKED.to_string(),
                            user: Some(user.clone()),
                        },
                    );
                    let me = ctx.address();
                    journal::persist(act, ctx, vec![event], move |_, result| match result {
                        Ok(()) => me.do_send(Notify { user }),
                        Err(e) => {
                            tracing::warn!(error = %e, "Subscription of a revoked grant not ended.")
                        }
                    });
                }),
        );
    }

    /// Ends every subscription to a deleted topic with one `system` event.
    fn end_subscriptions(&mut self, topic: String, ctx: &mut Context<Self>) {
        let Ok(book) = self.journal.staged() else {
            // A commit is being cleared; the next start ends them (see `started`).
            tracing::warn!(%topic, "Subscriptions of a deleted topic not ended yet.");
            return;
        };
        let readers = book.readers_of(&topic);
        if readers.is_empty() {
            return;
        }
        tracing::info!(%topic, ?readers, "Topic deleted; ending its subscriptions.");
        let event = NewEvent::now(
            SYSTEM,
            Some(&topic),
            None,
            EventKind::Unsubscribed {
                reason: REASON_TOPIC_DELETED.to_string(),
                user: None,
            },
        );
        let me = ctx.address();
        journal::persist(self, ctx, vec![event], move |_, result| match result {
            Ok(()) => me.do_send(Ended { topic, readers }),
            Err(e) => tracing::warn!(error = %e, "Subscriptions of a deleted topic not ended yet."),
        });
    }
}

impl Journaling for Subscriptions {
    type State = SubscriptionBook;

    fn journal(&mut self) -> &mut Journal<SubscriptionBook> {
        &mut self.journal
    }
}

impl Actor for Subscriptions {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.store.do_send(Follow(ctx.address().recipient()));
        // At shutdown every consumer stops now, committing what its feeds delivered.
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move { shutdown.recv().await }
                .into_actor(self)
                .map(|(), act, _| {
                    act.consumers_done = None;
                    for (user, live) in act.consumers.drain() {
                        tracing::debug!(%user, "Stopping consumer for shutdown.");
                        live.addr.do_send(Stop);
                    }
                }),
        );
        // A deletion committed just before a crash may have left subscriptions behind.
        let registry = self.registry.clone();
        ctx.spawn(
            async move { registry.send(ListTopics).await.unwrap_or_default() }
                .into_actor(self)
                .map(|topics, act, ctx| {
                    for topic in topics {
                        if topic.status == TopicStatus::Deleted {
                            act.end_subscriptions(topic.name, ctx);
                        }
                    }
                }),
        );
        // So may a revoked `consume` grant (only restricted topics are ended).
        let registry = self.registry.clone();
        ctx.spawn(
            async move { registry.send(LostConsumeGrants).await.unwrap_or_default() }
                .into_actor(self)
                .map(|lost, act, ctx| {
                    for (user, topic) in lost {
                        act.end_revoked(user, topic, ctx);
                    }
                }),
        );
    }
}

impl Handler<Committed> for Subscriptions {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        for event in msg.0 {
            match (event.body.kind, event.body.topic) {
                (EventKind::TopicDeleted { .. }, Some(topic)) => self.end_subscriptions(topic, ctx),
                (
                    EventKind::GrantRevoked {
                        user,
                        access: Access::Consume,
                        ..
                    },
                    Some(topic),
                ) => self.end_revoked(user, topic, ctx),
                _ => {}
            }
        }
    }
}

impl Handler<Ended> for Subscriptions {
    type Result = ();

    fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
        for user in msg.readers {
            if let Some(live) = self.consumers.get(&user) {
                live.addr.do_send(TopicGone(msg.topic.clone()));
            }
        }
    }
}

impl Handler<Notify> for Subscriptions {
    type Result = ();

    fn handle(&mut self, msg: Notify, _: &mut Context<Self>) {
        if let Some(live) = self.consumers.get(&msg.user) {
            live.addr
                .do_send(SetTopics(self.book().topics_of(&msg.user)));
        }
    }
}

impl Handler<MySubscriptions> for Subscriptions {
    type Result = Result<Page<String, String>>;

    fn handle(&mut self, msg: MySubscriptions, _: &mut Context<Self>) -> Self::Result {
        msg.principal.require_any(&[Role::Consumer])?;
        Ok(self.book().topics_page(&msg.principal.name, &msg.page))
    }
}

impl Handler<Subscribe> for Subscriptions {
    type Result = ResponseFuture<Result<Vec<String>>>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        self.change(msg.principal, Change::Add(msg.topic), ctx)
    }
}

impl Handler<Unsubscribe> for Subscriptions {
    type Result = ResponseFuture<Result<Vec<String>>>;

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        self.change(msg.principal, Change::Remove(msg.topic), ctx)
    }
}

impl Handler<ReplaceSubscriptions> for Subscriptions {
    type Result = ResponseFuture<Result<Vec<String>>>;

    fn handle(&mut self, msg: ReplaceSubscriptions, ctx: &mut Context<Self>) -> Self::Result {
        let wanted = msg.topics.into_iter().collect();
        self.change(msg.principal, Change::Replace(wanted), ctx)
    }
}

impl Handler<ListSubscriptions> for Subscriptions {
    type Result = Result<Page<(String, String), Subscription>>;

    fn handle(&mut self, msg: ListSubscriptions, _: &mut Context<Self>) -> Self::Result {
        msg.principal.require_any(&[Role::Admin])?;
        Ok(self.book().list_page(msg.topic.as_deref(), &msg.page))
    }
}

impl Handler<OpenFeed> for Subscriptions {
    type Result = ResponseFuture<Result<FeedHandle>>;

    fn handle(&mut self, msg: OpenFeed, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = msg.principal.require_any(&[Role::Consumer]) {
            return Box::pin(async move { Err(e) });
        }
        let Some(done) = self.consumers_done.clone() else {
            return Box::pin(async move { Err(Error::Unavailable) });
        };
        let user = msg.principal.name;
        let running = self
            .consumers
            .get(&user)
            .is_some_and(|live| live.addr.connected());
        if !running {
            let consumer = Consumer::new(
                &user,
                self.book().topics_of(&user),
                &self.kafka,
                self.settings.clone(),
                ctx.address().recipient(),
                self.readers.clone(),
                done,
                self.tasks.clone(),
            );
            let consumer = match consumer {
                Ok(consumer) => consumer,
                Err(e) => return Box::pin(async move { Err(e) }),
            };
            self.generations += 1;
            let arbiter = self.consumer_arbiter();
            let live = Live {
                addr: Consumer::start_in_arbiter(&arbiter, move |_| consumer),
                feeds: 0,
                generation: self.generations,
                idle_since: None,
            };
            self.consumers.insert(user.clone(), live);
        }
        let Some(live) = self.consumers.get_mut(&user) else {
            return Box::pin(async move { Err(Error::Unavailable) });
        };
        // Counted before the consumer can report the feed closed.
        live.feeds += 1;
        live.idle_since = None;
        let attach = live.addr.send(Attach {
            from: msg.from,
            format: msg.format,
        });
        let me = ctx.address();
        Box::pin(async move {
            match attach.await {
                Ok(feed) => Ok(feed),
                Err(e) => {
                    me.do_send(FeedClosed { user });
                    Err(e.into())
                }
            }
        })
    }
}

impl Handler<FeedClosed> for Subscriptions {
    type Result = ();

    fn handle(&mut self, msg: FeedClosed, ctx: &mut Context<Self>) {
        let Some(live) = self.consumers.get_mut(&msg.user) else {
            return;
        };
        live.feeds = live.feeds.saturating_sub(1);
        if live.feeds > 0 {
            return;
        }
        live.idle_since = Some(Instant::now());
        let generation = live.generation;
        let user = msg.user;
        let idle = Duration::from_millis(self.settings.idle_consumer_ms);
        // Stop the consumer if it is still the same one and has been without a feed since.
        ctx.run_later(idle, move |act, _| {
            let idle = act.consumers.get(&user).is_some_and(|live| {
                live.generation == generation
                    && live.feeds == 0
                    && live.idle_since.is_some_and(|since| since.elapsed() >= idle)
            });
            if idle {
                if let Some(live) = act.consumers.remove(&user) {
                    live.addr.do_send(Stop);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: &str, topic: &str, kind: EventKind) -> NewEvent {
        NewEvent::now(actor, Some(topic), None, kind)
    }

    fn run(book: &mut SubscriptionBook, user: &str, change: Change) -> Result<Vec<NewEvent>> {
        let events = book.events_for(user, &change)?;
        for e in &events {
            book.apply(e);
        }
        Ok(events)
    }

    fn set(topics: &[&str]) -> BTreeSet<String> {
        topics.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn changes_become_events_and_events_become_state() {
        let mut book = SubscriptionBook::default();
        assert_eq!(
            run(&mut book, "erin", Change::Add("a".into()))
                .expect("add")
                .len(),
            1
        );
        assert!(
            run(&mut book, "erin", Change::Add("a".into()))
                .expect("again")
                .is_empty(),
            "subscribing twice records nothing"
        );
        let events = run(&mut book, "erin", Change::Replace(set(&["b", "c"]))).expect("replace");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
        assert_eq!(kinds, ["unsubscribed", "subscribed", "subscribed"]);
        assert_eq!(book.topics_of("erin"), set(&["b", "c"]));
        assert!(matches!(
            run(&mut book, "erin", Change::Remove("a".into())),
            Err(Error::NotFound(_))
        ));
        run(&mut book, "erin", Change::Remove("b".into())).expect("remove");
        assert_eq!(book.topics_of("erin"), set(&["c"]));
    }

    #[test]
    fn topic_deletion_ends_every_subscription_to_it() {
        let mut book = SubscriptionBook::default();
        for user in ["erin", "frank"] {
            book.apply(&event(user, "t", EventKind::Subscribed {}));
        }
        book.apply(&event("frank", "u", EventKind::Subscribed {}));
        assert_eq!(book.readers_of("t"), ["erin", "frank"]);
        book.apply(&event(
            SYSTEM,
            "t",
            EventKind::Unsubscribed {
                reason: REASON_TOPIC_DELETED.into(),
                user: None,
            },
        ));
        assert!(book.readers_of("t").is_empty());
        assert_eq!(book.topics_of("frank"), set(&["u"]));
        let all = book.list(None);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].user.as_str(), all[0].topic.as_str()),
            ("frank", "u")
        );
        assert!(book.list(Some("t")).is_empty());
    }
}
