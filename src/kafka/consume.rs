//! The ingest thread: a consumer-group member that polls, feeds each message to the sampler
//! (or, when it does not decode, to the dead-letter topic), pauses fetching while the buffer is
//! over its high watermark (back-pressure: Kafka holds the backlog, not memory), and commits
//! on its tick.
//!
//! The consumer, its partition table ([`super::partitions`]) and the rebalance callbacks
//! ([`super::rebalance`]) all live on this one thread (librdkafka runs the callbacks inside
//! `poll`), so the table needs no real locking.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::time::Instant;

use rdkafka::topic_partition_list::TopicPartitionList;

use super::dead_letter::{refuse, DeadLetters, LogOnce};
use super::rebalance::SourceContext;
use super::replay::heads_before_first;
use crate::health::Health;
use crate::memory::Budget;
use crate::offsets::MessageHold;
use crate::otlp::decode::Decoder;
use crate::otlp::Encoding;
use crate::sampler::{Counts, Sampler, TopicCounts};
use crate::telemetry as m;
use crate::telemetry::red::Red;

/// Settings of the ingest loop.
pub struct IngestSettings {
    /// How often offsets are committed (and progress, RED metrics and gauges published).
    pub commit_interval: Duration,
    /// Pause above its high watermark, resume below its low one.
    pub budget: Budget,
    /// The encoding of each input topic.
    pub encodings: Box<dyn Fn(&str) -> Encoding + Send>,
    /// Where undecodable messages are copied, if anywhere.
    pub dead_letters: Option<Arc<DeadLetters>>,
    /// RED metrics from every span (with their exemplars' series), unless turned off.
    pub red: Option<Red>,
}

/// Per-topic counts (the sampler's), looked up once per topic instead of per message. Found
/// by topic name for every message, in one lookup (the map holds an index into `counters`, so
/// a hit returns without a second lookup), hashed with foldhash, not SipHash.
#[derive(Default)]
struct TopicCounters {
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    counters: Vec<TopicCounter>,
}

struct TopicCounter {
    encoding: Encoding,
    counts: Arc<TopicCounts>,
}

impl TopicCounters {
    fn get(
        &mut self,
        topic: &str,
        encodings: &impl Fn(&str) -> Encoding,
        counts: &Counts,
    ) -> &TopicCounter {
        if let Some(&i) = self.index.get(topic) {
            return &self.counters[i];
        }
        self.index.insert(topic.to_string(), self.counters.len());
        self.counters.push(TopicCounter {
            encoding: encodings(topic),
            counts: counts.topic(topic),
        });
        &self.counters[self.counters.len() - 1]
    }
}

/// The ingest thread's state between messages.
struct Ingest {
    sampler: Arc<Sampler>,
    health: Arc<Health>,
    settings: IngestSettings,
    decoder: Decoder,
    scratch: Vec<u8>,
    log: LogOnce,
    topic_counters: TopicCounters,
    last_commit: Instant,
    /// Draining (shutdown): every partition is paused, fetched messages are left unread.
    drained: bool,
    /// Messages read since the last tick, for the progress that `/readyz` watches.
    consumed: u64,
    red: Option<Red>,
}

/// The ingest thread's body: poll, ingest, commit, until told to stop.
pub fn run(consumer: BaseConsumer<SourceContext>, mut settings: IngestSettings) {
    let ctx = consumer.context();
    let mut ingest = Ingest {
        sampler: ctx.sampler.clone(),
        health: ctx.health.clone(),
        red: settings.red.take(),
        settings,
        decoder: Decoder::new(),
        scratch: Vec::new(),
        log: LogOnce::default(),
        topic_counters: TopicCounters::default(),
        last_commit: Instant::now(),
        drained: false,
        consumed: 0,
    };
    let health = ingest.health.clone();
    loop {
        if health.stop.load(Ordering::Relaxed) {
            break;
        }
        if health.draining.load(Ordering::Relaxed) && !ingest.drained {
            ingest.drained = true;
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
                metrics::gauge!(m::PAUSED_PARTITIONS).set(a.count() as f64);
            }
        }
        if health.reading_back.load(Ordering::Relaxed) > 0 {
            finish_read_backs(&consumer, ingest.drained);
        }
        let polled = consumer.poll(Duration::from_millis(50));
        // One clock read for the message and the commit check: at a hundred thousand
        // messages a second, reading it twice was a visible part of the ingest thread.
        let now = Instant::now();
        match polled {
            None => ingest.sampler.sweep(), // idle: what the deciders finished with
            Some(Err(e)) => {
                metrics::counter!(m::CONSUMER_ERRORS).increment(1);
                if ingest.log.should_log("consumer") {
                    tracing::warn!(error = %e, "consumer error");
                }
            }
            Some(Ok(msg)) if !ingest.drained => ingest.message(&consumer, &msg, now),
            Some(Ok(_)) => {} // draining: fetched before the pause; replayed after restart
        }
        ingest.back_pressure(&consumer);
        if now.duration_since(ingest.last_commit) >= ingest.settings.commit_interval {
            ingest.tick(&consumer, now);
        }
    }
    commit(&consumer, CommitMode::Sync);
    // Dropping the consumer leaves the group (the revoke callback runs once more).
}

impl Ingest {
    /// Ingests one message, or dead-letters it; either way its offset is accounted for.
    fn message(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        msg: &BorrowedMessage<'_>,
        mut now: Instant,
    ) {
        let ctx = consumer.context();
        if self.health.reading_back.load(Ordering::Relaxed) > 0 {
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
                finish_read_backs(consumer, self.drained);
                now = Instant::now(); // the wait may have been long
            }
        }
        // Read once: rdkafka measures and checks the topic's C string on every call.
        let topic = msg.topic();
        let mut parts = ctx.parts();
        let Some(idx) = parts.index(topic, msg.partition()) else {
            return; // a partition revoked meanwhile: its next owner reads it
        };
        let Some(a) = parts.by_index.get_mut(&idx) else {
            return;
        };
        self.consumed += 1;
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        let replayed = offset < a.offsets.replay_until;
        if a.head_from.is_some() {
            let encoding = (self.settings.encodings)(topic);
            let max_bytes = (self.settings.budget.max_bytes / 8) as usize;
            heads_before_first(&ctx.marks.heads, a, offset, encoding, max_bytes);
            now = Instant::now(); // reading the heads back takes a while
        }
        let hold = MessageHold::new(idx, offset);
        let counters =
            self.topic_counters
                .get(topic, &self.settings.encodings, self.sampler.counts());
        counters.counts.messages.add(1);
        counters.counts.bytes.add(payload.len() as u64);
        let (sampler, decoder, red) = (&self.sampler, &mut self.decoder, &mut self.red);
        let ingested = counters
            .encoding
            .as_proto(payload, &mut self.scratch)
            .inspect_err(|e| sampler.counts().decode_failed(e))
            .and_then(|proto| {
                let r = sampler.ingest_with_heads(
                    decoder,
                    proto,
                    &hold,
                    replayed,
                    now,
                    a.heads.as_mut(),
                );
                if let (Ok(_), Some(red)) = (&r, red.as_mut()) {
                    red.observe(decoder, proto);
                }
                r
            });
        match ingested {
            Ok(spans) => counters.counts.spans.add(spans as u64),
            Err(e) => {
                let letters = self.settings.dead_letters.as_deref();
                refuse(msg, &e, &hold, letters, &mut self.log);
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

    /// Back-pressure: the buffer is near its budget, let Kafka hold the backlog.
    fn back_pressure(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let budget = &self.settings.budget;
        let bytes = self.sampler.buffered_bytes();
        let paused = self.health.paused.load(Ordering::Relaxed);
        if !self.drained && !paused && bytes > budget.pause_above {
            let n = consumer.assignment().map_or(0, |a| {
                let _ = consumer.pause(&a);
                a.count()
            });
            self.health.paused.store(true, Ordering::Relaxed);
            self.sampler.reading_paused(Instant::now());
            metrics::gauge!(m::PAUSED).set(1.0);
            metrics::gauge!(m::PAUSED_PARTITIONS).set(n as f64);
            tracing::warn!(
                bytes,
                pause_above = budget.pause_above,
                partitions = n,
                "buffer above its high watermark: fetching paused"
            );
        } else if !self.drained && paused && bytes < budget.resume_below {
            let _ = consumer.resume(&consumer.context().parts().resumable());
            self.health.paused.store(false, Ordering::Relaxed);
            self.sampler.reading_resumed(Instant::now());
            metrics::gauge!(m::PAUSED).set(0.0);
            metrics::gauge!(m::PAUSED_PARTITIONS).set(0.0);
            tracing::info!(
                bytes,
                resume_below = budget.resume_below,
                "buffer below its low watermark: fetching resumed"
            );
        }
    }

    /// The commit tick: progress, RED metrics, the commit, the sampler's gauges.
    fn tick(&mut self, consumer: &BaseConsumer<SourceContext>, now: Instant) {
        self.last_commit = now;
        if std::mem::take(&mut self.consumed) > 0 {
            self.health.lag.progress();
        }
        if let Some(red) = self.red.as_mut() {
            red.flush();
        }
        commit(consumer, CommitMode::Async);
        self.sampler.publish_metrics();
    }
}

/// Resumes the partitions whose read-back of the decision log has finished (unless fetching
/// is paused for memory, or draining).
pub(crate) fn finish_read_backs(consumer: &BaseConsumer<SourceContext>, drained: bool) {
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

/// Commits what is safe for every assigned partition, and reports the read positions and
/// the offsets held back.
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
    if let Some(sent) = commits.send(consumer, &ctx.marks, mode) {
        metrics::counter!(m::COMMITS).increment(1);
        if let Err(e) = sent {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(error = %e, "offset commit failed; will commit again");
            ctx.parts().recommit = true;
        }
    }
}
