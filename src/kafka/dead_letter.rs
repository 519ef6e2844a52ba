//! The dead-letter topic: messages that do not decode are copied there, as they arrived, with
//! headers naming where they came from and why they were refused.
//!
//! At-least-once like the output: the copy holds the source message's offset (an
//! [`OffsetHold`]) until the broker acknowledges it, so the offset is committed only after the
//! dead letter is safely written. A failed delivery is sent again after a pause, never given
//! up; at shutdown an unacknowledged letter leaves its offset uncommitted and is re-sent after
//! the restart (a duplicate in the dead-letter topic, never a loss).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::metrics as m;
use crate::offsets::OffsetHold;

/// Header: the topic the message was read from.
pub const SOURCE_TOPIC_HEADER: &str = "tailsift.source.topic";
/// Header: its partition (decimal).
pub const SOURCE_PARTITION_HEADER: &str = "tailsift.source.partition";
/// Header: its offset (decimal).
pub const SOURCE_OFFSET_HEADER: &str = "tailsift.source.offset";
/// Header: why it was refused (a small fixed word: `malformed_protobuf`, `malformed_json`,
/// `empty`).
pub const ERROR_KIND_HEADER: &str = "tailsift.error.kind";
/// Header: the decoder's error message.
pub const ERROR_HEADER: &str = "tailsift.error";

/// One refused message on its way to the dead-letter topic.
pub struct Letter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub kind: &'static str,
    pub error: String,
    /// Released (dropped) once the broker has the letter.
    pub hold: Arc<OffsetHold>,
}

impl Letter {
    fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
            Header {
                key,
                value: Some(value.as_bytes()),
            }
        }
        OwnedHeaders::new_with_capacity(5)
            .insert(h(SOURCE_TOPIC_HEADER, &self.topic))
            .insert(h(SOURCE_PARTITION_HEADER, &partition))
            .insert(h(SOURCE_OFFSET_HEADER, &offset))
            .insert(h(ERROR_KIND_HEADER, self.kind))
            .insert(h(ERROR_HEADER, &self.error))
    }
}

pub struct DeadLetterContext {
    retries: mpsc::Sender<Box<Letter>>,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = Box<Letter>;

    fn delivery(&self, result: &DeliveryResult<'_>, letter: Box<Letter>) {
        match result {
            Ok(_) => {
                metrics::counter!(m::DEAD_LETTERS, "kind" => letter.kind).increment(1);
                // Dropping the letter releases the source offset.
            }
            Err((e, _)) => {
                metrics::counter!(m::DEAD_LETTER_ERRORS).increment(1);
                tracing::warn!(error = %e, "delivery to the dead-letter topic failed; retrying");
                let _ = self.retries.send(shrink_if_too_large(letter, e));
            }
        }
    }
}

/// A letter no broker would take (its payload over the size limit) would be retried forever
/// and hold its partition's commits back: it is sent again without its payload instead, its
/// headers still naming where the original is.
fn shrink_if_too_large(mut letter: Box<Letter>, e: &KafkaError) -> Box<Letter> {
    let too_large = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    );
    if too_large && !letter.payload.is_empty() {
        letter.error = format!(
            "{} (payload of {} bytes omitted: too large for the dead-letter topic)",
            letter.error,
            letter.payload.len()
        );
        letter.payload = Vec::new();
    }
    letter
}

/// The producer of dead letters.
pub struct DeadLetters {
    producer: ThreadedProducer<DeadLetterContext>,
    topic: String,
    retries: mpsc::Sender<Box<Letter>>,
    stopping: AtomicBool,
}

impl DeadLetters {
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Arc<Self>, KafkaError> {
        let (tx, rx) = mpsc::channel::<Box<Letter>>();
        let producer = config.create_with_context(DeadLetterContext {
            retries: tx.clone(),
        })?;
        let dl = Arc::new(DeadLetters {
            producer,
            topic: topic.to_string(),
            retries: tx,
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&dl);
        std::thread::Builder::new()
            .name("tailsift-dlq-retry".into())
            .spawn(move || {
                while let Ok(letter) = rx.recv() {
                    std::thread::sleep(Duration::from_millis(500));
                    let Some(dl) = weak.upgrade() else { break };
                    dl.send(letter);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start a thread: {e}")))?;
        Ok(dl)
    }

    /// Sends a letter; its hold is released when the broker acknowledges it.
    pub fn send(&self, letter: Box<Letter>) {
        let headers = letter.headers();
        // The record borrows key and payload from the letter it also carries: copy them out.
        let key = letter.key.clone();
        let payload = letter.payload.clone();
        let mut record = BaseRecord::with_opaque_to(&self.topic, letter)
            .payload(payload.as_slice())
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(k.as_slice());
        }
        // Once stopping, an unsent letter's offset was never committed.
        if let Err((e, r)) =
            crate::kafka::sink::enqueue(&self.producer, record, Some(&self.stopping))
        {
            // Any other refusal: the offset stays held and the letter is tried again; an
            // operator sees the errors.
            metrics::counter!(m::DEAD_LETTER_ERRORS).increment(1);
            tracing::warn!(error = %e, "cannot enqueue a dead letter; retrying");
            let _ = self
                .retries
                .send(shrink_if_too_large(r.delivery_opaque, &e));
        }
    }

    /// Waits for the letters in flight, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Stops waiting on a full queue (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}
