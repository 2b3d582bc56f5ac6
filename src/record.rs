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
    pub fn into_record(self, max_bytes: usize) -> Result<Record> {
        let value = match self.value {
            serde_json::Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let record = Record {
            key: self.key,
            value,
            headers: self.headers,
        };
        let size = record.size();
        if size > max_bytes as u64 {
            return Err(Error::InvalidRecord(format!(
                "record is {size} bytes (key, value and headers), more than the limit of {max_bytes}"
            )));
        }
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

    #[test]
    fn strings_go_as_text_and_other_values_as_json() {
        let text: RecordIn = serde_json::from_str(r#"{"value":"hello"}"#).expect("parse");
        assert_eq!(text.into_record(100).expect("ok").value, b"hello");
        let object: RecordIn =
            serde_json::from_str(r#"{"key":"k","value":{"a":1}}"#).expect("parse");
        let record = object.into_record(100).expect("ok");
        assert_eq!(record.value, br#"{"a":1}"#);
        assert_eq!(RecordOut::from(&record).value, serde_json::json!({"a": 1}));
        let big: RecordIn = serde_json::from_str(r#"{"value":"0123456789"}"#).expect("parse");
        assert!(matches!(big.into_record(5), Err(Error::InvalidRecord(_))));
        let keyed: RecordIn = serde_json::from_str(r#"{"key":"kkkk","value":"v"}"#).expect("parse");
        assert!(matches!(keyed.into_record(4), Err(Error::InvalidRecord(_))));
        assert!(serde_json::from_str::<RecordIn>(r#"{"value":1,"extra":2}"#).is_err());
    }
}
