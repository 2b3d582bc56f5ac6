//! The registry's history: what it keeps of every topic name and of every decided create
//! request. Not an actor; part of `registry::Governance`.
//!
//! A long-lived installation has far more decided requests than open ones, and every decision
//! needs only a few facts of them: the topic's latest request (for `route_of`), and of a decided
//! request its topic, kind, status and requester (for the filters of a list, for paging and for
//! the audit scope). Those are kept here, with every name interned once; the rest of a decided
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

/// A decided create request as it is kept: the interned topic name, and the requester as an
/// index into the few people who file requests (`People`), 24 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reduced {
    topic: Arc<str>,
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

/// What each copy applied since the last fold. The top is small (`FOLD_AT`); its maps hash.
// FxHash, not SipHash: speed over resistance to crafted collisions, as every key comes from an
// authenticated filing that is an event in the log.
#[derive(Debug, Clone, Default)]
struct Layer {
    decided: BTreeMap<Uuid, Reduced>,
    /// Topic name to its latest request. Its keys are the interned topic names.
    latest: FxHashMap<Arc<str>, Latest>,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.latest.is_empty()
    }
}

/// The bulk, shared by both copies. A long history holds hundreds of thousands of names and
/// decided requests, so both are a `Vec` in key order, not a map: 40 bytes a name instead of a
/// hash table's 80 at its usual load, 40 bytes a decided request instead of a B-tree's 60 to
/// 110 (its nodes are half full when grown by inserts in id order, as a replay does), and a
/// snapshot (which holds both in this order) decodes straight into them with nothing hashed.
/// A look-up is a binary search.
#[derive(Debug, Clone, Default)]
struct Base {
    decided: Vec<(Uuid, Reduced)>,
    latest: Vec<(Arc<str>, Latest)>,
}

impl Base {
    fn latest(&self, name: &str) -> Option<&(Arc<str>, Latest)> {
        self.latest
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &self.latest[i])
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
    /// `name`, interned: the same allocation for every use of one topic name.
    fn topic_name(&self, name: &str) -> Arc<str> {
        if let Some((k, _)) = self.top.latest.get_key_value(name) {
            return Arc::clone(k);
        }
        if let Some((k, _)) = self.base.latest(name) {
            return Arc::clone(k);
        }
        Arc::from(name)
    }

    /// The interned `name`, if it is a topic name KafFlow has had a request for.
    pub fn shared_name(&self, name: &str) -> Option<Arc<str>> {
        self.top
            .latest
            .get_key_value(name)
            .or_else(|| self.base.latest(name).map(|(k, v)| (k, v)))
            .map(|(k, _)| Arc::clone(k))
    }

    fn person(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.people.ids.get(name) {
            return id;
        }
        Arc::make_mut(&mut self.people).add(Arc::from(name))
    }

    fn shown<'a>(&'a self, d: &'a Reduced) -> Decided<'a> {
        Decided {
            topic: &d.topic,
            requested_by: self.people.name(d.requested_by),
            kind: d.kind,
            status: d.status,
        }
    }

    /// Records `id` as the latest request of `topic` (an open one: just filed).
    pub fn set_latest(&mut self, topic: &str, id: Uuid) {
        let name = self.topic_name(topic);
        self.top.latest.insert(name, Latest { id, decided: None });
    }

    /// The latest request of `topic`, open or not.
    pub fn latest(&self, topic: &str) -> Option<Uuid> {
        self.latest_of(topic).map(|l| l.id)
    }

    /// The latest request of `topic`, with its status once decided.
    pub fn latest_of(&self, topic: &str) -> Option<Latest> {
        self.top
            .latest
            .get(topic)
            .or_else(|| self.base.latest(topic).map(|(_, v)| v))
            .copied()
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
            topic: self.topic_name(topic),
            requested_by: self.person(requested_by),
            kind,
            status,
        };
        if kind == RequestKind::Create && self.latest(topic) == Some(id) {
            self.top.latest.insert(
                Arc::clone(&decided.topic),
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
        self.top.latest.len() + self.base.latest.len()
    }

    /// Every topic name KafFlow has had a request for, with its latest request.
    pub fn topics(&self) -> impl Iterator<Item = (&Arc<str>, Latest)> {
        let top = &self.top.latest;
        top.iter().map(|(k, v)| (k, *v)).chain(
            self.base
                .latest
                .iter()
                .filter(move |(k, _)| !top.contains_key(&**k))
                .map(|(k, v)| (k, *v)),
        )
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
        let mut added = Vec::new();
        for (name, latest) in top.latest {
            match base.latest.binary_search_by(|(k, _)| (**k).cmp(&*name)) {
                Ok(i) => base.latest[i].1 = latest,
                Err(_) => added.push((name, latest)),
            }
        }
        added.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        merge_in_order(&mut base.latest, added, |a, b| a.0.cmp(&b.0));
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
    fn wire<'a, Z: serde::Serializer>(&'a self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        // In name order: the same state always gives the same bytes.
        let mut topics: Vec<(&str, Uuid, Option<RequestStatus>)> = self
            .topics()
            .map(|(k, v)| (&**k, v.id, v.decided))
            .collect();
        topics.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // People in name order too (a copy numbers them as it meets them): each index is
        // renumbered.
        let mut by_name: Vec<u32> = (0..self.people.names.len() as u32).collect();
        by_name.sort_unstable_by_key(|&i| self.people.name(i));
        let people: Vec<&str> = by_name.iter().map(|&i| self.people.name(i)).collect();
        let mut renumbered = vec![0u32; by_name.len()];
        for (new, &old) in by_name.iter().enumerate() {
            renumbered[old as usize] = new as u32;
        }
        let topic_ix: FxHashMap<&'a str, u32> = topics
            .iter()
            .enumerate()
            .map(|(i, (n, _, _))| (*n, i as u32))
            .collect();
        let mut decided = Vec::new();
        let all = Merge {
            a: self.top.decided.iter().peekable(),
            b: self.base.decided.iter().map(|(k, v)| (k, v)).peekable(),
        };
        for (id, d) in all {
            let (Some(&t), Some(&p)) = (
                topic_ix.get(&*d.topic),
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

/// The topic names of a snapshot, decoded into the base's `Vec`: each name borrowed from the
/// snapshot's bytes and interned from there (one allocation, no list of them first), and
/// checked to be in strict name order, the base's order, rather than trusted.
struct InOrder(Vec<(Arc<str>, Latest)>);

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
                let mut names: Vec<(Arc<str>, Latest)> =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some((name, id, decided)) =
                    seq.next_element::<(&'de str, Uuid, Option<RequestStatus>)>()?
                {
                    if names.last().is_some_and(|(last, _)| **last >= *name) {
                        return Err(serde::de::Error::custom("topic names out of order"));
                    }
                    names.push((Arc::from(name), Latest { id, decided }));
                }
                Ok(InOrder(names))
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
        // A request's topic is its index in the names; the requests come in id order, the
        // base's order, which is checked rather than trusted.
        let names = &wire.topics.0;
        let mut decided: Vec<(Uuid, Reduced)> = Vec::with_capacity(wire.decided.len());
        for (id, t, p, kind, status) in wire.decided {
            let Some((topic, _)) = names.get(t as usize) else {
                return Err(serde::de::Error::custom("a name index out of range"));
            };
            if p as usize >= people.names.len() {
                return Err(serde::de::Error::custom("a person index out of range"));
            }
            if decided.last().is_some_and(|(last, _)| *last >= id) {
                return Err(serde::de::Error::custom("decided requests out of order"));
            }
            decided.push((
                id,
                Reduced {
                    topic: Arc::clone(topic),
                    requested_by: p,
                    kind,
                    status,
                },
            ));
        }
        Ok(History {
            base: Arc::new(Base {
                decided,
                latest: wire.topics.0,
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
        assert!(
            std::ptr::eq(d.topic, b.get(&first).expect("decided").topic),
            "one allocation per name"
        );
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
        let names: Vec<&str> = h.base.latest.iter().map(|(k, _)| &**k).collect();
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
