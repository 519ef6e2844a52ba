//! The decision cache: recent decisions by trace id, for the late spans that follow them.
//!
//! Sharded by trace id. Each shard is a hash map (trace id → decision and the time it was
//! made) and a ring of trace ids in decision order. The ring's front is the oldest decision,
//! so both bounds are kept by popping it: the size bound when the shard is full, the ttl when
//! the front is older than the ttl. Decisions are remembered first in, first out, which suits
//! late spans: they arrive soon after their trace's decision or not at all.
//!
//! Once a shard is full it allocates nothing: an insert pops the ring's front, removes it from
//! the map and reuses both places. The map is grown once, on the first fill, to twice the
//! shard's capacity, so that the deleted-slot markers that removals leave are cleared by
//! rehashing in place rather than by growing the table (the standard map rehashes in place
//! while it is at most half full). With the shard's capacity derived from its share of the byte
//! bound (see [`DecisionCache::with_max_bytes`]) the bytes a full cache takes are those it
//! counts: [`CACHE_ENTRY_BYTES`] per entry. A shard that the ttl keeps from filling grows its
//! table as the standard map does, never past that size, and stops once it fits the shard's
//! steady state.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Decision;
use crate::otlp::TraceId;

/// At most this many shards (a cache sized in bytes has 16 to 32 of them when it is large).
const MAX_SHARDS: usize = 32;
/// A cache sized in entries is split into more shards only while each keeps at least this
/// many.
const MIN_SHARD_ENTRIES: u64 = 256;

struct Slot {
    decision: Decision,
    /// When it was decided, in nanoseconds since the cache's origin.
    at: u64,
    /// For a decision read back from the decision log: the ingest index of the partition it
    /// was read for, else [`LOCAL`].
    source: u32,
    /// With `source`: the highest offset of that partition whose spans were forwarded under
    /// this decision, else [`NOTHING_FORWARDED`]. (Two plain fields rather than an `Option`
    /// of a pair: 16 bytes less per remembered decision.)
    through: i64,
}

/// [`Slot::source`] of a decision made here.
const LOCAL: u32 = u32::MAX;
/// [`Slot::through`] when no offset is known to be forwarded.
const NOTHING_FORWARDED: i64 = i64::MIN;

/// A remembered decision, as a span of a trace that is not buffered finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// What was decided, and by which rule.
    pub decision: Decision,
    /// When the trace was decided, in Unix milliseconds.
    pub decided_at: u64,
    /// Set when the decision was read back from the decision log.
    pub logged: Option<Logged>,
}

/// Where a decision read back from the decision log applies, and how far it was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// The ingest index of the partition whose log it was read from.
    pub partition: u32,
    /// The highest offset of that partition whose spans were forwarded (acknowledged) under
    /// the decision, if any.
    pub through: Option<i64>,
}

impl Remembered {
    /// Whether the spans of this trace in the message at `offset` of partition `partition`
    /// were already forwarded under this decision (a replay after a crash or rebalance meets
    /// them again): only a logged `through` says so, for its own partition.
    pub fn forwarded(&self, partition: u32, offset: i64) -> bool {
        self.decision.forwards()
            && self
                .logged
                .is_some_and(|l| l.partition == partition && l.through.is_some_and(|t| offset <= t))
    }
}

/// Bytes of one bucket of a shard's table: key, slot and the table's control byte.
const BUCKET_BYTES: u64 = (size_of::<(TraceId, Slot)>() + 1) as u64;
/// Bytes of one place in a shard's ring.
const RING_BYTES: u64 = size_of::<(TraceId, u64)>() as u64;

/// Bytes one remembered decision takes in a full cache: its place in the ring, and 16/7 of a
/// table bucket (the table is held at most 7/16 full, half the standard map's load factor, so
/// that removals never make it grow). Exact by construction, no other allocation per entry;
/// `cargo bench --bench memory` measures it (see the README's memory model).
pub const CACHE_ENTRY_BYTES: u64 = (BUCKET_BYTES * 16).div_ceil(7) + RING_BYTES;

/// A snapshot of the decision cache's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a decision, since the cache was made.
    pub hits: u64,
    /// Lookups that found none (never decided, pushed out, or expired), since the cache was
    /// made.
    pub misses: u64,
    /// Pushed out to stay within the bound.
    pub evicted_size: u64,
    /// Older than the ttl.
    pub evicted_expired: u64,
    /// Decisions remembered now.
    pub entries: u64,
    /// Bytes counted against the bound ([`CACHE_ENTRY_BYTES`] per entry).
    pub bytes: u64,
}

/// Recent decisions by trace id, so that a span arriving after its trace was decided gets the
/// same outcome. Bounded in bytes and in time; see the module's documentation.
#[derive(Clone)]
pub struct DecisionCache {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    /// A ttl before the cache was made (when the clock allows), so that a decision read back
    /// from the decision log, made before this process started, keeps its own time.
    origin: Instant,
    /// `origin` in Unix milliseconds.
    origin_unix_ms: u64,
    ttl: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<TraceId, Slot, foldhash::fast::RandomState>,
    /// Trace ids in decision order with the time of that decision. A place whose time no
    /// longer matches the map's (the trace was decided again) is stale and skipped.
    ring: VecDeque<(TraceId, u64)>,
    /// The most places in the ring (and so entries in the map).
    capacity: usize,
    /// Whether the map has been grown to its final size (done when the ring first fills).
    sized: bool,
    hits: u64,
    misses: u64,
    evicted_size: u64,
    evicted_expired: u64,
}

impl DecisionCache {
    /// A cache of at most `max_entries` decisions.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        let max_entries = max_entries.max(1);
        let shards = shard_count(max_entries);
        let per_shard = max_entries.div_ceil(shards as u64);
        Self::build(shards, to_usize(per_shard), ttl)
    }

    /// A cache whose entries take at most `max_bytes` in all.
    pub fn with_max_bytes(max_bytes: u64, ttl: Duration) -> Self {
        let (shards, per_shard) = shards_for_bytes(max_bytes);
        Self::build(shards, to_usize(per_shard), ttl)
    }

    /// How many decisions a cache of `max_bytes` holds ([`DecisionCache::with_max_bytes`]):
    /// at most `max_bytes / CACHE_ENTRY_BYTES`, and for more than a few hundred kilobytes at
    /// least 15/16 of it from 16KiB up (see `shards_for_bytes`).
    pub fn capacity_for_bytes(max_bytes: u64) -> u64 {
        let (shards, per_shard) = shards_for_bytes(max_bytes);
        shards as u64 * per_shard
    }

    fn build(shards: usize, capacity: usize, ttl: Duration) -> Self {
        let hasher = foldhash::fast::RandomState::default();
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::with_hasher(hasher.clone()),
                    capacity: capacity.max(1),
                    ..Shard::default()
                })
            })
            .collect();
        let now = Instant::now();
        let origin = now.checked_sub(ttl).unwrap_or(now);
        let since_origin = now.duration_since(origin).as_millis() as u64;
        DecisionCache {
            inner: Arc::new(Inner {
                shards,
                hasher,
                origin,
                origin_unix_ms: unix_ms().saturating_sub(since_origin),
                ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// The decision for `id`, if it was made within the ttl and is still remembered.
    pub fn get(&self, id: &TraceId) -> Option<Decision> {
        self.lookup(id).map(|r| r.decision)
    }

    /// [`DecisionCache::get`] at the time `now`.
    pub fn get_at(&self, id: &TraceId, now: Instant) -> Option<Decision> {
        self.lookup_at(id, now).map(|r| r.decision)
    }

    /// The decision for `id` with when it was made and, if it was read back from the decision
    /// log, how far it was forwarded.
    pub fn lookup(&self, id: &TraceId) -> Option<Remembered> {
        self.lookup_when(id, Instant::now)
    }

    /// [`DecisionCache::lookup`] at the time `now`.
    pub fn lookup_at(&self, id: &TraceId, now: Instant) -> Option<Remembered> {
        self.lookup_when(id, || now)
    }

    /// [`DecisionCache::lookup`], reading the time only for a decision found (to see whether
    /// it expired): most lookups are of new traces, which find none.
    fn lookup_when(&self, id: &TraceId, now: impl FnOnce() -> Instant) -> Option<Remembered> {
        let mut shard = self.inner.shard(id);
        let found = match shard.map.get(id) {
            Some(slot) if self.inner.nanos(now()).saturating_sub(slot.at) < self.inner.ttl => {
                Some(Remembered {
                    decision: slot.decision.clone(),
                    decided_at: self.inner.origin_unix_ms + slot.at / 1_000_000,
                    logged: (slot.source != LOCAL).then_some(Logged {
                        partition: slot.source,
                        through: (slot.through != NOTHING_FORWARDED).then_some(slot.through),
                    }),
                })
            }
            _ => None,
        };
        match found {
            Some(_) => shard.hits += 1,
            None => shard.misses += 1,
        }
        found
    }

    /// Remembers `decision` for `id`, pushing out the oldest decision of its shard if it is
    /// full. Deciding a trace again replaces its decision, which then counts from now.
    pub fn insert(&self, id: TraceId, decision: Decision) {
        self.insert_at(id, decision, Instant::now())
    }

    /// [`DecisionCache::insert`] at the time `now`.
    pub fn insert_at(&self, id: TraceId, decision: Decision, now: Instant) {
        let at = self.inner.nanos(now);
        self.put(id, decision, at, at, LOCAL, NOTHING_FORWARDED);
    }

    /// Remembers a decision read back from the decision log: made at `decided_at` (Unix
    /// milliseconds; it expires a ttl after that), for partition `logged.partition`. A
    /// decision older than the ttl is not remembered.
    pub fn insert_logged(&self, id: TraceId, decision: Decision, decided_at: u64, logged: Logged) {
        self.insert_logged_at(id, decision, decided_at, logged, Instant::now())
    }

    /// [`DecisionCache::insert_logged`] at the time `now`.
    pub fn insert_logged_at(
        &self,
        id: TraceId,
        decision: Decision,
        decided_at: u64,
        logged: Logged,
        now: Instant,
    ) {
        let now = self.inner.nanos(now);
        let at = decided_at
            .saturating_sub(self.inner.origin_unix_ms)
            .saturating_mul(1_000_000)
            .min(now);
        if now.saturating_sub(at) >= self.inner.ttl {
            return;
        }
        let through = logged.through.unwrap_or(NOTHING_FORWARDED);
        self.put(id, decision, at, now, logged.partition, through);
    }

    /// A decision read back goes to the ring's back with its own, older time `at`: a lookup
    /// ignores it once that is a ttl ago, and it is cleaned up when its place reaches the front
    /// (the ring is in insertion order; expiry stops at the first place that is not expired).
    fn put(&self, id: TraceId, decision: Decision, at: u64, now: u64, source: u32, through: i64) {
        let mut shard = self.inner.shard(&id);
        shard.expire(now, self.inner.ttl);
        if shard.ring.len() == shard.capacity {
            shard.pop_front(Cause::Size);
        }
        shard.reserve();
        shard.ring.push_back((id, at));
        shard.map.insert(
            id,
            Slot {
                decision,
                at,
                source,
                through,
            },
        );
    }

    /// `at` in Unix milliseconds, by this cache's clock (the one its `decided_at` values use).
    pub fn unix_ms(&self, at: Instant) -> u64 {
        self.inner.origin_unix_ms + self.inner.nanos(at) / 1_000_000
    }

    /// Counters and sizes so far. Forgets the decisions older than the ttl first, so that
    /// their expiry is counted and sizes are current.
    pub fn stats(&self) -> CacheStats {
        self.stats_at(Instant::now())
    }

    /// [`DecisionCache::stats`] at the time `now`.
    pub fn stats_at(&self, now: Instant) -> CacheStats {
        let now = self.inner.nanos(now);
        let mut s = CacheStats::default();
        for shard in self.inner.shards.iter() {
            let mut shard = lock(shard);
            shard.expire(now, self.inner.ttl);
            s.hits += shard.hits;
            s.misses += shard.misses;
            s.evicted_size += shard.evicted_size;
            s.evicted_expired += shard.evicted_expired;
            s.entries += shard.map.len() as u64;
        }
        s.bytes = s.entries * CACHE_ENTRY_BYTES;
        s
    }
}

impl Inner {
    fn shard(&self, id: &TraceId) -> MutexGuard<'_, Shard> {
        // The top bits of the hash: the map inside uses the low ones.
        let h = self.hasher.hash_one(id);
        let i = (h >> 32) as usize % self.shards.len();
        lock(&self.shards[i])
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A shard's lock. A panic while it was held (none is expected: nothing in a shard panics)
/// leaves the shard consistent at worst missing one entry, so a poisoned lock is taken over.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

enum Cause {
    Size,
    Expired,
}

impl Shard {
    /// Forgets the decisions older than `ttl`, oldest first.
    fn expire(&mut self, now: u64, ttl: u64) {
        while let Some(&(_, at)) = self.ring.front() {
            if now.saturating_sub(at) < ttl {
                break;
            }
            self.pop_front(Cause::Expired);
        }
    }

    /// Forgets the oldest decision (nothing if its place was stale).
    fn pop_front(&mut self, cause: Cause) {
        let Some((id, at)) = self.ring.pop_front() else {
            return;
        };
        if self.map.get(&id).is_some_and(|s| s.at == at) {
            self.map.remove(&id);
            match cause {
                Cause::Size => self.evicted_size += 1,
                Cause::Expired => self.evicted_expired += 1,
            }
        }
    }

    /// Makes room for one more place in the ring and entry in the map. Grows both to at most
    /// their final size; once there, nothing here allocates again.
    fn reserve(&mut self) {
        if self.sized {
            return;
        }
        let len = self.ring.len();
        if len + 1 < self.capacity {
            // Filling: double as usual, but never past the capacity.
            if len == self.ring.capacity() {
                self.ring.reserve_exact(len.max(8).min(self.capacity - len));
            }
            return;
        }
        // The last free place: the ring and the map take their final size. The map at twice
        // the capacity never grows again: it rehashes in place while at most half full.
        self.ring.reserve_exact(self.capacity - len);
        let more = self
            .capacity
            .saturating_mul(2)
            .saturating_sub(self.map.len());
        self.map.reserve(more);
        self.sized = true;
    }
}

/// How many shards a cache of about `entries` decisions has: a power of two, at most 16, each
/// with at least [`MIN_SHARD_ENTRIES`].
fn shard_count(entries: u64) -> usize {
    let mut n = 1;
    while n < 16 && entries / (2 * n as u64) >= MIN_SHARD_ENTRIES {
        n *= 2;
    }
    n
}

/// The shards of a cache of `bytes`: how many, and how many decisions each holds. A shard's
/// table has a power-of-two number of buckets and holds 7/16 of that many entries; of the
/// table sizes, the one that lets the most shards' worth of entries fit in `bytes` wins (with
/// up to [`MAX_SHARDS`] shards, at least 16 of the largest size that fits, so less than a
/// sixteenth of the bound is left unused). Ties go to more, smaller shards.
fn shards_for_bytes(bytes: u64) -> (usize, u64) {
    let mut best = (1, 0);
    let mut buckets: u64 = 16;
    loop {
        let entries = buckets / 16 * 7;
        let Some(shard_bytes) = buckets
            .checked_mul(BUCKET_BYTES)
            .and_then(|t| t.checked_add(entries * RING_BYTES))
        else {
            break;
        };
        let shards = (bytes / shard_bytes).min(MAX_SHARDS as u64);
        if shards == 0 {
            break;
        }
        if shards * entries > best.0 as u64 * best.1 {
            best = (shards as usize, entries);
        }
        buckets = match buckets.checked_mul(2) {
            Some(b) => b,
            None => break,
        };
    }
    if best.1 == 0 {
        // Smaller than the smallest table: one shard of a few entries.
        best = (1, (bytes / CACHE_ENTRY_BYTES).max(1));
    }
    best
}

/// The wall clock in Unix milliseconds (0 before 1970: a broken clock is no reason to stop).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
