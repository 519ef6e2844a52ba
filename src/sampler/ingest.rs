//! Ingest: one consumed message in. Its spans join their buffered traces, follow a decision
//! already made (late spans), or, in stress relief's degraded mode, are decided by trace id
//! alone. A replayed partition's straddling traces get their heads back first (the head join).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use crate::buffer::Ingested;
use crate::decision::{unix_ms, Remembered, Trigger};
use crate::heads::Heads;
use crate::journal::JournalEntry;
use crate::offsets::{Hold, OffsetHold};
use crate::otlp::decode::{DecodeError, Decoder, TraceGroup};
use crate::otlp::TraceId;
use crate::stress;

use super::tally::{MessageTally, Tally};
use super::Sampler;

/// Traces of one message to decide on the ingest thread (an early rule decided them, or they
/// reached their span limit): rarely more than a few, kept on the stack.
type Full = smallvec::SmallVec<[(TraceId, Trigger); 4]>;

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
    /// Takes one consumed message. `hold` stands for the message's offset: traces that still
    /// need it keep a clone. Traces that reach the span limit are decided before returning.
    /// Returns the number of spans the message brought (the caller counts them by topic);
    /// everything else is counted in [`Sampler::counts`].
    pub fn ingest(
        &self,
        decoder: &mut Decoder,
        payload: &[u8],
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
    ) -> Result<usize, DecodeError> {
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
    ) -> Result<usize, DecodeError> {
        self.graveyard.sweep();
        let spans = decoder
            .decode(payload)
            .inspect_err(|e| self.counts.decode_failed(e))?;
        let mut tally = MessageTally {
            invalid_spans: decoder.invalid_spans,
            ..MessageTally::default()
        };
        let mut full = Full::new();
        let degraded = self.degraded();
        let rules = self.rules.load();
        for group in decoder.groups(payload) {
            if let Some(h) = heads.as_deref_mut() {
                if !degraded {
                    self.join_head(h, &group.trace_id, hold, now, &mut full);
                }
            }
            let ingested = if degraded {
                match self
                    .buffer
                    .ingest_existing(&group, hold, replayed, now, Some(&rules))
                {
                    Some(i) => i,
                    None => {
                        self.ingest_degraded(&group, hold, replayed, now, &mut tally);
                        continue;
                    }
                }
            } else {
                self.buffer
                    .ingest_with(&group, hold, replayed, now, &self.decisions, Some(&rules))
            };
            match ingested {
                Ingested::Buffered => {}
                Ingested::Full(trigger) => full.push((group.trace_id, trigger)),
                Ingested::Late(remembered) => {
                    let forwards = remembered.decision.forwards();
                    if remembered.logged.is_some() {
                        match forwards {
                            true => tally.logged_kept += group.len(),
                            false => tally.logged_dropped += group.len(),
                        }
                    }
                    if remembered.forwarded(hold.partition(), hold.offset()) {
                        tally.skipped_forwarded += group.len();
                    } else if forwards {
                        tally.late_kept += group.len();
                        self.forward_late(&group, &remembered, hold, replayed, now);
                    } else {
                        tally.late_dropped += group.len();
                    }
                }
            }
        }
        self.counts.add_message(&tally);
        if !full.is_empty() {
            // Counted where the deciders' next flush (every tick) publishes them.
            let mut tally = self.ingest_tally.lock().unwrap_or_else(|e| e.into_inner());
            for (id, trigger) in full {
                self.decide_counted(&id, trigger, now, &mut tally);
            }
            tally.dead.clear(); // this thread allocated them: freed here
        }
        Ok(spans)
    }

    /// Buffers the head of trace `id` from `heads`, if it has one there and was not decided
    /// since (then its replayed spans simply follow that decision).
    fn join_head(
        &self,
        heads: &mut Heads,
        id: &TraceId,
        tail: &impl Hold,
        now: Instant,
        full: &mut Full,
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
            let rules = self.rules.load();
            for group in decoder.groups(payload).filter(|g| g.trace_id == *id) {
                match self.buffer.ingest_with(
                    &group,
                    &hold,
                    true,
                    now,
                    &self.decisions,
                    Some(&rules),
                ) {
                    Ingested::Full(trigger) => full.push((*id, trigger)),
                    Ingested::Buffered | Ingested::Late(_) => {}
                }
            }
        }
        self.counts.heads_merged.add(1);
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
        tally: &mut MessageTally,
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
                        acked_at: None,
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
            tally.skipped_forwarded += group.len();
        } else if remembered.decision.is_keep() {
            tally.stress_kept += group.len();
            self.forward_late(group, &remembered, hold, replayed, now);
        } else {
            tally.stress_dropped += group.len();
        }
    }
}
