//! `tailsift route`: re-key OTLP traffic by trace id, for inputs that are not keyed by trace.
//!
//! A stateless consumer-group stage: each input message (protobuf or JSON) is split per trace,
//! and each trace's spans go out as one OTLP request (split further only above
//! `kafka.max_message_bytes`) keyed by the 32-character hex trace id to `kafka.output_topic`,
//! the sampler's input. At-least-once with the sampler's offset care: an input message's
//! offset is committed only once every message produced from it is acknowledged; on a
//! revocation the produces in flight are awaited before the commit. Undecodable messages are
//! counted, logged, and copied to `kafka.dead_letter_topic` if set, like the sampler does.
//!
//! The producer's partitioner defaults to `fnv1a_random`, the hash the OpenTelemetry
//! Collector's kafka exporter uses by default (Sarama-compatible FNV-1a), so that route and a
//! Collector that keys by trace id can write to one sampling topic and agree on partitions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use super::dead_letter::{refuse, DeadLetters, LogOnce};
use super::producer::{
    flush_all, refused_as_too_large, Deliveries, Flush, Outbound, Outgoing, RetryingProducer, Stage,
};
use super::{consumer_config, producer_config, SetupError};
use crate::config::Config;
use crate::health::Health;
use crate::http::{ListenError, Server};
use crate::offsets::{OffsetHold, PartitionOffsets};
use crate::otlp::decode::Decoder;
use crate::otlp::encode::{encode_trace, span_shares};
use crate::telemetry as m;

/// Why `tailsift route` could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The HTTP port.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A Kafka client or thread.
    #[error(transparent)]
    Kafka(#[from] SetupError),
}

/// One re-keyed message: how many spans it carries, and its input offset, held until the
/// broker acknowledges it.
pub struct Routed {
    spans: u32,
    _hold: Arc<OffsetHold>,
}

/// What re-keyed messages mean.
pub struct Rekeyed;

impl Deliveries for Rekeyed {
    type Opaque = Routed;

    fn delivered(&self, _msg: &BorrowedMessage<'_>, routed: Routed) {
        metrics::counter!(m::MESSAGES_PRODUCED).increment(1);
        metrics::counter!(m::SPANS_FORWARDED).increment(u64::from(routed.spans));
    }

    fn failed(
        &self,
        stage: Stage,
        e: &KafkaError,
        out: &mut Outgoing,
        routed: Routed,
    ) -> Option<Routed> {
        metrics::counter!(m::PRODUCE_ERRORS).increment(1);
        match stage {
            Stage::Delivery => {
                tracing::warn!(error = %e, "delivery of a re-keyed trace failed; retrying");
            }
            Stage::Enqueue if refused_as_too_large(e) => {
                // Only a single span over the limit gets here: no broker takes it.
                tracing::error!(error = %e, bytes = out.payload.len(),
                    "a span larger than kafka.max_message_bytes cannot be routed; dropped");
                return None;
            }
            Stage::Enqueue => {
                tracing::warn!(error = %e, "cannot enqueue a re-keyed trace; retrying");
            }
        }
        Some(routed)
    }
}

type RouteProducer = RetryingProducer<Rekeyed>;

type Table = Mutex<HashMap<(String, i32), PartitionOffsets>>;

struct RouteConsumerContext {
    producer: Arc<RouteProducer>,
    dead_letters: Option<Arc<DeadLetters>>,
    table: Arc<Table>,
    health: Arc<Health>,
}

impl ClientContext for RouteConsumerContext {}

impl ConsumerContext for RouteConsumerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        metrics::counter!(m::REBALANCES, "kind" => m::RebalanceKind::Revoke).increment(1);
        // Whatever is in flight for these partitions is acknowledged before their commit, so
        // the next owner replays as little as possible.
        let _ = self.producer.flush(Duration::from_secs(10));
        if let Some(d) = &self.dead_letters {
            let _ = d.flush(Duration::from_secs(10));
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut commit = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some(mut p) = table.remove(&(e.topic().to_string(), e.partition())) {
                if let Some(safe) = p.safe_offset() {
                    let _ =
                        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(safe));
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                metrics::counter!(m::COMMIT_FAILURES).increment(1);
                tracing::warn!(error = %e, "commit on revoke failed; the next owner replays more");
            }
        }
        self.health.assigned.store(table.len(), Ordering::Relaxed);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!(m::REBALANCES, "kind" => m::RebalanceKind::Assign).increment(1);
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                table
                    .entry((e.topic().to_string(), e.partition()))
                    .or_default();
            }
            self.health.assigned.store(table.len(), Ordering::Relaxed);
        }
    }
}

/// A running router.
pub struct Router {
    /// Readiness, as `/readyz` reports it.
    pub health: Arc<Health>,
    /// The HTTP server's address.
    pub http_addr: SocketAddr,
    ingest: std::thread::JoinHandle<()>,
    http: Server,
}

/// Starts routing `config.kafka.input_topics` to `config.kafka.output_topic`.
pub async fn start(config: &Config) -> Result<Router, RouteError> {
    let handle = crate::telemetry::install();
    let mut pc = producer_config(config);
    if !config.kafka.properties.contains_key("partitioner")
        && !config.kafka.producer_properties.contains_key("partitioner")
    {
        pc.set("partitioner", "fnv1a_random");
    }
    let producer = RetryingProducer::new(&pc, "Kafka producer", "tailsift-route-retry", Rekeyed)?;
    let dead_letters = DeadLetters::for_topic(
        &producer_config(config),
        config.kafka.dead_letter_topic.as_deref(),
    )?;
    let health = Arc::new(Health::default());
    let http = crate::http::start(config, handle, None, health.clone()).await?;
    let table: Arc<Table> = Arc::default();
    let ctx = RouteConsumerContext {
        producer: producer.clone(),
        dead_letters: dead_letters.clone(),
        table: table.clone(),
        health: health.clone(),
    };
    let consumer: BaseConsumer<RouteConsumerContext> = consumer_config(config)
        .create_with_context(ctx)
        .map_err(SetupError::client("Kafka consumer"))?;
    let topics: Vec<&str> = config
        .kafka
        .input_topics
        .iter()
        .map(String::as_str)
        .collect();
    consumer
        .subscribe(&topics)
        .map_err(SetupError::client("Kafka consumer"))?;
    let settings = Settings {
        commit_interval: config.kafka.commit_interval,
        max_message_bytes: config.kafka.max_message_bytes,
        shutdown_timeout: config.shutdown_timeout,
        config: config.clone(),
    };
    let h = health.clone();
    let ingest = super::spawn("tailsift-route", move || run(consumer, table, h, settings))?;
    tracing::info!(
        input = ?config.kafka.input_topics,
        output = %config.kafka.output_topic,
        group = %config.kafka.group_id,
        http = %http.addr,
        kafka = ?config.kafka,
        "tailsift route running (kafka settings logged with secrets redacted)"
    );
    Ok(Router {
        health,
        http_addr: http.addr,
        ingest,
        http,
    })
}

impl Router {
    /// Stops reading, waits for the produces in flight (bounded by `shutdown_timeout`),
    /// commits what is safe and leaves the group. Never fails: what was not acknowledged in
    /// time stays uncommitted.
    pub async fn shutdown(self) -> Result<(), std::convert::Infallible> {
        self.health.draining.store(true, Ordering::Relaxed);
        self.health.stop.store(true, Ordering::Relaxed);
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
        self.http.stop();
        tracing::info!("tailsift route stopped");
        Ok(())
    }
}

struct Settings {
    commit_interval: Duration,
    max_message_bytes: usize,
    shutdown_timeout: Duration,
    config: Config,
}

fn run(
    consumer: BaseConsumer<RouteConsumerContext>,
    table: Arc<Table>,
    health: Arc<Health>,
    settings: Settings,
) {
    let ctx = consumer.context();
    let mut decoder = Decoder::new();
    let mut scratch = Vec::new();
    let mut log = LogOnce::default();
    let mut last_commit = Instant::now();
    let mut partition_ids: HashMap<(String, i32), u32> = HashMap::new();
    while !health.stop.load(Ordering::Relaxed) {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) {
            let topic = msg.topic();
            let key = (topic.to_string(), msg.partition());
            let next_id = partition_ids.len() as u32;
            let hold = Arc::new(OffsetHold {
                partition: *partition_ids.entry(key.clone()).or_insert(next_id),
                offset: msg.offset(),
            });
            let payload = msg.payload().unwrap_or_default();
            metrics::counter!(m::MESSAGES_RECEIVED, "topic" => topic.to_string()).increment(1);
            let decoded = settings
                .config
                .encoding_of(topic)
                .as_proto(payload, &mut scratch)
                .and_then(|proto| decoder.decode(proto).map(|n| (proto, n)));
            match decoded {
                Ok((proto, spans)) => {
                    metrics::counter!(m::SPANS_RECEIVED, "topic" => topic.to_string())
                        .increment(spans as u64);
                    if decoder.invalid_spans > 0 {
                        metrics::counter!(m::INVALID_SPANS).increment(decoder.invalid_spans as u64);
                    }
                    let mut traces = 0u64;
                    for group in decoder.groups(proto) {
                        traces += 1;
                        let chunks = group.chunks();
                        let messages = encode_trace(
                            chunks.iter().map(|(c, b)| (&***c, &**b)),
                            settings.max_message_bytes,
                        );
                        let hex = group.trace_id.to_hex();
                        let shares = span_shares(group.len() as u32, messages.len());
                        for (payload, spans) in messages.iter().zip(shares) {
                            let record = Outbound {
                                topic: &settings.config.kafka.output_topic,
                                partition: None,
                                key: Some(hex.as_bytes()),
                                payload,
                                headers: None,
                            };
                            let routed = Routed {
                                spans,
                                _hold: hold.clone(),
                            };
                            ctx.producer.send(record, routed);
                        }
                    }
                    metrics::counter!(m::ROUTED_TRACES).increment(traces);
                }
                Err(e) => {
                    metrics::counter!(m::DECODE_FAILURES, "kind" => e.kind()).increment(1);
                    refuse(&msg, &e, &hold, ctx.dead_letters.as_deref(), &mut log)
                }
            }
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = t.get_mut(&key) {
                p.processed(hold);
            }
        }
        if last_commit.elapsed() >= settings.commit_interval {
            last_commit = Instant::now();
            commit(&consumer, &table, CommitMode::Async);
        }
    }
    // Shutdown: wait for what is in flight, then commit what is safe.
    let deadline = Instant::now() + settings.shutdown_timeout;
    let mut writers: Vec<&dyn Flush> = vec![&*ctx.producer];
    writers.extend(ctx.dead_letters.as_deref().map(|d| d as &dyn Flush));
    flush_all(deadline, &writers);
    commit(&consumer, &table, CommitMode::Sync);
}

fn commit(consumer: &BaseConsumer<RouteConsumerContext>, table: &Table, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    for ((topic, partition), p) in t.iter_mut() {
        if let Some(safe) = p.safe_offset() {
            if p.committed != Some(safe) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(safe));
                p.committed = Some(safe);
            }
        }
    }
    drop(t);
    if tpl.count() > 0 {
        metrics::counter!(m::COMMITS).increment(1);
        if let Err(e) = consumer.commit(&tpl, mode) {
            metrics::counter!(m::COMMIT_FAILURES).increment(1);
            tracing::warn!(error = %e, "offset commit failed; will commit again");
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            for p in t.values_mut() {
                p.committed = None;
            }
        }
    }
}
