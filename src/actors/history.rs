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

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::registry::{RequestKind, RequestStatus};
use crate::paging::PageOf;

/// A decided create request, reduced to what decisions, filters and paging need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub topic: Arc<str>,
    pub requested_by: Arc<str>,
    pub kind: RequestKind,
    pub status: RequestStatus,
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
    decided: BTreeMap<Uuid, Decided>,
    /// Topic name to its latest request. Its keys are the interned topic names.
    latest: FxHashMap<Arc<str>, Latest>,
    /// Interned requester names (few: the people who file requests).
    people: FxHashSet<Arc<str>>,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.latest.is_empty() && self.people.is_empty()
    }
}

/// The bulk, shared by both copies. A long history holds hundreds of thousands of names, so
/// they are a `Vec` in name order, not a map: 40 bytes a name instead of a hash table's 80 at
/// its usual load, and a snapshot (which holds them in this order) decodes straight into it
/// with nothing hashed. A look-up is a binary search.
#[derive(Debug, Clone, Default)]
struct Base {
    decided: BTreeMap<Uuid, Decided>,
    latest: Vec<(Arc<str>, Latest)>,
    people: FxHashSet<Arc<str>>,
}

impl Base {
    fn latest(&self, name: &str) -> Option<&(Arc<str>, Latest)> {
        self.latest
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &self.latest[i])
    }
}

/// See the module's comment.
#[derive(Debug, Clone, Default)]
pub struct History {
    base: Arc<Base>,
    top: Layer,
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

    fn person(&mut self, name: &str) -> Arc<str> {
        if let Some(k) = self.top.people.get(name) {
            return Arc::clone(k);
        }
        if let Some(k) = self.base.people.get(name) {
            return Arc::clone(k);
        }
        let k: Arc<str> = Arc::from(name);
        self.top.people.insert(Arc::clone(&k));
        k
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
        let decided = Decided {
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

    pub fn get(&self, id: &Uuid) -> Option<&Decided> {
        self.top
            .decided
            .get(id)
            .or_else(|| self.base.decided.get(id))
    }

    /// The decided requests after the page's cursor, in id order.
    pub fn range<'a>(
        &'a self,
        page: &PageOf<Uuid>,
    ) -> impl Iterator<Item = (&'a Uuid, &'a Decided)> + 'a {
        Merge {
            a: self.top.decided.range(page.range()).peekable(),
            b: self.base.decided.range(page.range()).peekable(),
        }
    }

    /// Every decided request, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Decided)> {
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
        base.decided.extend(top.decided);
        base.people.extend(top.people);
        let mut added = Vec::new();
        for (name, latest) in top.latest {
            match base.latest.binary_search_by(|(k, _)| (**k).cmp(&*name)) {
                Ok(i) => base.latest[i].1 = latest,
                Err(_) => added.push((name, latest)),
            }
        }
        if !added.is_empty() {
            added.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            // Two sorted runs: the stable sort merges them in one pass. Exact, so that a base
            // of hundreds of thousands of names does not double its capacity.
            base.latest.reserve_exact(added.len());
            base.latest.extend(added);
            base.latest.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }

    fn people(&self) -> impl Iterator<Item = &Arc<str>> {
        let top = &self.top.people;
        top.iter().chain(
            self.base
                .people
                .iter()
                .filter(move |k| !top.contains(&***k)),
        )
    }
}

/// Two id-ordered ranges as one; the top wins where both hold an id.
struct Merge<I: Iterator> {
    a: Peekable<I>,
    b: Peekable<I>,
}

impl<'a, I> Iterator for Merge<I>
where
    I: Iterator<Item = (&'a Uuid, &'a Decided)>,
{
    type Item = (&'a Uuid, &'a Decided);

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
        let mut people: Vec<&str> = self.people().map(|k| &**k).collect();
        people.sort_unstable();
        let index = |names: &[&'a str]| -> FxHashMap<&'a str, u32> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, i as u32))
                .collect()
        };
        let topic_ix = index(&topics.iter().map(|(k, _, _)| *k).collect::<Vec<_>>());
        let people_ix = index(&people);
        let mut decided = Vec::new();
        for (id, d) in self.iter() {
            let (Some(&t), Some(&p)) = (topic_ix.get(&*d.topic), people_ix.get(&*d.requested_by))
            else {
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
        let people: Vec<Arc<str>> = wire.people.iter().map(|k| Arc::from(*k)).collect();
        let mut layer = Base {
            latest: wire.topics.0,
            people: people.iter().cloned().collect(),
            decided: BTreeMap::new(),
        };
        // Collected, not inserted one by one: from ids in order (as they are written) the map
        // is built with full nodes, about half the memory of one grown by inserts. A request's
        // topic is its index in the names.
        let names = &layer.latest;
        let decided = wire
            .decided
            .into_iter()
            .map(
                |(id, t, p, kind, status)| match (names.get(t as usize), people.get(p as usize)) {
                    (Some((topic, _)), Some(requested_by)) => Ok((
                        id,
                        Decided {
                            topic: Arc::clone(topic),
                            requested_by: Arc::clone(requested_by),
                            kind,
                            status,
                        },
                    )),
                    _ => Err(serde::de::Error::custom("a name index out of range")),
                },
            )
            .collect::<Result<_, D::Error>>()?;
        layer.decided = decided;
        Ok(History {
            base: Arc::new(layer),
            top: Layer::default(),
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
            Arc::ptr_eq(&d.topic, &b.get(&first).expect("decided").topic),
            "one allocation per name"
        );
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
