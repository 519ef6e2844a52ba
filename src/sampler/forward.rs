//! Forward: a kept trace (or the late spans of one) encoded into messages, marked when
//! marking is on, and handed to the [`Output`](super::Output) with a [`Ticket`] each: what the
//! message holds, what to count once it is acknowledged, and the decision log's bookkeeping.

use std::sync::Arc;

use tokio::time::Instant;

use crate::buffer::TraceEntry;
use crate::decision::{unix_ms, Decision, Remembered};
use crate::journal::Delivery;
use crate::offsets::{Hold, Holds};
use crate::otlp::decode::TraceGroup;
use crate::otlp::encode::{encode_trace, span_shares, Messages};
use crate::otlp::{SpanContext, TraceId};

use super::{Sampler, Ticket};

/// What goes with the messages of one forward.
struct Shipment<'a> {
    holds: &'a Holds,
    spans: u32,
    /// Spans read before by this group (a replay).
    replayed: bool,
    due: Instant,
    delivery: Option<Arc<Delivery>>,
}

impl Sampler {
    /// Forwards a trace just decided to keep, from its buffered entry.
    pub(super) fn forward(
        &self,
        id: &TraceId,
        decision: &Decision,
        entry: TraceEntry,
        due: Instant,
    ) {
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
        let chunks = group.by_context();
        let decision = &remembered.decision;
        if let Some(ex) = &self.exemplars {
            ex.offer_group(group, decision.forwarded_rate()); // late spans refresh exemplars
        }
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

    /// Hands the messages to the output, each with its ticket.
    fn send(&self, id: &TraceId, decision: &Decision, messages: Messages, s: Shipment<'_>) {
        let shares = span_shares(s.spans, messages.len());
        let with_tickets = messages
            .into_iter()
            .zip(shares)
            .map(|(msg, share)| {
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

    /// Encodes a forwarded trace's span chunks, marking the spans when marking is on.
    fn encode_marked<'a>(
        &self,
        decision: &Decision,
        chunks: impl Iterator<Item = (&'a SpanContext, &'a [u8])> + Clone,
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
        let Some(marks) = marks else {
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
}
