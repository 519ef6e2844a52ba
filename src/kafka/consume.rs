//! The Kafka input: a consumer-group member on its own thread that feeds the sampler, tracks
//! which offsets are safe, commits them, and hands partitions back cleanly on rebalance.
//!
//! The consumer, the offset table and the rebalance callbacks all live on this one thread
//! (librdkafka runs the callbacks inside `poll`), so the table needs no real locking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::time::Instant;

use crate::heads::{Heads, HEAD_MARK_GROUP_SUFFIX};
use crate::health::Health;
use crate::kafka::dead_letter::{DeadLetters, Letter};
use crate::kafka::decision_log::read_back::{read_back, Part, ReadBackSettings};
use crate::kafka::decision_log::DecisionLog;
use crate::memory::Budget;
use crate::metrics as m;
use crate::offsets::{DecidedRange, Hold, MessageHold, PartitionOffsets};
use crate::otlp::decode::Decoder;
use crate::otlp::Encoding;
use crate::sampler::Sampler;

/// Suffix of the consumer group under which tailsift records how far it has read (used only
/// to recognise replayed offsets after a crash or rebalance). Commit metadata would be the
/// natural place, but not every Kafka-protocol broker keeps it; every broker keeps offsets.
pub const READ_MARK_GROUP_SUFFIX: &str = ".read-mark";

/// How long a revocation waits for the decision log's records in flight.
const REVOKE_FLUSH: Duration = Duration::from_secs(2);

/// How long reading back the heads of straddling traces may take (see [`crate::heads`]).
const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(15);

struct Assigned {
    topic: String,
    partition: i32,
    offsets: PartitionOffsets,
    /// The head mark found on assignment: heads are read back from it up to the first offset
    /// replayed, before that offset is ingested.
    head_from: Option<i64>,
    /// Heads read back, until the replay is past them.
    heads: Option<Heads>,
    /// The read-back of its decisions from the decision log, until it is done: the partition
    /// is paused meanwhile, and not ingested before.
    read_back: Option<Arc<Job>>,
}

/// A read-back of the decision log running for newly assigned partitions.
#[derive(Default)]
struct Job {
    done: Mutex<bool>,
    finished: std::sync::Condvar,
}

impl Job {
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.finished.notify_all();
    }

    fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the read-back (it is bounded by its own timeout).
    fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.finished.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the source needs of the decision log: the writer, and how to read it back.
pub struct LogSide {
    pub log: Arc<DecisionLog>,
    /// The consumer's configuration, for the read-back's own client.
    pub consumer_config: ClientConfig,
    /// For the admin requests a read-back may make (creating a log topic).
    pub runtime: tokio::runtime::Handle,
    pub settings: ReadBackSettings,
}

#[derive(Default)]
struct Partitions {
    /// Index -> state. An index is never reused, so a hold from an earlier assignment can
    /// never be mistaken for one of the current assignment.
    by_index: HashMap<u32, Assigned>,
    /// Topic -> partition -> index: looked up per message without allocating.
    by_name: HashMap<String, HashMap<i32, u32>>,
    next_index: u32,
    recommit: bool,
    /// Scratch for the decided ranges taken from the sampler at each commit.
    ranges: Vec<DecidedRange>,
}

impl Partitions {
    fn index(&self, topic: &str, partition: i32) -> Option<u32> {
        self.by_name.get(topic)?.get(&partition).copied()
    }

    /// Offsets to commit for the partitions chosen by `filter`, the read marks and the head
    /// marks.
    fn commit_list(
        &mut self,
        filter: impl Fn(u32) -> bool,
        force: bool,
        sampler: &Sampler,
    ) -> Commits {
        let mut tpl = TopicPartitionList::new();
        let mut marks = TopicPartitionList::new();
        let mut heads = TopicPartitionList::new();
        let safe: Vec<(u32, i64)> = self
            .by_index
            .iter_mut()
            .filter(|(idx, _)| filter(**idx))
            .filter_map(|(idx, a)| Some((*idx, a.offsets.safe_offset()?)))
            .collect();
        // The ranges of traces whose holds were seen released above were recorded before the
        // release (see `Sampler::decide_counted`): take them only now.
        std::sync::atomic::fence(Ordering::Acquire);
        sampler.take_decided_ranges(&mut self.ranges);
        for r in self.ranges.drain(..) {
            if let Some(a) = self.by_index.get_mut(&r.partition) {
                a.offsets.decided(r.first, r.last);
            }
        }
        for (idx, safe) in safe {
            let Some(a) = self.by_index.get_mut(&idx) else {
                continue;
            };
            let head = a.offsets.head_mark(safe);
            if force || a.offsets.head_marked != Some(head) {
                let _ = heads.add_partition_offset(&a.topic, a.partition, Offset::Offset(head));
                a.offsets.head_marked = Some(head);
            }
            if force || a.offsets.committed != Some(safe) {
                let _ = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(safe));
                a.offsets.committed = Some(safe);
            }
            let read = a.offsets.next().unwrap_or(safe).max(a.offsets.replay_until);
            if force || a.offsets.marked != Some(read) {
                let _ = marks.add_partition_offset(&a.topic, a.partition, Offset::Offset(read));
                a.offsets.marked = Some(read);
            }
        }
        Commits { tpl, marks, heads }
    }
}

/// What one commit sends: the group's offsets, and the two companion groups' marks.
struct Commits {
    tpl: TopicPartitionList,
    marks: TopicPartitionList,
    heads: TopicPartitionList,
}

impl Commits {
    /// Commits the marks (best effort: a lost read mark makes the replay count an
    /// underestimate, a lost head mark leaves the previous, lower one in place).
    fn commit_marks(&self, ctx: &SourceContext, mode: CommitMode) {
        // Head marks first: the group's offset must never be ahead of them for long.
        if self.heads.count() > 0 {
            let _ = ctx.heads.commit(&self.heads, mode);
            let _ = ctx.heads.poll(Duration::ZERO);
        }
        if self.marks.count() > 0 {
            let _ = ctx.marks.commit(&self.marks, mode);
            let _ = ctx.marks.poll(Duration::ZERO);
        }
    }
}

pub struct SourceContext {
    /// A group-less client that commits read marks under `<group>.read-mark`.
    marks: BaseConsumer,
    /// A group-less client that commits head marks under `<group>.head-mark` and reads heads
    /// back (see [`crate::heads`]).
    heads: BaseConsumer,
    sampler: Arc<Sampler>,
    health: Arc<Health>,
    parts: Mutex<Partitions>,
    /// The decision log, unless it is off.
    log: Option<LogSide>,
    /// Read-backs started and not yet seen finished by the ingest thread.
    read_backs: AtomicUsize,
}

impl SourceContext {
    fn parts(&self) -> std::sync::MutexGuard<'_, Partitions> {
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
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        metrics::counter!(m::REBALANCES, "kind" => "revoke").increment(1);
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
        commits.commit_marks(self, CommitMode::Sync);
        if commits.tpl.count() > 0 {
            if let Err(e) = consumer.commit(&commits.tpl, CommitMode::Sync) {
                metrics::counter!(m::COMMIT_FAILURES).increment(1);
                tracing::warn!(error = %e, "commit on revoke failed; the next owner replays more");
            }
        }
        for i in &revoked {
            if let Some(a) = parts.by_index.remove(i) {
                if a.read_back.is_some() {
                    self.health.reading_back.fetch_sub(1, Ordering::Relaxed);
                }
                self.health.lag.revoked(&a.topic, a.partition);
                if let Some(t) = parts.by_name.get_mut(&a.topic) {
                    t.remove(&a.partition);
                }
            }
        }
        drop(parts);
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // (The read marks come from the companion client, not from `consumer`.)
        match rebalance {
            Rebalance::Assign(tpl) => {
                metrics::counter!(m::REBALANCES, "kind" => "assign").increment(1);
                // What this group had read before: spans below it may already be in the
                // output (a crash or rebalance replays them).
                let read = self
                    .marks
                    .committed_offsets((*tpl).clone(), Duration::from_secs(10))
                    .ok();
                // Where the heads of traces straddling the commit offset begin.
                let heads = self
                    .heads
                    .committed_offsets((*tpl).clone(), Duration::from_secs(10))
                    .ok();
                let committed = |list: &Option<TopicPartitionList>, e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
                    list.as_ref()
                        .and_then(|c| c.find_partition(e.topic(), e.partition()))
                        .and_then(|c| match c.offset() {
                            Offset::Offset(n) => Some(n),
                            _ => None,
                        })
                };
                let mut parts = self.parts();
                let mut reading = Vec::new();
                let job = self.log.as_ref().map(|_| Arc::new(Job::default()));
                for e in tpl.elements() {
                    let replay_until = committed(&read, &e).unwrap_or(-1);
                    let head_from = committed(&heads, &e);
                    let idx = parts.next_index;
                    parts.next_index += 1;
                    let old = parts
                        .by_name
                        .entry(e.topic().to_string())
                        .or_default()
                        .insert(e.partition(), idx);
                    if let Some(old) = old {
                        parts.by_index.remove(&old);
                    }
                    let mut offsets = PartitionOffsets::default();
                    offsets.replay_until = replay_until;
                    self.health.lag.assigned(e.topic(), e.partition());
                    if let Some(side) = &self.log {
                        side.log.assign(idx, e.topic(), e.partition());
                        reading.push(Part {
                            idx,
                            topic: e.topic().to_string(),
                            partition: e.partition(),
                        });
                    }
                    parts.by_index.insert(
                        idx,
                        Assigned {
                            topic: e.topic().to_string(),
                            partition: e.partition(),
                            offsets,
                            head_from,
                            heads: None,
                            read_back: job.clone(),
                        },
                    );
                }
                let n = parts.by_index.len();
                drop(parts);
                if let (Some(side), Some(job)) = (&self.log, job) {
                    // Not ingested before its decisions are back (a message fetched before the
                    // pause took effect waits for the read-back: see `run`).
                    let _ = consumer.pause(tpl);
                    self.health
                        .reading_back
                        .fetch_add(reading.len(), Ordering::Relaxed);
                    self.read_backs.fetch_add(1, Ordering::Relaxed);
                    let (log, config, runtime, settings) = (
                        side.log.clone(),
                        side.consumer_config.clone(),
                        side.runtime.clone(),
                        side.settings.clone(),
                    );
                    let cache = self.sampler.decisions.clone();
                    let spawned = std::thread::Builder::new()
                        .name("tailsift-read-back".into())
                        .spawn({
                            let job = job.clone();
                            move || {
                                read_back(&log, &config, &runtime, &cache, &reading, &settings);
                                job.finish();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start reading the decision log back; the partitions are ingested without it");
                        job.finish();
                    }
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

/// Builds the consumer (manual commits, cooperative-sticky) and subscribes it. With `log`,
/// every newly assigned partition's decisions are read back before it is ingested.
pub fn consumer(
    config: &ClientConfig,
    topics: &[String],
    sampler: Arc<Sampler>,
    health: Arc<Health>,
    log: Option<LogSide>,
) -> Result<BaseConsumer<SourceContext>, KafkaError> {
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
    let ctx = SourceContext {
        marks: companion(READ_MARK_GROUP_SUFFIX).create()?,
        heads: companion(HEAD_MARK_GROUP_SUFFIX).create()?,
        sampler,
        health,
        parts: Mutex::new(Partitions::default()),
        log,
        read_backs: AtomicUsize::new(0),
    };
    let consumer: BaseConsumer<SourceContext> = config.create_with_context(ctx)?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Counts logged per kind of failure, so that a flood logs once and then periodically.
#[derive(Default)]
struct LogOnce(HashMap<&'static str, u64>);

impl LogOnce {
    fn should_log(&mut self, kind: &'static str) -> bool {
        let n = self.0.entry(kind).or_default();
        *n += 1;
        n.is_power_of_two()
    }
}

/// Per-topic counters, registered once per topic instead of looked up per message.
#[derive(Default)]
struct TopicCounters(HashMap<String, Arc<TopicCounter>>);

struct TopicCounter {
    encoding: Encoding,
    messages: metrics::Counter,
    bytes: metrics::Counter,
    spans: metrics::Counter,
}

impl TopicCounters {
    fn get(&mut self, topic: &str, encodings: &impl Fn(&str) -> Encoding) -> Arc<TopicCounter> {
        if let Some(c) = self.0.get(topic) {
            return c.clone();
        }
        let t = topic.to_string();
        let c = Arc::new(TopicCounter {
            encoding: encodings(topic),
            messages: metrics::counter!(m::MESSAGES_RECEIVED, "topic" => t.clone()),
            bytes: metrics::counter!(m::BYTES_RECEIVED, "topic" => t.clone()),
            spans: metrics::counter!(m::SPANS_RECEIVED, "topic" => t.clone()),
        });
        self.0.insert(t, c.clone());
        c
    }
}

/// Settings of the ingest loop.
pub struct IngestSettings {
    pub commit_interval: Duration,
    /// Pause above its high watermark, resume below its low one.
    pub budget: Budget,
    /// The encoding of each input topic.
    pub encodings: Box<dyn Fn(&str) -> Encoding + Send>,
    /// Where undecodable messages are copied, if anywhere.
    pub dead_letters: Option<Arc<DeadLetters>>,
    /// RED metrics from every span, unless turned off.
    pub red: Option<crate::red::RedLimits>,
}

/// The ingest thread's body: poll, ingest, commit, until told to stop.
pub fn run(consumer: BaseConsumer<SourceContext>, settings: IngestSettings) {
    let ctx = consumer.context();
    let sampler = ctx.sampler.clone();
    let health = ctx.health.clone();
    let mut decoder = Decoder::new();
    let mut scratch = Vec::new();
    let mut log = LogOnce::default();
    let mut topic_counters = TopicCounters::default();
    let mut last_commit = std::time::Instant::now();
    let mut drained = false;
    // Messages read since the last tick, for the progress that `/readyz` watches.
    let mut consumed: u64 = 0;
    let budget = settings.budget;
    let mut red = settings.red.map(crate::red::Red::new);
    loop {
        if health.stop.load(Ordering::Relaxed) {
            break;
        }
        if health.draining.load(Ordering::Relaxed) && !drained {
            drained = true;
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
                metrics::gauge!(m::PAUSED_PARTITIONS).set(a.count() as f64);
            }
        }
        if health.reading_back.load(Ordering::Relaxed) > 0 {
            finish_read_backs(&consumer, drained);
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Err(e)) => {
                metrics::counter!(m::CONSUMER_ERRORS).increment(1);
                if log.should_log("consumer") {
                    tracing::warn!(error = %e, "consumer error");
                }
            }
            Some(Ok(msg)) if !drained => {
                if health.reading_back.load(Ordering::Relaxed) > 0 {
                    // Fetched before its pause took effect: its decisions first.
                    let job = {
                        let parts = ctx.parts();
                        parts
                            .index(msg.topic(), msg.partition())
                            .and_then(|i| parts.by_index.get(&i))
                            .and_then(|a| a.read_back.clone())
                    };
                    if let Some(job) = job {
                        job.wait();
                        finish_read_backs(&consumer, drained);
                    }
                }
                let mut parts = ctx.parts();
                let Some(idx) = parts.index(msg.topic(), msg.partition()) else {
                    continue; // a partition revoked meanwhile: its next owner reads it
                };
                let Some(a) = parts.by_index.get_mut(&idx) else {
                    continue;
                };
                consumed += 1;
                let offset = msg.offset();
                let payload = msg.payload().unwrap_or_default();
                let replayed = offset < a.offsets.replay_until;
                if let Some(from) = a.head_from.take() {
                    if from < offset {
                        let encoding = (settings.encodings)(msg.topic());
                        let until = a.offsets.replay_until.max(offset);
                        let max_bytes = (budget.max_bytes / 8) as usize;
                        a.offsets.inherit_heads(from, until);
                        a.heads = Some(read_heads(
                            &ctx.heads,
                            (msg.topic(), msg.partition()),
                            from..offset,
                            until,
                            encoding,
                            max_bytes,
                        ));
                    }
                }
                let hold = MessageHold::new(idx, offset);
                let counters = topic_counters.get(msg.topic(), &settings.encodings);
                counters.messages.increment(1);
                counters.bytes.increment(payload.len() as u64);
                let ingested = counters
                    .encoding
                    .as_proto(payload, &mut scratch)
                    .inspect_err(|_| {
                        sampler
                            .stats
                            .decode_failures
                            .fetch_add(1, Ordering::Relaxed);
                    })
                    .and_then(|proto| {
                        let r = sampler.ingest_with_heads(
                            &mut decoder,
                            proto,
                            &hold,
                            replayed,
                            Instant::now(),
                            a.heads.as_mut(),
                        );
                        if let (Ok(_), Some(red)) = (&r, red.as_mut()) {
                            red.observe(&decoder, proto);
                        }
                        r
                    });
                match ingested {
                    Ok(s) => {
                        counters.spans.increment(s.spans as u64);
                        if s.invalid_spans > 0 {
                            metrics::counter!(m::INVALID_SPANS).increment(s.invalid_spans as u64);
                        }
                        if s.late_kept > 0 {
                            metrics::counter!(m::LATE_SPANS, "outcome" => "kept")
                                .increment(s.late_kept as u64);
                        }
                        if s.late_dropped > 0 {
                            metrics::counter!(m::LATE_SPANS, "outcome" => "dropped")
                                .increment(s.late_dropped as u64);
                        }
                        if s.stress_kept > 0 {
                            metrics::counter!(m::STRESS_SPANS, "outcome" => "kept")
                                .increment(s.stress_kept as u64);
                        }
                        if s.stress_dropped > 0 {
                            metrics::counter!(m::STRESS_SPANS, "outcome" => "dropped")
                                .increment(s.stress_dropped as u64);
                        }
                        if s.logged_kept > 0 {
                            metrics::counter!(m::LOGGED_DECISION_SPANS, "outcome" => "kept")
                                .increment(s.logged_kept as u64);
                        }
                        if s.logged_dropped > 0 {
                            metrics::counter!(m::LOGGED_DECISION_SPANS, "outcome" => "dropped")
                                .increment(s.logged_dropped as u64);
                        }
                        if s.skipped_forwarded > 0 {
                            metrics::counter!(m::SPANS_SKIPPED_FORWARDED)
                                .increment(s.skipped_forwarded as u64);
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::DECODE_FAILURES, "kind" => e.kind()).increment(1);
                        if log.should_log(e.kind()) {
                            tracing::warn!(
                                topic = msg.topic(),
                                partition = msg.partition(),
                                offset,
                                error = %e,
                                "skipping a message that does not decode"
                            );
                        }
                        if let Some(dl) = &settings.dead_letters {
                            // The letter holds the offset until the broker has it.
                            dl.send(Box::new(Letter {
                                key: msg.key().map(<[u8]>::to_vec),
                                payload: payload.to_vec(),
                                topic: msg.topic().to_string(),
                                partition: msg.partition(),
                                offset,
                                kind: e.kind(),
                                error: e.to_string(),
                                hold: hold.hold(),
                            }));
                        }
                    }
                }
                a.offsets.processed_message(hold);
                if a.heads
                    .as_ref()
                    .is_some_and(|h| h.is_empty() || offset + 1 >= h.until)
                {
                    a.heads = None; // the replay is past every straddling trace
                }
            }
            Some(Ok(_)) => {} // draining: fetched before the pause; replayed after restart
        }
        // Back-pressure: the buffer is near its budget, let Kafka hold the backlog.
        let bytes = sampler.buffer.bytes();
        let paused = health.paused.load(Ordering::Relaxed);
        if !drained && !paused && bytes > budget.pause_above {
            let n = consumer.assignment().map_or(0, |a| {
                let _ = consumer.pause(&a);
                a.count()
            });
            health.paused.store(true, Ordering::Relaxed);
            sampler.buffer.stop_clock(Instant::now());
            metrics::gauge!(m::PAUSED).set(1.0);
            metrics::gauge!(m::PAUSED_PARTITIONS).set(n as f64);
            tracing::warn!(
                bytes,
                pause_above = budget.pause_above,
                partitions = n,
                "buffer above its high watermark: fetching paused"
            );
        } else if !drained && paused && bytes < budget.resume_below {
            let _ = consumer.resume(&resumable(&ctx.parts()));
            health.paused.store(false, Ordering::Relaxed);
            sampler.buffer.start_clock(Instant::now());
            metrics::gauge!(m::PAUSED).set(0.0);
            metrics::gauge!(m::PAUSED_PARTITIONS).set(0.0);
            tracing::info!(
                bytes,
                resume_below = budget.resume_below,
                "buffer below its low watermark: fetching resumed"
            );
        }
        if last_commit.elapsed() >= settings.commit_interval {
            last_commit = std::time::Instant::now();
            if std::mem::take(&mut consumed) > 0 {
                health.lag.progress();
            }
            if let Some(red) = red.as_mut() {
                red.flush();
            }
            commit(&consumer, CommitMode::Async);
            metrics::gauge!(m::TRACES_BUFFERED).set(sampler.buffer.len() as f64);
            metrics::gauge!(m::BYTES_BUFFERED).set(sampler.buffer.bytes() as f64);
            sampler.publish_metrics();
        }
    }
    commit(&consumer, CommitMode::Sync);
    // Dropping the consumer leaves the group (the revoke callback runs once more).
}

/// The assigned partitions that may be fetched: all but those whose decisions are still being
/// read back.
fn resumable(parts: &Partitions) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for a in parts.by_index.values().filter(|a| a.read_back.is_none()) {
        tpl.add_partition(&a.topic, a.partition);
    }
    tpl
}

/// Resumes the partitions whose read-back of the decision log has finished (unless fetching
/// is paused for memory, or draining).
fn finish_read_backs(consumer: &BaseConsumer<SourceContext>, drained: bool) {
    let ctx = consumer.context();
    let mut parts = ctx.parts();
    let mut ready = TopicPartitionList::new();
    for a in parts.by_index.values_mut() {
        if a.read_back.as_ref().is_some_and(|j| j.is_done()) {
            a.read_back = None;
            ctx.health.reading_back.fetch_sub(1, Ordering::Relaxed);
            ready.add_partition(&a.topic, a.partition);
        }
    }
    drop(parts);
    if ready.count() > 0 && !drained && !ctx.health.paused.load(Ordering::Relaxed) {
        let _ = consumer.resume(&ready);
    }
}

fn commit(consumer: &BaseConsumer<SourceContext>, mode: CommitMode) {
    let ctx = consumer.context();
    let mut parts = ctx.parts();
    let force = std::mem::take(&mut parts.recommit);
    let commits = parts.commit_list(|_| true, force, &ctx.sampler);
    let held_back: i64 = parts
        .by_index
        .values_mut()
        .map(|a| a.offsets.held_back())
        .sum();
    ctx.health.lag.positions(
        parts
            .by_index
            .values()
            .filter_map(|a| Some((a.topic.as_str(), a.partition, a.offsets.next()?))),
    );
    drop(parts);
    metrics::gauge!(m::OFFSETS_HELD_BACK).set(held_back as f64);
    commits.commit_marks(ctx, mode);
    if commits.tpl.count() > 0 {
        metrics::counter!(m::COMMITS).increment(1);
        if let Err(e) = consumer.commit(&commits.tpl, mode) {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(error = %e, "offset commit failed; will commit again");
            ctx.parts().recommit = true;
        }
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
    let result = if complete { "complete" } else { "incomplete" };
    metrics::counter!(m::REPLAY_HEAD_READS, "result" => result).increment(1);
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
