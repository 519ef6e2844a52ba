//! The consumer's context: what happens when the group assigns or revokes partitions, and
//! where librdkafka's statistics and commit reports go.
//!
//! On revocation: let the decision log's records in flight arrive, commit what is safe while
//! the partitions are still ours, and hand undecided traces back to the next owner. On
//! assignment: look up each partition's read mark and head mark, and pause it while its
//! decisions are read back from the decision log. After either: recompute this instance's
//! share of the fleet's budgets (see `rules::Share`). librdkafka runs these callbacks inside
//! `poll`, on the ingest thread.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList, TopicPartitionListElem};
use rdkafka::ClientContext;
use tokio::time::Instant;

use super::commit::{MarkClients, READ_MARK_GROUP_SUFFIX};
use super::decision_log::read_back::Part;
use super::partitions::{Job, Partitions};
use super::replay::{start_read_back, LogSide};
use super::SetupError;
use crate::heads::HEAD_MARK_GROUP_SUFFIX;
use crate::health::Health;
use crate::sampler::Sampler;
use crate::telemetry as m;

/// How long a revocation waits for the decision log's records in flight.
const REVOKE_FLUSH: Duration = Duration::from_secs(2);

/// How long looking up the marks of newly assigned partitions may take.
const MARKS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long looking up an input topic's partition count may take, per rebalance and topic.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The ingest consumer's context: the partition table and everything the callbacks touch.
pub struct SourceContext {
    /// The clients that commit the read and head marks (the latter also reads heads back).
    pub(crate) marks: MarkClients,
    pub(crate) sampler: Arc<Sampler>,
    pub(crate) health: Arc<Health>,
    parts: Mutex<Partitions>,
    /// The decision log, unless it is off.
    log: Option<LogSide>,
    /// The input topics, and the partition count each had when last looked up.
    inputs: Mutex<HashMap<String, Option<usize>>>,
}

impl SourceContext {
    /// The partition table.
    pub(crate) fn parts(&self) -> MutexGuard<'_, Partitions> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (every `monitoring.lag_interval`): the high watermark of each
    /// partition's last fetch response, for the lag.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.hi_offset >= 0 {
                    self.health.lag.fetched_high(topic, *partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(consumer, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
            }
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(error = %e, "offset commit failed; will commit again");
            self.parts().recommit = true;
        }
    }
}

impl SourceContext {
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        metrics::counter!(m::REBALANCES, "kind" => m::RebalanceKind::Revoke).increment(1);
        if let Some(side) = &self.log {
            // Decisions on their way to the log release their offsets once there: let them
            // arrive, so that the commit below goes further and the next owner finds them.
            let _ = side.log.flush(REVOKE_FLUSH);
        }
        let mut parts = self.parts();
        let revoked: Vec<u32> = tpl
            .elements()
            .iter()
            .filter_map(|e| parts.index(e.topic(), e.partition()))
            .collect();
        // Commit what is safe while the partitions are still ours.
        let commits = parts.commit_list(|i| revoked.contains(&i), false, &self.sampler);
        if let Some(Err(e)) = commits.send(consumer, &self.marks, CommitMode::Sync) {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(error = %e, "commit on revoke failed; the next owner replays more");
        }
        for i in &revoked {
            if let Some(a) = parts.remove(*i) {
                if a.read_back.is_some() {
                    self.health.reading_back.fetch_sub(1, Ordering::Relaxed);
                }
                self.health.lag.revoked(&a.topic, a.partition);
            }
        }
        let owned = parts.by_index.len();
        drop(parts);
        self.reshare(owned);
        let (released, decided) = self.sampler.partitions_revoked(&revoked, Instant::now());
        let assigned = self.health.assigned.load(Ordering::Relaxed);
        let left = assigned.saturating_sub(revoked.len());
        self.health.assigned.store(left, Ordering::Relaxed);
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(left as f64);
        if self.health.paused.load(Ordering::Relaxed)
            || self.health.draining.load(Ordering::Relaxed)
        {
            metrics::gauge!(m::PAUSED_PARTITIONS).set(left as f64);
        }
        tracing::info!(
            partitions = revoked.len(),
            released,
            decided,
            "partitions revoked; undecided traces released to the next owner"
        );
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        metrics::counter!(m::REBALANCES, "kind" => m::RebalanceKind::Assign).increment(1);
        // (The marks come from the companion clients, not from `consumer`.)
        // What this group had read before: spans below it may already be in the output (a
        // crash or rebalance replays them).
        let read = self
            .marks
            .read
            .committed_offsets(tpl.clone(), MARKS_TIMEOUT)
            .ok();
        // Where the heads of traces straddling the commit offset begin.
        let heads = self
            .marks
            .heads
            .committed_offsets(tpl.clone(), MARKS_TIMEOUT)
            .ok();
        let mut parts = self.parts();
        let mut reading = Vec::new();
        let job = self.log.as_ref().map(|_| Arc::new(Job::default()));
        for e in tpl.elements() {
            let replay_until = committed(&read, &e).unwrap_or(-1);
            let head_from = committed(&heads, &e);
            let idx = parts.assign(
                e.topic(),
                e.partition(),
                replay_until,
                head_from,
                job.clone(),
            );
            self.health.lag.assigned(e.topic(), e.partition());
            if let Some(side) = &self.log {
                side.log.assign(idx, e.topic(), e.partition());
                reading.push(Part {
                    idx,
                    topic: e.topic().to_string(),
                    partition: e.partition(),
                });
            }
        }
        let n = parts.by_index.len();
        drop(parts);
        self.reshare(n);
        if let (Some(side), Some(job)) = (&self.log, job) {
            // Not ingested before its decisions are back (a message fetched before the pause
            // took effect waits for the read-back: see `consume::run`).
            let _ = consumer.pause(tpl);
            self.health
                .reading_back
                .fetch_add(reading.len(), Ordering::Relaxed);
            start_read_back(side, self.sampler.decision_cache().clone(), reading, job);
        }
        self.health.assigned.store(n, Ordering::Relaxed);
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(n as f64);
        tracing::info!(added = tpl.count(), assigned = n, "partitions assigned");
        if self.health.draining.load(Ordering::Relaxed)
            || self.health.paused.load(Ordering::Relaxed)
        {
            let _ = consumer.pause(tpl);
            metrics::gauge!(m::PAUSED_PARTITIONS).set(n as f64);
        }
    }
}

impl SourceContext {
    /// Sets the rules' share of the fleet's budgets to the `owned` input partitions over all
    /// partitions of the input topics, looked up now (a topic's partitions can be added, and
    /// that rebalances the group). A topic that cannot be looked up counts with its last
    /// known size; one never seen counts for nothing, which can only raise the share, to at
    /// most the whole budget.
    fn reshare(&self, owned: usize) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, size) in inputs.iter_mut() {
            match self
                .marks
                .read
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            {
                Ok(md) => {
                    let n = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len());
                    if n.is_some() {
                        *size = n;
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, known = ?size,
                        "cannot look up the input topic's partitions; its last known count is used");
                }
            }
        }
        let total: usize = inputs.values().map(|n| n.unwrap_or(0)).sum();
        drop(inputs);
        let share = self.sampler.set_share(owned, total);
        metrics::gauge!(m::BUDGET_SHARE).set(share);
        tracing::info!(owned, total, share, "budget share recomputed");
    }
}

/// The offset committed for `e` in `list`, if any.
fn committed(list: &Option<TopicPartitionList>, e: &TopicPartitionListElem<'_>) -> Option<i64> {
    list.as_ref()
        .and_then(|c| c.find_partition(e.topic(), e.partition()))
        .and_then(|c| match c.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        })
}

/// Builds the consumer (manual commits, cooperative-sticky) and subscribes it. With `log`,
/// every newly assigned partition's decisions are read back before it is ingested.
pub fn consumer(
    config: &ClientConfig,
    topics: &[String],
    sampler: Arc<Sampler>,
    health: Arc<Health>,
    log: Option<LogSide>,
) -> Result<BaseConsumer<SourceContext>, SetupError> {
    let group = config.get("group.id").unwrap_or("tailsift").to_string();
    let companion = |suffix: &str| {
        let mut c = config.clone();
        c.set("group.id", format!("{group}{suffix}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .remove("group.instance.id")
            .remove("statistics.interval.ms");
        c
    };
    if let Some(side) = &log {
        let _ = health.decision_log.set(side.log.health.clone());
    }
    let failed = SetupError::client("Kafka consumer");
    let create = || -> KafkaResult<BaseConsumer<SourceContext>> {
        let ctx = SourceContext {
            marks: MarkClients {
                read: companion(READ_MARK_GROUP_SUFFIX).create()?,
                heads: companion(HEAD_MARK_GROUP_SUFFIX).create()?,
            },
            sampler,
            health,
            parts: Mutex::new(Partitions::default()),
            log,
            inputs: Mutex::new(topics.iter().map(|t| (t.clone(), None)).collect()),
        };
        let consumer: BaseConsumer<SourceContext> = config.create_with_context(ctx)?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    };
    create().map_err(failed)
}
