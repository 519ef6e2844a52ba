//! The sampler without Kafka, in paused time: it takes the time as an argument, so tokio's
//! paused clock (`start_paused`, `advance`) stands for the wall clock, and a collecting
//! [`Output`] and journal stand for the producer and the decision log.
//!
//! - [`log`]: what is recorded in the decision log and when; spans following logged decisions.
//! - [`late`]: late spans following a cached decision; stress relief's degraded mode.
//! - [`rebalance`]: the head join of a replay; revoked partitions.
//! - [`sdk`]: traffic recorded from the OpenTelemetry SDK, replayed at its export times.
//! - [`memory`]: memory relief: the oldest traces decided at the budget or during a pause;
//!   the per-trace byte limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::buffer::Completion;
use crate::heads::Heads;
use crate::journal::Collected;
use crate::offsets::{MessageHold, PartitionOffsets};
use crate::otlp::build::*;
use crate::otlp::decode::Decoder;
use crate::rules::parse_file;

mod late;
mod log;
mod memory;
mod rebalance;
mod sdk;
mod tick;

/// Keeps traces with an error, drops the rest.
const RULES: &str = "rules:
  - name: errors
    conditions: trace.error = true
    outcome: keep
  - name: rest
    outcome: drop
";

/// One kept trace's messages as the output got them.
type Sent = (TraceId, Decision, Vec<(Vec<u8>, Ticket)>);

/// Kept traces as the output got them, tickets included.
#[derive(Default)]
struct Collect {
    sent: Mutex<Vec<Sent>>,
}

impl Output for Collect {
    fn send(&self, id: &TraceId, decision: &Decision, messages: Vec<(Vec<u8>, Ticket)>) {
        self.sent
            .lock()
            .expect("lock")
            .push((*id, decision.clone(), messages));
    }
}

impl Collect {
    /// Takes what was sent: (trace, decision, tickets).
    fn take(&self) -> Vec<(TraceId, Decision, Vec<Ticket>)> {
        std::mem::take(&mut *self.sent.lock().expect("lock"))
            .into_iter()
            .map(|(id, d, m)| (id, d, m.into_iter().map(|(_, t)| t).collect()))
            .collect()
    }

    /// Takes what was sent: (trace, rule, spans), each ticket acknowledged.
    fn take_delivered(&self) -> Vec<(TraceId, String, u32)> {
        self.take()
            .into_iter()
            .map(|(id, d, tickets)| {
                let spans = tickets.iter().map(|t| t.spans).sum();
                tickets.into_iter().for_each(Ticket::delivered);
                (id, d.rule().to_string(), spans)
            })
            .collect()
    }
}

/// The span counts of [`Counts`] that ingesting a message moves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Spans {
    late_kept: u64,
    late_dropped: u64,
    stress_kept: u64,
    stress_dropped: u64,
    logged_kept: u64,
    logged_dropped: u64,
    skipped_forwarded: u64,
}

impl Spans {
    fn of(c: &Counts) -> Self {
        Spans {
            late_kept: c.late.kept.get(),
            late_dropped: c.late.dropped.get(),
            stress_kept: c.stress.kept.get(),
            stress_dropped: c.stress.dropped.get(),
            logged_kept: c.logged.kept.get(),
            logged_dropped: c.logged.dropped.get(),
            skipped_forwarded: c.skipped_forwarded.get(),
        }
    }

    fn since(self, b: Spans) -> Spans {
        Spans {
            late_kept: self.late_kept - b.late_kept,
            late_dropped: self.late_dropped - b.late_dropped,
            stress_kept: self.stress_kept - b.stress_kept,
            stress_dropped: self.stress_dropped - b.stress_dropped,
            logged_kept: self.logged_kept - b.logged_kept,
            logged_dropped: self.logged_dropped - b.logged_dropped,
            skipped_forwarded: self.skipped_forwarded - b.skipped_forwarded,
        }
    }
}

/// A sampler with a collecting output and journal, and the offsets of its partitions as the
/// ingest thread would track them.
struct Fixture {
    sampler: Sampler,
    output: Arc<Collect>,
    log: Arc<Collected>,
    decoder: Decoder,
    offsets: HashMap<u32, PartitionOffsets>,
}

/// The sampler on [`RULES`], default completion and budget.
fn fixture() -> Fixture {
    Fixture::with(RULES, Completion::default(), Budget::default())
}

impl Fixture {
    fn with(rules: &str, completion: Completion, budget: Budget) -> Fixture {
        let rules =
            RuleSet::new(parse_file("rules.yaml", rules).expect("rules"), None).expect("set");
        Fixture::with_set(rules, completion, budget)
    }

    fn with_set(rules: RuleSet, completion: Completion, budget: Budget) -> Fixture {
        let output = Arc::new(Collect::default());
        let log = Arc::new(Collected::default());
        let sampler = Sampler::new(
            completion,
            rules,
            DecisionCache::new(1000, Duration::from_secs(300)),
            output.clone(),
            1 << 20,
        )
        .with_journal(log.clone())
        .with_budget(budget)
        .with_decided_ranges();
        Fixture {
            sampler,
            output,
            log,
            decoder: Decoder::new(),
            offsets: HashMap::new(),
        }
    }

    /// Ingests `payload` as the message at `offset` of partition 0 (ingest index 0).
    fn ingest(&mut self, offset: i64, payload: &[u8], replayed: bool) -> Spans {
        self.ingest_at(0, offset, payload, replayed, None)
    }

    /// Ingests `payload` as the message at `offset` of the partition with ingest index
    /// `partition`, with the heads of a replay if any. Returns the counts it moved.
    fn ingest_at(
        &mut self,
        partition: u32,
        offset: i64,
        payload: &[u8],
        replayed: bool,
        heads: Option<&mut Heads>,
    ) -> Spans {
        let before = Spans::of(self.sampler.counts());
        let hold = MessageHold::new(partition, offset);
        self.sampler
            .ingest_with_heads(
                &mut self.decoder,
                payload,
                &hold,
                replayed,
                Instant::now(),
                heads,
            )
            .expect("decodes");
        self.partition(partition).processed_message(hold);
        Spans::of(self.sampler.counts()).since(before)
    }

    /// The offsets of the partition with ingest index `partition`.
    fn partition(&mut self, partition: u32) -> &mut PartitionOffsets {
        self.offsets.entry(partition).or_default()
    }

    /// Bytes of decided traces' span buffers waiting for the ingest thread to free them.
    fn graveyard_waiting(&self) -> usize {
        self.sampler.graveyard.waiting()
    }

    /// The first offset of partition 0 not safe to commit yet.
    fn safe_offset(&mut self) -> Option<i64> {
        self.partition(0).safe_offset()
    }
}

/// Trace `n`: (id, a payment span — failing with `error` — and a root span from the gateway).
fn trace(n: u64, error: bool) -> (TraceId, Vec<u8>, Vec<u8>) {
    let t = trace_id(n);
    let mut pay = span(t, 2, Some(1), "pay", 2, 8);
    if error {
        pay = with_error(pay);
    }
    (
        TraceId(t),
        request("payment", vec![pay]),
        request("gateway", vec![span(t, 1, None, "GET /", 1, 9)]),
    )
}

/// After the root grace of [`Completion::default`]: traces with their root are complete.
fn past_root_grace() -> Instant {
    Instant::now() + Duration::from_secs(3)
}
