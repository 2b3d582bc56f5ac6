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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through the map it replaces: the same order, and the same answer to repeated keys.
        BTreeMap::<String, String>::deserialize(deserializer).map(TopicConfig::from)
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
