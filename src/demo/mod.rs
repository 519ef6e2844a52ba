//! `tailsift demo`: the whole pipeline on one machine with nothing installed.
//!
//! An in-process Kafka (librdkafka's mock cluster), a generator of checkout traces, the
//! sampler on the repository's `rules/` (or the same rules embedded in the binary), a live
//! one-line summary, and `/metrics`.

pub mod generator;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Config;
use crate::otlp::TraceId;
use crate::rules::{parse_file, RuleSet, RulesError};
use generator::{Generator, GeneratorConfig};

/// The example rules, compiled in so the demo runs from anywhere.
pub const EMBEDDED_RULES: &[(&str, &str)] = &[
    ("10-errors.yaml", include_str!("../../rules/10-errors.yaml")),
    (
        "15-span-explosion.yaml",
        include_str!("../../rules/15-span-explosion.yaml"),
    ),
    (
        "20-drop-health-checks.yaml",
        include_str!("../../rules/20-drop-health-checks.yaml"),
    ),
    (
        "30-latency.yaml",
        include_str!("../../rules/30-latency.yaml"),
    ),
    (
        "40-customers.yaml",
        include_str!("../../rules/40-customers.yaml"),
    ),
    (
        "90-baseline.yaml",
        include_str!("../../rules/90-baseline.yaml"),
    ),
];

/// The embedded example rules as a rule set.
pub fn embedded_rules() -> Result<RuleSet, RulesError> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in EMBEDDED_RULES {
        match parse_file(&format!("(embedded) rules/{name}"), text) {
            Ok(r) => rules.extend(r),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(RulesError(errors));
    }
    RuleSet::new(rules, None)
}

/// `tailsift demo`'s command-line options.
pub struct DemoOptions {
    /// Stop after this long; run until Ctrl-C when `None`.
    pub duration: Option<Duration>,
    /// Traces generated per second.
    pub rate: u32,
    /// Rules directory, which must exist; `None`: `rules` when it is a directory here, else
    /// the embedded rules.
    pub rules: Option<PathBuf>,
    /// Where `/metrics` is served.
    pub listen: std::net::SocketAddr,
}

const INPUT: &str = "otlp-spans";
const OUTPUT: &str = "otlp-sampled";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Default)]
struct OutputCount {
    messages: AtomicU64,
    spans: AtomicU64,
}

/// Runs the demo: starts the in-process Kafka, the pipeline and the generator, prints a summary
/// line every second to stdout, and on Ctrl-C, after `duration`, or once stdout's reader has
/// gone, shuts down in order and prints the final counts. An error is a failure to set
/// something up (the in-process Kafka, the rules, the pipeline) or to shut the pipeline down.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("cannot start the in-process Kafka")?;
    cluster
        .create_topic(INPUT, 4, 1)
        .context("cannot create the input topic")?;
    cluster
        .create_topic(OUTPUT, 1, 1)
        .context("cannot create the output topic")?;
    let brokers = cluster.bootstrap_servers();

    // Only the default directory falls back to the embedded rules: a directory given by name
    // that does not exist is a mistake to report, not to paper over.
    let dir = match opts.rules {
        Some(d) => Some(d),
        None => Some(PathBuf::from("rules")).filter(|d| d.is_dir()),
    };
    let (rules, source) = match &dir {
        Some(dir) => {
            let r = RuleSet::load(dir, None)
                .with_context(|| format!("invalid rules in {}", dir.display()))?;
            (r, dir.display().to_string())
        }
        None => (embedded_rules()?, "embedded example rules".to_string()),
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from("rules"));
    let mut config = Config::for_brokers(&brokers, INPUT, OUTPUT, &dir);
    config.completion.decision_wait = Duration::from_secs(3);
    config.completion.root_grace = Duration::from_secs(1);
    config.http.listen = opts.listen;
    config.kafka.group_id = "tailsift-demo".into();
    // The decision log, on a topic made here: the mock cluster does not create topics on
    // request (nor find offsets by time, so a read-back there reads nothing: the demo's one
    // instance never needs one).
    if let Some(log) = config.validate()?.decision_log {
        cluster
            .create_topic(&log.log_of(INPUT), 4, 1)
            .context("cannot create the decision log topic")?;
    }
    let running = crate::pipeline::start_with_rules(&config, rules).await?;
    let mut reading = say(&format!(
        "tailsift demo: in-process Kafka at {brokers}, {} traces/s generated, rules from {source}\n\
         metrics: http://{}/metrics  (joining the consumer group takes ~3 s)",
        opts.rate, running.http_addr
    ));

    // The mock cluster keeps only the last few MiB per partition: generate once the sampler
    // has joined the group (its first join waits ~3 s), or the backlog would be evicted.
    let joined = tokio::time::Instant::now();
    while running.health.assigned.load(Ordering::Relaxed) == 0
        && joined.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let generated = Arc::new(AtomicU64::new(0));
    let gen = {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .create()
            .context("cannot create the generator's producer")?;
        let (stop, generated, rate) = (stop.clone(), generated.clone(), opts.rate);
        std::thread::spawn(move || generate(producer, rate, &stop, &generated))
    };
    let out = Arc::new(OutputCount::default());
    let reader = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "tailsift-demo-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("cannot create the output reader")?;
        consumer.subscribe(&[OUTPUT])?;
        let (stop, out) = (stop.clone(), out.clone());
        std::thread::spawn(move || read_output(consumer, &stop, &out))
    };

    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_spans = 0;
    let ctrl_c = crate::pipeline::signal();
    tokio::pin!(ctrl_c);
    // Until the reader of the output goes away (`tailsift demo | head -1`): then the demo
    // stops as after its duration.
    while reading {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        let spans = running.sampler.counts().spans_received();
        reading = say(&summary(&running.sampler, &out, spans - last_spans));
        last_spans = spans;
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = gen.join();
    let sampler = running.sampler.clone();
    let undecided = sampler.buffered_traces();
    running.shutdown().await?;
    let _ = reader.join();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let spans = sampler.counts().spans_received();
    say(&format!(
        "final: {} traces generated, {spans} spans read ({:.0} spans/s), {} traces kept, {} dropped, \
         {} undecided at exit (left uncommitted), {} messages / {} spans on {OUTPUT}",
        generated.load(Ordering::Relaxed),
        spans as f64 / secs,
        sampler.counts().kept(),
        sampler.counts().dropped(),
        undecided,
        out.messages.load(Ordering::Relaxed),
        out.spans.load(Ordering::Relaxed),
    ));
    for (rule, kept, dropped) in sampler.counts().by_rule() {
        say(&format!(
            "  rule {rule:<24} kept {kept:>8}  dropped {dropped:>8}"
        ));
    }
    // The sampler's producer goes before the in-process broker does.
    drop(sampler);
    drop(cluster);
    Ok(())
}

/// Prints a line; false once stdout's reader has gone away (a closed pipe), which is not a
/// reason to panic.
fn say(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn summary(s: &crate::sampler::Sampler, out: &OutputCount, spans_per_s: u64) -> String {
    let counts = s.counts();
    let rules: Vec<String> = counts
        .by_rule()
        .iter()
        .map(|(r, k, d)| format!("{r} {k}/{}", k + d))
        .collect();
    format!(
        "in {spans_per_s} spans/s | buffered {} traces, {:.1} MiB | kept {} dropped {} | by rule (kept/decided): {} | out {} msgs",
        s.buffered_traces(),
        s.buffered_bytes() as f64 / (1 << 20) as f64,
        counts.kept(),
        counts.dropped(),
        rules.join(", "),
        out.messages.load(Ordering::Relaxed),
    )
}

fn generate(
    producer: ThreadedProducer<DefaultProducerContext>,
    rate: u32,
    stop: &AtomicBool,
    generated: &AtomicU64,
) {
    let mut gen = Generator::new(GeneratorConfig::default(), now_nanos());
    let started = std::time::Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let t = gen.next_trace(now_nanos());
            let key = TraceId(t.trace_id).to_hex();
            for msg in &t.messages {
                let mut record = BaseRecord::<str, [u8]>::to(INPUT).key(&key).payload(msg);
                // A full local queue means the in-process broker is behind: wait for it.
                while let Err((_, r)) = producer.send(record) {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
            sent += 1;
            generated.store(sent, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = producer.flush(Duration::from_secs(5));
}

fn read_output(consumer: BaseConsumer, stop: &AtomicBool, out: &OutputCount) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let mut quiet_since = None;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let spans = ExportTraceServiceRequest::decode(m.payload().unwrap_or_default())
                    .map(|r| {
                        r.resource_spans
                            .iter()
                            .flat_map(|rs| &rs.scope_spans)
                            .map(|ss| ss.spans.len() as u64)
                            .sum::<u64>()
                    })
                    .unwrap_or(0);
                out.messages.fetch_add(1, Ordering::Relaxed);
                out.spans.fetch_add(spans, Ordering::Relaxed);
            }
            _ if stop.load(Ordering::Relaxed) => {
                // Drain what the shutdown flushed, then stop.
                let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            _ => {}
        }
    }
}
