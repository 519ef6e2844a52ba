//! Reading a partition's decisions back on assignment, before it is ingested.
//!
//! For each newly assigned input partition, the log partition of the same number is read from
//! the first record of the last `decision_cache.ttl` (offsets for times) up to a fence: a
//! record this instance writes first and waits for, so that every decision written before the
//! assignment is below it. (The end of a partition could also be taken from its high watermark,
//! which a Kafka cluster keeps right; the fence does not depend on it, and the test broker's
//! high watermark stops at the last record batch's first offset.) The decisions go into the
//! decision cache with how far each trace was forwarded, tagged with the partition's ingest
//! index.
//!
//! Bounded: at most as many records per partition as the decision cache holds (the newest:
//! older ones would be pushed out anyway), and `decision_cache.read_back_timeout` in all. Past
//! either bound what was read is used, the rest is not; a metric and a log line say so.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::topics::{self, Retention};
use super::{DecisionLog, LogError};
use crate::decision::record::{self, Entry, RuleNames};
use crate::decision::{unix_ms, DecisionCache, Logged};
use crate::telemetry as m;

/// An input partition to read the decisions of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its ingest index: decisions read back apply to spans of this assignment only.
    pub idx: u32,
    /// The input topic.
    pub topic: String,
    /// The input partition (and so the log partition).
    pub partition: i32,
}

/// The read-back's bounds.
#[derive(Debug, Clone)]
pub struct ReadBackSettings {
    /// How far back to read (`decision_cache.ttl`).
    pub ttl: Duration,
    /// How long the whole read-back may take.
    pub timeout: Duration,
    /// Most records read per partition (the decision cache's capacity).
    pub max_records: u64,
}

/// How a partition's read-back ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every decision of the last ttl was read.
    Complete,
    /// More decisions than the cache holds: only the newest `max_records` were read.
    CutShort {
        /// Records older than the ones read.
        left_out: i64,
    },
    /// Not finished in time, or the log could not be read: the rest is decided anew.
    Incomplete {
        /// What stopped it.
        why: String,
    },
}

impl Ended {
    /// The `result` label of `tailsift_decision_log_read_backs_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::CutShort { .. } => "cut_short",
            Ended::Incomplete { .. } => "incomplete",
        }
    }
}

/// What one partition's read-back did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The partition read back.
    pub part: Part,
    /// Decisions read into the cache.
    pub decisions: u64,
    /// How it ended.
    pub ended: Ended,
}

/// A partition being read.
struct Reading {
    idx: u32,
    /// The fence's offset: the partition is read once a record at or past it is seen.
    until: i64,
    decisions: u64,
    ended: Option<Ended>,
    cut: i64,
}

/// Reads back the decisions of `parts` into `cache`, blocking (run it off the ingest thread).
/// `consumer` is the consumer configuration (group settings are replaced: nothing is
/// committed); `grow` lets a log topic gain partitions for an input topic that did.
pub fn read_back(
    log: &DecisionLog,
    consumer: &ClientConfig,
    runtime: &tokio::runtime::Handle,
    cache: &DecisionCache,
    parts: &[Part],
    settings: &ReadBackSettings,
) -> Vec<Outcome> {
    let started = Instant::now();
    let deadline = started + settings.timeout;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut reading: HashMap<(String, i32), Reading> = HashMap::new();
    let failed = |part: &Part, why: String| Outcome {
        part: part.clone(),
        decisions: 0,
        ended: Ended::Incomplete { why },
    };

    // The log topics exist, with a partition for each input partition (checked once per
    // input topic, and again when a partition beyond the known ones shows up).
    let mut ensured: HashMap<&str, Result<(), String>> = HashMap::new();
    for part in parts {
        let known = log.has_partition(&part.topic, part.partition);
        let ok = ensured
            .entry(part.topic.as_str())
            .or_insert_with(|| match known {
                true => Ok(()),
                false => ensure(log, consumer, runtime, &part.topic, settings.ttl),
            })
            .clone();
        if let Err(why) = ok {
            outcomes.push(failed(part, why));
        }
    }

    // Fences first, all at once; then their offsets.
    let mut fences = Vec::new();
    for part in parts.iter().filter(|p| ensured[p.topic.as_str()].is_ok()) {
        let log_topic = log.topics.log_of(&part.topic);
        match log.send_fence(&log_topic, part.partition) {
            Ok(rx) => fences.push((part, log_topic, rx)),
            Err(e) => outcomes.push(failed(part, e.to_string())),
        }
    }
    for (part, log_topic, rx) in fences {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(Ok(until)) => {
                reading.insert(
                    (log_topic, part.partition),
                    Reading {
                        idx: part.idx,
                        until,
                        decisions: 0,
                        ended: None,
                        cut: 0,
                    },
                );
            }
            Ok(Err(why)) => outcomes.push(failed(part, format!("fence not written: {why}"))),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                outcomes.push(failed(part, "fence not acknowledged in time".into()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                outcomes.push(failed(part, "shutting down".into()))
            }
        }
    }

    if !reading.is_empty() {
        if let Err(e) = read(consumer, cache, &mut reading, settings, deadline) {
            for r in reading.values_mut().filter(|r| r.ended.is_none()) {
                r.ended = Some(Ended::Incomplete { why: e.to_string() });
            }
        }
    }
    for ((topic, partition), r) in reading {
        let part = parts
            .iter()
            .find(|p| p.idx == r.idx)
            .cloned()
            .unwrap_or(Part {
                idx: r.idx,
                topic,
                partition,
            });
        outcomes.push(Outcome {
            part,
            decisions: r.decisions,
            ended: r.ended.unwrap_or_else(|| Ended::Incomplete {
                why: format!("timed out after {:?}", settings.timeout),
            }),
        });
    }
    report(&outcomes, started.elapsed());
    outcomes
}

/// Creates or checks the log of `input` for its current partition count.
fn ensure(
    log: &DecisionLog,
    consumer: &ClientConfig,
    runtime: &tokio::runtime::Handle,
    input: &str,
    ttl: Duration,
) -> Result<(), String> {
    let log_topic = log.topics.log_of(input);
    let partitions = match topics::partitions_of(consumer, input) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(format!("input topic `{input}` not found")),
        Err(e) => return Err(e.to_string()),
    };
    let ensured = runtime.block_on(topics::ensure(
        consumer,
        &log_topic,
        input,
        partitions,
        Retention { ttl },
        true,
    ));
    if ensured.is_ok() {
        log.ensured(input, partitions);
    }
    match ensured {
        Ok(topics::Ensured::Created { partitions }) => {
            tracing::info!(topic = %log_topic, partitions, "decision log topic created");
            Ok(())
        }
        Ok(topics::Ensured::Grown { from, to }) => {
            tracing::warn!(topic = %log_topic, from, to, "decision log topic given the partitions its input topic gained");
            Ok(())
        }
        Ok(topics::Ensured::Present { .. }) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "decision log unavailable: decisions of its partitions cannot be logged, so their offsets are not committed");
            Err(e.to_string())
        }
    }
}

/// Reads every partition of `reading` up to its fence.
fn read(
    consumer_config: &ClientConfig,
    cache: &DecisionCache,
    reading: &mut HashMap<(String, i32), Reading>,
    settings: &ReadBackSettings,
    deadline: Instant,
) -> Result<(), LogError> {
    let mut config = consumer_config.clone();
    let group = config.get("group.id").unwrap_or("tailsift").to_string();
    config
        .set("group.id", format!("{group}.decision-log-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Records are ~130 bytes: fetch many per round trip (librdkafka's default is 1MiB),
        // and fetch again soon once the local queue has room (its default waits 1 s: most of
        // a million decisions' read-back was spent waiting, see `kafka::consumer_config`).
        .set("max.partition.fetch.bytes", "16777216")
        .set(
            "fetch.queue.backoff.ms",
            crate::kafka::FETCH_QUEUE_BACKOFF_MS,
        )
        .remove("group.instance.id")
        .remove("statistics.interval.ms");
    let client: BaseConsumer = config.create()?;
    // Where the last ttl begins in each partition.
    let since = unix_ms().saturating_sub(settings.ttl.as_millis() as u64) as i64;
    let mut times = TopicPartitionList::new();
    for (topic, partition) in reading.keys() {
        times.add_partition_offset(topic, *partition, Offset::Offset(since))?;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let starts = client.offsets_for_times(times, left).ok();
    let mut assign = TopicPartitionList::new();
    for ((topic, partition), r) in reading.iter_mut() {
        let start = starts
            .as_ref()
            .and_then(|s| s.find_partition(topic, *partition))
            .map(|e| e.offset());
        let by_time = match start {
            Some(Offset::Offset(n)) => Some(n),
            _ => None,
        };
        let start = match start {
            Some(Offset::Offset(n)) => n,
            // No record since then: nothing to read.
            Some(Offset::End) => r.until,
            // Unknown: from the beginning, within the count bound below.
            _ => 0,
        };
        let floor = r.until.saturating_sub(settings.max_records as i64);
        if start < floor {
            r.cut = floor - start;
        }
        let start = start.max(floor);
        // The last ttl begins at the log's very first record, and records before it are gone:
        // some of them may have been decisions of the last ttl (retention shorter than the
        // ttl, or a truncated partition). What is left is read.
        if let Some(n) = by_time.filter(|n| *n > 0) {
            if let Ok((low, _)) = client.fetch_watermarks(topic, *partition, Duration::from_secs(5))
            {
                if n <= low {
                    tracing::warn!(topic = %topic, partition, first = low,
                        "the decision log may no longer hold every decision of the last ttl (retention shorter than decision_cache.ttl, or truncated): reading what is left");
                }
            }
        }
        if start >= r.until {
            r.ended = Some(Ended::Complete);
            continue;
        }
        assign.add_partition_offset(topic, *partition, Offset::Offset(start))?;
    }
    if assign.count() == 0 {
        return Ok(());
    }
    client.assign(&assign)?;
    let mut names = RuleNames::default();
    let mut open = assign.count();
    let mut logged_kinds: HashMap<&'static str, u64> = HashMap::new();
    while open > 0 && Instant::now() < deadline {
        let Some(msg) = client.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "reading the decision log back");
                continue;
            }
        };
        let Some(r) = reading.get_mut(&(msg.topic().to_string(), msg.partition())) else {
            continue;
        };
        if r.ended.is_some() {
            continue;
        }
        if msg.offset() >= r.until {
            r.ended = Some(match r.cut {
                0 => Ended::Complete,
                n => Ended::CutShort { left_out: n },
            });
            open -= 1;
            continue;
        }
        let decoded = record::trace_id_of(msg.key().unwrap_or_default()).and_then(|id| {
            Ok((
                id,
                record::decode(msg.payload().unwrap_or_default(), &mut names)?,
            ))
        });
        match decoded {
            Ok((Some(id), Entry::Decision(rec))) => {
                r.decisions += 1;
                cache.insert_logged(
                    id,
                    rec.decision,
                    rec.decided_at,
                    Logged {
                        partition: r.idx,
                        through: rec.through,
                    },
                );
            }
            Ok((None, Entry::Drops(drops))) => {
                r.decisions += drops.len() as u64;
                for (id, rec) in drops {
                    cache.insert_logged(
                        id,
                        rec.decision,
                        rec.decided_at,
                        Logged {
                            partition: r.idx,
                            through: None,
                        },
                    );
                }
            }
            Ok(_) => {} // a fence
            Err(e) => {
                metrics::counter!(m::DECISION_LOG_BAD_RECORDS, "kind" => e.kind()).increment(1);
                let n = logged_kinds.entry(e.kind()).or_default();
                *n += 1;
                if n.is_power_of_two() {
                    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                        error = %e, "skipping a decision log record that does not decode");
                }
            }
        }
    }
    Ok(())
}

/// Metrics and one log line for a read-back.
fn report(outcomes: &[Outcome], took: Duration) {
    let decisions: u64 = outcomes.iter().map(|o| o.decisions).sum();
    metrics::counter!(m::DECISION_LOG_READ_BACK_RECORDS).increment(decisions);
    metrics::histogram!(m::DECISION_LOG_READ_BACK_SECONDS).record(took.as_secs_f64());
    for o in outcomes {
        metrics::counter!(m::DECISION_LOG_READ_BACKS, "result" => o.ended.as_str()).increment(1);
        match &o.ended {
            Ended::Complete => {}
            Ended::CutShort { left_out } => tracing::warn!(
                topic = %o.part.topic, partition = o.part.partition, left_out,
                "decision log read back only in part: it holds more decisions of the last ttl than the decision cache does; the newest were read"),
            Ended::Incomplete { why } => tracing::warn!(
                topic = %o.part.topic, partition = o.part.partition, decisions = o.decisions, why = %why,
                "decision log not read back whole: spans of traces whose decision was missed are decided anew"),
        }
    }
    tracing::info!(
        partitions = outcomes.len(),
        decisions,
        took_ms = took.as_millis() as u64,
        "decision log read back"
    );
}
