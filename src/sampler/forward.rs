//! Forward: a kept trace (or the late spans of one) encoded into messages, marked when
//! marking is on, and handed to the [`Output`](super::Output) with a [`Ticket`] each: what the
//! message holds, what to count once it is acknowledged, and the decision log's bookkeeping.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::buffer::TraceEntry;
use crate::decision::{unix_ms, Decision, Remembered, Trigger};
use crate::journal::Delivery;
use crate::offsets::{Hold, Holds};
use crate::otlp::decode::TraceGroup;
use crate::otlp::encode::{encode_trace, span_shares, Messages};
use crate::otlp::{SpanContext, TraceId};
use crate::redact::Tally;

use super::{Sampler, Ticket};

/// Traces with spans refused by redaction, since the start: logged at the 1st, 2nd, 4th, 8th...
/// (as undecodable messages are), so that a producer of broken spans cannot flood the log;
/// `tailsift_redaction_refused_spans_total` counts every span.
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// A chunk's context as it leaves: the buffered one, or a copy with its resource redacted.
enum Ctx<'a> {
    Shared(&'a SpanContext),
    Redacted(Box<SpanContext>),
}

impl Ctx<'_> {
    fn get(&self) -> &SpanContext {
        match self {
            Ctx::Shared(c) => c,
            Ctx::Redacted(c) => c,
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
    /// A trace decided from the buffer: its first span's arrival and its trigger.
    visible: Option<(Instant, Trigger)>,
}

impl Sampler {
    /// Forwards a trace just decided to keep, from its buffered entry.
    pub(super) fn forward(
        &self,
        id: &TraceId,
        decision: &Decision,
        entry: &TraceEntry,
        due: Instant,
        trigger: Trigger,
    ) {
        let visible = Some((self.buffer.arrived(entry), trigger));
        let messages = self.encode_out(
            id,
            decision,
            entry.groups.iter().map(|g| (&*g.ctx, g.spans.as_slice())),
            &entry.holds,
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
                visible,
            },
        );
    }

    /// Forwards the spans of one message of a trace already kept (late spans), under the
    /// remembered decision and its time.
    pub(super) fn forward_late(
        &self,
        group: &TraceGroup<'_>,
        remembered: &Remembered,
        hold: &impl Hold,
        replayed: bool,
        now: Instant,
    ) {
        let chunks = group.chunks();
        let decision = &remembered.decision;
        if let Some(ex) = &self.exemplars {
            ex.offer_group(group, decision.forwarded_rate()); // late spans refresh exemplars
        }
        let spans = group.len() as u32;
        let holds: Holds = smallvec::smallvec![hold.hold()];
        let messages = self.encode_out(
            &group.trace_id,
            decision,
            chunks.iter().map(|(c, b)| (&***c, &**b)),
            &holds,
        );
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
                visible: None,
            },
        );
    }

    /// Hands the messages to the output, each with its ticket.
    fn send(&self, id: &TraceId, decision: &Decision, messages: Messages, s: Shipment<'_>) {
        if messages.is_empty() {
            // Every span was refused by redaction (see `encode_out`): nothing to acknowledge,
            // so the forward is done now and its decision can be logged.
            if let Some(d) = &s.delivery {
                d.delivered();
            }
            return;
        }
        let shares = span_shares(s.spans, messages.len());
        let with_tickets = messages
            .into_iter()
            .zip(shares)
            .enumerate()
            .map(|(i, (msg, share))| {
                let ticket = Ticket {
                    holds: s.holds.clone(),
                    spans: share,
                    replayed_spans: if s.replayed { share } else { 0 },
                    due: s.due,
                    delivery: s.delivery.clone(),
                    visible: s.visible.filter(|_| i == 0),
                };
                (msg, ticket)
            })
            .collect();
        self.output.send(id, decision, with_tickets);
    }

    /// Encodes a forwarded trace's span chunks: redacted when `redaction.yaml` says so, then
    /// marked when marking is on. Spans that cannot be redacted are not forwarded: they go to
    /// the output's [`refuse`](super::Output::refuse) (the dead-letter topic), held by `holds`.
    fn encode_out<'a>(
        &self,
        id: &TraceId,
        decision: &Decision,
        chunks: impl Iterator<Item = (&'a SpanContext, &'a [u8])> + Clone,
        holds: &Holds,
    ) -> Messages {
        let rules = self.rules.load();
        let configured = rules
            .marking()
            .zip(decision.mark())
            .and_then(|(m, mark)| m.marks(mark, rules.salted()));
        // The deciding rule's own marks (`marks:`) come after the configured ones.
        let marks = match (configured, rules.rule_marks(decision)) {
            (Some(c), Some(own)) => Some(c.and(own)),
            (c, own) => c.or_else(|| own.cloned()),
        };
        let redaction = rules.redaction();
        if marks.is_none() && redaction.is_none() {
            return encode_trace(chunks, self.max_message_bytes);
        }
        let mut tally = Tally::default();
        let mut refused = Vec::new();
        // Sized up front: an entry holds a whole context, and growing by doubling moved them.
        let mut out: Vec<(Ctx<'a>, Cow<'a, [u8]>)> = Vec::with_capacity(chunks.clone().count());
        out.extend(chunks.filter_map(|(ctx, spans)| {
            let (ctx, spans) = match redaction {
                None => (Ctx::Shared(ctx), Cow::Borrowed(spans)),
                Some(r) => {
                    let c = r.chunk(ctx, spans, &mut tally);
                    if let Some(reason) = c.reason {
                        refused.push((ctx, c.refused, reason));
                    }
                    (
                        c.context.map_or(Ctx::Shared(ctx), Ctx::Redacted),
                        c.spans.map_or(Cow::Borrowed(spans), Cow::Owned),
                    )
                }
            };
            if spans.is_empty() {
                return None;
            }
            let spans = match &marks {
                None => spans,
                Some(m) => {
                    let mut out = Vec::new();
                    m.mark_spans(&spans, &mut out);
                    Cow::Owned(out)
                }
            };
            Some((ctx, spans))
        }));
        if let Some(r) = redaction {
            r.record(&tally);
        }
        for (ctx, spans, reason) in refused {
            let n = REFUSALS.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(trace_id = %id, error = %reason, refusals = n,
                    "a kept span cannot be parsed for redaction; not forwarded");
            }
            for msg in encode_trace(std::iter::once((ctx, spans.as_slice())), usize::MAX) {
                self.output.refuse(id, msg, &reason.to_string(), holds);
            }
        }
        encode_trace(
            out.iter().map(|(c, b)| (c.get(), &**b)),
            self.max_message_bytes,
        )
    }
}
