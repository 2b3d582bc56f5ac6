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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::iter::Peekable;
use std::sync::Arc;

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

#[derive(Debug, Clone, Default)]
struct Layer {
    decided: BTreeMap<Uuid, Decided>,
    /// Topic name to its latest request, open or not. Its keys are the interned topic names.
    latest: HashMap<Arc<str>, Uuid>,
    /// Interned requester names (few: the people who file requests).
    people: HashSet<Arc<str>>,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.decided.is_empty() && self.latest.is_empty() && self.people.is_empty()
    }
}

/// See the module's comment.
#[derive(Debug, Clone, Default)]
pub struct History {
    base: Arc<Layer>,
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
        if let Some((k, _)) = self.base.latest.get_key_value(name) {
            return Arc::clone(k);
        }
        Arc::from(name)
    }

    /// The interned `name`, if it is a topic name KafFlow has had a request for.
    pub fn shared_name(&self, name: &str) -> Option<Arc<str>> {
        self.top
            .latest
            .get_key_value(name)
            .or_else(|| self.base.latest.get_key_value(name))
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

    /// Records `id` as the latest request of `topic`.
    pub fn set_latest(&mut self, topic: &str, id: Uuid) {
        let name = self.topic_name(topic);
        self.top.latest.insert(name, id);
    }

    /// The latest request of `topic`, open or not.
    pub fn latest(&self, topic: &str) -> Option<Uuid> {
        self.top
            .latest
            .get(topic)
            .or_else(|| self.base.latest.get(topic))
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

    /// Every topic name KafFlow has had a request for, with its latest request.
    pub fn topics(&self) -> impl Iterator<Item = (&Arc<str>, Uuid)> {
        let top = &self.top.latest;
        top.iter().map(|(k, v)| (k, *v)).chain(
            self.base
                .latest
                .iter()
                .filter(move |(k, _)| !top.contains_key(&***k))
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
        base.latest.extend(top.latest);
        base.people.extend(top.people);
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
        let latest = |h: &History| -> BTreeMap<String, Uuid> {
            h.topics().map(|(k, v)| (k.to_string(), v)).collect()
        };
        self.iter().eq(other.iter()) && latest(self) == latest(other)
    }
}

impl Eq for History {}

/// How a snapshot holds the history: every name once, and each decided request by the index
/// of its names.
#[derive(Serialize, Deserialize)]
struct Wire<S> {
    /// Topic names, each with its latest request.
    topics: Vec<(S, Uuid)>,
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
        let mut topics: Vec<(&str, Uuid)> = self.topics().map(|(k, v)| (&**k, v)).collect();
        topics.sort_unstable();
        let mut people: Vec<&str> = self.people().map(|k| &**k).collect();
        people.sort_unstable();
        let index = |names: &[&'a str]| -> HashMap<&'a str, u32> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, i as u32))
                .collect()
        };
        let topic_ix = index(&topics.iter().map(|(k, _)| *k).collect::<Vec<_>>());
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

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::<String>::deserialize(deserializer)?;
        let names: Vec<Arc<str>> = wire.topics.iter().map(|(k, _)| Arc::from(&**k)).collect();
        let people: Vec<Arc<str>> = wire.people.iter().map(|k| Arc::from(&**k)).collect();
        let mut layer = Layer {
            latest: names
                .iter()
                .zip(&wire.topics)
                .map(|(k, (_, id))| (Arc::clone(k), *id))
                .collect(),
            people: people.iter().cloned().collect(),
            decided: BTreeMap::new(),
        };
        // Collected, not inserted one by one: from ids in order (as they are written) the map
        // is built with full nodes, about half the memory of one grown by inserts.
        layer.decided = wire
            .decided
            .into_iter()
            .map(
                |(id, t, p, kind, status)| match (names.get(t as usize), people.get(p as usize)) {
                    (Some(topic), Some(requested_by)) => Ok((
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
}
