//! The idempotent producers whose batches for a topic went to the spool, and the sequence
//! numbers of their last batches there.
//!
//! A producer that once wrote a topic through the spool keeps doing so for that topic, so its
//! order holds. And a retried batch (its answer was lost, or came too late) must not be held
//! twice: as a broker does, a batch whose producer epoch and first and last sequence numbers
//! are those of one of the last five taken for its partition is a duplicate, answered as a
//! success and not held again. Only exact matches count, so a sequence that wraps around is
//! never taken for a duplicate. Kept in memory: after a restart a retry can be held again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

/// How many batches per partition a broker remembers for duplicate detection.
const REMEMBERED: usize = 5;

/// The idempotence fields of the batches sent for one partition in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first: i32,
    pub last: i32,
}

impl Batch {
    /// The producer id, epoch and sequence range of `records`, if an idempotent producer
    /// wrote them (a non-idempotent one sends producer id and sequence −1).
    pub(crate) fn of(records: &Bytes) -> Option<Batch> {
        let infos = RecordBatchDecoder::decode_batch_info(&mut records.clone()).ok()?;
        let (first, last) = (infos.first()?, infos.last()?);
        if first.producer_id < 0 || first.base_sequence < 0 || last.record_count < 1 {
            return None;
        }
        Some(Batch {
            producer_id: first.producer_id,
            epoch: first.producer_epoch,
            first: first.base_sequence,
            last: last
                .base_sequence
                .wrapping_add(last.record_count.saturating_sub(1)),
        })
    }
}

/// Whether a batch is new (and now remembered) or one already held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    New,
    Duplicate,
}

/// (producer id, topic) → partition → its last batches taken, oldest first.
type Taken = HashMap<(i64, String), HashMap<i32, VecDeque<Batch>>>;

#[derive(Default)]
pub(crate) struct HeldProducers {
    producers: Mutex<Taken>,
}

impl HeldProducers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        match self.producers.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `producer_id` has written `topic` through the spool.
    pub(crate) fn contains(&self, producer_id: i64, topic: &str) -> bool {
        producer_id >= 0 && self.lock().contains_key(&(producer_id, topic.to_string()))
    }

    /// Notes that `producer_id` writes `topic` through the spool from now on.
    pub(crate) fn mark(&self, producer_id: i64, topic: &str) {
        if producer_id >= 0 {
            self.lock()
                .entry((producer_id, topic.to_string()))
                .or_default();
        }
    }

    /// Remembers `batch` for `partition` of `topic`, or says it is one already taken.
    pub(crate) fn claim(&self, topic: &str, partition: i32, batch: Batch) -> Claim {
        let mut producers = self.lock();
        let last = producers
            .entry((batch.producer_id, topic.to_string()))
            .or_default()
            .entry(partition)
            .or_default();
        if last.contains(&batch) {
            return Claim::Duplicate;
        }
        if last.len() == REMEMBERED {
            last.pop_front();
        }
        last.push_back(batch);
        Claim::New
    }

    /// Forgets a claimed batch that was not held after all (the spool refused it), so that
    /// its retry is taken.
    pub(crate) fn release(&self, topic: &str, partition: i32, batch: Batch) {
        let mut producers = self.lock();
        if let Some(last) = producers
            .get_mut(&(batch.producer_id, topic.to_string()))
            .and_then(|p| p.get_mut(&partition))
        {
            last.retain(|b| *b != batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: i32, last: i32) -> Batch {
        Batch {
            producer_id: 7,
            epoch: 0,
            first,
            last,
        }
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_and_a_new_one_is_not() {
        let held = HeldProducers::default();
        assert!(!held.contains(7, "t"));
        assert_eq!(held.claim("t", 0, batch(0, 4)), Claim::New);
        assert!(held.contains(7, "t"));
        assert_eq!(held.claim("t", 0, batch(0, 4)), Claim::Duplicate);
        assert_eq!(
            held.claim("t", 1, batch(0, 4)),
            Claim::New,
            "another partition"
        );
        assert_eq!(held.claim("u", 0, batch(0, 4)), Claim::New, "another topic");
        let bumped = Batch {
            epoch: 1,
            ..batch(0, 4)
        };
        assert_eq!(held.claim("t", 0, bumped), Claim::New, "another epoch");
        assert_eq!(held.claim("t", 0, batch(5, 9)), Claim::New);
    }

    #[test]
    fn only_the_last_five_are_remembered_and_a_wrapped_sequence_is_new() {
        let held = HeldProducers::default();
        for n in 0..6 {
            assert_eq!(held.claim("t", 0, batch(n * 10, n * 10 + 9)), Claim::New);
        }
        assert_eq!(held.claim("t", 0, batch(0, 9)), Claim::New, "forgotten");
        assert_eq!(held.claim("t", 0, batch(50, 59)), Claim::Duplicate);
        // After i32::MAX the sequence starts again at 0: a range never seen is new.
        assert_eq!(held.claim("t", 0, batch(0, 3)), Claim::New);
    }

    #[test]
    fn a_released_claim_is_taken_again() {
        let held = HeldProducers::default();
        assert_eq!(held.claim("t", 0, batch(0, 4)), Claim::New);
        held.release("t", 0, batch(0, 4));
        assert_eq!(held.claim("t", 0, batch(0, 4)), Claim::New);
    }
}
