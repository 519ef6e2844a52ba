//! The deadline index: when each trace must be looked at next.
//!
//! Deadlines are bucketed into ticks and kept in a few mutex-guarded ordered maps (sharded by
//! trace id), so that finding the due traces costs the number of due traces, never a scan of
//! all of them. Entries are lazy: a trace's deadline moves later with every span but its index
//! entry does not move; when the entry comes due the buffer checks the trace's real deadline and
//! schedules it again if needed. A trace's deadline that moves *earlier* (its root arrived) gets
//! a new entry; the old one is recognised as stale and skipped.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::otlp::TraceId;

const SHARDS: usize = 16;
/// Emptied bucket lists a shard keeps for its next buckets: about one bucket per shard comes
/// due per tick while about one new one is started.
const SPARES: usize = 4;
/// The largest emptied list kept (64 KiB): a burst's bucket is not kept as a spare.
const SPARE_MAX_IDS: usize = 4096;

/// One shard: buckets in order, and emptied bucket lists to reuse (a list grown anew for
/// every bucket was several allocations per tick and shard, freed by another thread).
#[derive(Default)]
struct Shard {
    buckets: BTreeMap<u64, Vec<TraceId>>,
    spares: Vec<Vec<TraceId>>,
}

/// Trace ids by the tick bucket they are next due in (see the module doc).
pub struct DeadlineIndex {
    shards: Vec<Mutex<Shard>>,
    tick_ms: u64,
}

impl DeadlineIndex {
    /// An empty index of buckets `tick` long (at least 1 ms): deadlines are honoured up to
    /// one tick late.
    pub fn new(tick: Duration) -> Self {
        DeadlineIndex {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            tick_ms: (tick.as_millis() as u64).max(1),
        }
    }

    /// The bucket a deadline (in ms since the buffer's origin) falls in: rounded up, so that a
    /// bucket is due only once all its deadlines have passed.
    pub fn bucket(&self, deadline_ms: u64) -> u64 {
        deadline_ms.div_ceil(self.tick_ms)
    }

    /// The last bucket that is due at `now_ms`.
    pub fn due_bucket(&self, now_ms: u64) -> u64 {
        now_ms / self.tick_ms
    }

    fn shard(&self, id: &TraceId) -> &Mutex<Shard> {
        &self.shards[id.0[15] as usize % SHARDS]
    }

    /// Adds an entry for `id` in `bucket`. An earlier entry of the trace is not removed: the
    /// caller recognises it as stale when it comes due.
    pub fn schedule(&self, id: TraceId, bucket: u64) {
        let mut shard = self.shard(&id).lock().unwrap_or_else(|e| e.into_inner());
        let Shard { buckets, spares } = &mut *shard;
        buckets
            .entry(bucket)
            .or_insert_with(|| spares.pop().unwrap_or_default())
            .push(id);
    }

    /// Removes and returns every entry due at `now_ms`, as (bucket, trace id).
    pub fn pop_due(&self, now_ms: u64, out: &mut Vec<(u64, TraceId)>) {
        let due = self.due_bucket(now_ms);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let Shard { buckets, spares } = &mut *shard;
            while let Some(entry) = buckets.first_entry() {
                if *entry.key() > due {
                    break;
                }
                let bucket = *entry.key();
                let mut ids = entry.remove();
                out.extend(ids.drain(..).map(|id| (bucket, id)));
                if spares.len() < SPARES && ids.capacity() <= SPARE_MAX_IDS {
                    spares.push(ids);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TraceId {
        let mut b = [0u8; 16];
        b[0] = n;
        TraceId(b) // byte 15 is 0: every id in shard 0
    }

    #[test]
    fn due_buckets_come_out_in_order_and_their_lists_are_reused() {
        let index = DeadlineIndex::new(Duration::from_millis(10));
        assert_eq!(index.bucket(15), 2, "rounded up");
        index.schedule(id(1), 1);
        index.schedule(id(2), 2);
        index.schedule(id(3), 2);
        index.schedule(id(4), 3);
        let mut out = Vec::new();
        index.pop_due(25, &mut out);
        assert_eq!(out, vec![(1, id(1)), (2, id(2)), (2, id(3))]);
        let spares = |index: &DeadlineIndex| index.shards[0].lock().unwrap().spares.len();
        assert_eq!(spares(&index), 2, "both emptied lists kept");
        index.schedule(id(5), 4);
        assert_eq!(spares(&index), 1, "a new bucket takes a spare");
        out.clear();
        index.pop_due(25, &mut out);
        assert!(out.is_empty(), "nothing more due yet");
        index.pop_due(40, &mut out);
        assert_eq!(out, vec![(3, id(4)), (4, id(5))]);

        // A burst's list is not kept; the number kept is bounded.
        for n in 0..SPARE_MAX_IDS + 1 {
            index.schedule(id((n % 200) as u8), 10);
        }
        for b in 11..20 {
            index.schedule(id(9), b);
        }
        out.clear();
        index.pop_due(1000, &mut out);
        assert_eq!(out.len(), SPARE_MAX_IDS + 1 + 9);
        assert_eq!(spares(&index), SPARES);
        let kept = index.shards[0].lock().unwrap();
        assert!(kept
            .spares
            .iter()
            .all(|s| s.is_empty() && s.capacity() <= SPARE_MAX_IDS));
    }
}
