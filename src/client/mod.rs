//! Command-line clients of a running KafFlow, over its public API.
//!
//! - `consume`: subscribe to topics and print their records from the websocket feed as NDJSON.

pub mod consume;
