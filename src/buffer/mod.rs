//! The trace buffer: every span of every undecided trace, by trace id, until the trace is
//! complete.
//!
//! A sharded concurrent map (dashmap) holds one [`TraceEntry`] per trace; a [`DeadlineIndex`]
//! says when each must be looked at. Spans are stored as the `ScopeSpans.spans` fields they
//! arrived as, appended to one byte vector per resource/scope, so that buffering a span is a
//! copy and no allocation in the common case, and forwarding it is a copy again.

mod deadline;
mod entry;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;

pub use deadline::DeadlineIndex;
pub use entry::{Awaited, SpanGroup, TraceEntry, TRACE_OVERHEAD};

use crate::decision::{Decision, DecisionCache, Remembered, Trigger};
use crate::offsets::Hold;
use crate::otlp::decode::TraceGroup;
use crate::otlp::TraceId;
use crate::rules::RuleSet;

/// When a trace is complete. The first condition reached decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Decide this long after the trace's last span arrived.
    pub decision_wait: Duration,
    /// Decide this long after the trace's root span arrived.
    pub root_grace: Duration,
    /// Decide this long after the trace's first span arrived, however busy it still is.
    pub max_trace_age: Duration,
    /// Decide as soon as the trace holds this many spans.
    pub max_spans_per_trace: u32,
    /// Decide as soon as the trace's buffered bytes (as counted against the budget) reach this.
    pub max_trace_bytes: u32,
}

impl Default for Completion {
    fn default() -> Self {
        Completion {
            decision_wait: Duration::from_secs(10),
            root_grace: Duration::from_secs(2),
            max_trace_age: Duration::from_secs(60),
            max_spans_per_trace: 10_000,
            max_trace_bytes: 16 << 20,
        }
    }
}

/// `Some(Trigger::Early)` when an early rule of `rules` can decide the trace now. With a
/// steady set, a trace whose last look found none and whose spans since changed nothing the
/// look reads (`early_none`, cleared by `append_to` when they did) is not looked at again: the
/// look walks the rules' conditions, for every group of spans.
fn early(
    rules: Option<&RuleSet>,
    id: &TraceId,
    e: &mut TraceEntry,
    at: Instant,
) -> Option<Trigger> {
    let rules = rules.filter(|r| r.has_early())?;
    if e.early_none && rules.early_steady() {
        return None;
    }
    let decides = rules.decides_early(*id, e, at);
    e.early_none = !decides;
    decides.then_some(Trigger::Early)
}

/// What happened to a group of spans offered to the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Ingested {
    /// Buffered with its trace.
    Buffered,
    /// Buffered, and the trace reached its span limit (trigger `span_limit`) or byte limit
    /// (`byte_limit`), or an early rule can decide it (`early`): decide it now.
    Full(Trigger),
    /// The trace was already decided: the spans follow that decision.
    Late(Remembered),
}

/// The sharded map of undecided traces and their deadlines.
pub struct Buffer {
    map: DashMap<TraceId, TraceEntry, foldhash::fast::RandomState>,
    index: DeadlineIndex,
    completion: Completion,
    origin: Instant,
    bytes: AtomicI64,
    /// The completion clock: milliseconds since `origin` during which reading was not paused
    /// for memory (see [`Buffer::stop_clock`]).
    clock: Clock,
}

/// A clock that stands still while reading is paused: completion times (`decision_wait`,
/// `root_grace`, `max_trace_age`) measure how long a trace's spans could have arrived, and
/// while fetching is paused they could not.
#[derive(Debug, Default)]
struct Clock {
    /// Milliseconds spent stopped before the current stop.
    stopped: AtomicU64,
    /// Real milliseconds since the origin when the current stop began, plus one; 0 when
    /// running.
    since: AtomicU64,
}

impl Buffer {
    /// An empty buffer; its clocks count from now (tokio's clock, so paused time in tests
    /// applies). Deadlines are looked at in 10 ms ticks.
    pub fn new(completion: Completion) -> Self {
        Buffer {
            map: DashMap::with_hasher_and_shard_amount(
                foldhash::fast::RandomState::default(),
                (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16)
                    .next_power_of_two(),
            ),
            index: DeadlineIndex::new(Duration::from_millis(10)),
            completion,
            origin: Instant::now(),
            bytes: AtomicI64::new(0),
            clock: Clock::default(),
        }
    }

    /// Real milliseconds since the origin.
    fn real_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// `at` on the completion clock.
    fn ms(&self, at: Instant) -> u64 {
        let real = self.real_ms(at);
        let stopped = self.clock.stopped.load(Ordering::Acquire);
        match self.clock.since.load(Ordering::Acquire) {
            0 => real.saturating_sub(stopped),
            since => (since - 1).saturating_sub(stopped),
        }
    }

    /// Stops the completion clock: reading is paused for memory, so no trace can receive
    /// spans, and none should be found complete for lack of them. While it stands, only
    /// [`Buffer::oldest`] decisions (trigger `memory`) free the buffer: at the budget, and once
    /// the pause has lasted `decision_wait` (see [`Buffer::stopped_past_wait`]).
    pub fn stop_clock(&self, now: Instant) {
        let real = self.real_ms(now);
        let _ = self
            .clock
            .since
            .compare_exchange(0, real + 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Starts the completion clock again (reading resumed).
    pub fn start_clock(&self, now: Instant) {
        let since = self.clock.since.swap(0, Ordering::AcqRel);
        if since > 0 {
            let real = self.real_ms(now);
            self.clock
                .stopped
                .fetch_add(real.saturating_sub(since - 1), Ordering::AcqRel);
        }
    }

    /// Whether the completion clock stands still.
    pub fn clock_stopped(&self) -> bool {
        self.clock.since.load(Ordering::Acquire) > 0
    }

    /// Whether the completion clock has stood still for at least `decision_wait` at `now`:
    /// reading has been paused as long as a trace is awaited without spans.
    pub fn stopped_past_wait(&self, now: Instant) -> bool {
        match self.clock.since.load(Ordering::Acquire) {
            0 => false,
            since => {
                self.real_ms(now).saturating_sub(since - 1)
                    >= self.completion.decision_wait.as_millis() as u64
            }
        }
    }

    /// A time on the completion clock, as the real instant it stands for now.
    fn instant(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms + self.clock.stopped.load(Ordering::Acquire))
    }

    /// Buffers a group of spans of one trace from the message `hold` stands for. A trace
    /// that is not yet buffered is looked up in `decided` first: late spans follow their trace.
    /// Without rules, the spans are only buffered (see [`Buffer::ingest_with`]).
    pub fn ingest(
        &self,
        group: &TraceGroup<'_>,
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
        decided: &DecisionCache,
    ) -> Ingested {
        self.ingest_with(group, hold, replayed, now, decided, None)
    }

    /// [`Buffer::ingest`], running the probes of `rules` on each span as it joins its trace
    /// (the one walk per span), and deciding it at once (trigger `early`) when an early rule
    /// can.
    pub fn ingest_with(
        &self,
        group: &TraceGroup<'_>,
        hold: &impl Hold,
        replayed: bool,
        at: Instant,
        decided: &DecisionCache,
        rules: Option<&RuleSet>,
    ) -> Ingested {
        let now = self.ms(at);
        // Lock order everywhere: map shard, then decision cache, then deadline index.
        match self.map.entry(group.trace_id) {
            Entry::Occupied(mut o) => {
                self.append_to(o.get_mut(), group, hold, replayed, now, at, rules)
            }
            Entry::Vacant(v) => {
                if let Some(decision) = decided.lookup(&group.trace_id) {
                    return Ingested::Late(decision);
                }
                let mut e = TraceEntry {
                    first_seen: now,
                    last_seen: now,
                    root_seen: None,
                    start_min: 0,
                    end_max: 0,
                    span_count: 0,
                    bytes: TRACE_OVERHEAD as u32,
                    has_error: false,
                    replayed,
                    early_none: false,
                    groups: smallvec::SmallVec::new(),
                    holds: smallvec::smallvec![hold.hold()],
                    ranges: smallvec::smallvec![(hold.offset(), hold.offset())],
                    root_at: None,
                    seen: rules.map(|r| r.probes().start()).unwrap_or_default(),
                    scheduled: 0,
                    awaited: Default::default(),
                };
                e.append(group, now, rules.map(RuleSet::probes));
                let full = self
                    .full(&e)
                    .or_else(|| early(rules, &group.trace_id, &mut e, at));
                e.scheduled = self.index.bucket(e.deadline(&self.completion).0);
                self.index.schedule(group.trace_id, e.scheduled);
                self.bytes.fetch_add(i64::from(e.bytes), Ordering::Relaxed);
                v.insert(e);
                match full {
                    Some(trigger) => Ingested::Full(trigger),
                    None => Ingested::Buffered,
                }
            }
        }
    }

    /// Buffers a group of spans only if its trace is already buffered (stress relief: new
    /// traces are not buffered, the ones already there complete as usual). The spans go
    /// through the probes of `rules` as in [`Buffer::ingest_with`]: the trace will be decided
    /// from its probe bits, which must have seen every span.
    pub fn ingest_existing(
        &self,
        group: &TraceGroup<'_>,
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
        rules: Option<&RuleSet>,
    ) -> Option<Ingested> {
        let ms = self.ms(now);
        let mut e = self.map.get_mut(&group.trace_id)?;
        Some(self.append_to(&mut e, group, hold, replayed, ms, now, rules))
    }

    #[allow(clippy::too_many_arguments)]
    fn append_to(
        &self,
        e: &mut TraceEntry,
        group: &TraceGroup<'_>,
        hold: &impl Hold,
        replayed: bool,
        now: u64,
        at: Instant,
        rules: Option<&RuleSet>,
    ) -> Ingested {
        let root_before = e.root_seen.is_some();
        let early_before = e.early_state();
        let added = e.append(group, now, rules.map(RuleSet::probes));
        if e.early_state() != early_before {
            e.early_none = false;
        }
        self.bytes.fetch_add(added as i64, Ordering::Relaxed);
        e.replayed |= replayed;
        let offset = hold.offset();
        match e.holds.iter().position(|h| h.partition == hold.partition()) {
            Some(i) => {
                let r = &mut e.ranges[i];
                *r = (r.0.min(offset), r.1.max(offset));
            }
            None => {
                let before = holds_heap_bytes(e);
                if e.holds.len() == 1 && !e.holds.spilled() {
                    // A trace whose spans come in more than one partition (an SDK's batches,
                    // unkeyed) usually comes in several: one allocation for up to four rather
                    // than one per doubling, for the holds and for their ranges.
                    e.holds.reserve_exact(3);
                    e.ranges.reserve_exact(3);
                }
                e.holds.push(hold.hold());
                e.ranges.push((offset, offset));
                // [`TRACE_OVERHEAD`] covers a trace in one partition: the budget also counts
                // the lists that hold more.
                let grown = holds_heap_bytes(e) - before;
                e.bytes = e.bytes.saturating_add(grown as u32);
                self.bytes.fetch_add(grown as i64, Ordering::Relaxed);
            }
        }
        if let Some(trigger) = self
            .full(e)
            .or_else(|| early(rules, &group.trace_id, e, at))
        {
            return Ingested::Full(trigger);
        }
        if !root_before && e.root_seen.is_some() {
            // The root moved the deadline earlier: schedule the earlier look.
            let bucket = self.index.bucket(e.deadline(&self.completion).0);
            if bucket < e.scheduled {
                e.scheduled = bucket;
                self.index.schedule(group.trace_id, bucket);
            }
        }
        Ingested::Buffered
    }

    /// Whether a trace reached a size limit, and which.
    fn full(&self, e: &TraceEntry) -> Option<Trigger> {
        if e.span_count >= self.completion.max_spans_per_trace {
            Some(Trigger::SpanLimit)
        } else if e.bytes >= self.completion.max_trace_bytes {
            Some(Trigger::ByteLimit)
        } else {
            None
        }
    }

    /// The traces likeliest to be whole whose bytes add up to at least `bytes`: those whose
    /// root has arrived, oldest (by first arrival) first, then the others, oldest first. A
    /// full scan: only for memory pressure, which back-pressure keeps rare.
    ///
    /// The root first: services export a trace's root span last (it ends last), so a trace
    /// without it may have spans still waiting in Kafka, and under a flood first arrival says
    /// little: the completion clock that measures it stands still while fetching is paused,
    /// so a trace split by a pause (its first messages read, the rest not fetched) looks as
    /// old as those read long before it.
    pub fn oldest(&self, bytes: u64) -> Vec<TraceId> {
        let mut all: Vec<((bool, u64), u32, TraceId)> = self
            .map
            .iter()
            .map(|r| ((r.root_seen.is_none(), r.first_seen), r.bytes, *r.key()))
            .collect();
        all.sort_unstable_by_key(|t| t.0);
        let mut freed = 0u64;
        all.into_iter()
            .take_while(|(_, b, _)| {
                let more = freed < bytes;
                freed += u64::from(*b);
                more
            })
            .map(|t| t.2)
            .collect()
    }

    /// Appends to `out` every trace whose completion deadline has passed at `now`, with the
    /// trigger that completed it and when that was. Traces whose deadline moved later are
    /// scheduled again.
    pub fn due(&self, now: Instant, out: &mut Vec<(TraceId, Trigger, Instant)>) {
        let now = self.ms(now);
        let mut popped = Vec::new();
        self.index.pop_due(now, &mut popped);
        for (bucket, id) in popped {
            let Some(mut e) = self.map.get_mut(&id) else {
                continue; // decided already (span limit, rebalance)
            };
            if e.scheduled != bucket {
                continue; // a stale entry: a newer one owns this trace
            }
            let (deadline, trigger) = e.deadline(&self.completion);
            if deadline <= now {
                out.push((id, trigger, self.instant(deadline)));
            } else {
                e.scheduled = self.index.bucket(deadline);
                self.index.schedule(id, e.scheduled);
            }
        }
    }

    /// Removes a trace, deciding it with `decide` while it is still in the map, so that a span
    /// of this trace arriving meanwhile either joins it before or finds the decision after.
    /// `decide` must record the decision where late spans look (the decision cache).
    pub fn take(
        &self,
        id: &TraceId,
        decide: impl FnOnce(&TraceId, &TraceEntry) -> Decision,
    ) -> Option<(TraceEntry, Decision)> {
        let mut decision = None;
        let (_, entry) = self.map.remove_if(id, |id, e| {
            decision = Some(decide(id, e));
            true
        })?;
        self.bytes
            .fetch_sub(i64::from(entry.bytes), Ordering::Relaxed);
        decision.map(|d| (entry, d))
    }

    /// When the first span of `e` arrived, as a real instant (time with reading paused for
    /// memory is not counted).
    pub fn arrived(&self, e: &TraceEntry) -> Instant {
        self.instant(e.first_seen)
    }

    /// Calls `f` with the buffered trace `id`, if it is buffered (for tests and tools).
    pub fn with_entry<R>(&self, id: &TraceId, f: impl FnOnce(&TraceEntry) -> R) -> Option<R> {
        self.map.get(id).map(|e| f(e.value()))
    }

    /// Removes, without deciding them, the traces for which `release` holds; returns how many.
    pub fn release_where(&self, release: impl Fn(&TraceEntry) -> bool) -> usize {
        let mut released = 0usize;
        let mut freed = 0i64;
        self.map.retain(|_, e| {
            if release(e) {
                released += 1;
                freed += i64::from(e.bytes);
                false
            } else {
                true
            }
        });
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        released
    }

    /// Trace ids for which `pred` holds (a full scan: for rare events such as rebalances).
    pub fn ids_where(&self, pred: impl Fn(&TraceEntry) -> bool) -> Vec<TraceId> {
        self.map
            .iter()
            .filter(|r| pred(r.value()))
            .map(|r| *r.key())
            .collect()
    }

    /// Buffered traces.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The shortest time a trace can wait before it is due (the least of the completion
    /// settings' waits).
    pub fn shortest_wait(&self) -> Duration {
        let c = &self.completion;
        c.decision_wait.min(c.root_grace).min(c.max_trace_age)
    }

    /// No trace is buffered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Buffered bytes, as counted against the budget.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Heap bytes of a trace's offset holds and their ranges once they spill out of the entry
/// (more than one partition), with the allocator's 16-byte header for each of the two.
fn holds_heap_bytes(e: &TraceEntry) -> usize {
    const HEADER: usize = 16;
    let heap = |spilled: bool, capacity: usize, size: usize| match spilled {
        true => capacity * size + HEADER,
        false => 0,
    };
    heap(
        e.holds.spilled(),
        e.holds.capacity(),
        std::mem::size_of::<std::sync::Arc<crate::offsets::OffsetHold>>(),
    ) + heap(
        e.ranges.spilled(),
        e.ranges.capacity(),
        std::mem::size_of::<(i64, i64)>(),
    )
}

#[cfg(test)]
mod tests;
