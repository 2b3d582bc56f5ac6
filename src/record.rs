//! A producer's record: what ingest takes in, the spool keeps and the publisher sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A record ready for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    /// Bytes the record takes in the spool's accounting.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.value.len() + self.key.as_ref().map_or(0, String::len) + headers) as u64
    }

    /// Refuses a record past the configured size or header count.
    pub fn check(&self, limits: RecordLimits) -> Result<()> {
        let size = self.size();
        if size > limits.max_bytes as u64 {
            return Err(Error::InvalidRecord(format!(
                "record is {size} bytes (key, value and headers), more than the limit of {}",
                limits.max_bytes
            )));
        }
        if self.headers.len() > limits.max_headers {
            return Err(Error::InvalidRecord(format!(
                "record has {} headers, more than the limit of {}",
                self.headers.len(),
                limits.max_headers
            )));
        }
        Ok(())
    }
}

/// What one record may hold (`[limits]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

impl From<&crate::config::Limits> for RecordLimits {
    fn from(limits: &crate::config::Limits) -> Self {
        RecordLimits {
            max_bytes: limits.max_record_bytes,
            max_headers: limits.max_headers_per_record,
        }
    }
}

/// A record as producers write it in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    /// Only the TCP listener's lines carry the topic; HTTP takes it from the path.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    pub value: serde_json::Value,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl RecordIn {
    /// A JSON string is sent as its text; any other JSON value as its JSON encoding.
    pub fn into_record(self, limits: RecordLimits) -> Result<Record> {
        let value = match self.value {
            serde_json::Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let record = Record {
            key: self.key,
            value,
            headers: self.headers,
        };
        record.check(limits)?;
        Ok(record)
    }
}

/// How a record is shown back (held-record listings and exports).
#[derive(Debug, Clone, Serialize)]
pub struct RecordOut {
    pub key: Option<String>,
    pub value: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

impl From<&Record> for RecordOut {
    fn from(record: &Record) -> Self {
        RecordOut {
            key: record.key.clone(),
            value: value_json(&record.value),
            headers: record.headers.clone(),
        }
    }
}

/// A value as JSON when it parses as JSON, else as a string.
pub fn value_json(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: usize) -> RecordLimits {
        RecordLimits {
            max_bytes,
            max_headers: 2,
        }
    }

    #[test]
    fn headers_past_the_limit_are_refused() {
        let two: RecordIn =
            serde_json::from_str(r#"{"value":"v","headers":{"a":"1","b":"2"}}"#).expect("parse");
        assert!(two.into_record(limits(100)).is_ok());
        let three: RecordIn =
            serde_json::from_str(r#"{"value":"v","headers":{"a":"1","b":"2","c":"3"}}"#)
                .expect("parse");
        assert!(matches!(
            three.into_record(limits(100)),
            Err(Error::InvalidRecord(m)) if m.contains("3 headers")
        ));
    }

    #[test]
    fn strings_go_as_text_and_other_values_as_json() {
        let text: RecordIn = serde_json::from_str(r#"{"value":"hello"}"#).expect("parse");
        assert_eq!(text.into_record(limits(100)).expect("ok").value, b"hello");
        let object: RecordIn =
            serde_json::from_str(r#"{"key":"k","value":{"a":1}}"#).expect("parse");
        let record = object.into_record(limits(100)).expect("ok");
        assert_eq!(record.value, br#"{"a":1}"#);
        assert_eq!(RecordOut::from(&record).value, serde_json::json!({"a": 1}));
        let big: RecordIn = serde_json::from_str(r#"{"value":"0123456789"}"#).expect("parse");
        assert!(matches!(
            big.into_record(limits(5)),
            Err(Error::InvalidRecord(_))
        ));
        let keyed: RecordIn = serde_json::from_str(r#"{"key":"kkkk","value":"v"}"#).expect("parse");
        assert!(matches!(
            keyed.into_record(limits(4)),
            Err(Error::InvalidRecord(_))
        ));
        assert!(serde_json::from_str::<RecordIn>(r#"{"value":1,"extra":2}"#).is_err());
    }
}

/// Generators of hostile input for the property tests of every parser that reads records.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Any JSON value, a few levels deep, with the field names records use turning up often.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "topic|key|value|headers|[a-z]{0,4}|.{0,3}",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Something shaped like a record, with every field of any type.
    pub(crate) fn record_like() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
        )
            .prop_map(|(topic, key, value, headers)| {
                let mut record = serde_json::Map::new();
                for (name, field) in [
                    ("topic", topic),
                    ("key", key),
                    ("value", value),
                    ("headers", headers),
                ] {
                    if let Some(field) = field {
                        record.insert(name.to_string(), field);
                    }
                }
                Value::Object(record)
            })
    }

    /// JSON text damaged the ways a network or a careless client damages it: cut short, a byte
    /// changed, a byte inserted.
    pub(crate) fn damaged(text: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = text.len();
        prop_oneof![
            Just(text.clone()),
            (0..=len).prop_map({
                let text = text.clone();
                move |at| text[..at].to_vec()
            }),
            (0..len.max(1), any::<u8>()).prop_map({
                let text = text.clone();
                move |(at, byte)| {
                    let mut text = text.clone();
                    if let Some(b) = text.get_mut(at) {
                        *b = byte;
                    }
                    text
                }
            }),
            (0..=len, any::<u8>()).prop_map(move |(at, byte)| {
                let mut text = text.clone();
                text.insert(at, byte);
                text
            }),
        ]
    }

    /// Bytes of JSON nested `depth` times in arrays or objects, optionally left unclosed.
    pub(crate) fn deep_nesting() -> impl Strategy<Value = Vec<u8>> {
        (1usize..20_000, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, closed)| {
            let (open, close): (&[u8], &[u8]) = if arrays {
                (b"[", b"]")
            } else {
                (b"{\"a\":", b"}")
            };
            let mut text = open.repeat(depth);
            text.extend_from_slice(b"1");
            if closed {
                text.extend_from_slice(&close.repeat(depth));
            }
            text
        })
    }
}
