//! Wiring: rules, sink, sampler, ingest thread, deciders and HTTP, started together and shut
//! down in the order that loses nothing.
//!
//! Shutdown: stop fetching; stop the deciders; wait for the produces in flight (up to the
//! bound); commit what is safe; leave the group. Traces still undecided are not decided early:
//! their offsets stay uncommitted, and whoever reads the partition next replays them whole.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::decision::DecisionCache;
use crate::health::Health;
use crate::kafka::consume::{self, IngestSettings};
use crate::kafka::dead_letter::DeadLetters;
use crate::kafka::decision_log::read_back::ReadBackSettings;
use crate::kafka::decision_log::topics::{self, Ensured, Retention};
use crate::kafka::decision_log::{DecisionLog, LogError, LogTopics};
use crate::kafka::sink::KafkaSink;
use crate::rules::RuleSet;
use crate::sampler::Sampler;

/// Appended to client-creation errors: what a TLS or SCRAM setting needs in a build without
/// the `tls` feature.
pub const TLS_HINT: &str = if cfg!(feature = "tls") {
    ""
} else {
    " (if it names TLS/SSL or SCRAM: this build lacks them; build with the default features, or `--features tls-vendored`)"
};

/// How often the deciders look for complete traces.
pub const DECIDE_TICK: Duration = Duration::from_millis(10);

/// Bytes librdkafka may queue on each side (fetched but not yet ingested; produced but not yet
/// acknowledged): an eighth of the memory budget, between 1MiB and 64MiB. Outside the budget,
/// so part of the fixed overhead the README documents; properties in the config override it.
pub fn kafka_queue_bytes(c: &Config) -> u64 {
    (c.budget().0.max_bytes / 8).clamp(1 << 20, 64 << 20)
}

/// How long librdkafka waits to fetch a partition again when its fetch queue is full
/// (`fetch.queue.backoff.ms`), in milliseconds: the decider's tick.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How often librdkafka refreshes the input topics' metadata (`topic.metadata.refresh.interval.ms`),
/// in milliseconds: a topic created after the start is picked up within this.
pub const TOPIC_REFRESH_MS: &str = "3000";

/// librdkafka settings for the consumer.
pub fn consumer_config(c: &Config) -> ClientConfig {
    let k = &c.kafka;
    let mut cc = ClientConfig::new();
    cc.set(
        "queued.max.messages.kbytes",
        (kafka_queue_bytes(c) >> 10).to_string(),
    );
    // When the fetch queue is full, librdkafka waits this long before fetching that partition
    // again. Its default (1 s) left the ingest thread idle more than half the time once it
    // had drained the queue: end to end, 290 000 spans/s instead of 620 000-730 000 (see
    // BENCHMARKS.md). The queue's bound, and so the memory, is the same either way.
    cc.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    // A subscribed topic that does not exist yet is looked for again at each metadata refresh:
    // librdkafka's default (5 min) left a fresh deployment, started before its topic was
    // created, idle for exactly 300 s. Refreshing every few seconds costs one small request.
    cc.set("topic.metadata.refresh.interval.ms", TOPIC_REFRESH_MS);
    cc.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "statistics.interval.ms",
            c.monitoring.lag_interval.as_millis().to_string(),
        );
    if let Some(id) = &k.group_instance_id {
        cc.set("group.instance.id", id);
    }
    for (key, v) in k.properties.iter().chain(&k.consumer_properties) {
        cc.set(key, v);
    }
    cc
}

/// librdkafka settings for the producer.
pub fn producer_config(c: &Config) -> ClientConfig {
    let k = &c.kafka;
    let mut pc = ClientConfig::new();
    let queue = kafka_queue_bytes(c).max(2 * k.max_message_bytes as u64 + (1 << 20));
    pc.set("queue.buffering.max.kbytes", (queue >> 10).to_string());
    pc.set("bootstrap.servers", &k.brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set(
            "message.max.bytes",
            (k.max_message_bytes + 64 * 1024).to_string(),
        );
    for (key, v) in k.properties.iter().chain(&k.producer_properties) {
        pc.set(key, v);
    }
    pc
}

/// A running pipeline.
pub struct Running {
    pub sampler: Arc<Sampler>,
    pub health: Arc<Health>,
    /// The HTTP server's address, once bound.
    pub http_addr: SocketAddr,
    sink: Arc<KafkaSink>,
    decision_log: Option<Arc<DecisionLog>>,
    dead_letters: Option<Arc<DeadLetters>>,
    stop_deciders: watch::Sender<bool>,
    deciders: Vec<tokio::task::JoinHandle<()>>,
    ingest: std::thread::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
    shutdown_timeout: Duration,
    /// Reloads the rules when their directory changes (when started from a directory).
    pub reloader: Option<crate::rules::reload::Reloader>,
}

/// Starts the pipeline described by `config`, with rules loaded from its rules directory.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let options = config.rule_options();
    let rules = RuleSet::load_with(&config.rules.dir, &options)
        .with_context(|| format!("invalid rules in {}", config.rules.dir.display()))?;
    let version = rules.version().to_string();
    tracing::info!(dir = %config.rules.dir.display(), version = %version,
        rules = rules.rules().len(), mode = crate::rules::reload::mode_name(options.mode), "rules loaded");
    let mut running = start_with_rules(config, rules).await?;
    if config.rules.reload {
        let sampler = running.sampler.clone();
        let swap: crate::rules::reload::Swap = Arc::new(move |new| sampler.rules.swap(new));
        let loader = crate::rules::reload::Loader::new(&config.rules.dir, options, &version, swap);
        running.reloader = Some(crate::rules::reload::Reloader::spawn(
            loader,
            config.rules.poll_interval,
        ));
    }
    Ok(running)
}

/// Starts the pipeline with the given rules.
pub async fn start_with_rules(config: &Config, rules: RuleSet) -> anyhow::Result<Running> {
    let handle = crate::metrics::install();
    let rule_names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
    crate::metrics::init_series(&config.kafka.input_topics, &rule_names);
    crate::metrics::set_rules_info(
        rules.version(),
        crate::rules::reload::mode_name(rules.options().mode),
    );
    let sink = KafkaSink::new(&producer_config(config), &config.kafka.output_topic)
        .with_context(|| format!("cannot create the Kafka producer{TLS_HINT}"))?;
    let (budget, source) = config.budget();
    let mut completion = config.completion();
    // One trace may take at most half the budget (checked at load when the budget is set;
    // a budget derived from a small container lowers the limit instead).
    let trace_cap = (budget.max_bytes / 2).min(u64::from(u32::MAX)) as u32;
    if completion.max_trace_bytes > trace_cap {
        if config.completion.max_trace_bytes.is_some() {
            tracing::warn!(
                max_trace_bytes = completion.max_trace_bytes,
                lowered_to = trace_cap,
                "completion.max_trace_bytes lowered to half of the memory budget"
            );
        }
        completion.max_trace_bytes = trace_cap;
    }
    tracing::info!(
        max_bytes = budget.max_bytes,
        pause_above = budget.pause_above,
        resume_below = budget.resume_below,
        source = ?source,
        "buffer memory budget"
    );
    metrics::gauge!(crate::metrics::BUFFER_BUDGET).set(budget.max_bytes as f64);
    let decision_log = match config.decision_log_topics() {
        Some(topics) => Some(start_decision_log(config, topics).await?),
        None => {
            tracing::info!("decision log off (kafka.decision_topic is empty): late spans follow only the decisions of the instance that made them");
            None
        }
    };
    let mut sampler = Sampler::new(
        completion,
        rules,
        DecisionCache::with_max_bytes(config.decision_cache_bytes(), config.decision_cache.ttl),
        sink.clone(),
        config.kafka.max_message_bytes,
    )
    .with_budget(budget)
    .with_decided_ranges();
    if let Some(log) = &decision_log {
        sampler = sampler.with_journal(log.clone());
    }
    let sampler = Arc::new(sampler);
    sampler
        .orphan_services
        .set_max(config.monitoring.max_services);
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

    let consumer_config = consumer_config(config);
    let reset_to_latest = matches!(
        consumer_config.get("auto.offset.reset"),
        Some("latest" | "largest" | "end")
    );
    let log_side = decision_log.as_ref().map(|log| consume::LogSide {
        log: log.clone(),
        consumer_config: consumer_config.clone(),
        runtime: tokio::runtime::Handle::current(),
        settings: ReadBackSettings {
            ttl: config.decision_cache.ttl,
            timeout: config.decision_cache.read_back_timeout,
            max_records: DecisionCache::capacity_for_bytes(config.decision_cache_bytes()),
        },
    });
    let consumer = consume::consumer(
        &consumer_config,
        &config.kafka.input_topics,
        sampler.clone(),
        health.clone(),
        log_side,
    )
    .with_context(|| format!("cannot create the Kafka consumer{TLS_HINT}"))?;
    health.lag.expect_topics(&config.kafka.input_topics);
    crate::kafka::lag::spawn(
        &consumer_config,
        health.clone(),
        crate::kafka::lag::LagSettings {
            interval: config.monitoring.lag_interval,
            reset_to_latest,
        },
    )
    .context("cannot create the Kafka client that measures lag")?;
    let dead_letters = match &config.kafka.dead_letter_topic {
        Some(topic) => Some(
            DeadLetters::new(&producer_config(config), topic)
                .context("cannot create the dead-letter producer")?,
        ),
        None => None,
    };
    let settings = IngestSettings {
        dead_letters: dead_letters.clone(),
        commit_interval: config.kafka.commit_interval,
        budget,
        red: config
            .monitoring
            .red_metrics
            .then_some(crate::red::RedLimits {
                max_services: config.monitoring.max_services,
                max_operations: config.monitoring.max_operations_per_service,
            }),
        encodings: {
            let c = config.clone();
            Box::new(move |topic| c.encoding_of(topic))
        },
    };
    let ingest = std::thread::Builder::new()
        .name("tailsift-ingest".into())
        .spawn(move || consume::run(consumer, settings))
        .context("cannot start the ingest thread")?;

    let (stop_deciders, stop_rx) = watch::channel(false);
    let mut deciders = vec![tokio::spawn(decider(sampler.clone(), stop_rx.clone()))];
    if config.stress.enabled {
        deciders.push(tokio::spawn(stress_relief(
            sampler.clone(),
            health.clone(),
            config.stress.clone(),
            config.monitoring.lag_interval,
            stop_rx,
        )));
    }
    tracing::info!(
        input = ?config.kafka.input_topics,
        output = %config.kafka.output_topic,
        group = %config.kafka.group_id,
        http = %http_addr,
        kafka = %config.kafka.settings_line(),
        "tailsift running (kafka settings logged with secrets redacted)"
    );
    Ok(Running {
        sampler,
        health,
        http_addr,
        sink,
        decision_log,
        dead_letters,
        stop_deciders,
        deciders,
        ingest,
        http,
        shutdown_timeout: config.shutdown_timeout,
        reloader: None,
    })
}

/// Creates the decision log's writer and makes sure the log topic of every input topic that
/// exists is there, with enough partitions (an input topic created later gets its log when
/// its partitions are first assigned).
async fn start_decision_log(
    config: &Config,
    topics: LogTopics,
) -> anyhow::Result<Arc<DecisionLog>> {
    let client = producer_config(config);
    let writer = DecisionLog::new(&producer_config(config), topics.clone())
        .with_context(|| format!("cannot create the decision log's producer{TLS_HINT}"))?;
    for input in &config.kafka.input_topics {
        let log = topics.log_of(input);
        let checked = {
            let (client, input, log) = (client.clone(), input.clone(), log.clone());
            let retention = Retention {
                ttl: config.decision_cache.ttl,
            };
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let Some(partitions) = topics::partitions_of(&client, &input)? else {
                    return Ok(None);
                };
                runtime
                    .block_on(topics::ensure(
                        &client, &log, &input, partitions, retention, false,
                    ))
                    .map(|e| Some((e, partitions)))
            })
            .await
            .context("checking the decision log")?
        };
        if let Ok(Some((_, partitions))) = &checked {
            writer.ensured(input, *partitions);
        }
        match checked {
            Ok(Some((Ensured::Created { partitions }, _))) => {
                tracing::info!(topic = %log, partitions, "decision log topic created")
            }
            Ok(Some((
                Ensured::Present { partitions } | Ensured::Grown { to: partitions, .. },
                _,
            ))) => {
                tracing::info!(topic = %log, partitions, "decision log topic found")
            }
            Ok(None) => {
                tracing::info!(input = %input, log = %log, "input topic not there yet: its decision log is checked when its partitions are assigned")
            }
            // No answer (the brokers are down): like the rest of tailsift, start anyway and
            // check again when the partitions are assigned.
            Err(e @ LogError::Kafka(_)) => {
                tracing::warn!(error = %e, input = %input, log = %log, "cannot check the decision log topic now; checked again when partitions are assigned")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(writer)
}

/// Watches the total consumer lag and switches stress relief's degraded mode on and off.
pub async fn stress_relief(
    sampler: Arc<Sampler>,
    health: Arc<Health>,
    config: crate::config::StressConfig,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut relief = crate::stress::StressRelief::new(config.settings());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!(crate::metrics::STRESS_MODE).set(0.0);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let lag = health.lag.total();
        let Some(on) = relief.observe(lag, std::time::Instant::now()) else {
            continue;
        };
        metrics::gauge!(crate::metrics::STRESS_MODE).set(if on { 1.0 } else { 0.0 });
        let s = sampler.clone();
        let rate = config.sample_rate;
        let decided = tokio::task::spawn_blocking(move || s.set_degraded(on, rate, Instant::now()))
            .await
            .unwrap_or(0);
        if on {
            tracing::warn!(
                lag,
                enter_lag = config.enter_lag,
                sample_rate = rate,
                buffered_decided = decided,
                "stress relief: consumer lag keeps growing; degraded mode on, new traces decided by trace id alone"
            );
        } else {
            tracing::info!(
                lag,
                exit_lag = config.exit_lag,
                "stress relief: consumer lag is low again; degraded mode off, traces buffered as usual"
            );
        }
    }
}

/// Decides complete traces every tick until told to stop.
pub async fn decider(sampler: Arc<Sampler>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DECIDE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let s = sampler.clone();
        // Deciding is CPU work and may wait on a full producer queue: off the async workers.
        let _ = tokio::task::spawn_blocking(move || s.decide_due(Instant::now())).await;
    }
}

impl Running {
    /// Graceful shutdown, bounded by the configured shutdown timeout.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + self.shutdown_timeout;
        self.health.draining.store(true, Ordering::Relaxed);
        if let Some(r) = self.reloader {
            r.stop().await;
        }
        let _ = self.stop_deciders.send(true);
        // A decider waiting for room in the producer's queue (output unreachable) gives up
        // now, its trace's offsets left uncommitted, rather than holding shutdown past its
        // bound.
        self.sink.stop();
        if let Some(log) = &self.decision_log {
            log.stop();
        }
        for d in self.deciders {
            let _ = d.await;
        }
        let sink = self.sink.clone();
        let dead_letters = self.dead_letters.clone();
        let decision_log = self.decision_log.clone();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let flushed = tokio::task::spawn_blocking(move || {
            let r = sink.flush(left);
            sink.stop();
            // After the output: kept traces are recorded once their output is acknowledged.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let log = decision_log.as_ref().map_or(Ok(()), |l| {
                let r = l.flush(left);
                l.stop();
                r
            });
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let dl = dead_letters.as_ref().map_or(Ok(()), |d| {
                let r = d.flush(left);
                d.stop();
                r
            });
            r.and(log).and(dl)
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(
                in_flight = self.sink.in_flight(),
                "shutdown: not every kept trace was acknowledged in time; their offsets stay uncommitted"
            );
        }
        self.health.stop.store(true, Ordering::Relaxed);
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
        self.http.abort();
        tracing::info!(
            undecided = self.sampler.buffer.len(),
            "tailsift stopped; undecided traces will be replayed by the next owner"
        );
        Ok(())
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_refetches_a_full_partition_soon_unless_the_config_says_otherwise() {
        let dir = std::path::Path::new("rules");
        let mut c = Config::for_brokers("127.0.0.1:9092", "in", "out", dir);
        let cc = consumer_config(&c);
        assert_eq!(
            cc.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        c.kafka
            .consumer_properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        assert_eq!(
            consumer_config(&c).get("fetch.queue.backoff.ms"),
            Some("500")
        );
    }
}
