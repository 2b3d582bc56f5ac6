//! The registry's history: what it keeps of every topic name and of every decided create
//! request. Not an actor; part of `registry::Governance`.
//!
//! A long-lived installation has far more decided requests than open ones, and every decision
//! needs only a few facts of them: the topic's latest request (for `route_of`), and of a decided
//! request its topic, kind, status and requester (for the filters of a list, for paging and for
//! the audit scope). Those are kept here, with every name stored once (`NameBuf`) and known by
//! its index, and every requester by an index into the people; the rest of a decided
//! request (config, reason, notes, timestamps) is read from the log when asked for
//! (`registry::RequestDetails`).
//!
//! The journal keeps two copies of the registry's state (committed and staged). This part is
//! shared between them: a `base` behind an `Arc` that both copies point to, and a small `top` of
//! what each copy applied since. The journal folds the top into the base when nothing is in
//! flight (`Journaled::fold`), so the base is written in place, never copied.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::registry::{RequestKind, RequestStatus};
use crate::paging::PageOf;

/// A decided create request, as the history gives it: what decisions, filters and paging
/// need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided<'a> {
    pub topic: &'a str,
    pub requested_by: &'a str,
    pub kind: RequestKind,
    pub status: RequestStatus,
}

/// A decided create request as it is kept: its topic as the name's index (`NameBuf`) and the
/// requester as an index into the few people who file requests (`People`), 12 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reduced {
    topic: u32,
    requested_by: u32,
    kind: RequestKind,
    status: RequestStatus,
}

/// A topic name's latest request, open or not, and its status once it is a create request
/// decided for good (kept reduced in `decided`). Kept with the name, so that a start and the
/// governed view learn which names are closed without a look-up by id for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub id: Uuid,
    /// `Some` once the latest request is a decided create request; `None` while it is open,
    /// and for a deletion request (kept whole by the registry).
    pub decided: Option<RequestStatus>,
}

/// Names, each stored once in one buffer and known by its index: a long history holds
/// hundreds of thousands of topic names, and an allocation of its own for each (with a
/// reference count and malloc's header) cost about three times the name's bytes.
#[derive(Debug, Clone, Default)]
pub(super) struct NameBuf {
    text: String,
    /// Where each name ends in `text`.
    ends: Vec<u32>,
}

impl NameBuf {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn get(&self, id: u32) -> &str {
        let i = id as usize;
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or(0),
            None => 0,
        } as usize;
        let end = self.ends.get(i).copied().unwrap_or(0) as usize;
        self.text.get(start..end).unwrap_or("")
    }

    pub(super) fn push(&mut self, name: &str) -> u32 {
        let id = self.ends.len() as u32;
        self.text.push_str(name);
        self.ends.push(self.text.len() as u32);
        id
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    fn append(&mut self, other: &NameBuf) {
        let offset = self.text.len() as u32;
        self.text.reserve_exact(other.text.len());
        self.text.push_str(&other.text);
        self.ends.reserve_exact(other.ends.len());
        self.ends.extend(other.ends.iter().map(|e| e + offset));
    }
}

/// What each copy applied since the last fold. The top is small (`FOLD_AT`); its maps hash.
// FxHash, not SipHash: speed over resistance to crafted collisions, as every key comes from an
// authenticated filing that is an event in the log.
#[derive(Debug, Clone, Default)]
struct Layer {
    decided: BTreeMap<Uuid, Reduced>,
    /// Name index to the name's latest request.
    latest: FxHashMap<u32, Latest>,
    /// The names first met since the fold, numbered after the base's.
    names: NameBuf,
    ids: FxHashMap<Box<str>, u32>,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.latest.is_empty() && self.names.len() == 0
    }
}

/// The bulk, shared by both copies. A long history holds hundreds of thousands of names and
/// decided requests, so they are kept in `Vec`s, not maps: a name is its bytes in `names`, 4
/// bytes of its end, 17 of its latest request (indexed by the name's index) and 4 in
/// `by_name`; a decided request 28 bytes in id order, instead of a B-tree's 60 to 110 (its
/// nodes are half full when grown by inserts in id order, as a replay does). A snapshot (which
/// holds both in order) decodes straight into them with nothing hashed; a look-up is a binary
/// search.
#[derive(Debug, Clone, Default)]
struct Base {
    names: NameBuf,
    /// By name index; `None` for a name met only as a decided request's topic.
    latest: Vec<Option<Latest>>,
    /// The name indexes in name order.
    by_name: Vec<u32>,
    decided: Vec<(Uuid, Reduced)>,
}

impl Base {
    fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name
            .binary_search_by(|&i| self.names.get(i).cmp(name))
            .ok()
            .map(|at| self.by_name[at])
    }

    fn decided(&self, id: &Uuid) -> Option<&Reduced> {
        self.decided
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .map(|i| &self.decided[i].1)
    }

    /// The decided requests after the page's cursor.
    fn decided_after(&self, page: &PageOf<Uuid>) -> &[(Uuid, Reduced)] {
        let from = match &page.after {
            Some(after) => self.decided.partition_point(|(k, _)| k <= after),
            None => 0,
        };
        &self.decided[from..]
    }
}

/// The people who file requests, each with the index a decided request refers to them by.
/// Few (people, not requests), so each copy of the history has its own behind an `Arc`,
/// copied only when a copy meets someone new while it is shared; an index is that copy's.
#[derive(Debug, Clone, Default)]
struct People {
    names: Vec<Arc<str>>,
    ids: FxHashMap<Arc<str>, u32>,
}

impl People {
    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| &**n)
    }

    fn add(&mut self, name: Arc<str>) -> u32 {
        let id = self.names.len() as u32;
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }
}

/// See the module's comment.
#[derive(Debug, Clone, Default)]
pub struct History {
    base: Arc<Base>,
    top: Layer,
    people: Arc<People>,
}

/// Folded at an idle moment once the top holds this many changes: small enough that two tops
/// cost nothing beside the base, large enough that the fold (and the staged copy the journal
/// clones after it) is rare.
const FOLD_AT: usize = 1024;

impl History {
    fn base_names(&self) -> u32 {
        self.base.names.len() as u32
    }

    /// The index of `name`, if it is a name this copy has met.
    fn id_of(&self, name: &str) -> Option<u32> {
        self.top
            .ids
            .get(name)
            .copied()
            .or_else(|| self.base.id_of(name))
    }

    /// The name of index `id`.
    fn name(&self, id: u32) -> &str {
        match id.checked_sub(self.base_names()) {
            Some(new) => self.top.names.get(new),
            None => self.base.names.get(id),
        }
    }

    /// The index of `name`, numbered now if it is new.
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.id_of(name) {
            return id;
        }
        let id = self.base_names() + self.top.names.push(name);
        self.top.ids.insert(name.into(), id);
        id
    }

    fn latest_by_id(&self, id: u32) -> Option<Latest> {
        match self.top.latest.get(&id) {
            Some(latest) => Some(*latest),
            None => self.base.latest.get(id as usize).copied().flatten(),
        }
    }

    fn person(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.people.ids.get(name) {
            return id;
        }
        Arc::make_mut(&mut self.people).add(Arc::from(name))
    }

    fn shown<'a>(&'a self, d: &'a Reduced) -> Decided<'a> {
        Decided {
            topic: self.name(d.topic),
            requested_by: self.people.name(d.requested_by),
            kind: d.kind,
            status: d.status,
        }
    }

    /// Records `id` as the latest request of `topic` (an open one: just filed).
    pub fn set_latest(&mut self, topic: &str, id: Uuid) {
        let name = self.intern(topic);
        self.top.latest.insert(name, Latest { id, decided: None });
    }

    /// The latest request of `topic`, open or not.
    pub fn latest(&self, topic: &str) -> Option<Uuid> {
        self.latest_of(topic).map(|l| l.id)
    }

    /// The latest request of `topic`, with its status once decided.
    pub fn latest_of(&self, topic: &str) -> Option<Latest> {
        self.latest_by_id(self.id_of(topic)?)
    }

    /// Keeps a decided create request, reduced.
    pub fn decide(
        &mut self,
        id: Uuid,
        topic: &str,
        requested_by: &str,
        kind: RequestKind,
        status: RequestStatus,
    ) {
        let decided = Reduced {
            topic: self.intern(topic),
            requested_by: self.person(requested_by),
            kind,
            status,
        };
        if kind == RequestKind::Create && self.latest(topic) == Some(id) {
            self.top.latest.insert(
                decided.topic,
                Latest {
                    id,
                    decided: Some(status),
                },
            );
        }
        self.top.decided.insert(id, decided);
    }

    pub fn get(&self, id: &Uuid) -> Option<Decided<'_>> {
        self.top
            .decided
            .get(id)
            .or_else(|| self.base.decided(id))
            .map(|d| self.shown(d))
    }

    /// The decided requests after the page's cursor, in id order.
    pub fn range<'a>(
        &'a self,
        page: &PageOf<Uuid>,
    ) -> impl Iterator<Item = (&'a Uuid, Decided<'a>)> + 'a {
        Merge {
            a: self.top.decided.range(page.range()).peekable(),
            b: self
                .base
                .decided_after(page)
                .iter()
                .map(|(k, v)| (k, v))
                .peekable(),
        }
        .map(|(id, d)| (id, self.shown(d)))
    }

    /// Every decided request, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, Decided<'_>)> {
        self.range(&PageOf::all())
    }

    /// How many topic names KafFlow has had a request for (at most; a name in both layers is
    /// counted twice).
    pub fn topic_count(&self) -> usize {
        self.base.names.len() + self.top.names.len()
    }

    /// Every topic name KafFlow has had a request for, with its latest request; in name order
    /// as far as the base goes (all of it after a fold).
    pub fn topics(&self) -> impl Iterator<Item = (&str, Latest)> {
        let new = self.base_names()..self.base_names() + self.top.names.len() as u32;
        self.base
            .by_name
            .iter()
            .copied()
            .chain(new)
            .filter_map(|id| Some((self.name(id), self.latest_by_id(id)?)))
    }

    /// Whether `fold` is due.
    pub fn wants_fold(&self) -> bool {
        self.top.decided.len() + self.top.latest.len() >= FOLD_AT
    }

    /// Moves the top into the base. In place when this is the base's only holder (the journal
    /// drops its staged copy first); a copy of the base otherwise.
    pub fn fold(&mut self) {
        if self.top.is_empty() {
            return;
        }
        let top = std::mem::take(&mut self.top);
        let base = Arc::make_mut(&mut self.base);
        merge_in_order(
            &mut base.decided,
            top.decided.into_iter().collect(),
            |a, b| a.0.cmp(&b.0),
        );
        // New names keep their index: they were numbered after the base's.
        let first_new = base.names.len() as u32;
        base.names.append(&top.names);
        base.latest.resize(base.names.len(), None);
        for (id, latest) in top.latest {
            if let Some(slot) = base.latest.get_mut(id as usize) {
                *slot = Some(latest);
            }
        }
        let Base { names, by_name, .. } = base;
        let mut added: Vec<u32> = (first_new..names.len() as u32).collect();
        added.sort_unstable_by(|&a, &b| names.get(a).cmp(names.get(b)));
        merge_in_order(by_name, added, |&a, &b| names.get(a).cmp(names.get(b)));
    }
}

/// Merges `added` (sorted, its keys new or replacing) into `sorted`. Exact in its capacity, so
/// that a base of hundreds of thousands of entries does not double it; an append when every
/// key added is past the last (decided requests' ids grow with time, so mostly).
fn merge_in_order<T>(
    sorted: &mut Vec<T>,
    added: Vec<T>,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) {
    if added.is_empty() {
        return;
    }
    let appended = match (sorted.last(), added.first()) {
        (Some(last), Some(first)) => order(last, first) == std::cmp::Ordering::Less,
        _ => true,
    };
    sorted.reserve_exact(added.len());
    sorted.extend(added);
    if !appended {
        // Two sorted runs: the stable sort merges them in one pass, and keeps the added entry
        // after the old one of the same key, so the dedup keeps the added one.
        sorted.sort_by(&order);
        let mut kept = 0;
        for at in 0..sorted.len() {
            if kept > 0 && order(&sorted[kept - 1], &sorted[at]) == std::cmp::Ordering::Equal {
                sorted.swap(kept - 1, at);
            } else {
                sorted.swap(kept, at);
                kept += 1;
            }
        }
        sorted.truncate(kept);
    }
}

/// Two id-ordered ranges as one; the top wins where both hold an id.
struct Merge<A: Iterator, B: Iterator> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<'a, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (&'a Uuid, &'a Reduced)>,
    B: Iterator<Item = (&'a Uuid, &'a Reduced)>,
{
    type Item = (&'a Uuid, &'a Reduced);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.a.peek(), self.b.peek()) {
            (Some((x, _)), Some((y, _))) => x.cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => return None,
        };
        match order {
            Ordering::Less => self.a.next(),
            Ordering::Greater => self.b.next(),
            Ordering::Equal => {
                self.b.next();
                self.a.next()
            }
        }
    }
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        let latest = |h: &History| -> BTreeMap<String, Latest> {
            h.topics().map(|(k, v)| (k.to_string(), v)).collect()
        };
        self.iter().eq(other.iter()) && latest(self) == latest(other)
    }
}

impl Eq for History {}

/// How a snapshot holds the history: every name once, and each decided request by the index
/// of its names.
#[derive(Serialize)]
struct Wire<S> {
    /// Topic names, each with its latest request and that request's status once decided
    /// (`Latest`).
    topics: Vec<(S, Uuid, Option<RequestStatus>)>,
    people: Vec<S>,
    /// Id, topic index, requester index, kind, status.
    decided: Vec<(Uuid, u32, u32, RequestKind, RequestStatus)>,
}

impl Serialize for History {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        self.wire(serializer)
    }
}

impl History {
    fn wire<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        // In name order: the same state always gives the same bytes. The base's names are in
        // order and the top's few follow: the stable sort merges the two runs in one pass.
        let mut ids: Vec<u32> = self
            .base
            .by_name
            .iter()
            .copied()
            .chain(self.base_names()..self.base_names() + self.top.names.len() as u32)
            .filter(|&id| self.latest_by_id(id).is_some())
            .collect();
        ids.sort_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let mut topic_ix = vec![u32::MAX; self.topic_count()];
        let mut topics: Vec<(&str, Uuid, Option<RequestStatus>)> = Vec::with_capacity(ids.len());
        for (at, &id) in ids.iter().enumerate() {
            if let (Some(ix), Some(latest)) = (topic_ix.get_mut(id as usize), self.latest_by_id(id))
            {
                *ix = at as u32;
                topics.push((self.name(id), latest.id, latest.decided));
            }
        }
        drop(ids);
        // People in name order too (a copy numbers them as it meets them): each index is
        // renumbered.
        let mut by_name: Vec<u32> = (0..self.people.names.len() as u32).collect();
        by_name.sort_unstable_by_key(|&i| self.people.name(i));
        let people: Vec<&str> = by_name.iter().map(|&i| self.people.name(i)).collect();
        let mut renumbered = vec![0u32; by_name.len()];
        for (new, &old) in by_name.iter().enumerate() {
            renumbered[old as usize] = new as u32;
        }
        let mut decided = Vec::new();
        let all = Merge {
            a: self.top.decided.iter().peekable(),
            b: self.base.decided.iter().map(|(k, v)| (k, v)).peekable(),
        };
        for (id, d) in all {
            let (Some(&t), Some(&p)) = (
                topic_ix.get(d.topic as usize).filter(|&&t| t != u32::MAX),
                renumbered.get(d.requested_by as usize),
            ) else {
                return Err(serde::ser::Error::custom(
                    "a decided request's topic or requester has no name entry",
                ));
            };
            decided.push((*id, t, p, d.kind, d.status));
        }
        Wire {
            topics,
            people,
            decided,
        }
        .serialize(serializer)
    }
}

/// What a snapshot's history decodes from: `Wire`, with the names straight in the base's form.
#[derive(Deserialize)]
struct WireIn<'a> {
    topics: InOrder,
    #[serde(borrow)]
    people: Vec<&'a str>,
    decided: Vec<(Uuid, u32, u32, RequestKind, RequestStatus)>,
}

/// The topic names of a snapshot, decoded into the base's form: each name copied from the
/// snapshot's bytes into the one buffer (no list of them first), and checked to be in strict
/// name order, the base's order, rather than trusted. A name's index is its place.
struct InOrder {
    names: NameBuf,
    latest: Vec<Option<Latest>>,
}

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = InOrder;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("topic names in order, each with its latest request")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<InOrder, A::Error> {
                // The length is the file's word, read before its checksum is known: what is
                // reserved for it is capped, and the rest grows as the names come.
                let hint = seq.size_hint().unwrap_or(0).min(1 << 20);
                let mut names = NameBuf {
                    text: String::with_capacity(hint * 16),
                    ends: Vec::with_capacity(hint),
                };
                let mut latest = Vec::with_capacity(hint);
                let mut last: Option<&'de str> = None;
                while let Some((name, id, decided)) =
                    seq.next_element::<(&'de str, Uuid, Option<RequestStatus>)>()?
                {
                    if last.is_some_and(|last| last >= name) {
                        return Err(serde::de::Error::custom("topic names out of order"));
                    }
                    last = Some(name);
                    names.push(name);
                    latest.push(Some(Latest { id, decided }));
                }
                names.shrink_to_fit();
                latest.shrink_to_fit();
                Ok(InOrder { names, latest })
            }
        }
        deserializer.deserialize_seq(Names)
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireIn::deserialize(deserializer)?;
        let mut people = People::default();
        for name in wire.people {
            people.add(Arc::from(name));
        }
        // A request's topic is its name's place, which is its index; the requests come in id
        // order, the base's order, which is checked rather than trusted.
        let count = wire.topics.names.len();
        let mut decided: Vec<(Uuid, Reduced)> = Vec::with_capacity(wire.decided.len());
        for (id, t, p, kind, status) in wire.decided {
            if t as usize >= count {
                return Err(serde::de::Error::custom("a name index out of range"));
            }
            if p as usize >= people.names.len() {
                return Err(serde::de::Error::custom("a person index out of range"));
            }
            if decided.last().is_some_and(|(last, _)| *last >= id) {
                return Err(serde::de::Error::custom("decided requests out of order"));
            }
            decided.push((
                id,
                Reduced {
                    topic: t,
                    requested_by: p,
                    kind,
                    status,
                },
            ));
        }
        Ok(History {
            base: Arc::new(Base {
                names: wire.topics.names,
                latest: wire.topics.latest,
                by_name: (0..count as u32).collect(),
                decided,
            }),
            top: Layer::default(),
            people: Arc::new(people),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_the_base_and_each_sees_its_own_top() {
        let mut a = History::default();
        let first = Uuid::now_v7();
        a.set_latest("t", first);
        a.decide(
            first,
            "t",
            "alice",
            RequestKind::Create,
            RequestStatus::Rejected,
        );
        a.fold();
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.base, &b.base), "a clone shares the base");
        let second = Uuid::now_v7();
        b.set_latest("t", second);
        b.decide(
            second,
            "t",
            "alice",
            RequestKind::Create,
            RequestStatus::Withdrawn,
        );
        assert_eq!(a.latest("t"), Some(first), "b's change is b's");
        assert_eq!(b.latest("t"), Some(second));
        assert_eq!(
            b.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![first, second]
        );
        let d = b.get(&second).expect("decided");
        assert_eq!(d.topic, "t");
        assert_eq!(b.topic_count(), 1, "one name");
        assert_eq!(d.requested_by, "alice");
        drop(a);
        b.fold();
        assert_eq!(b.topics().count(), 1);
        let bytes = postcard::to_stdvec(&b).expect("encode");
        let back: History = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, b);
    }

    /// A fold keeps the base's names in order with each name once, and a decided create
    /// request that is a name's latest is known as such without a look-up by id.
    #[test]
    fn a_fold_merges_names_in_order_and_keeps_the_latest_status() {
        let mut h = History::default();
        let file = |h: &mut History, topic: &str| {
            let id = Uuid::now_v7();
            h.set_latest(topic, id);
            id
        };
        let m = file(&mut h, "m");
        h.decide(m, "m", "bob", RequestKind::Create, RequestStatus::Rejected);
        file(&mut h, "c");
        h.fold();
        let a = file(&mut h, "a");
        let z = file(&mut h, "z");
        h.decide(z, "z", "bob", RequestKind::Create, RequestStatus::Withdrawn);
        let again = file(&mut h, "m");
        h.fold();
        let names: Vec<&str> = h
            .base
            .by_name
            .iter()
            .map(|&i| h.base.names.get(i))
            .collect();
        assert_eq!(names, ["a", "c", "m", "z"]);
        assert_eq!(
            h.latest_of("m"),
            Some(Latest {
                id: again,
                decided: None
            }),
            "filed again: open"
        );
        assert_eq!(h.latest_of("a").map(|l| (l.id, l.decided)), Some((a, None)));
        assert_eq!(
            h.latest_of("z").and_then(|l| l.decided),
            Some(RequestStatus::Withdrawn)
        );
        // An older request decided after a newer one was filed leaves the newer one latest.
        h.decide(m, "m", "bob", RequestKind::Create, RequestStatus::Rejected);
        assert_eq!(h.latest_of("m").and_then(|l| l.decided), None);

        let bytes = postcard::to_stdvec(&h).expect("encode");
        let back: History = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, h);
        // Names out of order are refused, not trusted.
        let wire = Wire {
            topics: vec![("b", a, None), ("a", z, None)],
            people: Vec::<&str>::new(),
            decided: Vec::new(),
        };
        let bytes = postcard::to_stdvec(&wire).expect("encode");
        assert!(postcard::from_bytes::<History>(&bytes).is_err());
    }
}
