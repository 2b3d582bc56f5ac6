//! Command-line clients of a running KafFlow, over its public API.
//!
//! - `produce`: stream stdin lines as records through the TCP ingest listener.
//! - `consume`: subscribe to topics and print their records from the websocket feed as NDJSON.
//! - `token`: issue, list and revoke bearer tokens (admin).

pub mod consume;
pub mod produce;
pub mod token;
