//! What a newly assigned partition reads back before it is ingested: its decisions from the
//! decision log (on a thread of their own, the partition paused meanwhile: see
//! [`crate::kafka::decision_log::read_back`]), and the heads of the traces straddling its
//! commit offset (from its head mark up to the first offset replayed: see [`crate::heads`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use rdkafka::config::ClientConfig;

use super::decision_log::read_back::{read_back, Part, ReadBackSettings};
use super::decision_log::DecisionLog;
use super::partitions::{Assigned, Job};
use crate::decision::DecisionCache;
use crate::heads::Heads;
use crate::otlp::Encoding;
use crate::telemetry as m;

/// How long reading back the heads of straddling traces may take (see [`crate::heads`]).
const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What the source needs of the decision log: the writer, and how to read it back.
pub struct LogSide {
    /// The decision log's writer.
    pub log: Arc<DecisionLog>,
    /// The consumer's configuration, for the read-back's own client.
    pub consumer_config: ClientConfig,
    /// For the admin requests a read-back may make (creating a log topic).
    pub runtime: tokio::runtime::Handle,
    /// The read-back's bounds.
    pub settings: ReadBackSettings,
}

/// Reads the decisions of `parts` back into `cache` on a thread of its own; `job` says when
/// it is done. Without the thread, the partitions are ingested without their decisions.
pub(crate) fn start_read_back(
    side: &LogSide,
    cache: DecisionCache,
    parts: Vec<Part>,
    job: Arc<Job>,
) {
    let (log, config, runtime, settings) = (
        side.log.clone(),
        side.consumer_config.clone(),
        side.runtime.clone(),
        side.settings.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("tailsift-read-back".into())
        .spawn({
            let job = job.clone();
            move || {
                read_back(&log, &config, &runtime, &cache, &parts, &settings);
                job.finish();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start reading the decision log back; the partitions are ingested without it");
        job.finish();
    }
}

/// Before the first message of an assignment is ingested: reads back the heads of the traces
/// straddling the commit offset, from the head mark found on assignment up to `offset`.
pub(crate) fn heads_before_first(
    client: &BaseConsumer,
    a: &mut Assigned,
    offset: i64,
    encoding: Encoding,
    max_bytes: usize,
) {
    let Some(from) = a.head_from.take() else {
        return;
    };
    if from < offset {
        let until = a.offsets.replay_until.max(offset);
        a.offsets.inherit_heads(from, until);
        a.heads = Some(read_heads(
            client,
            (&a.topic, a.partition),
            from..offset,
            until,
            encoding,
            max_bytes,
        ));
    }
}

/// Reads the messages `range` of a partition back into a stash of heads (see
/// [`crate::heads`]). Stops early, with what it has, past `max_bytes` or
/// [`HEAD_READ_TIMEOUT`]: the traces whose heads it missed are then decided on what the replay
/// shows, as they would be without head marks.
fn read_heads(
    client: &BaseConsumer,
    (topic, partition): (&str, i32),
    range: std::ops::Range<i64>,
    until: i64,
    encoding: Encoding,
    max_bytes: usize,
) -> Heads {
    let started = std::time::Instant::now();
    let mut heads = Heads::new(until);
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(range.start));
    let mut scratch = Vec::new();
    let mut complete = false;
    let mut error = None;
    if let Err(e) = client.assign(&tpl) {
        error = Some(e.to_string());
    }
    while error.is_none() && started.elapsed() < HEAD_READ_TIMEOUT {
        match client.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {
                complete = true;
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading heads back");
            }
            Some(Ok(m)) if m.topic() != topic || m.partition() != partition => {}
            Some(Ok(m)) => {
                if m.offset() >= range.end {
                    complete = true;
                    break;
                }
                let payload = m.payload().unwrap_or_default();
                if let Ok(proto) = encoding.as_proto(payload, &mut scratch) {
                    // A message that does not decode was skipped the first time too.
                    let _ = heads.add(m.offset(), proto);
                }
                if m.offset() + 1 >= range.end {
                    complete = true;
                    break;
                }
                if heads.bytes() > max_bytes {
                    error = Some(format!("more than {max_bytes} bytes"));
                }
            }
        }
    }
    let _ = client.unassign();
    metrics::counter!(m::REPLAY_HEAD_READS, "result" => m::HeadRead::complete(complete))
        .increment(1);
    if complete {
        tracing::info!(
            topic,
            partition,
            from = range.start,
            to = range.end,
            messages = heads.messages(),
            bytes = heads.bytes(),
            took_ms = started.elapsed().as_millis() as u64,
            "read back the heads of traces straddling the commit offset"
        );
    } else {
        let error = error.unwrap_or_else(|| format!("timed out after {HEAD_READ_TIMEOUT:?}"));
        tracing::warn!(
            topic,
            partition,
            from = range.start,
            to = range.end,
            messages = heads.messages(),
            error,
            "could not read back every head of the traces straddling the commit offset: \
             those traces are decided on the part replayed"
        );
    }
    heads
}
