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
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::health::Health;
use crate::kafka::dead_letter::{DeadLetters, Letter};
use crate::metrics as m;
use crate::offsets::{OffsetHold, PartitionOffsets};
use crate::otlp::decode::Decoder;
use crate::otlp::encode::encode_trace;
use crate::otlp::SpanContext;

/// One re-keyed message; holds its input offset until acknowledged.
struct Outgoing {
    key: String,
    payload: Vec<u8>,
    spans: u32,
    _hold: Arc<OffsetHold>,
}

struct RouteProducerContext {
    retries: mpsc::Sender<Box<Outgoing>>,
}

impl ClientContext for RouteProducerContext {}

impl ProducerContext for RouteProducerContext {
    type DeliveryOpaque = Box<Outgoing>;

    fn delivery(&self, result: &DeliveryResult<'_>, out: Box<Outgoing>) {
        match result {
            Ok(_) => {
                metrics::counter!(m::MESSAGES_PRODUCED).increment(1);
                metrics::counter!(m::SPANS_FORWARDED).increment(u64::from(out.spans));
            }
            Err((e, _)) => {
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::warn!(error = %e, "delivery of a re-keyed trace failed; retrying");
                let _ = self.retries.send(out);
            }
        }
    }
}

struct RouteProducer {
    producer: ThreadedProducer<RouteProducerContext>,
    topic: String,
    retries: mpsc::Sender<Box<Outgoing>>,
}

impl RouteProducer {
    fn new(config: &ClientConfig, topic: &str) -> Result<Arc<Self>, KafkaError> {
        let (tx, rx) = mpsc::channel::<Box<Outgoing>>();
        let producer = config.create_with_context(RouteProducerContext {
            retries: tx.clone(),
        })?;
        let p = Arc::new(RouteProducer {
            producer,
            topic: topic.to_string(),
            retries: tx,
        });
        let weak = Arc::downgrade(&p);
        std::thread::Builder::new()
            .name("tailsift-route-retry".into())
            .spawn(move || {
                while let Ok(out) = rx.recv() {
                    std::thread::sleep(Duration::from_millis(500));
                    let Some(p) = weak.upgrade() else { break };
                    p.send(out);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start a thread: {e}")))?;
        Ok(p)
    }

    fn send(&self, out: Box<Outgoing>) {
        let key = out.key.clone();
        let payload = out.payload.clone();
        let record = BaseRecord::with_opaque_to(&self.topic, out)
            .key(key.as_bytes())
            .payload(payload.as_slice());
        match crate::kafka::sink::enqueue(&self.producer, record, None) {
            Ok(()) => {}
            Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                // Only a single span over the limit gets here: no broker takes it.
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::error!(error = %e, bytes = payload.len(),
                    "a span larger than kafka.max_message_bytes cannot be routed; dropped");
            }
            Err((e, r)) => {
                metrics::counter!(m::PRODUCE_ERRORS).increment(1);
                tracing::warn!(error = %e, "cannot enqueue a re-keyed trace; retrying");
                let _ = self.retries.send(r.delivery_opaque);
            }
        }
    }
}

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
        metrics::counter!(m::REBALANCES, "kind" => "revoke").increment(1);
        // Whatever is in flight for these partitions is acknowledged before their commit, so
        // the next owner replays as little as possible.
        let _ = self.producer.producer.flush(Duration::from_secs(10));
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
            metrics::counter!(m::REBALANCES, "kind" => "assign").increment(1);
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
    pub health: Arc<Health>,
    pub http_addr: SocketAddr,
    ingest: std::thread::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
}

/// Starts routing `config.kafka.input_topics` to `config.kafka.output_topic`.
pub async fn start(config: &Config) -> anyhow::Result<Router> {
    let handle = crate::metrics::install();
    let mut pc = crate::pipeline::producer_config(config);
    if !config.kafka.properties.contains_key("partitioner")
        && !config.kafka.producer_properties.contains_key("partitioner")
    {
        pc.set("partitioner", "fnv1a_random");
    }
    let producer = RouteProducer::new(&pc, &config.kafka.output_topic).with_context(|| {
        format!(
            "cannot create the Kafka producer{}",
            crate::pipeline::TLS_HINT
        )
    })?;
    let dead_letters = match &config.kafka.dead_letter_topic {
        Some(t) => Some(
            DeadLetters::new(&crate::pipeline::producer_config(config), t)
                .context("cannot create the dead-letter producer")?,
        ),
        None => None,
    };
    let health = Arc::new(Health::default());
    let (http_addr, server) = crate::http::bind(
        config.http.listen,
        handle,
        health.clone(),
        config.monitoring.stall_timeout,
    )
    .await
    .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let http = tokio::spawn(server);
    let table: Arc<Table> = Arc::default();
    let ctx = RouteConsumerContext {
        producer: producer.clone(),
        dead_letters: dead_letters.clone(),
        table: table.clone(),
        health: health.clone(),
    };
    let consumer: BaseConsumer<RouteConsumerContext> = crate::pipeline::consumer_config(config)
        .create_with_context(ctx)
        .with_context(|| {
            format!(
                "cannot create the Kafka consumer{}",
                crate::pipeline::TLS_HINT
            )
        })?;
    let topics: Vec<&str> = config
        .kafka
        .input_topics
        .iter()
        .map(String::as_str)
        .collect();
    consumer.subscribe(&topics).context("cannot subscribe")?;
    let settings = Settings {
        commit_interval: config.kafka.commit_interval,
        max_message_bytes: config.kafka.max_message_bytes,
        shutdown_timeout: config.shutdown_timeout,
        config: config.clone(),
    };
    let h = health.clone();
    let ingest = std::thread::Builder::new()
        .name("tailsift-route".into())
        .spawn(move || run(consumer, table, h, settings))
        .context("cannot start the route thread")?;
    tracing::info!(
        input = ?config.kafka.input_topics,
        output = %config.kafka.output_topic,
        group = %config.kafka.group_id,
        http = %http_addr,
        kafka = ?config.kafka,
        "tailsift route running (kafka settings logged with secrets redacted)"
    );
    Ok(Router {
        health,
        http_addr,
        ingest,
        http,
    })
}

impl Router {
    /// Stops reading, waits for the produces in flight (bounded by `shutdown_timeout`),
    /// commits what is safe and leaves the group.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.health.draining.store(true, Ordering::Relaxed);
        self.health.stop.store(true, Ordering::Relaxed);
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
        self.http.abort();
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
    let mut last_commit = std::time::Instant::now();
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
                        let mut chunks: Vec<(Arc<SpanContext>, Vec<u8>)> = Vec::new();
                        for span in group.spans() {
                            match chunks
                                .iter_mut()
                                .find(|(c, _)| Arc::ptr_eq(c, span.context))
                            {
                                Some((_, b)) => b.extend_from_slice(span.field),
                                None => chunks.push((span.context.clone(), span.field.to_vec())),
                            }
                        }
                        let messages = encode_trace(
                            chunks.iter().map(|(c, b)| (&**c, b.as_slice())),
                            settings.max_message_bytes,
                        );
                        let n = messages.len().max(1) as u32;
                        let hex = group.trace_id.to_hex();
                        for payload in messages {
                            ctx.producer.send(Box::new(Outgoing {
                                key: hex.clone(),
                                payload,
                                spans: group.len() as u32 / n,
                                _hold: hold.clone(),
                            }));
                        }
                    }
                    metrics::counter!(m::ROUTED_TRACES).increment(traces);
                }
                Err(e) => {
                    metrics::counter!(m::DECODE_FAILURES, "kind" => e.kind()).increment(1);
                    tracing::warn!(topic, partition = msg.partition(), offset = msg.offset(),
                        error = %e, "skipping a message that does not decode");
                    if let Some(d) = &ctx.dead_letters {
                        d.send(Box::new(Letter {
                            key: msg.key().map(<[u8]>::to_vec),
                            payload: payload.to_vec(),
                            topic: topic.to_string(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                            kind: e.kind(),
                            error: e.to_string(),
                            hold: hold.clone(),
                        }));
                    }
                }
            }
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = t.get_mut(&key) {
                p.processed(hold);
            }
        }
        if last_commit.elapsed() >= settings.commit_interval {
            last_commit = std::time::Instant::now();
            commit(&consumer, &table, CommitMode::Async);
        }
    }
    // Shutdown: wait for what is in flight, then commit what is safe.
    let _ = ctx.producer.producer.flush(settings.shutdown_timeout);
    if let Some(d) = &ctx.dead_letters {
        let _ = d.flush(Duration::from_secs(5));
    }
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
