//! Snapshots: the state rebuilt from the log, saved with the head of the chain it reflects, so
//! that a start replays only the events after it.
//!
//! A snapshot is a cache of the log, never a source of truth. At start it is used only if the
//! event at its seq is in the log with its hash (and that event's content still hashes to it);
//! anything else (another log, a tampered or truncated file, an older format) is ignored with a
//! warning and the whole log is replayed. The events after it are checked against the chain as
//! any replay does, starting from the snapshot's hash.
//!
//! The file (`kafflow.snapshot` in the data dir, replaced atomically by rename):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `KAFSNAP\0` |
//! | 4 | format version, little-endian (`SNAPSHOT_VERSION`) |
//! | 8 | seq of the last event it reflects |
//! | 32 | that event's hash |
//! | 8 | length of the state |
//! | 32 | SHA-256 of every byte above (after the magic) and the state |
//! | n | the state, postcard-encoded |

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::event::NewEvent;
use super::store::ChainHead;

/// The layout of the file and of every state type in it. postcard is not self-describing: a
/// changed state type decodes as garbage or not at all, so any change to a type reachable from
/// the snapshotted state must bump this (the `layout_is_pinned` test fails until it is).
pub const SNAPSHOT_VERSION: u32 = 5;

const MAGIC: &[u8; 8] = b"KAFSNAP\0";
const HEADER: usize = 8 + 4 + 8 + 32 + 8 + 32;
pub(crate) const FILE: &str = "kafflow.snapshot";
const TMP_FILE: &str = "kafflow.snapshot.tmp";

/// State that the log rebuilds and a snapshot can hold: replay and the snapshot writer both
/// rebuild it with `apply`, event by event.
pub trait Snapshotted: Default + Serialize + DeserializeOwned + Send + 'static {
    /// By value: a replay hands each event over once, so the state keeps its strings.
    fn apply(&mut self, event: NewEvent);
}

/// Why a snapshot was not used or not written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read or write the snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a snapshot file")]
    Magic,
    #[error("snapshot format {found}; this version reads format {SNAPSHOT_VERSION}")]
    Version { found: u32 },
    #[error("the snapshot is truncated")]
    Truncated,
    #[error("the snapshot's checksum does not match its content")]
    Checksum,
    #[error("cannot decode the snapshot's state: {0}")]
    Decode(postcard::Error),
    #[error("cannot encode the state: {0}")]
    Encode(postcard::Error),
    #[error("the snapshot reflects seq {seq}, but the log ends at seq {last}")]
    Ahead { seq: u64, last: u64 },
    #[error("the snapshot's hash at seq {seq} is not the log's")]
    Mismatch { seq: u64 },
    #[error("the chain head's hash is not 32 bytes of hex")]
    BadHash,
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

/// The file's bytes for `state` at `head`.
pub(crate) fn encode<S: Serialize>(head: &ChainHead, state: &S) -> Result<Vec<u8>, SnapshotError> {
    let hash = hash_bytes(&head.hash)?;
    let body = postcard::to_stdvec(state).map_err(SnapshotError::Encode)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&head.seq.to_le_bytes());
    bytes.extend_from_slice(&hash);
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = checksum(&bytes[MAGIC.len()..], &body);
    bytes.extend_from_slice(&sum);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The head and state in a file's bytes, checked for format, length and checksum.
pub(crate) fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<(ChainHead, S), SnapshotError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    if bytes.len() < HEADER {
        return Err(SnapshotError::Truncated);
    }
    let field = |at: usize, len: usize| &bytes[at..at + len];
    let version = u32::from_le_bytes(
        field(8, 4)
            .try_into()
            .map_err(|_| SnapshotError::Truncated)?,
    );
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let seq = u64::from_le_bytes(
        field(12, 8)
            .try_into()
            .map_err(|_| SnapshotError::Truncated)?,
    );
    let hash = hex::encode(field(20, 32));
    let len = u64::from_le_bytes(
        field(52, 8)
            .try_into()
            .map_err(|_| SnapshotError::Truncated)?,
    );
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(SnapshotError::Truncated);
    }
    // The checksum is taken on a thread of its own while the state decodes (a start waits for
    // both, and the other core is idle then); a state whose bytes do not match it is dropped
    // unused. Decoding bytes that fail the checksum is safe: postcard refuses what does not
    // decode, and nothing decoded is used before the checksum has passed.
    let (sum, state) = std::thread::scope(|scope| {
        let sum = scope.spawn(|| checksum(&bytes[MAGIC.len()..60], body));
        let state = postcard::from_bytes::<S>(body);
        (sum.join(), state)
    });
    match sum {
        Ok(sum) if sum == field(60, 32) => {}
        _ => return Err(SnapshotError::Checksum),
    }
    let state = state.map_err(SnapshotError::Decode)?;
    Ok((ChainHead { seq, hash }, state))
}

fn checksum(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(header);
    sha.update(body);
    sha.finalize().into()
}

fn hash_bytes(hash: &str) -> Result<[u8; 32], SnapshotError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).map_err(|_| SnapshotError::BadHash)?;
    Ok(out)
}

/// The snapshot in `data_dir`, if there is one, decoded but not yet checked against the log.
pub(crate) fn read<S: DeserializeOwned>(
    data_dir: &Path,
) -> Result<Option<(ChainHead, S)>, SnapshotError> {
    let path = data_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    decode(&bytes).map(Some)
}

/// Replaces the snapshot in `data_dir` with `bytes`: written aside, synced, then renamed over
/// the old one, so a crash leaves either the old snapshot or the new one, never a mix.
pub(crate) fn write(data_dir: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let tmp = data_dir.join(TMP_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    let path = data_dir.join(FILE);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename itself is durable only once the directory is.
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn head() -> ChainHead {
        ChainHead {
            seq: 42,
            hash: "ab".repeat(32),
        }
    }

    fn state() -> BTreeMap<(String, u32), Option<String>> {
        BTreeMap::from([
            (("a".to_string(), 1), Some("x".to_string())),
            (("b".to_string(), 2), None),
        ])
    }

    #[test]
    fn encodes_and_decodes() {
        let bytes = encode(&head(), &state()).expect("encode");
        let (at, back): (ChainHead, BTreeMap<(String, u32), Option<String>>) =
            decode(&bytes).expect("decode");
        assert_eq!(at, head());
        assert_eq!(back, state());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let bytes = encode(&head(), &state()).expect("encode");
        type S = BTreeMap<(String, u32), Option<String>>;
        // Truncated anywhere: the header is short, or the state is.
        for len in [0, 4, 20, HEADER - 1, HEADER, bytes.len() - 1] {
            assert!(
                decode::<S>(&bytes[..len]).is_err(),
                "a file cut at {len} bytes must be refused"
            );
        }
        // Any byte flipped after the magic: the checksum or the version says so.
        for at in [8, 12, 20, 40, 52, 60, HEADER, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(decode::<S>(&bad).is_err(), "a flipped byte at {at}");
        }
        let mut other = bytes.clone();
        other[8..12].copy_from_slice(&(SNAPSHOT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode::<S>(&other),
            Err(SnapshotError::Version { .. })
        ));
        assert!(matches!(
            decode::<S>(b"not a snapshot at all, just text"),
            Err(SnapshotError::Magic)
        ));
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read::<Vec<u8>>(dir.path()).expect("no file").is_none());
        write(
            dir.path(),
            &encode(&head(), &vec![1u8, 2, 3]).expect("encode"),
        )
        .expect("write");
        let (at, state) = read::<Vec<u8>>(dir.path())
            .expect("read")
            .expect("a snapshot");
        assert_eq!((at, state), (head(), vec![1, 2, 3]));
        assert!(!dir.path().join(TMP_FILE).exists());
    }
}
