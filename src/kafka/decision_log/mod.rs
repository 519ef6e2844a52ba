//! The decision log on Kafka: every decision, written to a compacted topic so that it outlives
//! the instance that made it.
//!
//! Each input topic has its own log topic (`kafka.decision_topic`, `{topic}` replaced by the
//! input topic's name). The record of a trace goes to the log partition numbered like the
//! input partition its spans came from, keyed by trace id (format: [`crate::decision::record`]).
//! So whoever is assigned an input partition next (after a restart, a crash or a rebalance)
//! reads exactly that partition's decisions back ([`read_back`]) before ingesting it: replayed
//! spans of decided traces, and late spans, follow the logged decision instead of being decided
//! again on a partial view.
//!
//! Ordering: a decision's record holds the offsets of its trace until the broker acknowledges
//! it (see [`crate::journal`]), so a committed input offset never passes an unlogged decision.
//! A failed write is retried, never given up, as the output's are: while the log is
//! unreachable, commits stop, the buffer fills and back-pressure pauses fetching, and
//! `/readyz` says why ([`crate::health::LogHealth`]).
//!
//! - [`topics`]: the log topics' names, creation and validation.
//! - [`read_back`]: reading a partition's decisions back on assignment.

pub mod read_back;
pub mod topics;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use super::producer::{Deliveries, Flush, Outbound, Outgoing, RetryingProducer, Stage};
use super::SetupError;

use crate::decision::record::DropList;
use crate::decision::record::{self, Record};
use crate::decision::Decision;
use crate::health::LogHealth;
use crate::journal::{Journal, JournalEntry};
use crate::offsets::{Holds, OffsetHold};
use crate::telemetry as m;

pub use topics::LogTopics;

/// The value of every fence record.
static FENCE_VALUE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(record::fence_value);
/// How long dropped traces gather into a drop list before it is written (it is written at
/// once when full).
const DROP_LIST_LINGER: Duration = Duration::from_millis(5);
/// How often the drop lists' writer, with nothing gathering, checks whether the log is gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A drop list being gathered for one input partition, with its traces' offsets.
#[derive(Default)]
struct Gathering {
    list: DropList,
    holds: Vec<Arc<OffsetHold>>,
}

/// Errors of the decision log's set-up and read-back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The cluster did not answer (or a client could not be made): try again later.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The cluster answered, and the answer needs an operator.
    #[error("{0}")]
    Topic(String),
    /// A fence (the marker a read-back reads up to) was not written.
    #[error("the fence on {topic}/{partition} was not acknowledged: {why}")]
    Fence {
        /// The log topic.
        topic: String,
        /// The log partition.
        partition: i32,
        /// The delivery error.
        why: String,
    },
}

/// Where the records of one input partition go.
#[derive(Debug, Clone)]
struct Target {
    topic: Arc<str>,
    partition: i32,
}

/// What a record in flight carries to its delivery report.
pub enum Opaque {
    /// A decision: its trace's offsets, released (dropped) when the broker has it.
    Decision {
        /// The trace's offset holds: held, never read; dropping them is what counts.
        #[allow(dead_code)]
        holds: Holds,
        /// Whether the trace was kept (which count its delivery goes to).
        kept: bool,
        /// When a kept trace's output was acknowledged (see [`JournalEntry::acked_at`]).
        acked_at: Option<std::time::Instant>,
    },
    /// A drop list: the offsets of its traces, and how many traces.
    Drops {
        /// The traces' offset holds (as above: dropping them is what counts).
        #[allow(dead_code)]
        holds: Vec<Arc<OffsetHold>>,
        /// How many traces the list names.
        traces: u64,
    },
    /// A fence: whoever wrote it waits for its offset.
    Fence(mpsc::SyncSender<Result<i64, String>>),
}

/// What decision log records mean: each holds its traces' offsets until acknowledged, and
/// is never given up; a fence tells its writer its offset.
pub struct Logged {
    health: Arc<LogHealth>,
    /// Registered once: a lookup by name and labels per record cost a tenth of the delivery
    /// report's time.
    logged_kept: metrics::Counter,
    logged_dropped: metrics::Counter,
    errors: metrics::Counter,
    lag: metrics::Histogram,
}

impl Deliveries for Logged {
    type Opaque = Opaque;

    fn delivered(&self, msg: &BorrowedMessage<'_>, opaque: Opaque) {
        match opaque {
            Opaque::Fence(tx) => {
                let _ = tx.send(Ok(msg.offset()));
            }
            Opaque::Decision { kept, acked_at, .. } => {
                self.health.acknowledged();
                match kept {
                    true => self.logged_kept.increment(1),
                    false => self.logged_dropped.increment(1),
                }
                if let Some(at) = acked_at {
                    self.lag.record(at.elapsed().as_secs_f64());
                }
                // Dropping the holds releases the trace's offsets.
            }
            Opaque::Drops { traces, .. } => {
                self.health.acknowledged();
                self.logged_dropped.increment(traces);
            }
        }
    }

    fn failed(
        &self,
        stage: Stage,
        e: &KafkaError,
        out: &mut Outgoing,
        opaque: Opaque,
    ) -> Option<Opaque> {
        if let Opaque::Fence(tx) = opaque {
            let _ = tx.send(Err(e.to_string()));
            return None;
        }
        self.errors.increment(1);
        self.health.failed(e.to_string());
        let (topic, partition) = (out.topic.as_str(), out.partition.unwrap_or(-1));
        match stage {
            Stage::Delivery => tracing::warn!(error = %e, topic, partition,
                "writing a decision to the decision log failed; retrying"),
            Stage::Enqueue => tracing::warn!(error = %e, topic, partition,
                "cannot enqueue a decision record; retrying"),
        }
        Some(opaque)
    }
}

/// The decision log's writer: a [`Journal`] for the sampler, fences for the read-back.
pub struct DecisionLog {
    producer: Arc<RetryingProducer<Logged>>,
    /// Ingest index of an input partition -> where its records go. Indexes are never reused;
    /// one entry per assignment, kept for the records of traces decided after a revocation.
    targets: RwLock<HashMap<u32, Target, foldhash::fast::RandomState>>,
    /// The log topic of each input topic.
    pub topics: LogTopics,
    /// Whether the log is being written, for `/readyz` and the read-back.
    pub health: Arc<LogHealth>,
    /// Input topic -> partitions its log is known to have (checked or created).
    ensured: Mutex<HashMap<String, i32>>,
    /// Drop lists being gathered, by ingest index.
    drops: Mutex<HashMap<u32, Gathering, foldhash::fast::RandomState>>,
    /// Wakes the drop lists' writer when a list starts gathering: an idle log does not wake
    /// it every [`DROP_LIST_LINGER`] for nothing.
    gathering: Condvar,
}

impl DecisionLog {
    /// A writer with the producer settings `config` (the output's, see
    /// `pipeline::producer_config`).
    pub fn new(config: &ClientConfig, topics: LogTopics) -> Result<Arc<Self>, SetupError> {
        let mut config = config.clone();
        // No compression unless the config asks for it: LZ4 took a ninth of the writer's
        // instructions (callgrind, `bench_e2e logwrite`) to save ~100 bytes per decided trace,
        // against the ~3.5 KB of spans each brought in.
        // Its topics are created by `topics::ensure`, with their input's partition count; never
        // by a write (librdkafka's producers would create a missing one with the broker's
        // default count).
        config.set("allow.auto.create.topics", "false");
        let health = Arc::new(LogHealth::default());
        let logged = Logged {
            health: health.clone(),
            logged_kept: metrics::counter!(m::DECISIONS_LOGGED, "outcome" => m::Outcome::Kept),
            logged_dropped: metrics::counter!(m::DECISIONS_LOGGED, "outcome" => m::Outcome::Dropped),
            errors: metrics::counter!(m::DECISION_LOG_ERRORS),
            lag: metrics::histogram!(m::DECISION_LOG_LAG),
        };
        let producer = RetryingProducer::new(
            &config,
            "decision log's producer",
            "tailsift-log-retry",
            logged,
        )?;
        let log = Arc::new(DecisionLog {
            producer,
            targets: RwLock::new(HashMap::default()),
            topics,
            health,
            ensured: Mutex::new(HashMap::new()),
            drops: Mutex::new(HashMap::default()),
            gathering: Condvar::new(),
        });
        let flusher = Arc::downgrade(&log);
        super::spawn("tailsift-log-drops", move || loop {
            // Until a list gathers (checked at least every second, to notice the log's end),
            // then a linger for more of the same few milliseconds' decisions.
            let Some(log) = flusher.upgrade() else { break };
            let gathering = {
                let drops = log.drops.lock().unwrap_or_else(|e| e.into_inner());
                let (drops, _) = log
                    .gathering
                    .wait_timeout_while(drops, IDLE_CHECK, |d| d.is_empty())
                    .unwrap_or_else(|e| e.into_inner());
                !drops.is_empty()
            };
            drop(log);
            if gathering {
                std::thread::sleep(DROP_LIST_LINGER);
                let Some(log) = flusher.upgrade() else { break };
                log.write_drop_lists(|_| true);
            }
        })?;
        Ok(log)
    }

    /// The log of `input` is known to have at least `partitions` partitions.
    pub fn ensured(&self, input: &str, partitions: i32) {
        let mut e = self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        let n = e.entry(input.to_string()).or_default();
        *n = (*n).max(partitions);
    }

    /// Whether the log of `input` is known to have a partition numbered `partition`.
    pub fn has_partition(&self, input: &str, partition: i32) -> bool {
        self.ensured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(input)
            .is_some_and(|n| partition < *n)
    }

    /// Input partition `partition` of `input_topic` is assigned under ingest index `idx`: its
    /// decisions go to the log partition of the same number.
    pub fn assign(&self, idx: u32, input_topic: &str, partition: i32) {
        let topic: Arc<str> = Arc::from(self.topics.log_of(input_topic).as_str());
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(idx, Target { topic, partition });
    }

    fn produce(&self, target: &Target, key: &[u8], payload: &[u8], opaque: Opaque) {
        let record = Outbound {
            topic: &target.topic,
            partition: Some(target.partition),
            key: Some(key),
            payload,
            headers: None,
        };
        self.producer.send(record, opaque);
    }

    /// Writes a fence to log partition `partition` of `topic`; the receiver gets its offset
    /// once acknowledged: every record written before it is below that offset.
    pub fn send_fence(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<mpsc::Receiver<Result<i64, String>>, LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let record = Outbound {
            topic,
            partition: Some(partition),
            key: Some(record::FENCE_KEY.as_bytes()),
            payload: &FENCE_VALUE[..],
            headers: None,
        };
        self.producer
            .try_send(record, Opaque::Fence(tx))
            .map_err(|e| LogError::Fence {
                topic: topic.to_string(),
                partition,
                why: e.to_string(),
            })?;
        Ok(rx)
    }

    /// Writes the drop lists being gathered, then waits for every record in flight to be
    /// acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.write_drop_lists(|_| true);
        self.producer.flush(timeout)
    }

    /// Writes the drop lists of the partitions `which` selects.
    fn write_drop_lists(&self, which: impl Fn(&Gathering) -> bool) {
        let ready: Vec<(u32, Gathering)> = {
            let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<u32> = drops
                .iter()
                .filter(|(_, g)| !g.list.is_empty() && which(g))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| drops.remove(&k).map(|g| (k, g)))
                .collect()
        };
        if ready.is_empty() {
            return;
        }
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        for (idx, g) in ready {
            let Some(t) = targets.get(&idx) else {
                continue;
            };
            let mut value = Vec::with_capacity(64 + 52 * g.list.len());
            g.list.encode(&mut value);
            let key = g.list.key();
            self.health.sent();
            let opaque = Opaque::Drops {
                holds: g.holds,
                traces: g.list.len() as u64,
            };
            self.produce(t, key.as_bytes(), &value, opaque);
        }
    }

    /// Stops retrying enqueues (shutdown): records not yet written leave their offsets
    /// uncommitted.
    pub fn stop(&self) {
        self.producer.stop();
    }
}

impl Flush for DecisionLog {
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        DecisionLog::flush(self, timeout)
    }
    fn stop(&self) {
        DecisionLog::stop(self)
    }
}

impl Journal for DecisionLog {
    fn record(&self, entry: JournalEntry) {
        if let Decision::Drop { rule } = &entry.decision {
            // Into the partition's drop list; written when full, or within DROP_LIST_LINGER.
            let mut full = false;
            {
                let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
                if drops.is_empty() {
                    self.gathering.notify_one();
                }
                // Each list holds all of the trace's holds; the last takes them.
                let mut holds = Some(entry.holds);
                let last = entry.partitions.len().saturating_sub(1);
                for (i, &(idx, _)) in entry.partitions.iter().enumerate() {
                    let g = drops.entry(idx).or_default();
                    g.list.push(entry.trace_id, rule, entry.decided_at);
                    if i == last {
                        g.holds.extend(holds.take().unwrap_or_default());
                    } else {
                        g.holds.extend(holds.iter().flatten().cloned());
                    }
                    full |= g.list.len() >= record::DROP_LIST_MAX;
                }
            }
            if full {
                self.write_drop_lists(|g| g.list.len() >= record::DROP_LIST_MAX);
            }
            return;
        }
        // The key on the stack: librdkafka copies key and value (one record per decided
        // trace, so what is spent here is spent per trace).
        let mut key = [0u8; 32];
        let _ = hex::encode_to_slice(entry.trace_id.0, &mut key);
        let kept = entry.decision.is_keep();
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        let mut holds = Some(entry.holds);
        let last = entry.partitions.len().saturating_sub(1);
        for (i, &(idx, through)) in entry.partitions.iter().enumerate() {
            let Some(t) = targets.get(&idx) else {
                // Not an input partition of this process (cannot happen in production).
                tracing::debug!(idx, "a decision for a partition never assigned; not logged");
                continue;
            };
            let value = Record {
                decision: entry.decision.clone(),
                decided_at: entry.decided_at,
                through,
            }
            .to_vec();
            self.health.sent();
            let holds = match i == last {
                true => holds.take().unwrap_or_default(),
                false => holds.clone().unwrap_or_default(),
            };
            let opaque = Opaque::Decision {
                holds,
                kept,
                acked_at: entry.acked_at,
            };
            self.produce(t, &key, &value, opaque);
        }
    }
}
