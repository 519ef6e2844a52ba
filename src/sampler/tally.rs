//! What the sampler counts: one set of [`Counts`] per sampler, which is both what the
//! Prometheus counters show and what the demo's summary and the tests read.
//!
//! Each event is counted once, by one call that adds to the count and increments its
//! Prometheus counter together (see [`Count`]): in a process with one sampler, as in
//! production and in the demo, a scrape shows exactly these numbers. Counting stays in bulk:
//! one call per message for what a message brought (`MessageTally`), one per decider tick
//! for what a batch of decisions made (`Tally`, recorded by `Sampler::flush`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::decision::{Decision, Trigger};
use crate::otlp::decode::DecodeError;
use crate::telemetry as m;

use super::Sampler;

/// One count and the Prometheus counter that shows it, incremented together.
#[derive(Debug)]
pub struct Count {
    value: AtomicU64,
    counter: metrics::Counter,
}

impl Count {
    fn new(counter: metrics::Counter) -> Self {
        Count {
            value: AtomicU64::new(0),
            counter,
        }
    }

    /// Adds `n` (nothing when 0, so that a message with nothing of the kind costs no update).
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.value.fetch_add(n, Ordering::Relaxed);
            self.counter.increment(n);
        }
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Spans counted by outcome: kept (forwarded) or dropped.
#[derive(Debug)]
pub struct Outcomes {
    /// Spans forwarded.
    pub kept: Count,
    /// Spans dropped.
    pub dropped: Count,
}

impl Outcomes {
    fn new(name: &'static str) -> Self {
        Outcomes {
            kept: Count::new(metrics::counter!(name, "outcome" => m::Outcome::Kept)),
            dropped: Count::new(metrics::counter!(name, "outcome" => m::Outcome::Dropped)),
        }
    }

    fn add(&self, kept: usize, dropped: usize) {
        self.kept.add(kept as u64);
        self.dropped.add(dropped as u64);
    }
}

/// What was read from one input topic. The Kafka input counts these per message: the sampler
/// never learns a message's topic.
#[derive(Debug)]
pub struct TopicCounts {
    /// Messages read (`tailsift_messages_received_total`).
    pub messages: Count,
    /// Payload bytes read (`tailsift_bytes_received_total`).
    pub bytes: Count,
    /// Spans read (`tailsift_spans_received_total`).
    pub spans: Count,
}

/// (rule, kept, trigger).
type DecidedKey = (Arc<str>, bool, Trigger);

/// Every count of one sampler. Labels come from small fixed sets (outcomes, decode-failure
/// kinds, triggers) or from the config (topics, rule names).
#[derive(Debug)]
pub struct Counts {
    /// Per input topic, registered on first use.
    topics: Mutex<HashMap<String, Arc<TopicCounts>>>,
    /// Messages that do not decode, by [`DecodeError::KINDS`] (in that order).
    decode_failures: Box<[Count]>,
    /// Spans skipped because their trace id is missing or invalid.
    pub invalid_spans: Count,
    /// Spans of traces already decided, following the decision.
    pub late: Outcomes,
    /// Spans decided by trace id alone in degraded mode (stress relief).
    pub stress: Outcomes,
    /// Spans of traces not buffered that followed a decision read back from the decision log
    /// (late spans, and spans replayed after a crash or rebalance).
    pub logged: Outcomes,
    /// Spans not forwarded again: the decision log says they already were (a replay).
    pub skipped_forwarded: Count,
    /// Undecided traces handed back uncommitted when their partition was revoked.
    pub released: Count,
    /// Traces whose head, read back below the commit offset, joined their replayed tail.
    pub heads_merged: Count,
    /// Traces decided, by (rule, kept, trigger).
    decided: Mutex<HashMap<DecidedKey, u64>>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            topics: Mutex::default(),
            decode_failures: DecodeError::KINDS
                .iter()
                .map(|kind| Count::new(metrics::counter!(m::DECODE_FAILURES, "kind" => *kind)))
                .collect(),
            invalid_spans: Count::new(metrics::counter!(m::INVALID_SPANS)),
            late: Outcomes::new(m::LATE_SPANS),
            stress: Outcomes::new(m::STRESS_SPANS),
            logged: Outcomes::new(m::LOGGED_DECISION_SPANS),
            skipped_forwarded: Count::new(metrics::counter!(m::SPANS_SKIPPED_FORWARDED)),
            released: Count::new(metrics::counter!(m::TRACES_RELEASED)),
            heads_merged: Count::new(metrics::counter!(m::REPLAY_HEADS_MERGED)),
            decided: Mutex::default(),
        }
    }
}

impl Counts {
    /// The counts of input topic `topic`, for the Kafka input to count what it reads.
    pub fn topic(&self, topic: &str) -> Arc<TopicCounts> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = topics.get(topic) {
            return c.clone();
        }
        let t = topic.to_string();
        let c = Arc::new(TopicCounts {
            messages: Count::new(metrics::counter!(m::MESSAGES_RECEIVED, "topic" => t.clone())),
            bytes: Count::new(metrics::counter!(m::BYTES_RECEIVED, "topic" => t.clone())),
            spans: Count::new(metrics::counter!(m::SPANS_RECEIVED, "topic" => t.clone())),
        });
        topics.insert(t, c.clone());
        c
    }

    /// Spans read, over every input topic.
    pub fn spans_received(&self) -> u64 {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.values().map(|t| t.spans.get()).sum()
    }

    /// Counts a message that does not decode (as protobuf, or as JSON before that).
    pub fn decode_failed(&self, error: &DecodeError) {
        let kind = error.kind();
        if let Some(i) = DecodeError::KINDS.iter().position(|k| *k == kind) {
            self.decode_failures[i].add(1);
        }
    }

    /// Messages that did not decode, of every kind.
    pub fn decode_failures(&self) -> u64 {
        self.decode_failures.iter().map(Count::get).sum()
    }

    /// Traces decided per rule: (rule, kept, dropped), sorted by rule name.
    pub fn by_rule(&self) -> Vec<(String, u64, u64)> {
        let decided = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<&str, (u64, u64)> = HashMap::new();
        for ((rule, kept, _), n) in decided.iter() {
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

    /// Traces the rules kept (in shadow mode: would have kept).
    pub fn kept(&self) -> u64 {
        self.by_rule().iter().map(|r| r.1).sum()
    }

    /// Traces the rules dropped.
    pub fn dropped(&self) -> u64 {
        self.by_rule().iter().map(|r| r.2).sum()
    }

    /// Traces decided with `trigger`, kept or dropped, by any rule.
    pub fn decided_by(&self, trigger: Trigger) -> u64 {
        let decided = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        decided
            .iter()
            .filter(|((_, _, t), _)| *t == trigger)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds what one message brought.
    pub(super) fn add_message(&self, t: &MessageTally) {
        self.invalid_spans.add(t.invalid_spans as u64);
        self.late.add(t.late_kept, t.late_dropped);
        self.stress.add(t.stress_kept, t.stress_dropped);
        self.logged.add(t.logged_kept, t.logged_dropped);
        self.skipped_forwarded.add(t.skipped_forwarded as u64);
    }
}

/// What one message brought, counted while it is ingested and added to [`Counts`] once.
#[derive(Debug, Default)]
pub(super) struct MessageTally {
    pub invalid_spans: usize,
    pub late_kept: usize,
    pub late_dropped: usize,
    pub stress_kept: usize,
    pub stress_dropped: usize,
    pub logged_kept: usize,
    pub logged_dropped: usize,
    pub skipped_forwarded: usize,
}

/// Counts of one batch of decisions (a decider tick), recorded together by `Sampler::flush`.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// (rule, kept, trigger) -> traces. A handful of entries: looked up by scanning.
    decided: Vec<(DecidedKey, u64)>,
    /// Orphan spans per service, and traces decided without their root.
    pub orphans: Vec<(Box<[u8]>, u64)>,
    pub without_root: u64,
    /// The span buffers of the traces decided, for the graveyard (see `Sampler::flush`).
    pub dead: Vec<super::graveyard::Groups>,
}

impl Tally {
    pub fn decided(&mut self, decision: &Decision, trigger: Trigger) {
        let (rule, kept) = (decision.rule_arc(), decision.is_keep());
        self.add(rule, kept, trigger, 1);
    }

    fn add(&mut self, rule: &Arc<str>, kept: bool, trigger: Trigger, n: u64) {
        match self.decided.iter_mut().find(|((r, k, t), _)| {
            *k == kept && *t == trigger && (Arc::ptr_eq(r, rule) || r == rule)
        }) {
            Some((_, count)) => *count += n,
            None => self.decided.push(((rule.clone(), kept, trigger), n)),
        }
    }

    /// Moves `other`'s counts into this tally, leaving `other` empty with its capacity.
    pub fn absorb(&mut self, other: &mut Tally) {
        for ((rule, kept, trigger), n) in other.decided.drain(..) {
            self.add(&rule, kept, trigger, n);
        }
        self.orphans.append(&mut other.orphans);
        self.without_root += std::mem::take(&mut other.without_root);
    }
}

/// Per-trace histograms, registered once.
pub(super) struct Histograms {
    pub duration: metrics::Histogram,
    pub spans: metrics::Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            duration: metrics::histogram!(m::TRACE_DURATION),
            spans: metrics::histogram!(m::TRACE_SPANS),
        }
    }
}

impl Sampler {
    /// Records a batch of counts: one metrics update per distinct label set, not per trace.
    pub(super) fn flush(&self, mut tally: Tally) {
        self.graveyard.bury(std::mem::take(&mut tally.dead));
        tally.absorb(&mut self.ingest_tally.lock().unwrap_or_else(|e| e.into_inner()));
        // The counts the rule set gathered in atomics, in bulk too; on every tick, not only
        // one that decides something: late spans are redacted (and counted) between decisions,
        // and on a quiet input their counts would wait for the next trace.
        self.rules.load().flush_metrics();
        if tally.decided.is_empty() {
            return;
        }
        self.orphan_services.record(&tally.orphans);
        if tally.without_root > 0 {
            metrics::counter!(m::TRACES_WITHOUT_ROOT).increment(tally.without_root);
        }
        let mut decided = self
            .counts
            .decided
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ((rule, kept, trigger), n) in tally.decided {
            metrics::counter!(m::TRACES_DECIDED,
                "rule" => rule.to_string(),
                "outcome" => m::Outcome::kept(kept),
                "trigger" => trigger.as_str())
            .increment(n);
            *decided.entry((rule, kept, trigger)).or_default() += n;
        }
    }

    /// Publishes what is kept outside [`Counts`] to the metrics recorder: the buffer's size and
    /// the decision cache's counters. Called periodically, off the hot path.
    pub fn publish_metrics(&self) {
        metrics::gauge!(m::TRACES_BUFFERED).set(self.buffer.len() as f64);
        metrics::gauge!(m::BYTES_BUFFERED).set(self.buffer.bytes() as f64);
        let s = self.decisions.stats();
        metrics::counter!(m::DECISION_CACHE_LOOKUPS, "result" => m::CacheLookup::Hit)
            .absolute(s.hits);
        metrics::counter!(m::DECISION_CACHE_LOOKUPS, "result" => m::CacheLookup::Miss)
            .absolute(s.misses);
        metrics::counter!(m::DECISION_CACHE_EVICTIONS, "cause" => m::Eviction::Size)
            .absolute(s.evicted_size);
        metrics::counter!(m::DECISION_CACHE_EVICTIONS, "cause" => m::Eviction::Expired)
            .absolute(s.evicted_expired);
        metrics::gauge!(m::DECISION_CACHE_ENTRIES).set(s.entries as f64);
        metrics::gauge!(m::DECISION_CACHE_BYTES).set(s.bytes as f64);
    }
}
