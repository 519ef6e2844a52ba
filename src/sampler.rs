//! The sampler core, free of Kafka: messages in, decisions made, kept traces out.
//!
//! [`Sampler::ingest`] takes one consumed message; [`Sampler::decide_due`] decides the traces
//! whose time has come; kept traces go to an [`Output`] (the Kafka sink in production, a
//! collector in tests and benchmarks). It is shared by the ingest thread and the deciders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::buffer::{Buffer, Completion, Ingested, TraceEntry};
use crate::decision::{unix_ms, Decision, DecisionCache, Remembered, Trigger};
use crate::heads::Heads;
use crate::journal::{Delivery, Forwards, Journal, JournalEntry};
use crate::memory::Budget;
use crate::metrics as m;
use crate::offsets::{DecidedRange, Hold, Holds, OffsetHold};
use crate::otlp::decode::{DecodeError, Decoder, TraceGroup};
use crate::otlp::encode::{encode_trace, Messages};
use crate::otlp::{SpanContext, TraceId};
use crate::rules::{RuleSet, TraceView};
use crate::stress;

/// What a produced message must release once acknowledged, and what to count then.
#[derive(Debug)]
pub struct Ticket {
    pub holds: Holds,
    pub spans: u32,
    /// Spans that were read before by this group (replay after a crash or rebalance).
    pub replayed_spans: u32,
    /// When the trace was due, for the decision-latency histogram.
    pub due: Instant,
    /// With a decision log: the forward this message is part of, told of its acknowledgement.
    pub delivery: Option<Arc<Delivery>>,
}

impl Ticket {
    /// The broker acknowledged the message (or it was given up for good, as a span no broker
    /// takes): tells the decision log's bookkeeping, then releases the offsets it held.
    pub fn delivered(self) {
        if let Some(d) = &self.delivery {
            d.delivered();
        }
    }
}

/// Where kept traces go.
pub trait Output: Send + Sync {
    /// Sends the messages of one kept trace (usually one). Each message carries its ticket;
    /// the offsets it holds are released when the output drops it after acknowledgement.
    fn send(&self, trace_id: &TraceId, decision: &Decision, messages: Vec<(Vec<u8>, Ticket)>);
}

/// Counts kept for the demo's summary and the tests; Prometheus gets the same numbers.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub spans_in: AtomicU64,
    pub decode_failures: AtomicU64,
    pub late_kept: AtomicU64,
    pub late_dropped: AtomicU64,
    /// Spans decided by trace id alone in degraded mode (stress relief).
    pub stress_kept: AtomicU64,
    pub stress_dropped: AtomicU64,
    /// Undecided traces handed back uncommitted when their partition was revoked.
    pub released: AtomicU64,
    /// (rule, kept?) -> traces.
    by_rule: Mutex<HashMap<(Arc<str>, bool), u64>>,
}

impl Stats {
    /// Traces decided per rule: (rule, kept, dropped), sorted by rule name.
    pub fn by_rule(&self) -> Vec<(String, u64, u64)> {
        let map = self.by_rule.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<&str, (u64, u64)> = HashMap::new();
        for ((rule, kept), n) in map.iter() {
            let e = out.entry(rule).or_default();
            if *kept {
                e.0 += n
            } else {
                e.1 += n
            }
        }
        let mut v: Vec<_> = out
            .into_iter()
            .map(|(r, (k, d))| (r.to_string(), k, d))
            .collect();
        v.sort();
        v
    }

    pub fn kept(&self) -> u64 {
        self.by_rule().iter().map(|r| r.1).sum()
    }

    pub fn dropped(&self) -> u64 {
        self.by_rule().iter().map(|r| r.2).sum()
    }
}

/// (rule, kept, trigger).
type DecidedKey = (Arc<str>, bool, Trigger);

/// Counts of one batch of decisions (a decider tick), recorded together by `Sampler::flush`.
#[derive(Debug, Default)]
pub struct Tally {
    /// (rule, kept, trigger) -> traces. A handful of entries: looked up by scanning.
    decided: Vec<(DecidedKey, u64)>,
    /// Orphan spans per service, and traces decided without their root.
    orphans: Vec<(Box<[u8]>, u64)>,
    without_root: u64,
}

impl Tally {
    fn decided(&mut self, decision: &Decision, trigger: Trigger) {
        let (rule, kept) = (decision.rule_arc(), decision.is_keep());
        match self.decided.iter_mut().find(|((r, k, t), _)| {
            *k == kept && *t == trigger && (Arc::ptr_eq(r, rule) || r == rule)
        }) {
            Some((_, n)) => *n += 1,
            None => self.decided.push(((rule.clone(), kept, trigger), 1)),
        }
    }
}

/// What goes with the messages of one forward.
struct Shipment<'a> {
    holds: &'a Holds,
    spans: u32,
    /// Spans read before by this group (a replay).
    replayed: bool,
    due: Instant,
    delivery: Option<Arc<Delivery>>,
}

/// Per-trace histograms, registered once.
struct Histograms {
    duration: metrics::Histogram,
    spans: metrics::Histogram,
}

/// What one message brought, for the caller's bulk counting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestSummary {
    pub spans: usize,
    pub invalid_spans: usize,
    pub late_kept: usize,
    pub late_dropped: usize,
    /// Spans decided by trace id alone in degraded mode (stress relief).
    pub stress_kept: usize,
    pub stress_dropped: usize,
    /// Spans of traces not buffered that followed a decision read back from the decision log
    /// (late spans, and spans replayed after a crash or rebalance), by outcome.
    pub logged_kept: usize,
    pub logged_dropped: usize,
    /// Spans not forwarded again: the decision log says they already were (a replay).
    pub skipped_forwarded: usize,
}

pub struct Sampler {
    pub buffer: Buffer,
    pub rules: ArcSwap<RuleSet>,
    pub decisions: DecisionCache,
    pub stats: Stats,
    output: Arc<dyn Output>,
    max_message_bytes: usize,
    histograms: Histograms,
    budget: Budget,
    /// Service labels of the orphan-span counter (capped).
    pub orphan_services: crate::broken::ServiceLabels,
    /// Stress relief's degraded mode: new traces are decided by trace id, not buffered.
    degraded: AtomicBool,
    /// The sample rate of degraded mode.
    stress_rate: AtomicU32,
    /// Decided traces spread over several messages of a partition, for the ingest thread's
    /// head marks (see [`crate::heads`]); `None` when nothing collects them.
    decided_ranges: Option<Mutex<Vec<DecidedRange>>>,
    /// Traces whose head, read back below the commit offset, joined their replayed tail.
    pub heads_merged: AtomicU64,
    /// Where decisions are recorded (the decision log), with the forwards in flight.
    forwards: Option<Arc<Forwards>>,
}

/// A head message read back: its spans join the trace under the hold of the message that
/// brought the trace's tail (offsets below the commit need no hold), but the trace's range
/// starts at the head's offset.
struct HeadHold<'a, H> {
    tail: &'a H,
    offset: i64,
}

impl<H: Hold> Hold for HeadHold<'_, H> {
    fn partition(&self) -> u32 {
        self.tail.partition()
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn hold(&self) -> Arc<OffsetHold> {
        self.tail.hold()
    }
}

impl Sampler {
    pub fn new(
        completion: Completion,
        rules: RuleSet,
        decisions: DecisionCache,
        output: Arc<dyn Output>,
        max_message_bytes: usize,
    ) -> Self {
        Sampler {
            buffer: Buffer::new(completion),
            rules: ArcSwap::from_pointee(rules),
            decisions,
            stats: Stats::default(),
            output,
            max_message_bytes,
            histograms: Histograms {
                duration: metrics::histogram!(m::TRACE_DURATION),
                spans: metrics::histogram!(m::TRACE_SPANS),
            },
            budget: Budget::default(),
            orphan_services: crate::broken::ServiceLabels::default(),
            degraded: AtomicBool::new(false),
            stress_rate: AtomicU32::new(10),
            decided_ranges: None,
            heads_merged: AtomicU64::new(0),
            forwards: None,
        }
    }

    /// Records every decision in `journal` (the decision log): see [`crate::journal`].
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.forwards = Some(Forwards::new(journal));
        self
    }

    /// Kept traces whose forwards are not all acknowledged yet (with a journal).
    pub fn forwards_in_flight(&self) -> usize {
        self.forwards.as_ref().map_or(0, |f| f.in_flight())
    }

    /// Collects the offset ranges of decided traces for [`Sampler::take_decided_ranges`]; the
    /// Kafka input turns this on, and must then take them regularly.
    pub fn with_decided_ranges(mut self) -> Self {
        self.decided_ranges = Some(Mutex::new(Vec::new()));
        self
    }

    /// Moves the decided ranges collected since the last call into `out`.
    pub fn take_decided_ranges(&self, out: &mut Vec<DecidedRange>) {
        if let Some(r) = &self.decided_ranges {
            out.append(&mut r.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Whether stress relief's degraded mode is on.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Turns degraded mode on (deciding new traces by trace id alone, 1 in `sample_rate`, plus
    /// every trace with an error span seen) or off. Turning it on decides every buffered trace
    /// now, through the rules (trigger `stress`), so that the buffer empties. Returns how many
    /// were decided.
    pub fn set_degraded(&self, on: bool, sample_rate: u32, now: Instant) -> usize {
        self.stress_rate
            .store(sample_rate.max(1), Ordering::Relaxed);
        self.degraded.store(on, Ordering::Relaxed);
        if !on {
            return 0;
        }
        let ids = self.buffer.ids_where(|_| true);
        let mut tally = Tally::default();
        let n = ids
            .iter()
            .filter(|id| {
                self.decide_counted(id, Trigger::Stress, now, &mut tally)
                    .is_some()
            })
            .count();
        self.flush(tally);
        n
    }

    /// A group of spans of a trace that is not buffered, in degraded mode: it follows an earlier
    /// decision if there is one, else is decided by its trace id (and errors). Every decision
    /// made here is remembered and recorded, so that the trace's other spans, here or at the
    /// partition's next owner, follow it; a trace dropped by its id whose error span shows up
    /// later is kept from then on (`stress-errors`), as before degraded mode remembered it.
    fn ingest_degraded(
        &self,
        group: &TraceGroup<'_>,
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
        summary: &mut IngestSummary,
    ) {
        let remembered = self.decisions.lookup(&group.trace_id).filter(|r| {
            r.decision.forwards()
                || r.decision.rule() != stress::STRESS_RULE
                || !group.spans().any(|s| s.facts.is_error)
        });
        let remembered = match remembered {
            Some(r) => r,
            None => {
                let rate = self.stress_rate.load(Ordering::Relaxed);
                let decision = stress::decide_by_trace_id(&self.rules.load(), group, rate);
                self.decisions.insert(group.trace_id, decision.clone());
                let decided_at = unix_ms();
                if let (Some(f), false) = (&self.forwards, decision.forwards()) {
                    f.record_now(JournalEntry {
                        trace_id: group.trace_id,
                        decision: decision.clone(),
                        decided_at,
                        partitions: [(hold.partition(), None)].into_iter().collect(),
                        holds: [hold.hold()].into_iter().collect(),
                    });
                }
                Remembered {
                    decision,
                    decided_at,
                    logged: None,
                }
            }
        };
        if remembered.forwarded(hold.partition(), hold.offset()) {
            summary.skipped_forwarded += group.len();
        } else if remembered.decision.is_keep() {
            summary.stress_kept += group.len();
            self.forward_late(group, &remembered, hold, replayed, now);
        } else {
            summary.stress_dropped += group.len();
        }
    }

    /// Sets the memory budget (default: [`Budget::default`]).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Takes one consumed message. `hold` stands for the message's offset: traces that still
    /// need it keep a clone. Traces that reach the span limit are decided before returning.
    pub fn ingest(
        &self,
        decoder: &mut Decoder,
        payload: &[u8],
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
    ) -> Result<IngestSummary, DecodeError> {
        self.ingest_with_heads(decoder, payload, hold, replayed, now, None)
    }

    /// As [`Sampler::ingest`], for a partition being replayed with the heads of the traces
    /// that straddle its commit offset: a trace whose head is in `heads` gets it back before
    /// its first replayed spans are buffered.
    pub fn ingest_with_heads(
        &self,
        decoder: &mut Decoder,
        payload: &[u8],
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
        mut heads: Option<&mut Heads>,
    ) -> Result<IngestSummary, DecodeError> {
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let spans = match decoder.decode(payload) {
            Ok(n) => n,
            Err(e) => {
                self.stats.decode_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut summary = IngestSummary {
            spans,
            invalid_spans: decoder.invalid_spans,
            ..IngestSummary::default()
        };
        let mut full = Vec::new();
        let degraded = self.degraded.load(Ordering::Relaxed);
        for group in decoder.groups(payload) {
            if let Some(h) = heads.as_deref_mut() {
                if !degraded {
                    self.join_head(h, &group.trace_id, hold, now, &mut full);
                }
            }
            let ingested = if degraded {
                match self.buffer.ingest_existing(&group, hold, replayed, now) {
                    Some(i) => i,
                    None => {
                        self.ingest_degraded(&group, hold, replayed, now, &mut summary);
                        continue;
                    }
                }
            } else {
                self.buffer
                    .ingest(&group, hold, replayed, now, &self.decisions)
            };
            match ingested {
                Ingested::Buffered => {}
                Ingested::Full(trigger) => full.push((group.trace_id, trigger)),
                Ingested::Late(remembered) => {
                    let forwards = remembered.decision.forwards();
                    if remembered.logged.is_some() {
                        match forwards {
                            true => summary.logged_kept += group.len(),
                            false => summary.logged_dropped += group.len(),
                        }
                    }
                    if remembered.forwarded(hold.partition(), hold.offset()) {
                        summary.skipped_forwarded += group.len();
                    } else if forwards {
                        summary.late_kept += group.len();
                        self.forward_late(&group, &remembered, hold, replayed, now);
                    } else {
                        summary.late_dropped += group.len();
                    }
                }
            }
        }
        self.stats
            .spans_in
            .fetch_add(spans as u64, Ordering::Relaxed);
        self.stats
            .late_kept
            .fetch_add(summary.late_kept as u64, Ordering::Relaxed);
        self.stats
            .late_dropped
            .fetch_add(summary.late_dropped as u64, Ordering::Relaxed);
        if degraded {
            self.stats
                .stress_kept
                .fetch_add(summary.stress_kept as u64, Ordering::Relaxed);
            self.stats
                .stress_dropped
                .fetch_add(summary.stress_dropped as u64, Ordering::Relaxed);
        }
        if !full.is_empty() {
            let mut tally = Tally::default();
            for (id, trigger) in full {
                self.decide_counted(&id, trigger, now, &mut tally);
            }
            self.flush(tally);
        }
        Ok(summary)
    }

    /// Buffers the head of trace `id` from `heads`, if it has one there and was not decided
    /// since (then its replayed spans simply follow that decision).
    fn join_head(
        &self,
        heads: &mut Heads,
        id: &TraceId,
        tail: &impl Hold,
        now: Instant,
        full: &mut Vec<(TraceId, Trigger)>,
    ) {
        let Some(messages) = heads.take(id) else {
            return;
        };
        if self.decisions.get(id).is_some() {
            return;
        }
        for i in messages {
            let Some((offset, payload, decoder)) = heads.message(i) else {
                continue;
            };
            if decoder.decode(payload).is_err() {
                continue; // it decoded when stored; cannot happen
            }
            let hold = HeadHold { tail, offset };
            for group in decoder.groups(payload).filter(|g| g.trace_id == *id) {
                match self
                    .buffer
                    .ingest(&group, &hold, true, now, &self.decisions)
                {
                    Ingested::Full(trigger) => full.push((*id, trigger)),
                    Ingested::Buffered | Ingested::Late(_) => {}
                }
            }
        }
        self.heads_merged.fetch_add(1, Ordering::Relaxed);
    }

    fn forward_late(
        &self,
        group: &TraceGroup<'_>,
        remembered: &Remembered,
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
    ) {
        // Regroup the spans by context, as a trace entry would hold them.
        let mut chunks: Vec<(Arc<SpanContext>, Vec<u8>)> = Vec::new();
        for span in group.spans() {
            match chunks
                .iter_mut()
                .find(|(c, _)| Arc::ptr_eq(c, span.context))
            {
                Some((_, bytes)) => bytes.extend_from_slice(span.field),
                None => chunks.push((span.context.clone(), span.field.to_vec())),
            }
        }
        let decision = &remembered.decision;
        let spans = group.len() as u32;
        let messages =
            self.encode_marked(decision, chunks.iter().map(|(c, b)| (&**c, b.as_slice())));
        let holds: Holds = smallvec::smallvec![hold.hold()];
        let delivery = self.forwards.as_ref().map(|f| {
            f.begin(
                group.trace_id,
                decision,
                remembered.decided_at,
                smallvec::smallvec![(hold.partition(), hold.offset())],
                holds.clone(),
                messages.len() as u32,
            )
        });
        self.send(
            &group.trace_id,
            decision,
            messages,
            Shipment {
                holds: &holds,
                spans,
                replayed,
                due: now,
                delivery,
            },
        );
    }

    fn send(&self, id: &TraceId, decision: &Decision, messages: Messages, s: Shipment<'_>) {
        let count = messages.len().max(1) as u32;
        let spans = s.spans;
        let with_tickets = messages
            .into_iter()
            .enumerate()
            .map(|(i, msg)| {
                // Spans are spread over the messages; counts add up to the trace's.
                let share = spans / count + u32::from((i as u32) < spans % count);
                let ticket = Ticket {
                    holds: s.holds.clone(),
                    spans: share,
                    replayed_spans: if s.replayed { share } else { 0 },
                    due: s.due,
                    delivery: s.delivery.clone(),
                };
                (msg, ticket)
            })
            .collect();
        self.output.send(id, decision, with_tickets);
    }

    /// Decides one trace now, if it is still buffered. Returns the decision.
    pub fn decide(&self, id: &TraceId, trigger: Trigger, due: Instant) -> Option<Decision> {
        let mut tally = Tally::default();
        let d = self.decide_counted(id, trigger, due, &mut tally);
        self.flush(tally);
        d
    }

    /// Decides one trace, counting into `tally` (flushed by the caller, once per batch).
    fn decide_counted(
        &self,
        id: &TraceId,
        trigger: Trigger,
        due: Instant,
        tally: &mut Tally,
    ) -> Option<Decision> {
        let rules = self.rules.load();
        let (entry, decision) = self.buffer.take(id, |id, entry| {
            let view = TraceView::new(*id, entry);
            let d = rules.decide(&view);
            self.decisions.insert(*id, d.clone());
            tally.without_root += u64::from(crate::broken::inspect(&view, &mut tally.orphans));
            d
        })?;
        tally.decided(&decision, trigger);
        if let Some(ranges) = &self.decided_ranges {
            let spread = entry
                .holds
                .iter()
                .zip(&entry.ranges)
                .filter(|(_, r)| r.0 < r.1)
                .map(|(h, r)| DecidedRange {
                    partition: h.partition,
                    first: r.0,
                    last: r.1,
                });
            let mut spread = spread.peekable();
            if spread.peek().is_some() {
                // Before the holds are released (below, or on the produce's acknowledgement):
                // the ingest thread reads the holds first, then these ranges.
                ranges
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(spread);
            }
        }
        self.histograms
            .duration
            .record(entry.duration_nanos() as f64 / 1e9);
        self.histograms.spans.record(f64::from(entry.span_count));
        if decision.forwards() {
            tracing::debug!(trace_id = %id, rule = decision.rule(), trigger = trigger.as_str(), spans = entry.span_count, "trace forwarded");
            self.forward(id, &decision, entry, due);
        } else if let Some(f) = &self.forwards {
            // Its offsets stay held until the decision log has the decision.
            f.record_now(JournalEntry {
                trace_id: *id,
                decision: decision.clone(),
                decided_at: unix_ms(),
                partitions: entry.holds.iter().map(|h| (h.partition, None)).collect(),
                holds: entry.holds.clone(),
            });
        }
        // A dropped trace's holds are released here, as `entry` goes out of scope (or by the
        // decision log, once it has the decision).
        Some(decision)
    }

    /// Encodes a forwarded trace's span chunks, marking the spans when marking is on.
    fn encode_marked<'a>(
        &self,
        decision: &Decision,
        chunks: impl Iterator<Item = (&'a SpanContext, &'a [u8])> + Clone,
    ) -> Messages {
        let rules = self.rules.load();
        let Some(marks) = rules
            .marking()
            .and_then(|m| m.marks(decision, rules.salted()))
        else {
            return encode_trace(chunks, self.max_message_bytes);
        };
        let marked: Vec<(&SpanContext, Vec<u8>)> = chunks
            .map(|(ctx, spans)| {
                let mut out = Vec::new();
                marks.mark_spans(spans, &mut out);
                (ctx, out)
            })
            .collect();
        encode_trace(
            marked.iter().map(|(c, b)| (*c, b.as_slice())),
            self.max_message_bytes,
        )
    }

    fn forward(&self, id: &TraceId, decision: &Decision, entry: TraceEntry, due: Instant) {
        let messages = self.encode_marked(
            decision,
            entry.groups.iter().map(|g| (&*g.ctx, g.spans.as_slice())),
        );
        let delivery = self.forwards.as_ref().map(|f| {
            let through = entry
                .holds
                .iter()
                .zip(&entry.ranges)
                .map(|(h, r)| (h.partition, r.1))
                .collect();
            f.begin(
                *id,
                decision,
                unix_ms(),
                through,
                entry.holds.clone(),
                messages.len() as u32,
            )
        });
        self.send(
            id,
            decision,
            messages,
            Shipment {
                holds: &entry.holds,
                spans: entry.span_count,
                replayed: entry.replayed,
                due,
                delivery,
            },
        );
    }

    /// Records a batch of counts: one metrics update per distinct label set, not per trace.
    fn flush(&self, tally: Tally) {
        if tally.decided.is_empty() {
            return;
        }
        self.orphan_services.record(&tally.orphans);
        if tally.without_root > 0 {
            metrics::counter!(m::TRACES_WITHOUT_ROOT).increment(tally.without_root);
        }
        // The per-rule counts the rule set gathered in atomics, in bulk too.
        self.rules.load().flush_metrics();
        let mut by_rule = self.stats.by_rule.lock().unwrap_or_else(|e| e.into_inner());
        for ((rule, kept, trigger), n) in tally.decided {
            metrics::counter!(m::TRACES_DECIDED,
                "rule" => rule.to_string(),
                "outcome" => if kept { "kept" } else { "dropped" },
                "trigger" => trigger.as_str())
            .increment(n);
            *by_rule.entry((rule, kept)).or_default() += n;
        }
    }

    /// Publishes the counters kept in atomics (decision cache) to the metrics recorder. Called
    /// periodically, off the hot path.
    pub fn publish_metrics(&self) {
        let s = self.decisions.stats();
        metrics::counter!(m::DECISION_CACHE_LOOKUPS, "result" => "hit").absolute(s.hits);
        metrics::counter!(m::DECISION_CACHE_LOOKUPS, "result" => "miss").absolute(s.misses);
        metrics::counter!(m::DECISION_CACHE_EVICTIONS, "cause" => "size").absolute(s.evicted_size);
        metrics::counter!(m::DECISION_CACHE_EVICTIONS, "cause" => "expired")
            .absolute(s.evicted_expired);
        metrics::gauge!(m::DECISION_CACHE_ENTRIES).set(s.entries as f64);
        metrics::gauge!(m::DECISION_CACHE_BYTES).set(s.bytes as f64);
        metrics::counter!(m::REPLAY_HEADS_MERGED)
            .absolute(self.heads_merged.load(Ordering::Relaxed));
    }

    /// Decides every trace that is complete at `now`. Returns how many were decided.
    pub fn decide_due(&self, now: Instant) -> usize {
        let mut due = Vec::new();
        self.buffer.due(now, &mut due);
        let mut tally = Tally::default();
        let mut n = 0;
        for (id, trigger, at) in due {
            n += usize::from(self.decide_counted(&id, trigger, at, &mut tally).is_some());
        }
        self.flush(tally);
        n + self.relieve_memory(now)
    }

    /// If the buffer reached its budget (a burst fetched before back-pressure took effect),
    /// decides the oldest traces now, with trigger `memory`, until it is back under the high
    /// watermark. Returns how many were decided.
    ///
    /// While reading is paused for memory the completion clock stands still (see
    /// [`Buffer::stop_clock`]); once the pause has lasted `decision_wait` (as long as a trace is
    /// awaited without spans), the oldest traces, the likeliest to be complete, are decided
    /// until the buffer is below the low watermark and reading resumes.
    pub fn relieve_memory(&self, now: Instant) -> usize {
        let bytes = self.buffer.bytes();
        let target = if bytes >= self.budget.max_bytes {
            self.budget.pause_above
        } else if self.buffer.stopped_past_wait(now) && bytes >= self.budget.resume_below {
            self.budget.resume_below.saturating_sub(1)
        } else {
            return 0;
        };
        let oldest = self.buffer.oldest(bytes - target);
        let mut tally = Tally::default();
        let mut n = 0;
        for id in &oldest {
            n += usize::from(
                self.decide_counted(id, Trigger::Memory, now, &mut tally)
                    .is_some(),
            );
        }
        self.flush(tally);
        if n > 0 {
            tracing::warn!(
                bytes,
                budget = self.budget.max_bytes,
                decided = n,
                "buffer at its memory budget, or reading paused: oldest traces decided early"
            );
        }
        n
    }

    /// Partitions left this instance: traces held only by them are released undecided (the
    /// new owner replays them from the last safe commit); traces that also hold a partition
    /// that stays are decided now, so that their other spans are not lost.
    /// Returns (released, decided).
    pub fn partitions_revoked(&self, revoked: &[u32], now: Instant) -> (usize, usize) {
        let touches = |e: &TraceEntry| e.holds.iter().any(|h| revoked.contains(&h.partition));
        let mixed = self
            .buffer
            .ids_where(|e| touches(e) && e.holds.iter().any(|h| !revoked.contains(&h.partition)));
        let mut decided = 0;
        let mut tally = Tally::default();
        for id in &mixed {
            decided += usize::from(
                self.decide_counted(id, Trigger::Rebalance, now, &mut tally)
                    .is_some(),
            );
        }
        self.flush(tally);
        let released = self.buffer.release_where(touches);
        metrics::counter!(m::TRACES_RELEASED).increment(released as u64);
        self.stats
            .released
            .fetch_add(released as u64, Ordering::Relaxed);
        (released, decided)
    }
}

#[cfg(test)]
mod tests;
