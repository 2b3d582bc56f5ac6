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
//! A create request enters the history when it is filed (`file`), reduced from the start, and
//! its decisions update that entry in place (`decide`): most requests of a long log are filed
//! and decided at once, and a replay makes one entry for each, appended in id order, instead of
//! an insert into and a remove from an ordered map per step. While the request is open the
//! registry also keeps it whole, and that copy is the one shown: the history's reads give only
//! the decided ones.
//!
//! The journal keeps two copies of the registry's state (committed and staged). This part is
//! shared between them: a `base` behind an `Arc` that both copies point to, and a small `top` of
//! what each copy applied since. The journal folds the top into the base when nothing is in
//! flight (`Journaled::fold`), so the base is written in place, never copied.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::Arc;

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};
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

/// A create request as it is kept: its topic as the name's index (`NameBuf`) and the
/// requester as an index into the few people who file requests (`People`), 12 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reduced {
    topic: u32,
    requested_by: u32,
    kind: RequestKind,
    status: RequestStatus,
}

/// A topic name's latest request, open or not, and its status once it is a create request
/// decided for good. Kept with the name, so that a start and the
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

/// What each copy applied since the last fold. Small between folds (`FOLD_AT`); a replay
/// applies the whole log onto it before the journal's first fold, so each of its parts grows
/// without a per-entry allocation.
#[derive(Debug, Clone, Default)]
struct Layer {
    /// The create requests filed or decided since the fold, in id order. Ids are UUID v7, so a
    /// filing is an append; an id out of order (a clock set back) is put in its place.
    requests: Vec<(Uuid, Reduced)>,
    /// The latest request of the base's names that changed since the fold, by name index.
    // FxHash, not SipHash: speed over resistance to crafted collisions, as every key comes from
    // an authenticated filing that is an event in the log.
    latest: FxHashMap<u32, Latest>,
    /// The names first met since the fold, numbered after the base's.
    names: NameBuf,
    /// The latest request of each of those names, by its place in `names`: a name is met
    /// first at a filing, which is its latest request.
    new_latest: Vec<Latest>,
    /// The indexes of `names`, hashed by the name itself (FxHash, as `latest`): no key of its
    /// own beside the name's bytes in `names`. Each with its name's hash (`NameHash`), so
    /// that the table grows without reading every name again, and a look-up reads a name only
    /// when the hashes match.
    ids: HashTable<(u32, NameHash)>,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.latest.is_empty() && self.names.len() == 0
    }

    /// Where `id` is in `requests`, or where it would go. The request looked for is nearly
    /// always the last one filed, so that is tried first.
    fn place(&self, id: &Uuid) -> std::result::Result<usize, usize> {
        match self.requests.last() {
            Some((last, _)) if last == id => Ok(self.requests.len() - 1),
            Some((last, _)) if last < id => Err(self.requests.len()),
            _ => self.requests.binary_search_by(|(k, _)| k.cmp(id)),
        }
    }
}

/// A name's hash, 32 bits of it kept beside its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameHash(u32);

impl NameHash {
    fn of(name: &str) -> NameHash {
        NameHash((FxBuildHasher.hash_one(name) >> 32) as u32)
    }

    /// As the table takes it: the 32 bits in both halves, so that the bucket (low bits) and
    /// the tag (top bits) each come from them.
    fn wide(self) -> u64 {
        (u64::from(self.0) << 32) | u64::from(self.0)
    }
}

/// The bulk, shared by both copies. A long history holds hundreds of thousands of names and
/// decided requests, so they are kept in `Vec`s, not maps: a name is its bytes in `names`, 4
/// bytes of its end, 17 of its latest request (indexed by the name's index) and 4 in
/// `by_name`; a create request 28 bytes in id order, instead of a B-tree's 60 to 110 (its
/// nodes are half full when grown by inserts in id order, as a replay does). A snapshot (which
/// holds both in order) decodes straight into them with nothing hashed; a look-up is a binary
/// search.
#[derive(Debug, Clone, Default)]
struct Base {
    names: NameBuf,
    /// By name index; every name has one (a name is first met at a filing).
    latest: Vec<Option<Latest>>,
    /// The name indexes in name order.
    by_name: Vec<u32>,
    /// Every create request, open or decided, in id order.
    requests: Vec<(Uuid, Reduced)>,
}

impl Base {
    fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name
            .binary_search_by(|&i| self.names.get(i).cmp(name))
            .ok()
            .map(|at| self.by_name[at])
    }

    fn request(&self, id: &Uuid) -> Option<&Reduced> {
        self.requests
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .map(|i| &self.requests[i].1)
    }
}

/// The requests of `sorted` after the page's cursor.
fn after<'a>(sorted: &'a [(Uuid, Reduced)], page: &PageOf<Uuid>) -> &'a [(Uuid, Reduced)] {
    let from = match &page.after {
        Some(after) => sorted.partition_point(|(k, _)| k <= after),
        None => 0,
    };
    &sorted[from..]
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
        let base = self.base_names();
        let hash = NameHash::of(name);
        self.top
            .ids
            .find(hash.wide(), |&(id, h)| {
                h == hash && self.top.names.get(id - base) == name
            })
            .map(|&(id, _)| id)
            .or_else(|| self.base.id_of(name))
    }

    /// The name of index `id`.
    fn name(&self, id: u32) -> &str {
        match id.checked_sub(self.base_names()) {
            Some(new) => self.top.names.get(new),
            None => self.base.names.get(id),
        }
    }

    fn latest_by_id(&self, id: u32) -> Option<Latest> {
        match id.checked_sub(self.base_names()) {
            Some(new) => self.top.new_latest.get(new as usize).copied(),
            None => match self.top.latest.get(&id) {
                Some(latest) => Some(*latest),
                None => self.base.latest.get(id as usize).copied().flatten(),
            },
        }
    }

    fn set_latest_by_id(&mut self, id: u32, latest: Latest) {
        match id.checked_sub(self.base_names()) {
            Some(new) => {
                if let Some(slot) = self.top.new_latest.get_mut(new as usize) {
                    *slot = latest;
                }
            }
            None => {
                self.top.latest.insert(id, latest);
            }
        }
    }

    /// Makes `latest` the latest request of `name`, numbering the name if it is new.
    fn set_latest(&mut self, name: &str, latest: Latest) -> u32 {
        if let Some(id) = self.id_of(name) {
            self.set_latest_by_id(id, latest);
            return id;
        }
        let base = self.base_names();
        let Layer {
            names,
            ids,
            new_latest,
            ..
        } = &mut self.top;
        let id = base + names.push(name);
        new_latest.push(latest);
        let hash = NameHash::of(name);
        ids.insert_unique(hash.wide(), (id, hash), |&(_, h)| h.wide());
        id
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

    /// Records a request just filed: the latest of its topic, and a create request itself,
    /// reduced, until its decisions update it (`decide`). A deletion request is kept whole by
    /// the registry.
    pub fn file(&mut self, id: Uuid, topic: &str, requested_by: &str, kind: RequestKind) {
        let topic = self.set_latest(topic, Latest { id, decided: None });
        if kind != RequestKind::Create {
            return;
        }
        let reduced = Reduced {
            topic,
            requested_by: self.person(requested_by),
            kind,
            status: RequestStatus::Pending,
        };
        match self.top.place(&id) {
            Ok(at) => self.top.requests[at].1 = reduced,
            Err(at) => self.top.requests.insert(at, (id, reduced)),
        }
    }

    /// The latest request of `topic`, open or not.
    pub fn latest(&self, topic: &str) -> Option<Uuid> {
        self.latest_of(topic).map(|l| l.id)
    }

    /// The latest request of `topic`, with its status once decided.
    pub fn latest_of(&self, topic: &str) -> Option<Latest> {
        self.latest_by_id(self.id_of(topic)?)
    }

    /// Records a create request's new status, in place. Once the request is decided for good
    /// (`status` not open) the history is what the registry keeps of it, and its topic knows
    /// it closed if it was the topic's latest request.
    pub fn decide(&mut self, id: Uuid, status: RequestStatus) {
        let topic = match self.top.place(&id) {
            Ok(at) => {
                let kept = &mut self.top.requests[at].1;
                kept.status = status;
                kept.topic
            }
            Err(at) => {
                // Filed before the last fold: the top takes the changed copy.
                let Some(kept) = self.base.request(&id) else {
                    return;
                };
                let kept = Reduced {
                    status,
                    ..kept.clone()
                };
                let topic = kept.topic;
                self.top.requests.insert(at, (id, kept));
                topic
            }
        };
        if status.is_open() {
            return;
        }
        if self.latest_by_id(topic).is_some_and(|l| l.id == id) {
            self.set_latest_by_id(
                topic,
                Latest {
                    id,
                    decided: Some(status),
                },
            );
        }
    }

    /// Every create request, open or decided, in id order (the top wins where both hold one).
    fn entries_after<'a>(
        &'a self,
        page: &PageOf<Uuid>,
    ) -> Merge<
        impl Iterator<Item = (&'a Uuid, &'a Reduced)>,
        impl Iterator<Item = (&'a Uuid, &'a Reduced)>,
    > {
        Merge {
            a: after(&self.top.requests, page)
                .iter()
                .map(|(k, v)| (k, v))
                .peekable(),
            b: after(&self.base.requests, page)
                .iter()
                .map(|(k, v)| (k, v))
                .peekable(),
        }
    }

    /// A decided create request.
    pub fn get(&self, id: &Uuid) -> Option<Decided<'_>> {
        let kept = match self.top.place(id) {
            Ok(at) => &self.top.requests[at].1,
            Err(_) => self.base.request(id)?,
        };
        (!kept.status.is_open()).then(|| self.shown(kept))
    }

    /// The decided create requests after the page's cursor, in id order.
    pub fn range<'a>(
        &'a self,
        page: &PageOf<Uuid>,
    ) -> impl Iterator<Item = (&'a Uuid, Decided<'a>)> + 'a {
        self.entries_after(page)
            .filter(|(_, d)| !d.status.is_open())
            .map(|(id, d)| (id, self.shown(d)))
    }

    /// Every decided create request, in id order.
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
        self.top.requests.len() + self.top.latest.len() + self.top.names.len() >= FOLD_AT
    }

    /// Moves the top into the base. In place when this is the base's only holder (the journal
    /// drops its staged copy first); a copy of the base otherwise.
    pub fn fold(&mut self) {
        if self.top.is_empty() {
            return;
        }
        let top = std::mem::take(&mut self.top);
        let base = Arc::make_mut(&mut self.base);
        merge_in_order(&mut base.requests, top.requests, |a, b| a.0.cmp(&b.0));
        // New names keep their index: they were numbered after the base's.
        let first_new = base.names.len() as u32;
        base.names.append(&top.names);
        base.latest.reserve_exact(top.new_latest.len());
        base.latest.extend(top.new_latest.into_iter().map(Some));
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
        let all = |h: &'_ History| -> Vec<(Uuid, String, String, RequestKind, RequestStatus)> {
            h.entries_after(&PageOf::all())
                .map(|(id, d)| {
                    let d = h.shown(d);
                    (*id, d.topic.into(), d.requested_by.into(), d.kind, d.status)
                })
                .collect()
        };
        all(self) == all(other) && latest(self) == latest(other)
    }
}

impl Eq for History {}

/// How a snapshot holds the history: every name once, and each create request (open ones too,
/// so that their decisions update them in place) by the index of its names.
#[derive(Serialize)]
struct Wire<S> {
    /// Topic names, each with its latest request and that request's status once decided
    /// (`Latest`).
    topics: Vec<(S, Uuid, Option<RequestStatus>)>,
    people: Vec<S>,
    /// Id, topic index, requester index, kind, status.
    requests: Vec<(Uuid, u32, u32, RequestKind, RequestStatus)>,
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
        let mut requests = Vec::new();
        for (id, d) in self.entries_after(&PageOf::all()) {
            let (Some(&t), Some(&p)) = (
                topic_ix.get(d.topic as usize).filter(|&&t| t != u32::MAX),
                renumbered.get(d.requested_by as usize),
            ) else {
                return Err(serde::ser::Error::custom(
                    "a request's topic or requester has no name entry",
                ));
            };
            requests.push((*id, t, p, d.kind, d.status));
        }
        Wire {
            topics,
            people,
            requests,
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
    requests: Vec<(Uuid, u32, u32, RequestKind, RequestStatus)>,
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
        let mut requests: Vec<(Uuid, Reduced)> = Vec::with_capacity(wire.requests.len());
        for (id, t, p, kind, status) in wire.requests {
            if t as usize >= count {
                return Err(serde::de::Error::custom("a name index out of range"));
            }
            if p as usize >= people.names.len() {
                return Err(serde::de::Error::custom("a person index out of range"));
            }
            if requests.last().is_some_and(|(last, _)| *last >= id) {
                return Err(serde::de::Error::custom("requests out of order"));
            }
            requests.push((
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
                requests,
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
        a.file(first, "t", "alice", RequestKind::Create);
        a.decide(first, RequestStatus::Rejected);
        a.fold();
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.base, &b.base), "a clone shares the base");
        let second = Uuid::now_v7();
        b.file(second, "t", "alice", RequestKind::Create);
        b.decide(second, RequestStatus::Withdrawn);
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

    /// A create request is one entry from its filing: not given as decided while open, and
    /// updated in place by its decisions, also when it was filed before a fold (the top then
    /// takes the changed copy) or out of id order.
    #[test]
    fn a_filing_is_one_entry_that_its_decisions_update() {
        let mut h = History::default();
        let a = Uuid::now_v7();
        h.file(a, "a", "bob", RequestKind::Create);
        assert!(h.get(&a).is_none(), "open: the registry shows it whole");
        h.decide(a, RequestStatus::Approved);
        assert!(h.get(&a).is_none(), "approved is still open");
        assert_eq!(h.iter().count(), 0);
        h.fold();
        h.decide(a, RequestStatus::Completed);
        assert_eq!(h.top.requests.len(), 1);
        assert_eq!(h.get(&a).map(|d| d.status), Some(RequestStatus::Completed));
        assert_eq!(
            h.latest_of("a").and_then(|l| l.decided),
            Some(RequestStatus::Completed)
        );
        h.fold();
        assert_eq!(h.base.requests.len(), 1, "one entry per request");
        let early = Uuid::from_u128(1);
        h.file(early, "b", "bob", RequestKind::Create);
        let open = Uuid::now_v7();
        h.file(open, "c", "erin", RequestKind::Create);
        h.decide(early, RequestStatus::Rejected);
        assert_eq!(
            h.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![early, a]
        );
        let bytes = postcard::to_stdvec(&h).expect("encode");
        let mut back: History = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, h);
        back.decide(open, RequestStatus::Withdrawn);
        h.decide(open, RequestStatus::Withdrawn);
        assert_eq!(back, h);
        assert_eq!(back.get(&open).map(|d| d.requested_by), Some("erin"));
    }

    /// A fold keeps the base's names in order with each name once, and a decided create
    /// request that is a name's latest is known as such without a look-up by id.
    #[test]
    fn a_fold_merges_names_in_order_and_keeps_the_latest_status() {
        let mut h = History::default();
        let file = |h: &mut History, topic: &str| {
            let id = Uuid::now_v7();
            h.file(id, topic, "bob", RequestKind::Create);
            id
        };
        let m = file(&mut h, "m");
        h.decide(m, RequestStatus::Rejected);
        file(&mut h, "c");
        h.fold();
        let a = file(&mut h, "a");
        let z = file(&mut h, "z");
        h.decide(z, RequestStatus::Withdrawn);
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
        h.decide(m, RequestStatus::Rejected);
        assert_eq!(h.latest_of("m").and_then(|l| l.decided), None);

        let bytes = postcard::to_stdvec(&h).expect("encode");
        let back: History = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, h);
        // Names out of order are refused, not trusted.
        let wire = Wire {
            topics: vec![("b", a, None), ("a", z, None)],
            people: Vec::<&str>::new(),
            requests: Vec::new(),
        };
        let bytes = postcard::to_stdvec(&wire).expect("encode");
        assert!(postcard::from_bytes::<History>(&bytes).is_err());
    }
}
