//! The end-to-end benchmark's helpers (driven by `scripts/bench-e2e.sh`; see BENCHMARKS.md).
//!
//! - `load`: creates the input topic and fills it with generated traces (OTLP protobuf, keyed
//!   by trace id as the Collector's kafka exporter does), or with the SDK recording's batches
//!   (`--traffic sdk`), then prints what it wrote as JSON.
//! - `passthrough`: the ceiling Kafka and librdkafka set: consume every message of the input
//!   topic and produce it unchanged to an output topic, no decoding, no buffering; it prints
//!   the time from the first message consumed to the last one acknowledged.
//! - `watch`: follows a running tailsift through its `/metrics` and `/proc`: time from the
//!   first span received to the last, resident memory, buffered traces, and, once the buffer
//!   has drained, the decision latency percentiles from its histogram.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::TraceId;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates topics (fine if they exist).
    Topics {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        names: Vec<String>,
    },
    Load {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Spans to write (whole traces: a few more at most).
        #[arg(long)]
        spans: u64,
        /// `generated`: each service's spans of one trace a message, keyed by trace id.
        /// `sdk`: the batches recorded from the OpenTelemetry SDK (`tests/data/sdk-traffic.bin`,
        /// the spans of many traces a message, interleaved), replayed as often as needed with
        /// new trace ids each time, unkeyed as an SDK's exporter writes them.
        #[arg(long, default_value = "generated")]
        traffic: String,
    },
    Passthrough {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        /// Messages to copy (what `load` wrote).
        #[arg(long)]
        messages: u64,
    },
    Watch {
        /// host:port of tailsift's HTTP listener.
        #[arg(long)]
        metrics: String,
        #[arg(long)]
        pid: u32,
        /// Spans to wait for (what `load` wrote).
        #[arg(long)]
        spans: u64,
        /// Traces to wait for decisions on (what `load` wrote): the buffered-traces gauge is
        /// published on the commit tick, so a run shorter than a tick would read it as
        /// drained before anything was decided.
        #[arg(long, default_value_t = 0)]
        traces: u64,
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
    /// Records `decisions` decisions through the decision log's writer (as the deciders do:
    /// the journal of the sampler) into a fresh log topic of `partitions` partitions, waits
    /// for every acknowledgement, and prints the CPU time it took, this process's and the
    /// broker's (`TAILSIFT_E2E_BROKER_PID`).
    Logwrite {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        decisions: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
    /// Writes `decisions` decision records to a fresh one-partition log topic, then reads them
    /// back as a newly assigned partition's owner does (`decision_log::read_back`), and prints
    /// the time it took and the resident memory it added.
    Readback {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        decisions: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Topics {
            brokers,
            partitions,
            names,
        } => names
            .iter()
            .try_for_each(|n| create_topic(&brokers, n, partitions)),
        Command::Load {
            brokers,
            topic,
            partitions,
            spans,
            traffic,
        } => load(&brokers, &topic, partitions, spans, &traffic),
        Command::Passthrough {
            brokers,
            input,
            output,
            group,
            messages,
        } => passthrough(&brokers, &input, &output, &group, messages),
        Command::Watch {
            metrics,
            pid,
            spans,
            traces,
            timeout_secs,
        } => watch(
            &metrics,
            pid,
            (spans, traces),
            Duration::from_secs(timeout_secs),
        ),
        Command::Readback { brokers, decisions } => readback(&brokers, decisions),
        Command::Logwrite {
            brokers,
            decisions,
            partitions,
        } => logwrite(&brokers, decisions, partitions),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

fn logwrite(brokers: &str, decisions: u64, partitions: i32) -> anyhow::Result<()> {
    use tailsift::decision::Decision;
    use tailsift::journal::{Journal, JournalEntry};
    use tailsift::kafka::decision_log::{DecisionLog, LogTopics};

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let log_topic = format!("lw-log-{run}");
    create_topic(brokers, &log_topic, partitions)?;
    // The output's producer settings (pipeline::producer_config).
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all");
    let log = DecisionLog::new(&client, LogTopics::new(&log_topic))?;
    for p in 0..partitions {
        log.assign(p as u32, "input", p);
    }
    let rules: [std::sync::Arc<str>; 3] = [
        "errors".into(),
        "baseline".into(),
        "drop-health-checks".into(),
    ];
    let broker = std::env::var("TAILSIFT_E2E_BROKER_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let (cpu0, broker0) = (
        cpu_seconds(std::process::id()),
        broker.map_or(0.0, cpu_seconds),
    );
    let started = Instant::now();
    let now = tailsift::decision::unix_ms();
    for n in 0..decisions {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(n + 1).to_be_bytes());
        id[8..].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        let rule = rules[(n % 3) as usize].clone();
        let (decision, through) = if n % 5 == 0 {
            (
                Decision::Keep {
                    rule,
                    sample_rate: 1,
                },
                Some(n as i64),
            )
        } else {
            (Decision::Drop { rule }, None)
        };
        log.record(JournalEntry {
            trace_id: tailsift::otlp::TraceId(id),
            decision,
            decided_at: now,
            partitions: [((n % partitions as u64) as u32, through)]
                .into_iter()
                .collect(),
            holds: Default::default(),
            acked_at: None,
        });
    }
    log.flush(Duration::from_secs(300))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()) - cpu0;
    let broker_cpu = broker.map_or(0.0, cpu_seconds) - broker0;
    println!(
        "{{\"decisions\":{decisions},\"seconds\":{secs:.2},\"cpu_seconds\":{cpu:.3},\"cpu_us_per_decision\":{:.2},\"broker_cpu_seconds\":{broker_cpu:.3},\"broker_cpu_us_per_decision\":{:.2}}}",
        cpu / decisions as f64 * 1e6,
        broker_cpu / decisions as f64 * 1e6,
    );
    Ok(())
}

fn readback(brokers: &str, decisions: u64) -> anyhow::Result<()> {
    use tailsift::decision::record::Record;
    use tailsift::decision::{Decision, DecisionCache, CACHE_ENTRY_BYTES};
    use tailsift::kafka::decision_log::read_back::{read_back, Part, ReadBackSettings};
    use tailsift::kafka::decision_log::{DecisionLog, LogTopics};

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (input, log_topic) = (format!("rb-in-{run}"), format!("rb-log-{run}"));
    create_topic(brokers, &input, 1)?;
    create_topic(brokers, &log_topic, 1)?;
    // The records, as tailsift writes them: one in four kept (the example rules' share).
    let p = producer(brokers)?;
    let now = tailsift::decision::unix_ms();
    let rules: [std::sync::Arc<str>; 3] =
        ["errors".into(), "baseline".into(), "slow-checkout".into()];
    let written = Instant::now();
    for n in 0..decisions {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(n + 1).to_be_bytes()); // never the invalid all-zero id
        id[8..].copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
        let rule = rules[(n % 3) as usize].clone();
        let decision = if n % 4 == 0 {
            Decision::Keep {
                rule,
                sample_rate: 1,
            }
        } else {
            Decision::Drop { rule }
        };
        let value = Record {
            through: decision.forwards().then_some(n as i64),
            decision,
            decided_at: now,
        }
        .to_vec();
        let key = hex::encode(id);
        let mut record = BaseRecord::<str, [u8]>::to(&log_topic)
            .partition(0)
            .key(&key)
            .payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    let write_secs = written.elapsed().as_secs_f64();

    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("rb-{run}"));
    let log = DecisionLog::new(&client, LogTopics::new(&log_topic))?;
    let cache = DecisionCache::with_max_bytes(
        decisions * CACHE_ENTRY_BYTES * 17 / 16 + (1 << 20),
        Duration::from_secs(300),
    );
    let settings = ReadBackSettings {
        ttl: Duration::from_secs(300),
        timeout: Duration::from_secs(300),
        max_records: DecisionCache::capacity_for_bytes(
            decisions * CACHE_ENTRY_BYTES * 17 / 16 + (1 << 20),
        ),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let before = rss_bytes();
    let started = Instant::now();
    let outcomes = read_back(
        &log,
        &client,
        rt.handle(),
        &cache,
        &[Part {
            idx: 0,
            topic: input,
            partition: 0,
        }],
        &settings,
    );
    let secs = started.elapsed().as_secs_f64();
    let grown = rss_bytes().saturating_sub(before);
    let read = outcomes.iter().map(|o| o.decisions).sum::<u64>();
    let entries = cache.stats().entries;
    println!(
        "{{\"decisions\":{decisions},\"read\":{read},\"cached\":{entries},\"result\":\"{}\",\"write_seconds\":{write_secs:.2},\"read_seconds\":{secs:.2},\"decisions_per_second\":{:.0},\"rss_grown\":{grown},\"rss_per_decision\":{:.0},\"cache_entry_bytes\":{CACHE_ENTRY_BYTES}}}",
        outcomes.first().map_or("none", |o| o.ended.as_str()),
        read as f64 / secs,
        grown as f64 / read.max(1) as f64,
    );
    Ok(())
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in rt.block_on(admin.create_topics(&[new], &AdminOptions::new()))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    // The settings tailsift's own producer uses (pipeline::producer_config).
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &[u8], payload: &[u8]) {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic)
        .key(key)
        .payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, r)) => {
                eprintln!("produce failed ({e}); retrying");
                record = r;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[path = "../tests/data/sdk_traffic.rs"]
mod sdk_traffic;

/// Writes `spans` spans (whole traces, or whole replays: a few more at most) of `traffic`:
/// generated traces, each keyed by its id, or the SDK recording's batches replayed, each
/// replay's traces new ones (`sdk_traffic::replayed`), unkeyed.
fn load(
    brokers: &str,
    topic: &str,
    partitions: i32,
    spans: u64,
    traffic: &str,
) -> anyhow::Result<()> {
    let recording = match traffic {
        "generated" => None,
        "sdk" => Some(sdk_traffic::recording()),
        other => bail!("--traffic {other}: generated or sdk"),
    };
    create_topic(brokers, topic, partitions)?;
    let p = producer(brokers)?;
    let mut gen = Generator::new(GeneratorConfig::default(), 1);
    let mut d = Decoder::new();
    let (mut written, mut messages, mut traces, mut bytes, mut span_bytes) = (0, 0, 0, 0, 0);
    let mut ids = std::collections::HashSet::new();
    let start = Instant::now();
    let mut step = 0u64;
    while written < spans {
        let (key, batch) = match &recording {
            None => {
                let t = gen.next_trace(1_700_000_000_000_000_000 + step * 1_000_000);
                (TraceId(t.trace_id).to_hex(), t.messages)
            }
            Some(r) => (String::new(), sdk_traffic::replayed(r, step)),
        };
        step += 1;
        ids.clear();
        for m in &batch {
            written += d.decode(m).context("a loaded message")? as u64;
            for g in d.groups(m) {
                span_bytes += g.spans().map(|s| s.field.len() as u64).sum::<u64>();
                ids.insert(g.trace_id);
            }
            send(&p, topic, key.as_bytes(), m);
            messages += 1;
            bytes += m.len() as u64;
        }
        traces += ids.len() as u64;
    }
    p.flush(Duration::from_secs(300))
        .context("flushing the loaded messages")?;
    println!(
        "{{\"messages\":{messages},\"spans\":{written},\"traces\":{traces},\"bytes\":{bytes},\"span_bytes\":{span_bytes},\"seconds\":{:.3}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn passthrough(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    messages: u64,
) -> anyhow::Result<()> {
    // The settings tailsift's consumer uses (pipeline::consumer_config).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[input])?;
    let p = producer(brokers)?;
    let mut copied = 0u64;
    let mut first = None;
    let mut cpu_first = 0.0;
    let mut last_commit = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(900);
    while copied < messages {
        if Instant::now() > deadline {
            bail!("only {copied} of {messages} messages consumed in 900 s");
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                    cpu_first = cpu_seconds(std::process::id());
                }
                send(
                    &p,
                    output,
                    m.key().unwrap_or_default(),
                    m.payload().unwrap_or_default(),
                );
                copied += 1;
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            last_commit = Instant::now();
            let _ = consumer.commit_consumer_state(CommitMode::Async);
        }
    }
    p.flush(Duration::from_secs(300))
        .context("flushing the copied messages")?;
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let cpu = cpu_seconds(std::process::id()) - cpu_first;
    println!("{{\"messages\":{copied},\"seconds\":{seconds:.3},\"cpu_seconds\":{cpu:.3}}}");
    Ok(())
}

/// `/metrics` as (series, value): series is the name with its labels as printed.
fn scrape(addr: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

fn sum(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(s, _)| s == name || s.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), so 11 and 12 after the state field.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A percentile from a Prometheus histogram's cumulative buckets, interpolated linearly
/// within the bucket it falls in.
fn percentile(buckets: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = total * p;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, n);
    }
    None
}

fn latency_buckets(metrics: &[(String, f64)]) -> Vec<(f64, f64)> {
    let mut by_le: HashMap<String, f64> = HashMap::new();
    for (s, v) in metrics {
        let Some(rest) = s.strip_prefix("tailsift_decision_latency_seconds_bucket{") else {
            continue;
        };
        let Some(le) = rest
            .split(',')
            .find_map(|kv| kv.trim_end_matches('}').strip_prefix("le=\""))
        else {
            continue;
        };
        *by_le
            .entry(le.trim_end_matches('"').to_string())
            .or_default() += v;
    }
    let mut out: Vec<(f64, f64)> = by_le
        .into_iter()
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn watch(
    addr: &str,
    pid: u32,
    (spans, traces_loaded): (u64, u64),
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let baseline = loop {
        if scrape(addr).is_ok() {
            break rss(pid);
        }
        if Instant::now() > deadline {
            bail!("tailsift's /metrics on {addr} never answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut first, mut done) = (None, None);
    let (mut cpu_first, mut broker_first) = (0.0, 0.0);
    let broker = std::env::var("TAILSIFT_E2E_BROKER_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let (mut peak_rss, mut peak_traces, mut peak_bytes) = (0u64, 0.0f64, 0.0f64);
    let mut max_traces = 0.0f64;
    let start = Instant::now();
    loop {
        if Instant::now() > deadline {
            bail!("tailsift did not receive {spans} spans and drain in time");
        }
        let m = scrape(addr)?;
        let received = sum(&m, "tailsift_spans_received_total");
        let now = start.elapsed().as_secs_f64();
        if received > 0.0 && first.is_none() {
            first = Some(now);
            cpu_first = cpu_seconds(pid);
            broker_first = broker.map_or(0.0, cpu_seconds);
        }
        let traces = sum(&m, "tailsift_traces_buffered");
        let bytes = sum(&m, "tailsift_buffered_bytes");
        max_traces = max_traces.max(traces);
        let r = rss(pid);
        if r > peak_rss {
            (peak_rss, peak_traces, peak_bytes) = (r, traces, bytes);
        }
        if done.is_none() && received >= spans as f64 {
            done = Some(now);
        }
        let decided = sum(&m, "tailsift_traces_decided_total");
        if done.is_some() && traces == 0.0 && decided >= traces_loaded as f64 {
            let buckets = latency_buckets(&m);
            let ms = |p| percentile(&buckets, p).map_or(-1.0, |s| s * 1e3);
            let (first, done) = (first.unwrap_or(0.0), done.unwrap_or(0.0));
            let cpu = cpu_seconds(pid) - cpu_first;
            let broker_cpu = broker.map_or(0.0, cpu_seconds) - broker_first;
            println!(
                "{{\"spans\":{spans},\"cpu_seconds\":{cpu:.3},\"broker_cpu_seconds\":{broker_cpu:.3},\"seconds\":{:.3},\"latency_p50_ms\":{:.1},\"latency_p99_ms\":{:.1},\"decided_traces\":{},\"rss_baseline\":{baseline},\"rss_peak\":{peak_rss},\"traces_at_peak\":{peak_traces},\"buffered_bytes_at_peak\":{peak_bytes},\"max_traces_buffered\":{max_traces}}}",
                done - first,
                ms(0.5),
                ms(0.99),
                sum(&m, "tailsift_traces_decided_total"),
            );
            return Ok(());
        }
        // Every scrape renders every series in tailsift's process: at 50 a second it was 4 %
        // of tailsift's CPU (perf), hundreds of times what a Prometheus scraping every 15 s
        // costs. Often until the first span arrives (the CPU count starts there), then 4 a
        // second: done is seen at most 250 ms late, which the throughput figure pays, not
        // the pass-through's.
        let pause = if first.is_none() { 20 } else { 250 };
        std::thread::sleep(Duration::from_millis(pause));
    }
}
