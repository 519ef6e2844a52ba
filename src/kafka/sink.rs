//! The Kafka output: one message per kept trace (split when large), key = trace id hex,
//! headers naming the rule and the sample rate.
//!
//! Delivery is confirmed in librdkafka's delivery callback, which takes the message's
//! [`Ticket`] and so releases the offsets it held. A failed delivery is sent again (after a
//! pause, see [`super::producer`]) rather than given up: until it is acknowledged its offsets
//! stay uncommitted. Only a span no broker would take (over `kafka.max_message_bytes`) is
//! given up, counted and logged.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use tokio::time::Instant;

use super::dead_letter::{DeadLetters, Letter, UNREDACTABLE};
use super::producer::{
    refused_as_too_large, Deliveries, Flush, Outbound, Outgoing, RetryingProducer, Stage,
};
use super::SetupError;
use crate::decision::{Decision, Trigger};
use crate::offsets::Holds;
use crate::otlp::TraceId;
use crate::sampler::{Output, Ticket};
use crate::telemetry as m;

/// Header naming the rule that kept the trace.
pub const RULE_HEADER: &str = "tailsift.rule";
/// Header with the sample rate the trace was kept at (it stands for that many traces).
pub const SAMPLE_RATE_HEADER: &str = "tailsift.sample_rate";

/// What a kept trace's messages mean: their tickets hold the trace's offsets. Holds the
/// handles of the series every delivery updates, registered once: looking each up by name and
/// labels per delivery (hashing the key, taking the registry's lock) was most of the delivery
/// callback's own cost.
pub struct Forwarded {
    produced: metrics::Counter,
    spans: metrics::Counter,
    replayed_spans: metrics::Counter,
    latency: metrics::Histogram,
    /// `tailsift_trace_visibility_seconds` by trigger, in the order of [`Trigger::ALL`].
    visibility: Vec<(Trigger, metrics::Histogram)>,
}

impl Forwarded {
    fn new() -> Self {
        Forwarded {
            produced: metrics::counter!(m::MESSAGES_PRODUCED),
            spans: metrics::counter!(m::SPANS_FORWARDED),
            replayed_spans: metrics::counter!(m::REPLAYED_SPANS_FORWARDED),
            latency: metrics::histogram!(m::DECISION_LATENCY),
            visibility: Trigger::ALL
                .iter()
                .map(|t| {
                    let h = metrics::histogram!(m::TRACE_VISIBILITY, "trigger" => t.as_str());
                    (*t, h)
                })
                .collect(),
        }
    }
}

impl Deliveries for Forwarded {
    type Opaque = Ticket;

    fn delivered(&self, _msg: &BorrowedMessage<'_>, ticket: Ticket) {
        self.produced.increment(1);
        self.spans.increment(u64::from(ticket.spans));
        if ticket.replayed_spans > 0 {
            self.replayed_spans
                .increment(u64::from(ticket.replayed_spans));
        }
        let now = Instant::now();
        let since = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        self.latency.record(since(ticket.due));
        if let Some((arrived, trigger)) = ticket.visible {
            if let Some((_, h)) = self.visibility.iter().find(|(t, _)| *t == trigger) {
                h.record(since(arrived));
            }
        }
        // Releases the offsets it held (once the decision log has the decision, when there is
        // one).
        ticket.delivered();
    }

    fn failed(
        &self,
        stage: Stage,
        e: &KafkaError,
        out: &mut Outgoing,
        ticket: Ticket,
    ) -> Option<Ticket> {
        metrics::counter!(m::PRODUCE_ERRORS).increment(1);
        match stage {
            Stage::Delivery => {
                tracing::warn!(error = %e, "delivery to the output topic failed; retrying");
            }
            Stage::Enqueue if refused_as_too_large(e) => {
                // Only a single span larger than the limit gets here (traces are split): no
                // broker would take it, and retrying would stall the partition forever.
                tracing::error!(error = %e, bytes = out.payload.len(),
                    "a span larger than kafka.max_message_bytes cannot be forwarded; dropped");
                ticket.delivered();
                return None;
            }
            Stage::Enqueue => {
                tracing::warn!(error = %e, "cannot enqueue a kept trace; retrying");
            }
        }
        Some(ticket)
    }
}

/// The Kafka producer of kept traces.
pub struct KafkaSink {
    producer: Arc<RetryingProducer<Forwarded>>,
    topic: String,
    /// Where spans that cannot be redacted go, with `kafka.dead_letter_topic`.
    dead_letters: OnceLock<Arc<DeadLetters>>,
}

impl KafkaSink {
    /// A sink writing to `topic` with the producer settings `config`.
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Arc<Self>, SetupError> {
        let producer =
            RetryingProducer::new(config, "Kafka producer", "tailsift-retry", Forwarded::new())?;
        Ok(Arc::new(KafkaSink {
            producer,
            topic: topic.to_string(),
            dead_letters: OnceLock::new(),
        }))
    }

    /// Sends spans that cannot be redacted to `letters` (set once, at start).
    pub fn set_dead_letters(&self, letters: Arc<DeadLetters>) {
        let _ = self.dead_letters.set(letters);
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight()
    }
}

/// Stopping makes a decider waiting for room in the queue give up, its trace's offsets left
/// uncommitted.
impl Flush for KafkaSink {
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
    fn stop(&self) {
        self.producer.stop()
    }
}

impl Output for KafkaSink {
    fn send(&self, trace_id: &TraceId, decision: &Decision, messages: Vec<(Vec<u8>, Ticket)>) {
        if !decision.forwards() {
            return;
        }
        let rule = decision.rule();
        let key = trace_id.to_hex();
        let rate = decision.forwarded_rate().to_string();
        for (payload, ticket) in messages {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: RULE_HEADER,
                    value: Some(rule.as_bytes()),
                })
                .insert(Header {
                    key: SAMPLE_RATE_HEADER,
                    value: Some(rate.as_bytes()),
                });
            // While the queue is full the deciders slow down and the buffer fills.
            let record = Outbound {
                topic: &self.topic,
                partition: None,
                key: Some(key.as_bytes()),
                payload: &payload,
                headers: Some(headers),
            };
            self.producer.send(record, ticket);
        }
    }

    /// To the dead-letter topic, keyed by trace id. The source headers are empty (partition
    /// and offset -1): where a refused span arrived is not known here. A trace keeps one hold
    /// per partition it has spans from, on its first message there, and names the partition
    /// by its index in the ingest thread's table, not by topic and number; a span from a later
    /// message, or a chunk merged from several, has no origin of its own to give. The letter
    /// holds the trace's lowest offset, and so every later one of its partition, until the
    /// broker has it.
    fn refuse(&self, trace_id: &TraceId, request: Vec<u8>, reason: &str, holds: &Holds) {
        let (Some(letters), Some(hold)) = (
            self.dead_letters.get(),
            holds.iter().min_by_key(|h| h.offset),
        ) else {
            return;
        };
        let key = trace_id.to_hex();
        letters.send(
            Some(key.as_bytes()),
            &request,
            Letter {
                topic: String::new(),
                partition: -1,
                offset: -1,
                kind: UNREDACTABLE,
                error: reason.to_string(),
                hold: hold.clone(),
            },
        );
    }
}
