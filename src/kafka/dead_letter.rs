//! Messages that do not decode: counted, logged (once per kind, then ever more rarely), and,
//! with `kafka.dead_letter_topic`, copied there as they arrived, with headers naming where
//! they came from and why they were refused ([`refuse`], shared by the sampler's ingest and
//! `tailsift route`).
//!
//! At-least-once like the output: the copy holds the source message's offset (an
//! [`OffsetHold`]) until the broker acknowledges it, so the offset is committed only after the
//! dead letter is safely written. A failed delivery is sent again after a pause, never given
//! up (see [`super::producer`]); at shutdown an unacknowledged letter leaves its offset
//! uncommitted and is re-sent after the restart (a duplicate in the dead-letter topic, never
//! a loss).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};

use super::producer::{Deliveries, Flush, Outbound, Outgoing, RetryingProducer, Stage};
use super::SetupError;
use crate::offsets::{Hold, OffsetHold};
use crate::otlp::decode::DecodeError;
use crate::telemetry as m;

/// Header: the topic the message was read from.
pub const SOURCE_TOPIC_HEADER: &str = "tailsift.source.topic";
/// Header: its partition (decimal).
pub const SOURCE_PARTITION_HEADER: &str = "tailsift.source.partition";
/// Header: its offset (decimal).
pub const SOURCE_OFFSET_HEADER: &str = "tailsift.source.offset";
/// Header: why it was refused (a small fixed word: `malformed_protobuf`, `malformed_json`,
/// `empty`, or [`UNREDACTABLE`]).
pub const ERROR_KIND_HEADER: &str = "tailsift.error.kind";
/// The `kind` of a letter holding spans of a kept trace that cannot be parsed for redaction
/// (see [`crate::redact`]): never forwarded, set aside here.
pub const UNREDACTABLE: &str = "unredactable";
/// Header: the decoder's error message.
pub const ERROR_HEADER: &str = "tailsift.error";

/// Counts logged per kind of failure, so that a flood logs once and then at every power of
/// two.
#[derive(Debug, Default)]
pub struct LogOnce(HashMap<&'static str, u64>);

impl LogOnce {
    /// Counts one failure of `kind`; whether to log it.
    pub fn should_log(&mut self, kind: &'static str) -> bool {
        let n = self.0.entry(kind).or_default();
        *n += 1;
        n.is_power_of_two()
    }
}

/// A message that does not decode: logged (see [`LogOnce`]), and copied to the dead-letter
/// topic if there is one. The copy holds the message's offset until the broker has it.
/// Counting it is the caller's: the ingest path's sampler counts where decoding failed.
pub fn refuse(
    msg: &BorrowedMessage<'_>,
    e: &DecodeError,
    hold: &impl Hold,
    letters: Option<&DeadLetters>,
    log: &mut LogOnce,
) {
    if log.should_log(e.kind()) {
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            error = %e,
            "skipping a message that does not decode"
        );
    }
    if let Some(letters) = letters {
        letters.send(
            msg.key(),
            msg.payload().unwrap_or_default(),
            Letter {
                topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
                kind: e.kind(),
                error: e.to_string(),
                hold: hold.hold(),
            },
        );
    }
}

/// Where a refused message came from and why it was refused: its headers, and its hold.
pub struct Letter {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was refused (see [`ERROR_KIND_HEADER`]).
    pub kind: &'static str,
    /// The decoder's error message.
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

/// A letter no broker would take (its payload over the size limit) would be retried forever
/// and hold its partition's commits back: it is sent again without its payload instead, its
/// headers still naming where the original is.
fn shrink_if_too_large(letter: &mut Letter, out: &mut Outgoing, e: &KafkaError) {
    let too_large = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    );
    if too_large && !out.payload.is_empty() {
        letter.error = format!(
            "{} (payload of {} bytes omitted: too large for the dead-letter topic)",
            letter.error,
            out.payload.len()
        );
        out.payload = Vec::new();
        out.headers = Some(letter.headers());
    }
}

/// What dead letters mean: each holds its source offset.
pub struct Letters;

impl Deliveries for Letters {
    type Opaque = Letter;

    fn delivered(&self, _msg: &BorrowedMessage<'_>, letter: Letter) {
        metrics::counter!(m::DEAD_LETTERS, "kind" => letter.kind).increment(1);
        // Dropping the letter releases the source offset.
    }

    fn failed(
        &self,
        stage: Stage,
        e: &KafkaError,
        out: &mut Outgoing,
        mut letter: Letter,
    ) -> Option<Letter> {
        // Never given up: the offset stays held and the letter is tried again; an operator
        // sees the errors.
        metrics::counter!(m::DEAD_LETTER_ERRORS).increment(1);
        match stage {
            Stage::Delivery => {
                tracing::warn!(error = %e, "delivery to the dead-letter topic failed; retrying")
            }
            Stage::Enqueue => tracing::warn!(error = %e, "cannot enqueue a dead letter; retrying"),
        }
        shrink_if_too_large(&mut letter, out, e);
        Some(letter)
    }
}

/// The producer of dead letters.
pub struct DeadLetters {
    producer: Arc<RetryingProducer<Letters>>,
    topic: String,
}

impl DeadLetters {
    /// A producer of dead letters to `topic`, with the producer settings `config`.
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Arc<Self>, SetupError> {
        let producer = RetryingProducer::new(
            config,
            "dead-letter producer",
            "tailsift-dlq-retry",
            Letters,
        )?;
        Ok(Arc::new(DeadLetters {
            producer,
            topic: topic.to_string(),
        }))
    }

    /// The dead-letter producer `topic` asks for, if any.
    pub fn for_topic(
        config: &ClientConfig,
        topic: Option<&str>,
    ) -> Result<Option<Arc<Self>>, SetupError> {
        topic.map(|t| DeadLetters::new(config, t)).transpose()
    }

    /// Sends a letter with the refused message's key and payload; its hold is released when
    /// the broker acknowledges it.
    pub fn send(&self, key: Option<&[u8]>, payload: &[u8], letter: Letter) {
        let record = Outbound {
            topic: &self.topic,
            partition: None,
            key,
            payload,
            headers: Some(letter.headers()),
        };
        // Once stopping, an unsent letter's offset was never committed.
        self.producer.send(record, letter);
    }
}

impl Flush for DeadLetters {
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
    fn stop(&self) {
        self.producer.stop()
    }
}
