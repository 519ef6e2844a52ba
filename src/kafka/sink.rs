//! The Kafka output: one message per kept trace (split when large), key = trace id hex,
//! headers naming the rule and the sample rate.
//!
//! Delivery is confirmed in librdkafka's delivery callback, which drops the message's
//! [`Ticket`] and so releases the offsets it held. A failed delivery is sent again (after a
//! pause) rather than given up: until it is acknowledged its offsets stay uncommitted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::decision::Decision;
use crate::metrics as m;
use crate::otlp::TraceId;
use crate::sampler::{Output, Ticket};

/// Header naming the rule that kept the trace.
pub const RULE_HEADER: &str = "tailsift.rule";
/// Header with the sample rate the trace was kept at (it stands for that many traces).
pub const SAMPLE_RATE_HEADER: &str = "tailsift.sample_rate";

struct Retry {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    ticket: Box<Ticket>,
}

pub struct SinkContext {
    retries: mpsc::Sender<Retry>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        match result {
            Ok(_) => {
                metrics::counter!(m::MESSAGES_PRODUCED).increment(1);
                metrics::counter!(m::SPANS_FORWARDED).increment(u64::from(ticket.spans));
                if ticket.replayed_spans > 0 {
                    metrics::counter!(m::REPLAYED_SPANS_FORWARDED)
                        .increment(u64::from(ticket.replayed_spans));
                }
                metrics::histogram!(m::DECISION_LATENCY).record(ticket.due.elapsed().as_secs_f64());
                // Releases the offsets it held (once the decision log has the decision, when
                // there is one).
                ticket.delivered();
            }
            Err((err, msg)) => {
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::warn!(error = %err, "delivery to the output topic failed; retrying");
                let mut headers = OwnedHeaders::new();
                if let Some(h) = msg.headers() {
                    for hd in h.iter() {
                        headers = headers.insert(Header {
                            key: hd.key,
                            value: hd.value,
                        });
                    }
                }
                let retry = Retry {
                    key: msg.key().unwrap_or_default().to_vec(),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    headers,
                    ticket,
                };
                // If the retry thread is gone we are shutting down: the offsets stay held
                // and uncommitted, so the trace is replayed after restart.
                let _ = self.retries.send(retry);
            }
        }
    }
}

/// A record one of our producers enqueues, with the refusal `enqueue` hands back.
type Refused<'a, C> = (
    KafkaError,
    BaseRecord<'a, [u8], [u8], <C as ProducerContext>::DeliveryOpaque>,
);

/// Enqueues `record` on `producer`, waiting while librdkafka's queue is full (back-pressure:
/// a slow or absent broker; the producer's thread serves delivery reports meanwhile, so the
/// queue drains). Gives up once `stopping` is set (shutdown): the record is left unsent and
/// its ticket is leaked on purpose, so that the offsets it holds stay held and the last
/// commit cannot pass them; the next owner replays them. Any other refusal is handed back.
// The refusal is `ThreadedProducer::send`'s own, handed back as it came, on a cold path.
#[allow(clippy::result_large_err)]
pub(crate) fn enqueue<'a, C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, [u8], [u8], C::DeliveryOpaque>,
    stopping: Option<&AtomicBool>,
) -> Result<(), Refused<'a, C>> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if stopping.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    std::mem::forget(r);
                    return Ok(());
                }
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(refused) => return Err(refused),
        }
    }
}

/// The Kafka producer of kept traces.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    retries: mpsc::Sender<Retry>,
    topic: String,
    stopping: Arc<AtomicBool>,
}

impl KafkaSink {
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Arc<Self>, KafkaError> {
        let (tx, rx) = mpsc::channel::<Retry>();
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(SinkContext {
            retries: tx.clone(),
        })?;
        let sink = Arc::new(KafkaSink {
            producer,
            retries: tx,
            topic: topic.to_string(),
            stopping: Arc::new(AtomicBool::new(false)),
        });
        let weak = Arc::downgrade(&sink);
        std::thread::Builder::new()
            .name("tailsift-retry".into())
            .spawn(move || {
                while let Ok(r) = rx.recv() {
                    std::thread::sleep(Duration::from_millis(500));
                    let Some(sink) = weak.upgrade() else { break };
                    sink.produce(&r.key, &r.payload, r.headers, r.ticket);
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start the retry thread: {e}"))
            })?;
        Ok(sink)
    }

    fn produce(&self, key: &[u8], payload: &[u8], headers: OwnedHeaders, ticket: Box<Ticket>) {
        let record = BaseRecord::with_opaque_to(&self.topic, ticket)
            .key(key)
            .payload(payload)
            .headers(headers);
        // While the queue is full the deciders slow down and the buffer fills.
        match enqueue(&self.producer, record, Some(&self.stopping)) {
            Ok(()) => {}
            Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), r)) => {
                // Only a single span larger than the limit gets here (traces are split):
                // no broker would take it, and retrying would stall the partition forever.
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::error!(error = %e, bytes = payload.len(),
                    "a span larger than kafka.max_message_bytes cannot be forwarded; dropped");
                r.delivery_opaque.delivered();
            }
            Err((e, r)) => {
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::warn!(error = %e, "cannot enqueue a kept trace; retrying");
                let retry = Retry {
                    key: key.to_vec(),
                    payload: payload.to_vec(),
                    headers: r.headers.unwrap_or_else(OwnedHeaders::new),
                    ticket: r.delivery_opaque,
                };
                // Without the retry thread (shutdown) the offsets simply stay uncommitted.
                let _ = self.retries.send(retry);
            }
        }
    }

    /// Waits for every message in flight to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Stops retrying enqueues (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
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
            self.produce(key.as_bytes(), &payload, headers, Box::new(ticket));
        }
    }
}
