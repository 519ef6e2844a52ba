//! The at-least-once promise with the real binary: SIGKILL mid-stream, restart, and every span
//! of every trace the rules keep still reaches the output; then SIGTERM exits cleanly in time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

const RULES: &str = "rules:
  - name: errors
    conditions: trace.error = true
    outcome: keep
  - name: half
    outcome: keep
    sample_rate: 2
";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A tailsift process, killed if the test ends without stopping it (a panic included), so
/// that no orphan outlives the test. Its log goes to a file beside its config.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &std::path::Path, name: &str) -> Instance {
    let log =
        std::fs::File::create(config.with_file_name(format!("{name}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,tailsift=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tailsift");
    Instance(child)
}

async fn wait_ready(addr: SocketAddr) {
    let ok = eventually(Duration::from_secs(60), || {
        http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ok, "instance at {addr} never became ready");
}

/// Trace `i`: three messages (payment, orders, gateway with the root); every 7th fails.
fn trace(i: u64) -> ([u8; 16], Vec<Vec<u8>>, BTreeSet<Vec<u8>>) {
    let t = trace_id(i);
    let base = 1_700_000_000_000_000_000 + i * 1_000_000;
    let mut pay = span(t, 3, Some(2), "POST /payments", base + 2, base + 8);
    if i % 7 == 0 {
        pay = with_error(pay);
    }
    let spans = vec![
        ("payment", pay),
        (
            "orders",
            span(t, 2, Some(1), "POST /orders", base + 1, base + 9),
        ),
        (
            "gateway",
            span(t, 1, None, "POST /api/checkout", base, base + 10),
        ),
    ];
    let all = spans.iter().map(|(_, s)| s.encode_to_vec()).collect();
    let msgs = spans
        .into_iter()
        .map(|(svc, s): (&str, Span)| request(svc, vec![s]))
        .collect();
    (t, msgs, all)
}

/// Sends traces `range`, interleaved so that many are partly buffered at any moment: step s
/// sends the first message of trace s, the second of s-3 and the last (root) of s-6.
fn send_interleaved(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    range: std::ops::Range<u64>,
    pace: Duration,
) {
    for s in range.start..range.end + 6 {
        for (lag, part) in [(0u64, 0usize), (3, 1), (6, 2)] {
            let Some(i) = s.checked_sub(lag) else {
                continue;
            };
            if range.contains(&i) {
                let (t, msgs, _) = trace(i);
                send(p, topic, &TraceId(t).to_hex(), &msgs[part]);
            }
        }
        std::thread::sleep(pace);
    }
    flush(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_no_span_of_a_kept_trace() {
    tokio::time::timeout(Duration::from_secs(240), crash_and_restart())
        .await
        .expect("the crash test finishes within 4 minutes");
}

async fn crash_and_restart() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 4).await;
    create_topic(&output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("tailsift.yaml");
    // Both instances share the group; only the HTTP port differs.
    let group = unique("crash-group");
    let write_config = |addr: SocketAddr| {
        let text = format!(
            "kafka:\n  brokers: {}\n  input_topics: [{input}]\n  output_topic: {output}\n  group_id: {group}\n  commit_interval: 200ms\n  consumer_properties:\n    session.timeout.ms: \"6000\"\nrules:\n  dir: {}\ncompletion:\n  decision_wait: 1500ms\n  root_grace: 500ms\nhttp:\n  listen: {addr}\nshutdown_timeout: 10s\n",
            brokers(),
            rules.path().display()
        );
        std::fs::write(&config_path, text).expect("write config");
    };

    let addr_a = free_addr();
    write_config(addr_a);
    let mut a = start(&config_path, "a");
    wait_ready(addr_a).await;

    let mut reader = Reader::new(&output);
    // Traffic keeps flowing while instance A is killed and B takes over.
    let sender = {
        let input = input.clone();
        std::thread::spawn(move || {
            let p = producer();
            send_interleaved(&p, &input, 0..600, Duration::from_millis(6));
            send_interleaved(&p, &input, 600..1200, Duration::from_millis(3));
        })
    };
    assert!(
        reader.read_until(Duration::from_secs(30), |m| m.len() >= 30),
        "instance A forwards kept traces"
    );
    a.0.kill().expect("SIGKILL");
    let _ = a.0.wait();
    eprintln!(
        "crash test: A killed after {} output messages",
        reader.messages.len()
    );

    let addr_b = free_addr();
    write_config(addr_b);
    let mut b = start(&config_path, "b");
    wait_ready(addr_b).await;
    sender.join().expect("sender");
    eprintln!("crash test: traffic sent");

    let set = RuleSet::load(rules.path(), None).expect("rules");
    let expected: BTreeMap<String, BTreeSet<Vec<u8>>> = (0..1200u64)
        .map(|i| (i, trace(i)))
        .filter(|(i, (t, _, _))| i % 7 == 0 || set.sampled(&TraceId(*t), 2))
        .map(|(_, (t, _, spans))| (TraceId(t).to_hex(), spans))
        .collect();
    let complete = |m: &[OutMsg]| {
        let mut got: BTreeMap<&str, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for msg in m {
            for (_, s) in spans_of(&msg.payload).unwrap_or_default() {
                got.entry(&msg.key).or_default().insert(s.encode_to_vec());
            }
        }
        expected
            .iter()
            .all(|(k, spans)| got.get(k.as_str()) == Some(spans))
    };
    eprintln!("crash test: waiting for output");
    let all_there = reader.read_until(Duration::from_secs(60), complete);
    reader.read_until(Duration::from_secs(2), |_| false);

    // What arrived: every expected trace whole, nothing else, duplicates counted.
    let mut spans_seen: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for msg in &reader.messages {
        keys.insert(msg.key.clone());
        for (_, s) in spans_of(&msg.payload).expect("OTLP") {
            *spans_seen.entry(s.encode_to_vec()).or_default() += 1;
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, spans)| {
            !keys.contains(*k) || spans.iter().any(|s| !spans_seen.contains_key(s))
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        all_there && missing.is_empty(),
        "{} kept traces lost or incomplete: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let unexpected: Vec<_> = keys.iter().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        unexpected.is_empty(),
        "traces the rules drop were forwarded: {unexpected:?}"
    );
    let duplicates: u32 = spans_seen.values().map(|n| n - 1).sum();
    let (_, metrics) = http_get(addr_b, "/metrics").expect("scrape B");
    let replayed = metric(&metrics, "tailsift_replayed_spans_forwarded_total", "").unwrap_or(0.0);
    eprintln!(
        "crash test: {} kept traces, {} spans out, {duplicates} duplicate spans, {replayed} counted as replayed by the restarted instance",
        expected.len(),
        spans_seen.values().sum::<u32>()
    );
    // Every duplicate is counted: a trace is decided at least root_grace (500ms) after it was
    // read, longer than the read marks' commit interval (200ms), so whatever the killed
    // instance forwarded had been marked as read.
    assert!(
        replayed >= f64::from(duplicates),
        "duplicates after the crash are counted ({replayed} counted, {duplicates} seen)"
    );

    // Graceful shutdown: SIGTERM, exit 0 within the bound.
    let started = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(b.0.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(s) = b.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "shutdown took longer than its bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}
