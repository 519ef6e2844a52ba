//! Wiring: rules, sink, sampler, ingest thread, deciders and HTTP, started together and shut
//! down in the order that loses nothing.
//!
//! Shutdown: stop fetching; stop the deciders; wait for the produces in flight (up to the
//! bound); commit what is safe; leave the group. Traces still undecided are not decided early:
//! their offsets stay uncommitted, and whoever reads the partition next replays them whole.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::decision::DecisionCache;
use crate::health::Health;
use crate::http::{ListenError, Server};
use crate::kafka::consume::{self, IngestSettings};
use crate::kafka::dead_letter::DeadLetters;
use crate::kafka::decision_log::read_back::ReadBackSettings;
use crate::kafka::decision_log::topics::{self, Ensured, Retention};
use crate::kafka::decision_log::{DecisionLog, LogError, LogTopics};
use crate::kafka::producer::{flush_all, Flush};
use crate::kafka::rebalance;
use crate::kafka::replay::LogSide;
use crate::kafka::sink::KafkaSink;
use crate::kafka::{consumer_config, producer_config, SetupError};
use crate::rules::{RuleSet, RulesError};
use crate::sampler::Sampler;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration does not validate (a `Config` built or changed in code).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The rules directory does not load.
    #[error("invalid rules in {}", dir.display())]
    Rules {
        /// `rules.dir`.
        dir: PathBuf,
        /// Every error found in it.
        #[source]
        source: RulesError,
    },
    /// The HTTP port.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A Kafka client or thread.
    #[error(transparent)]
    Kafka(#[from] SetupError),
    /// The decision log's topics need an operator.
    #[error(transparent)]
    DecisionLog(#[from] LogError),
    /// Checking the decision log's topics did not finish.
    #[error("checking the decision log")]
    Checking(#[source] tokio::task::JoinError),
}

/// How often the deciders look for complete traces.
pub const DECIDE_TICK: Duration = Duration::from_millis(10);

/// How often the deciders look while no trace is buffered, at most (see [`decider`]).
pub const IDLE_TICK: Duration = Duration::from_millis(100);

/// A running pipeline.
pub struct Running {
    /// The sampler, for the demo's summary and the tests.
    pub sampler: Arc<Sampler>,
    /// Readiness, as `/readyz` reports it.
    pub health: Arc<Health>,
    /// The HTTP server's address, once bound.
    pub http_addr: SocketAddr,
    sink: Arc<KafkaSink>,
    decision_log: Option<Arc<DecisionLog>>,
    dead_letters: Option<Arc<DeadLetters>>,
    stop_deciders: watch::Sender<bool>,
    deciders: Vec<tokio::task::JoinHandle<()>>,
    ingest: std::thread::JoinHandle<()>,
    http: Server,
    shutdown_timeout: Duration,
    /// Reloads the rules when their directory changes (when started from a directory).
    pub reloader: Option<crate::rules::reload::Reloader>,
}

/// Starts the pipeline described by `config`, with rules loaded from its rules directory.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let options = config.validate()?.rule_options;
    let rules =
        RuleSet::load_with(&config.rules.dir, &options).map_err(|source| StartError::Rules {
            dir: config.rules.dir.clone(),
            source,
        })?;
    let version = rules.version().to_string();
    tracing::info!(dir = %config.rules.dir.display(), version = %version,
        rules = rules.rules().len(), mode = crate::rules::reload::mode_name(options.mode), "rules loaded");
    let mut running = start_with_rules(config, rules).await?;
    if config.rules.reload {
        let sampler = running.sampler.clone();
        let swap: crate::rules::reload::Swap = Arc::new(move |new| sampler.swap_rules(new));
        let loader = crate::rules::reload::Loader::new(&config.rules.dir, options, &version, swap);
        running.reloader = Some(crate::rules::reload::Reloader::spawn(
            loader,
            config.rules.poll_interval,
        ));
    }
    Ok(running)
}

/// Starts the pipeline with the given rules.
pub async fn start_with_rules(config: &Config, rules: RuleSet) -> Result<Running, StartError> {
    let settings = config.validate()?;
    let handle = crate::telemetry::install();
    crate::telemetry::init_series(&config.kafka.input_topics, rules.rules());
    if let Some(r) = rules.redaction() {
        r.register_metrics();
    }
    crate::telemetry::set_rules_info(
        rules.version(),
        crate::rules::reload::mode_name(rules.options().mode),
    );
    let sink = KafkaSink::new(&producer_config(config), &config.kafka.output_topic)?;
    let (budget, source) = config.budget();
    let mut completion = settings.completion;
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
    metrics::gauge!(crate::telemetry::BUFFER_BUDGET).set(budget.max_bytes as f64);
    let decision_log = match settings.decision_log {
        Some(topics) => Some(start_decision_log(config, topics).await?),
        None => {
            tracing::info!("decision log off (kafka.decision_topic is empty): late spans follow only the decisions of the instance that made them");
            None
        }
    };
    let mut sampler = Sampler::new(
        completion,
        rules,
        DecisionCache::with_max_bytes(settings.decision_cache_bytes, config.decision_cache.ttl),
        sink.clone(),
        config.kafka.max_message_bytes,
    )
    .with_budget(budget)
    .with_decided_ranges();
    if let Some(log) = &decision_log {
        sampler = sampler.with_journal(log.clone());
    }
    // Exemplars need the RED series (which RED registers) and kept traces (which the sampler
    // offers): see telemetry::exemplars.
    let exemplars = (config.monitoring.red_metrics && config.monitoring.exemplars)
        .then(crate::telemetry::exemplars::Exemplars::new);
    if let Some(e) = &exemplars {
        sampler = sampler.with_exemplars(e.clone());
    }
    let sampler = Arc::new(sampler);
    sampler
        .orphan_services
        .set_max(config.monitoring.max_services);
    let health = Arc::new(Health::default());
    let http = crate::http::start(config, handle, exemplars.clone(), health.clone()).await?;

    let consumer_config = consumer_config(config);
    let reset_to_latest = matches!(
        consumer_config.get("auto.offset.reset"),
        Some("latest" | "largest" | "end")
    );
    let log_side = decision_log.as_ref().map(|log| LogSide {
        log: log.clone(),
        consumer_config: consumer_config.clone(),
        runtime: tokio::runtime::Handle::current(),
        settings: ReadBackSettings {
            ttl: config.decision_cache.ttl,
            timeout: config.decision_cache.read_back_timeout,
            max_records: DecisionCache::capacity_for_bytes(settings.decision_cache_bytes),
        },
    });
    let consumer = rebalance::consumer(
        &consumer_config,
        &config.kafka.input_topics,
        sampler.clone(),
        health.clone(),
        log_side,
    )?;
    health.lag.expect_topics(&config.kafka.input_topics);
    crate::kafka::lag::spawn(
        &consumer_config,
        health.clone(),
        crate::kafka::lag::LagSettings {
            interval: config.monitoring.lag_interval,
            reset_to_latest,
        },
    )?;
    let dead_letters = DeadLetters::for_topic(
        &producer_config(config),
        config.kafka.dead_letter_topic.as_deref(),
    )?;
    if let Some(d) = &dead_letters {
        sink.set_dead_letters(d.clone());
    }
    let settings = IngestSettings {
        dead_letters: dead_letters.clone(),
        commit_interval: config.kafka.commit_interval,
        budget,
        red: config.monitoring.red_metrics.then(|| {
            let red = crate::telemetry::red::Red::new(crate::telemetry::red::RedLimits {
                max_services: config.monitoring.max_services,
                max_operations: config.monitoring.max_operations_per_service,
            });
            match &exemplars {
                Some(e) => red.with_exemplars(e.clone()),
                None => red,
            }
        }),
        encodings: {
            let c = config.clone();
            Box::new(move |topic| c.encoding_of(topic))
        },
    };
    let ingest = crate::kafka::spawn("tailsift-ingest", move || consume::run(consumer, settings))?;

    let (stop_deciders, stop_rx) = watch::channel(false);
    let mut deciders = vec![tokio::spawn(decider(sampler.clone(), stop_rx.clone()))];
    if config.stress.enabled {
        let s = sampler.clone();
        let degrade: crate::stress::Degrade =
            Arc::new(move |on, rate, now| s.set_degraded(on, rate, now));
        deciders.push(tokio::spawn(crate::stress::relieve(
            degrade,
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
        http = %http.addr,
        kafka = %config.kafka.settings_line(),
        "tailsift running (kafka settings logged with secrets redacted)"
    );
    Ok(Running {
        sampler,
        health,
        http_addr: http.addr,
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
) -> Result<Arc<DecisionLog>, StartError> {
    let client = producer_config(config);
    let writer = DecisionLog::new(&producer_config(config), topics.clone())?;
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
            .map_err(StartError::Checking)?
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

/// Decides complete traces every tick until told to stop.
///
/// While no trace is buffered a tick has nothing to decide, and what it still does (the
/// rules' gauges) does not need 10 ms: an idle instance ticks every [`IDLE_TICK`] instead, a
/// tenth of the wake-ups (which cost 1.5 % of a core). The idle tick is never longer than the
/// shortest completion wait, so a trace arriving meanwhile is looked at before it is due, and
/// no decision comes later than at the busy tick.
pub async fn decider(sampler: Arc<Sampler>, mut stop: watch::Receiver<bool>) {
    let idle = IDLE_TICK.min(sampler.shortest_wait()).max(DECIDE_TICK);
    let mut at = tokio::time::Instant::now();
    loop {
        // The byte count, one atomic, rather than the map's length, which locks every shard.
        let wait = if sampler.buffered_bytes() == 0 {
            idle
        } else {
            DECIDE_TICK
        };
        // From the last tick, as `interval` with `MissedTickBehavior::Delay` would: a tick
        // that ran late is taken at once, and the next one a wait after it.
        at = (at + wait).max(tokio::time::Instant::now());
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        let s = sampler.clone();
        // Deciding is CPU work and may wait on a full producer queue: off the async workers.
        let _ = tokio::task::spawn_blocking(move || s.decide_due(Instant::now())).await;
    }
}

impl Running {
    /// Graceful shutdown, bounded by the configured shutdown timeout. Never fails: what was
    /// not acknowledged in time stays uncommitted, and is replayed by the next owner.
    pub async fn shutdown(self) -> Result<(), std::convert::Infallible> {
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
        let flushed = tokio::task::spawn_blocking(move || {
            // The decision log after the output: kept traces are recorded once their output
            // is acknowledged.
            let mut writers: Vec<&dyn Flush> = vec![&*sink];
            writers.extend(decision_log.as_deref().map(|l| l as &dyn Flush));
            writers.extend(dead_letters.as_deref().map(|d| d as &dyn Flush));
            flush_all(deadline, &writers)
        })
        .await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!(
                in_flight = self.sink.in_flight(),
                "shutdown: not every kept trace was acknowledged in time; their offsets stay uncommitted"
            );
        }
        self.health.stop.store(true, Ordering::Relaxed);
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
        self.http.stop();
        tracing::info!(
            undecided = self.sampler.buffered_traces(),
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
