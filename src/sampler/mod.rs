//! The sampler core, free of Kafka: messages in, decisions made, kept traces out.
//!
//! [`Sampler::ingest`] takes one consumed message; [`Sampler::decide_due`] decides the traces
//! whose time has come; kept traces go to an [`Output`] (the Kafka sink in production, a
//! collector in tests and benchmarks). It is shared by the ingest thread and the deciders.
//! It takes the time as an argument, so it is tested in paused time, without Kafka.
//!
//! By step:
//! - `ingest`: a message in ([`Sampler::ingest`]); late spans, degraded mode
//!   ([`Sampler::set_degraded`]), the head join of a replay.
//! - `decide`: completion ([`Sampler::decide_due`]), memory relief, revoked partitions
//!   ([`Sampler::partitions_revoked`]).
//! - `forward`: kept traces encoded, marked and handed on with their [`Ticket`]s.
//! - [`tally`]: what is counted, once per event: [`Counts`], which Prometheus shows.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::buffer::{Buffer, Completion};
use crate::decision::{Decision, DecisionCache};
use crate::journal::{Delivery, Forwards, Journal};
use crate::memory::Budget;
use crate::offsets::{DecidedRange, Holds};
use crate::otlp::TraceId;
use crate::rules::RuleSet;
use crate::telemetry::exemplars::Exemplars;

mod decide;
mod forward;
mod graveyard;
mod ingest;
pub mod tally;

pub use tally::{Count, Counts, Outcomes, TopicCounts};

/// What a produced message must release once acknowledged, and what to count then.
#[derive(Debug)]
pub struct Ticket {
    /// The offsets the message holds until it is acknowledged.
    pub holds: Holds,
    /// Spans in the message.
    pub spans: u32,
    /// Spans that were read before by this group (replay after a crash or rebalance).
    pub replayed_spans: u32,
    /// When the trace was due, for the decision-latency histogram.
    pub due: Instant,
    /// With a decision log: the forward this message is part of, told of its acknowledgement.
    pub delivery: Option<Arc<Delivery>>,
    /// On the first message of a trace decided from the buffer: when its first span arrived
    /// and what decided it, for the visibility histogram.
    pub visible: Option<(Instant, crate::decision::Trigger)>,
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

    /// Spans of a kept trace that cannot be parsed for redaction, as one OTLP request: never
    /// forwarded. The output may set them aside (the Kafka sink: to the dead-letter topic,
    /// holding `holds` until the broker has them); by default they are only counted.
    fn refuse(&self, trace_id: &TraceId, request: Vec<u8>, reason: &str, holds: &Holds) {
        let _ = (trace_id, request, reason, holds);
    }
}

/// The sampler: buffer, rules, decision cache and output, shared by the ingest thread and the
/// deciders.
pub struct Sampler {
    buffer: Buffer,
    rules: ArcSwap<RuleSet>,
    decisions: DecisionCache,
    counts: Counts,
    output: Arc<dyn Output>,
    max_message_bytes: usize,
    histograms: tally::Histograms,
    budget: Budget,
    /// Service labels of the orphan-span counter (capped).
    pub orphan_services: crate::telemetry::broken::ServiceLabels,
    /// Stress relief's degraded mode: new traces are decided by trace id, not buffered.
    degraded: AtomicBool,
    /// The sample rate of degraded mode.
    stress_rate: AtomicU32,
    /// Decided traces spread over several messages of a partition, for the ingest thread's
    /// head marks (see [`crate::heads`]); `None` when nothing collects them.
    decided_ranges: Option<Mutex<Vec<DecidedRange>>>,
    /// Where decisions are recorded (the decision log), with the forwards in flight.
    forwards: Option<Arc<Forwards>>,
    /// Where the spans of kept traces are offered as the RED metrics' exemplars.
    exemplars: Option<Arc<Exemplars>>,
    /// Counts of traces the ingest thread decided (early rules, full traces), published with
    /// the deciders' next flush: publishing per message cost a dozen allocations each (metric
    /// keys with owned labels).
    ingest_tally: Mutex<tally::Tally>,
    /// Span buffers the deciders are done with, freed by the ingest thread that allocated
    /// them (see [`graveyard`]).
    graveyard: graveyard::Graveyard,
}

impl Sampler {
    /// A sampler that buffers traces until `completion` says they are complete, decides them
    /// with `rules`, remembers decisions in `decisions` and sends kept traces to `output` in
    /// messages of at most `max_message_bytes`.
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
            counts: Counts::default(),
            output,
            max_message_bytes,
            histograms: tally::Histograms::default(),
            budget: Budget::default(),
            orphan_services: crate::telemetry::broken::ServiceLabels::default(),
            degraded: AtomicBool::new(false),
            stress_rate: AtomicU32::new(10),
            decided_ranges: None,
            forwards: None,
            exemplars: None,
            ingest_tally: Mutex::default(),
            graveyard: graveyard::Graveyard::new(graveyard_cap(&Budget::default())),
        }
    }

    /// Offers the spans of every forwarded trace (and of its late spans) to `exemplars`: see
    /// [`crate::telemetry::exemplars`].
    pub fn with_exemplars(mut self, exemplars: Arc<Exemplars>) -> Self {
        self.exemplars = Some(exemplars);
        self
    }

    /// Records every decision in `journal` (the decision log): see [`crate::journal`].
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.forwards = Some(Forwards::new(journal));
        self
    }

    /// Collects the offset ranges of decided traces for [`Sampler::take_decided_ranges`]; the
    /// Kafka input turns this on, and must then take them regularly.
    pub fn with_decided_ranges(mut self) -> Self {
        self.decided_ranges = Some(Mutex::new(Vec::new()));
        self
    }

    /// Sets the memory budget (default: [`Budget::default`]).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.graveyard = graveyard::Graveyard::new(graveyard_cap(&budget));
        self.budget = budget;
        self
    }

    /// The memory budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What this sampler counted: the numbers its Prometheus counters show.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Kept traces whose forwards are not all acknowledged yet (with a journal).
    pub fn forwards_in_flight(&self) -> usize {
        self.forwards.as_ref().map_or(0, |f| f.in_flight())
    }

    /// Frees the span buffers of traces the deciders decided: they are handed back to the
    /// thread that ingests (which allocated them), so that threads do not contend for the
    /// allocator. For that thread, between messages; cheap when there are none.
    pub fn sweep(&self) {
        self.graveyard.sweep();
    }

    /// The shortest time a trace can wait before it is due (see [`Buffer::shortest_wait`]).
    pub fn shortest_wait(&self) -> std::time::Duration {
        self.buffer.shortest_wait()
    }

    /// Undecided traces in the buffer.
    pub fn buffered_traces(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes counted against the memory budget: span data plus per-trace overhead.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffer.bytes()
    }

    /// Reading stopped for memory (back-pressure): the completion clock stands still until
    /// [`Sampler::reading_resumed`], so that traces are not decided for want of spans that
    /// are merely not fetched. See [`Sampler::relieve_memory`].
    pub fn reading_paused(&self, now: Instant) {
        self.buffer.stop_clock(now);
    }

    /// Reading resumed: the completion clock runs again.
    pub fn reading_resumed(&self, now: Instant) {
        self.buffer.start_clock(now);
    }

    /// The decision cache late spans follow; the Kafka input fills it from the decision log
    /// when partitions are assigned.
    pub fn decision_cache(&self) -> &DecisionCache {
        &self.decisions
    }

    /// Sets this instance's share of the fleet's budgets to `owned` of `total` input
    /// partitions (on every rebalance): it reaches the rules in use and every reload of them.
    /// Returns the share set.
    pub fn set_share(&self, owned: usize, total: usize) -> f64 {
        let rules = self.rules.load();
        rules.set_share(owned, total);
        rules.share().fraction()
    }

    /// Replaces the rules (a reload); returns the previous ones.
    pub fn swap_rules(&self, rules: Arc<RuleSet>) -> Arc<RuleSet> {
        self.rules.swap(rules)
    }
}

/// How much span data may wait in the graveyard: a sixteenth of the budget, at most 16 MiB
/// (at a million spans a second, what the deciders free in 50 ms).
fn graveyard_cap(budget: &Budget) -> usize {
    usize::try_from(budget.max_bytes / 16)
        .unwrap_or(usize::MAX)
        .min(16 << 20)
}

#[cfg(test)]
mod tests;
