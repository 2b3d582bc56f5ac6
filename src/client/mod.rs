//! Command-line clients of a running KafFlow, over its public API.
//!
//! - `produce`: stream stdin lines as records through the TCP ingest listener.
//! - `consume`: subscribe to topics and print their records from the websocket feed as NDJSON.
//! - `token`: issue, list and revoke bearer tokens (admin).
//! - `ops`: every other action of the API: topics, requests, access, grants, held, audit, drift.

pub mod consume;
pub mod ops;
pub mod produce;
pub mod token;
