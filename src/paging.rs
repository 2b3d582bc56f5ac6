//! Pages of a list read. Every list an actor answers is kept in a map ordered by a key that
//! never changes for an item (an id, a name, a grant's topic-user-access); a page is the
//! items after a key, up to a count. A cursor is that key, so an item inserted or removed
//! while a caller walks the list never shifts the items still to come: each one that stays
//! is seen exactly once. An offset would skip or repeat items under concurrent inserts.

use std::ops::Bound;

/// The page a caller asks for: the items after `after` (from the first when `None`), at most
/// `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOf<K> {
    pub after: Option<K>,
    pub limit: usize,
}

impl<K> PageOf<K> {
    /// The whole list in one page (internal callers and tests, never a route).
    pub fn all() -> Self {
        PageOf {
            after: None,
            limit: usize::MAX,
        }
    }

    /// The range of an ordered map that starts after the cursor.
    pub fn range(&self) -> (Bound<&K>, Bound<&K>) {
        let start = self
            .after
            .as_ref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        (start, Bound::Unbounded)
    }
}

/// One page of a list, in key order, and the key to continue after when more items follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<K, T> {
    pub items: Vec<T>,
    /// The key of the last item when another item follows it; `None` at the end of the list.
    pub next: Option<K>,
}

impl<K, T> Page<K, T> {
    /// Takes up to `limit` items from `rest` (already in key order and after the cursor).
    /// It looks at one item more than it keeps, so `next` is set only when something follows:
    /// a caller who walks until `next` is `None` never gets an empty last page.
    pub fn take(rest: impl IntoIterator<Item = T>, limit: usize, key: impl Fn(&T) -> K) -> Self {
        let mut items = Vec::new();
        let mut next = None;
        for item in rest {
            if items.len() == limit {
                next = items.last().map(&key);
                break;
            }
            items.push(item);
        }
        Page { items, next }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<K, U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_walk_sees_every_item_once_while_others_are_inserted() {
        let mut map: BTreeMap<u32, u32> = (0..10).map(|k| (k * 10, k * 10)).collect();
        let mut page = PageOf {
            after: None,
            limit: 3,
        };
        let mut seen = Vec::new();
        loop {
            let got = Page::take(map.range(page.range()).map(|(_, v)| *v), page.limit, |v| *v);
            seen.extend(got.items.iter().copied());
            // One insert behind the cursor (never seen) and one ahead of everything (seen).
            if let Some(&last) = seen.last() {
                map.insert(last - 1, last - 1);
            }
            let ahead = 1000 + seen.len() as u32;
            map.insert(ahead, ahead);
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        for k in 0..10 {
            assert_eq!(seen.iter().filter(|v| **v == k * 10).count(), 1, "{k}");
        }
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "no item twice: {seen:?}");
    }

    #[test]
    fn a_full_last_page_has_no_next() {
        let page = Page::take(1..=4, 4, |v| *v);
        assert_eq!((page.items.len(), page.next), (4, None));
        let page = Page::take(1..=5, 4, |v| *v);
        assert_eq!(page.next, Some(4));
    }
}
