//! The journal: how an event-sourced actor turns a command into durable state.
//!
//! The Akka Persistence rule, with group commit kept: a command is checked against the
//! *staged* state (everything committed plus the events still in flight, so concurrent
//! commands see each other), its events are persisted, and only once the log has them are
//! they applied to the *committed* state that readers see, in the order they were sent, and
//! the caller answered. Replay and the live path share one `apply` per state.
//!
//! A failed commit (a full disk, a write error) leaves the committed state untouched. The
//! journal then refuses new commands until its in-flight batches have all come back (the
//! writer refuses the ones staged on top of the failed batch, see `events::Stream`), rebuilds
//! the staged state from the committed one, and takes commands again: nothing a caller was
//! told is lost, nothing it was refused is applied, and no restart is needed.

use std::collections::VecDeque;

use actix::prelude::*;

use super::event_store::{EventStore, Persist};
use crate::error::{Error, Result};
use crate::events::{EventKind, NewEvent, StoreError, Stream};

/// State rebuilt from the log. `apply` cannot fail: an owner only writes events that fit.
///
/// A state whose bulk is shared between its copies (behind an `Arc`, with a small part of
/// recent changes on top) says when that part is due to be folded in; the journal folds it
/// when the committed and staged states are equal and it can drop the staged copy first, so
/// the fold writes the shared part in place and the staged copy is a cheap clone again.
pub trait Journaled: Clone + Default {
    fn apply(&mut self, event: &NewEvent);

    fn wants_fold(&self) -> bool {
        false
    }

    fn fold(&mut self) {}
}

/// The actors whose state is made of events. Each event kind has exactly one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Requests, topics, access requests and grants (`registry`, `access`).
    Registry,
    /// Who reads which topic (`subscriptions`).
    Subscriptions,
    /// The drift recorded against Kafka (`watcher`).
    Watcher,
    /// Held records (`publisher`); its state is the spool, not the log.
    Publisher,
    /// Issued bearer tokens (`tokens`).
    Tokens,
}

/// Which actor owns an event kind. No wildcard: a new kind does not compile until it has one.
pub fn owner(kind: &EventKind) -> Owner {
    match kind {
        EventKind::TopicRequested { .. }
        | EventKind::DeletionRequested { .. }
        | EventKind::RequestApproved { .. }
        | EventKind::RequestRejected { .. }
        | EventKind::RequestWithdrawn {}
        | EventKind::TopicProvisioned { .. }
        | EventKind::ProvisioningFailed { .. }
        | EventKind::TopicDeleted { .. }
        | EventKind::DeletionFailed { .. }
        | EventKind::AccessRequested { .. }
        | EventKind::AccessApproved { .. }
        | EventKind::AccessRejected { .. }
        | EventKind::AccessWithdrawn {}
        | EventKind::GrantRevoked { .. } => Owner::Registry,
        EventKind::Subscribed {} | EventKind::Unsubscribed { .. } => Owner::Subscriptions,
        EventKind::DriftDetected { .. } | EventKind::DriftResolved { .. } => Owner::Watcher,
        EventKind::HeldDiscarded { .. } => Owner::Publisher,
        EventKind::TokenIssued { .. } | EventKind::TokenRevoked { .. } => Owner::Tokens,
    }
}

/// Called once a batch is settled, with the committed state that now includes it (or not).
type Done<S> = Box<dyn FnOnce(&S, Result<()>)>;

/// Called after each event is applied to the committed state, with that state.
type OnCommit<S> = Box<dyn FnMut(&S, &NewEvent)>;

struct InFlight<S> {
    ticket: u64,
    events: Vec<NewEvent>,
    outcome: Option<Result<(), Refusal>>,
    done: Done<S>,
}

/// Why the journal refuses commands until its in-flight batches are back.
#[derive(Debug, Clone)]
enum Refusal {
    Full(String),
    Failed(String),
}

impl Refusal {
    fn of(error: &StoreError) -> Refusal {
        match error {
            StoreError::Full(why) => Refusal::Full(why.clone()),
            other => Refusal::Failed(other.to_string()),
        }
    }

    fn error(&self) -> Error {
        match self {
            Refusal::Full(why) => Error::StorageFull(why.clone()),
            Refusal::Failed(why) => Error::Store(StoreError::Commit(why.clone())),
        }
    }
}

/// The committed and staged state of one actor, and its batches in flight.
pub struct Journal<S> {
    owner: Owner,
    committed: S,
    staged: S,
    store: Addr<EventStore>,
    generation: u64,
    next_ticket: u64,
    in_flight: VecDeque<InFlight<S>>,
    broken: Option<Refusal>,
    on_commit: Option<OnCommit<S>>,
}

/// An actor with a journal; `persist` needs to reach it from the commit's callback.
pub trait Journaling: Actor<Context = Context<Self>> {
    type State: Journaled + 'static;
    fn journal(&mut self) -> &mut Journal<Self::State>;
}

impl<S: Journaled + 'static> Journal<S> {
    /// Starts from the state replay rebuilt (all of it committed).
    pub fn new(owner: Owner, mut state: S, store: Addr<EventStore>) -> Self {
        state.fold();
        Journal {
            owner,
            staged: state.clone(),
            committed: state,
            store,
            generation: 0,
            next_ticket: 0,
            in_flight: VecDeque::new(),
            broken: None,
            on_commit: None,
        }
    }

    /// Has `f` called after each event is applied to the committed state (never the staged
    /// one), for a view that readers outside the actor keep.
    pub fn on_commit(&mut self, f: impl FnMut(&S, &NewEvent) + 'static) {
        self.on_commit = Some(Box::new(f));
    }

    /// What readers see: only what the log has.
    pub fn committed(&self) -> &S {
        &self.committed
    }

    /// The event store the journal persists to (for reads of the log beside the state).
    pub fn store(&self) -> &Addr<EventStore> {
        &self.store
    }

    /// What commands are checked against: committed plus in flight. Errors while a failed
    /// commit is being cleared.
    pub fn staged(&self) -> Result<&S> {
        match &self.broken {
            Some(refusal) => Err(refusal.error()),
            None => Ok(&self.staged),
        }
    }

    fn stream(&self) -> Stream {
        let name = match self.owner {
            Owner::Registry => "registry",
            Owner::Subscriptions => "subscriptions",
            Owner::Watcher => "watcher",
            Owner::Publisher => "publisher",
            Owner::Tokens => "tokens",
        };
        Stream {
            name,
            generation: self.generation,
        }
    }

    /// Records how a batch ended, then settles every batch at the front that has ended, in
    /// the order they were sent.
    fn settle(&mut self, ticket: u64, result: Result<(), StoreError>) {
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let refusal = match (&e, &self.broken) {
                    // Refused because an earlier batch failed: that batch's reason is the one.
                    (StoreError::Superseded, Some(first)) => first.clone(),
                    _ => Refusal::of(&e),
                };
                if self.broken.is_none() {
                    tracing::warn!(error = %e, owner = ?self.owner, "Commit failed; refusing commands until in-flight batches are back.");
                    self.broken = Some(refusal.clone());
                    self.generation += 1;
                }
                Err(refusal)
            }
        };
        if let Some(entry) = self.in_flight.iter_mut().find(|e| e.ticket == ticket) {
            entry.outcome = Some(outcome);
        }
        while self.in_flight.front().is_some_and(|e| e.outcome.is_some()) {
            let Some(entry) = self.in_flight.pop_front() else {
                break;
            };
            match entry.outcome {
                Some(Ok(())) => {
                    for event in &entry.events {
                        self.committed.apply(event);
                        if let Some(on_commit) = &mut self.on_commit {
                            on_commit(&self.committed, event);
                        }
                    }
                    (entry.done)(&self.committed, Ok(()));
                }
                Some(Err(refusal)) => (entry.done)(&self.committed, Err(refusal.error())),
                None => {}
            }
        }
        if self.in_flight.is_empty() && self.broken.is_some() {
            self.restage();
            self.broken = None;
            tracing::info!(owner = ?self.owner, "Staged state rebuilt from the log; taking commands again.");
        } else if self.in_flight.is_empty() && self.committed.wants_fold() {
            self.restage();
        }
    }

    /// The staged state made the committed one again, once nothing is in flight. The staged
    /// copy is dropped before the fold, so that what the two shared is folded in place.
    fn restage(&mut self) {
        self.staged = S::default();
        self.committed.fold();
        self.staged = self.committed.clone();
    }
}

/// Stages `events` on `actor`'s journal, persists them, and once they are committed (and every
/// batch sent before them is settled) applies them to the committed state and calls `done`
/// with it. On failure `done` gets the error and nothing is applied. An empty `events` is
/// answered at once.
pub fn persist<A: Journaling>(
    actor: &mut A,
    ctx: &mut Context<A>,
    events: Vec<NewEvent>,
    done: impl FnOnce(&A::State, Result<()>) + 'static,
) {
    let journal = actor.journal();
    if let Some(refusal) = &journal.broken {
        done(&journal.committed, Err(refusal.error()));
        return;
    }
    if events.is_empty() {
        settled(actor, move |state| done(state, Ok(())));
        return;
    }
    for event in &events {
        debug_assert_eq!(
            owner(&event.kind),
            journal.owner,
            "an actor writes its own events"
        );
        journal.staged.apply(event);
    }
    let ticket = journal.next_ticket;
    journal.next_ticket += 1;
    let append = journal.store.send(Persist {
        stream: journal.stream(),
        events: events.clone(),
    });
    journal.in_flight.push_back(InFlight {
        ticket,
        events,
        outcome: None,
        done: Box::new(done),
    });
    ctx.spawn(append.into_actor(actor).map(move |result, act, _| {
        let result = match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::WriterGone),
        };
        act.journal().settle(ticket, result);
    }));
}

/// Calls `then` with the committed state once every batch in flight now has settled. A reader
/// told of a commit by the log (a follower) asks through this, so that its answer includes
/// that commit even if the owner has not settled it yet.
pub fn settled<A: Journaling>(actor: &mut A, then: impl FnOnce(&A::State) + 'static) {
    let journal = actor.journal();
    if journal.in_flight.is_empty() {
        then(&journal.committed);
        return;
    }
    let ticket = journal.next_ticket;
    journal.next_ticket += 1;
    // A barrier: nothing to write, settled as soon as everything before it is.
    journal.in_flight.push_back(InFlight {
        ticket,
        events: Vec::new(),
        outcome: Some(Ok(())),
        done: Box::new(move |state, _| then(state)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Durability, Store};
    use crate::shutdown::Fatal;

    /// The names of the topics whose events were applied, in order.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Seen(Vec<String>);

    impl Journaled for Seen {
        fn apply(&mut self, event: &NewEvent) {
            self.0.push(event.topic.clone().unwrap_or_default());
        }
    }

    struct Probe {
        journal: Journal<Seen>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Journaling for Probe {
        type State = Seen;
        fn journal(&mut self) -> &mut Journal<Seen> {
            &mut self.journal
        }
    }

    /// Persist one event for `topic` with `reason` as its data; answers with what the staged
    /// state held right after staging, and the committed state once settled.
    #[derive(Message)]
    #[rtype(result = "(Vec<String>, Vec<String>, Result<()>)")]
    struct Write {
        topic: String,
        reason: String,
    }

    impl Handler<Write> for Probe {
        type Result = ResponseFuture<(Vec<String>, Vec<String>, Result<()>)>;

        fn handle(&mut self, msg: Write, ctx: &mut Context<Self>) -> Self::Result {
            let kind = EventKind::Unsubscribed {
                reason: msg.reason,
                user: None,
            };
            let event = NewEvent::now("system", Some(&msg.topic), None, kind);
            let (tx, rx) = tokio::sync::oneshot::channel();
            persist(self, ctx, vec![event], move |committed, result| {
                let _ = tx.send((committed.0.clone(), result));
            });
            let staged = self
                .journal
                .staged()
                .map(|s| s.0.clone())
                .unwrap_or_default();
            Box::pin(async move {
                let (committed, result) = rx.await.unwrap_or((Vec::new(), Err(Error::Unavailable)));
                (staged, committed, result)
            })
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<String>")]
    struct Committed;

    impl Handler<Committed> for Probe {
        type Result = MessageResult<Committed>;
        fn handle(&mut self, _: Committed, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.journal.committed().0.clone())
        }
    }

    fn probe(dir: &std::path::Path, max_pages: Option<u32>) -> Addr<Probe> {
        let store = Store::open(dir, Durability::Normal).expect("open");
        if let Some(pages) = max_pages {
            store.limit_pages(pages).expect("limit");
        }
        let head = store.replay(|_| {}).expect("replay");
        let (writer, _thread) = store.into_writer(head).expect("writer");
        let event_store = EventStore::new(writer, Fatal::detached()).start();
        Probe {
            journal: Journal::new(Owner::Subscriptions, Seen::default(), event_store),
        }
        .start()
    }

    #[actix::test]
    async fn readers_see_an_event_only_once_it_is_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = probe(dir.path(), None);
        let write = |topic: &str| Write {
            topic: topic.into(),
            reason: "user".into(),
        };
        // Sent together: the second is staged on top of the first, before either commits.
        let (a, b) = tokio::join!(probe.send(write("a")), probe.send(write("b")));
        let (staged_a, committed_a, result_a) = a.expect("alive");
        let (staged_b, committed_b, result_b) = b.expect("alive");
        assert!(result_a.is_ok() && result_b.is_ok());
        assert_eq!(staged_a, vec!["a"]);
        assert_eq!(
            staged_b,
            vec!["a", "b"],
            "staged state sees in-flight events"
        );
        assert_eq!(committed_a, vec!["a"], "answered with a's commit applied");
        assert_eq!(committed_b, vec!["a", "b"]);
    }

    #[actix::test]
    async fn a_failed_commit_applies_nothing_and_the_journal_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = probe(dir.path(), Some(16));
        let big = "x".repeat(256 * 1024);
        let (_, committed, result) = probe
            .send(Write {
                topic: "big".into(),
                reason: big,
            })
            .await
            .expect("alive");
        assert!(
            matches!(result, Err(Error::StorageFull(_))),
            "a full log is storage_full: {result:?}"
        );
        assert!(committed.is_empty(), "nothing of a failed batch is applied");
        assert!(probe.send(Committed).await.expect("alive").is_empty());
        // Space for a small event: taken without a restart.
        let (staged, committed, result) = probe
            .send(Write {
                topic: "small".into(),
                reason: "user".into(),
            })
            .await
            .expect("alive");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            staged,
            vec!["small"],
            "the failed event is gone from staged"
        );
        assert_eq!(committed, vec!["small"]);
        assert_eq!(crate::events::verify(dir.path()).expect("chain").seq, 1);
    }

    #[test]
    fn every_kind_has_one_owner() {
        assert_eq!(owner(&EventKind::Subscribed {}), Owner::Subscriptions);
        assert_eq!(owner(&EventKind::RequestWithdrawn {}), Owner::Registry);
        let discarded = EventKind::HeldDiscarded {
            count: 1,
            up_to_id: None,
        };
        assert_eq!(owner(&discarded), Owner::Publisher);
    }
}
