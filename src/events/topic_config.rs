//! A topic's Kafka config (`retention.ms` and the like), as requests, topics and events hold it.
//!
//! Most topics have one or two entries. A `BTreeMap<String, String>` spends a whole B-tree leaf
//! (544 bytes) on its first entry, and the registry holds each topic's config in its state, in
//! the governed view's shown topics and in the journal's staged copy: at 20,000 topics and open
//! requests that was about 27 MB. This is the entries in key order in one shared slice: a
//! clone is a reference count, so every copy of a topic points to the same entries.
//!
//! It reads and writes as the same JSON object (and the same postcard map) as the
//! `BTreeMap<String, String>` it replaces: keys in order, each once, the last of repeated
//! keys kept; the events' hash chain and the API's bodies are unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module's comment. `None` when empty: no allocation for a topic without config.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TopicConfig(Option<Entries>);

/// Key and value pairs, in key order, each key once.
type Entries = Arc<[(Box<str>, Box<str>)]>;

impl TopicConfig {
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let entries = self.entries();
        entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*entries[i].1)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries().iter().map(|(k, v)| (&**k, &**v))
    }

    fn entries(&self) -> &[(Box<str>, Box<str>)] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl fmt::Debug for TopicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<BTreeMap<String, String>> for TopicConfig {
    fn from(map: BTreeMap<String, String>) -> Self {
        if map.is_empty() {
            return TopicConfig(None);
        }
        // A map iterates in key order with each key once: the slice's invariant.
        TopicConfig(Some(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        ))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for TopicConfig {
    /// Later entries win over earlier ones of the same key, as inserts into a map would.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        entries
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<BTreeMap<String, String>>()
            .into()
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for TopicConfig {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl std::ops::Index<&str> for TopicConfig {
    type Output = str;

    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no config entry {key:?}"),
        }
    }
}

impl<'a> IntoIterator for &'a TopicConfig {
    type Item = &'a (Box<str>, Box<str>);
    type IntoIter = std::slice::Iter<'a, (Box<str>, Box<str>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries().iter()
    }
}

impl Serialize for TopicConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for TopicConfig {
    /// The same order and the same answer to repeated keys (the last wins) as the map it
    /// replaces, without one: the entries are read as borrowed text where the input allows,
    /// sorted, and shared with the config this thread read last when they are the same (a
    /// replay reads the same few configs hundreds of thousands of times).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ConfigVisitor)
    }
}

thread_local! {
    /// The entries this thread read last (see `deserialize`).
    static LAST_READ: std::cell::RefCell<Option<Entries>> = const { std::cell::RefCell::new(None) };
}

struct ConfigVisitor;

impl<'de> Visitor<'de> for ConfigVisitor {
    type Value = TopicConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of config names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopicConfig, A::Error> {
        let mut entries: Vec<(Text<'de>, Text<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(2).min(64));
        while let Some(entry) = map.next_entry::<Text<'de>, Text<'de>>()? {
            entries.push(entry);
        }
        if entries.is_empty() {
            return Ok(TopicConfig(None));
        }
        // Stable: of repeated keys, the last read ends last in its run, and is the one kept
        // (moved into the first of the run, which `dedup_by` keeps). In place: a replay reads a
        // config in most of its events, and a second vector was an allocation each.
        entries.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        entries.dedup_by(|later, kept| {
            let repeated = later.0 .0 == kept.0 .0;
            if repeated {
                std::mem::swap(later, kept);
            }
            repeated
        });
        let same = |shared: &Entries| {
            shared.len() == entries.len()
                && shared
                    .iter()
                    .zip(&entries)
                    .all(|((k, v), (key, value))| **k == *key.0 && **v == *value.0)
        };
        let shared = LAST_READ.with(|last| {
            let mut last = last.borrow_mut();
            match last.as_ref() {
                Some(shared) if same(shared) => shared.clone(),
                _ => {
                    let fresh: Entries = entries
                        .iter()
                        .map(|(k, v)| (Box::from(&*k.0), Box::from(&*v.0)))
                        .collect();
                    *last = Some(fresh.clone());
                    fresh
                }
            }
        });
        Ok(TopicConfig(Some(shared)))
    }
}

/// A string read borrowed from the input where it can be (no escapes in it), owned otherwise.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several keys, given out of order and one twice: the same JSON object and the same
    /// postcard bytes as the map it replaces, and back.
    #[test]
    fn reads_and_writes_as_the_map_it_replaces() {
        let json = r#"{"retention.ms":"5","cleanup.policy":"compact","min.insync.replicas":"2","retention.ms":"7"}"#;
        let map: BTreeMap<String, String> = serde_json::from_str(json).expect("map");
        let config: TopicConfig = serde_json::from_str(json).expect("config");
        assert_eq!(
            serde_json::to_string(&config).expect("json"),
            serde_json::to_string(&map).expect("json")
        );
        assert_eq!(
            serde_json::to_string(&config).expect("json"),
            r#"{"cleanup.policy":"compact","min.insync.replicas":"2","retention.ms":"7"}"#
        );
        assert_eq!(
            postcard::to_stdvec(&config).expect("postcard"),
            postcard::to_stdvec(&map).expect("postcard")
        );
        let bytes = postcard::to_stdvec(&config).expect("postcard");
        assert_eq!(
            postcard::from_bytes::<TopicConfig>(&bytes).expect("back"),
            config
        );
        assert_eq!(config, TopicConfig::from(map));
        assert_eq!(config.len(), 3);
        assert_eq!(config.get("retention.ms"), Some("7"));
        assert_eq!(&config["cleanup.policy"], "compact");
        assert_eq!(config.get("segment.ms"), None);

        // Read twice in a row: the second shares the entries of the first.
        let again: TopicConfig = serde_json::from_str(json).expect("config");
        assert_eq!(again, config);
        let escaped: TopicConfig =
            serde_json::from_str(r#"{"a\"b":"\u00e9","a":"1"}"#).expect("escaped");
        assert_eq!(escaped.get("a\"b"), Some("é"));
        assert_eq!(
            escaped.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "a\"b"]
        );

        let empty: TopicConfig = serde_json::from_str("{}").expect("empty");
        assert!(empty.is_empty());
        assert_eq!(empty, TopicConfig::default());
        assert_eq!(serde_json::to_string(&empty).expect("json"), "{}");
    }

    #[test]
    fn a_clone_shares_the_entries() {
        let config: TopicConfig = [("retention.ms", "5")].into_iter().collect();
        let copy = config.clone();
        let (Some(a), Some(b)) = (&config.0, &copy.0) else {
            panic!("entries");
        };
        assert!(Arc::ptr_eq(a, b));
    }
}
