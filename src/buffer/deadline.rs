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

/// Trace ids by the tick bucket they are next due in (see the module doc).
pub struct DeadlineIndex {
    shards: Vec<Mutex<BTreeMap<u64, Vec<TraceId>>>>,
    tick_ms: u64,
}

impl DeadlineIndex {
    /// An empty index of buckets `tick` long (at least 1 ms): deadlines are honoured up to
    /// one tick late.
    pub fn new(tick: Duration) -> Self {
        DeadlineIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeMap::new())).collect(),
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

    fn shard(&self, id: &TraceId) -> &Mutex<BTreeMap<u64, Vec<TraceId>>> {
        &self.shards[id.0[15] as usize % SHARDS]
    }

    /// Adds an entry for `id` in `bucket`. An earlier entry of the trace is not removed: the
    /// caller recognises it as stale when it comes due.
    pub fn schedule(&self, id: TraceId, bucket: u64) {
        let mut shard = self.shard(&id).lock().unwrap_or_else(|e| e.into_inner());
        shard.entry(bucket).or_default().push(id);
    }

    /// Removes and returns every entry due at `now_ms`, as (bucket, trace id).
    pub fn pop_due(&self, now_ms: u64, out: &mut Vec<(u64, TraceId)>) {
        let due = self.due_bucket(now_ms);
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(entry) = shard.first_entry() {
                if *entry.key() > due {
                    break;
                }
                let bucket = *entry.key();
                out.extend(entry.remove().into_iter().map(|id| (bucket, id)));
            }
        }
    }
}
