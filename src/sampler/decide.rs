//! Decide: a buffered trace taken out and run through the rules, when its time has come
//! (completion), when the buffer reached its memory budget (oldest first), or when its
//! partition left this instance. Kept traces go on to `forward`; dropped ones are
//! recorded in the decision log, if there is one.

use tokio::time::Instant;

use crate::buffer::TraceEntry;
use crate::decision::{unix_ms, Decision, Trigger};
use crate::journal::JournalEntry;
use crate::offsets::DecidedRange;
use crate::otlp::TraceId;
use crate::rules::TraceView;

use super::tally::Tally;
use super::Sampler;

impl Sampler {
    /// Decides one trace now, if it is still buffered. Returns the decision.
    pub fn decide(&self, id: &TraceId, trigger: Trigger, due: Instant) -> Option<Decision> {
        let mut tally = Tally::default();
        let d = self.decide_counted(id, trigger, due, &mut tally);
        self.flush(tally);
        d
    }

    /// Decides one trace, counting into `tally` (flushed by the caller, once per batch).
    pub(super) fn decide_counted(
        &self,
        id: &TraceId,
        trigger: Trigger,
        due: Instant,
        tally: &mut Tally,
    ) -> Option<Decision> {
        let rules = self.rules.load();
        let (mut entry, decision) = self.buffer.take(id, |id, entry| {
            // From what the spans showed the rules as they arrived: no span is parsed here.
            let d = rules.decide_buffered(*id, entry, Instant::now());
            self.decisions.insert(*id, d.clone());
            // Exemplars from forwarded traces only (their spans are read again for it).
            if let (Some(ex), true) = (&self.exemplars, d.forwards()) {
                ex.offer_trace(&TraceView::new(*id, entry), d.forwarded_rate());
            }
            // A trace decided by an early rule is incomplete by design (its root usually
            // comes last): its missing parents say nothing about broken instrumentation.
            if trigger != Trigger::Early {
                tally.without_root += u64::from(crate::telemetry::broken::inspect_entry(
                    entry,
                    &mut tally.orphans,
                ));
            }
            d
        })?;
        tally.decided(&decision, trigger);
        self.note_decided_range(&entry);
        self.histograms
            .duration
            .record(entry.duration_nanos() as f64 / 1e9);
        self.histograms.spans.record(f64::from(entry.span_count));
        if decision.forwards() {
            tracing::debug!(trace_id = %id, rule = decision.rule(), trigger = trigger.as_str(), spans = entry.span_count, "trace forwarded");
            self.forward(id, &decision, &entry, due, trigger);
        } else if let Some(f) = &self.forwards {
            // Its offsets stay held until the decision log has the decision.
            f.record_now(JournalEntry {
                trace_id: *id,
                decision: decision.clone(),
                decided_at: unix_ms(),
                partitions: entry.holds.iter().map(|h| (h.partition, None)).collect(),
                holds: std::mem::take(&mut entry.holds),
                acked_at: None,
            });
        }
        // Its span buffers go to the thread that allocated them (see `graveyard`); a dropped
        // trace's holds are released here, as `entry` goes out of scope (or by the decision
        // log, once it has the decision).
        tally.dead.push(std::mem::take(&mut entry.groups));
        Some(decision)
    }

    /// Notes the offset ranges of a decided trace spread over several messages of a
    /// partition, for [`Sampler::take_decided_ranges`] (when collected).
    fn note_decided_range(&self, entry: &TraceEntry) {
        let Some(ranges) = &self.decided_ranges else {
            return;
        };
        let mut spread = entry
            .holds
            .iter()
            .zip(&entry.ranges)
            .filter(|(_, r)| r.0 < r.1)
            .map(|(h, r)| DecidedRange {
                partition: h.partition,
                first: r.0,
                last: r.1,
            })
            .peekable();
        if spread.peek().is_some() {
            // Before the holds are released (by the caller, or on the produce's
            // acknowledgement): the ingest thread reads the holds first, then these ranges.
            ranges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(spread);
        }
    }

    /// Moves the decided ranges collected since the last call into `out`: the ingest thread
    /// turns them into head marks (see [`crate::heads`]). Read the partitions' safe offsets
    /// first: a range is noted before its trace's holds are released.
    pub fn take_decided_ranges(&self, out: &mut Vec<DecidedRange>) {
        if let Some(r) = &self.decided_ranges {
            out.append(&mut r.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// The traces complete at `now`, with what completed them and when they were due, without
    /// deciding them (for measuring each decision; [`Sampler::decide_due`] decides them).
    pub fn due(&self, now: Instant, out: &mut Vec<(TraceId, Trigger, Instant)>) {
        self.buffer.due(now, out);
    }

    /// Decides every trace that is complete at `now`. Returns how many were decided.
    pub fn decide_due(&self, now: Instant) -> usize {
        let mut due = Vec::new();
        self.due(now, &mut due);
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
    /// [`Sampler::reading_paused`]); once the pause has lasted `decision_wait` (as long as a
    /// trace is awaited without spans), the oldest traces, the likeliest to be complete, are
    /// decided until the buffer is below the low watermark and reading resumes. Either way
    /// traces whose root has arrived go first (see [`crate::buffer::Buffer::oldest`]).
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
        self.counts.released.add(released as u64);
        (released, decided)
    }
}
