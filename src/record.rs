//! A producer's record: what ingest takes in, the spool keeps and the publisher sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A record ready for Kafka: exactly what a Kafka client sent, or what a JSON record means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Any bytes; a Kafka client's key need not be UTF-8.
    pub key: Option<Vec<u8>>,
    /// `None` is Kafka's null value: a tombstone for a compacted topic.
    pub value: Option<Vec<u8>>,
    /// In the order sent; a name may repeat, and a value may be any bytes or null.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The partition the client chose; `None` leaves it to Kafka's partitioner.
    pub partition: Option<i32>,
    /// The client's CreateTime in milliseconds; `None` takes the time it is published.
    pub timestamp: Option<i64>,
}

impl Record {
    /// Bytes the record takes in the spool's accounting: key, value and headers.
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let key = self.key.as_ref().map_or(0, Vec::len);
        let value = self.value.as_ref().map_or(0, Vec::len);
        (key + value + headers) as u64
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

/// The header that says how a value's bytes read, named as the CloudEvents Kafka binding names
/// it. KafFlow reads it when it shows a value, and sets it on one kind of record (`mark_text`).
pub const CONTENT_TYPE: &str = "content-type";

/// The `content-type` of a value that a producer sent as a JSON string.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Marks a value sent as a JSON string as text when its text would also read as JSON (`"1"`,
/// `"true"`, `"{}"`): Kafka gets the text either way, and without the mark the feeds and
/// `/held`, which show JSON as JSON, would turn the string `"1"` into the number 1. Other
/// strings need no mark (they do not parse as JSON), so most records carry no extra header. A
/// producer's own `content-type` header wins.
pub fn mark_text(record: &mut Record) {
    let reads_as_json = record.value.as_deref().is_some_and(reads_as_json);
    let declared = record
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(CONTENT_TYPE));
    if reads_as_json && !declared {
        record.headers.push((
            CONTENT_TYPE.to_string(),
            Some(TEXT_PLAIN.as_bytes().to_vec()),
        ));
    }
}

/// Whether `value` is one JSON value. Runs for every text record, and most text is not JSON:
/// what its first byte (or, after a digit, a byte no number has) rules out is not parsed, since
/// a failed parse costs an allocated error.
fn reads_as_json(value: &[u8]) -> bool {
    // A superset of JSON's whitespace: the parse below has the last word.
    let trimmed = value.trim_ascii();
    let may_be = match trimmed.first() {
        Some(b'{' | b'[' | b'"') => true,
        Some(b't') => trimmed == b"true",
        Some(b'f') => trimmed == b"false",
        Some(b'n') => trimmed == b"null",
        Some(b'-' | b'0'..=b'9') => trimmed
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')),
        _ => false,
    };
    may_be && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok()
}

/// Whether a record's headers declare its value text (a `content-type` of `text/...`; of a
/// repeated name, the last): such a value is shown as a string even when it parses as JSON.
pub fn declared_text<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> bool {
    headers
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(CONTENT_TYPE))
        .last()
        .and_then(|(_, value)| value)
        .is_some_and(|v| v.len() >= 5 && v[..5].eq_ignore_ascii_case(b"text/"))
}

/// A record as producers write it in JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
    /// A JSON string is sent as its text (marked as text when it would read as JSON); any
    /// other JSON value as its JSON encoding.
    pub fn into_record(self, limits: RecordLimits) -> Result<Record> {
        let (value, text) = match self.value {
            serde_json::Value::String(s) => (s.into_bytes(), true),
            other => (other.to_string().into_bytes(), false),
        };
        let mut record = Record {
            key: self.key.map(String::into_bytes),
            value: Some(value),
            headers: json_headers(self.headers),
            partition: None,
            timestamp: None,
        };
        // The limits apply to what the producer sent; the mark is KafFlow's own.
        record.check(limits)?;
        if text {
            mark_text(&mut record);
        }
        Ok(record)
    }
}

/// JSON headers (an object of strings) as a record carries them, in name order.
pub fn json_headers(headers: BTreeMap<String, String>) -> Vec<(String, Option<Vec<u8>>)> {
    headers
        .into_iter()
        .map(|(name, value)| (name, Some(value.into_bytes())))
        .collect()
}

/// How a record is shown back (held-record listings and exports).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordOut {
    pub key: Option<String>,
    pub value: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

impl From<&Record> for RecordOut {
    /// For display, the JSON shape of the API: bytes that are not UTF-8 show lossily, a null
    /// value as `null`, a null header value as `""`, and of a repeated header name the last.
    fn from(record: &Record) -> Self {
        let text = declared_text(
            record
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref())),
        );
        RecordOut {
            key: record.key.as_deref().map(lossy),
            value: match record.value.as_deref() {
                None => serde_json::Value::Null,
                Some(value) if text => serde_json::Value::String(lossy(value)),
                Some(value) => value_json(value),
            },
            headers: headers_out(&record.headers),
        }
    }
}

/// Headers as the JSON shape shows them (see `RecordOut`).
pub fn headers_out(headers: &[(String, Option<Vec<u8>>)]) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                value.as_deref().map(lossy).unwrap_or_default(),
            )
        })
        .collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A value as JSON when it parses as JSON, else as a string (see `declared_text` for the
/// values that are always strings).
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
        assert_eq!(
            text.into_record(limits(100)).expect("ok").value.as_deref(),
            Some(&b"hello"[..])
        );
        let object: RecordIn =
            serde_json::from_str(r#"{"key":"k","value":{"a":1}}"#).expect("parse");
        let record = object.into_record(limits(100)).expect("ok");
        assert_eq!(record.value.as_deref(), Some(&br#"{"a":1}"#[..]));
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

    #[test]
    fn a_string_that_reads_as_json_is_marked_text_and_shown_as_a_string() {
        let one: RecordIn = serde_json::from_str(r#"{"value":"1"}"#).expect("parse");
        let record = one.into_record(limits(100)).expect("ok");
        assert_eq!(
            record.value.as_deref(),
            Some(&b"1"[..]),
            "Kafka gets the text"
        );
        assert_eq!(
            record.headers,
            vec![(
                CONTENT_TYPE.to_string(),
                Some(TEXT_PLAIN.as_bytes().to_vec())
            )]
        );
        assert_eq!(RecordOut::from(&record).value, serde_json::json!("1"));
        // A number stays a number; plain text needs no mark.
        let number: RecordIn = serde_json::from_str(r#"{"value":1}"#).expect("parse");
        let record = number.into_record(limits(100)).expect("ok");
        assert!(record.headers.is_empty());
        assert_eq!(RecordOut::from(&record).value, serde_json::json!(1));
        let plain: RecordIn = serde_json::from_str(r#"{"value":"hello"}"#).expect("parse");
        assert!(plain
            .into_record(limits(100))
            .expect("ok")
            .headers
            .is_empty());
        // The producer's own content-type is kept, and read.
        let own: RecordIn = serde_json::from_str(
            r#"{"value":"{\"a\":1}","headers":{"Content-Type":"application/json"}}"#,
        )
        .expect("parse");
        let record = own.into_record(limits(100)).expect("ok");
        assert_eq!(record.headers.len(), 1);
        assert_eq!(RecordOut::from(&record).value, serde_json::json!({"a": 1}));
    }

    proptest::proptest! {
        /// The quick test says what the parser says: text made of JSON's own bytes, and any
        /// bytes at all.
        #[test]
        fn the_quick_json_test_agrees_with_the_parser(
            text in "[ \t\r\n\x0c]{0,2}[-+.eE0-9tfrunlsa\"{}\\[\\]:,x ]{0,12}[ \t\n]{0,2}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
        ) {
            for value in [text.as_bytes(), &bytes[..]] {
                let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
                proptest::prop_assert_eq!(reads_as_json(value), parsed, "{:?}", value);
            }
        }
    }

    #[test]
    fn a_kafka_record_shows_in_json_lossily_and_counts_every_byte() {
        let record = Record {
            key: Some(vec![0xff, b'k']),
            value: None,
            headers: vec![
                ("h".into(), Some(b"1".to_vec())),
                ("h".into(), Some(vec![0xfe])),
                ("n".into(), None),
            ],
            partition: Some(3),
            timestamp: Some(1_700_000_000_000),
        };
        assert_eq!(record.size(), 2 + 1 + 1 + 1 + 1 + 1);
        let out = RecordOut::from(&record);
        assert_eq!(out.key.as_deref(), Some("\u{fffd}k"));
        assert_eq!(out.value, serde_json::Value::Null);
        assert_eq!(out.headers["h"], "\u{fffd}", "the last of a repeated name");
        assert_eq!(out.headers["n"], "");
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
