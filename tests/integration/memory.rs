//! Bounded memory on a real broker: a flood against a small budget (with the real binary, so
//! that its resident memory can be read), and one giant trace amid normal traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::fixture::instance::{launch, RunConfig};
use crate::fixture::*;
use prost::Message;
use tailsift::demo::generator::{GeneratedTrace, Generator, GeneratorConfig, TraceKind};
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

const RULES: &str = "rules:
  - name: errors
    conditions: trace.error = true
    outcome: keep
  - name: baseline
    outcome: keep
    sample_rate: 10
";

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The spans of generated traces, re-encoded, by trace key (how the output is compared).
fn spans_by_key(traces: &[GeneratedTrace]) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    traces
        .iter()
        .map(|t| {
            let spans = t
                .messages
                .iter()
                .flat_map(|m| spans_of(m).expect("generated OTLP"))
                .map(|(_, s)| s.encode_to_vec())
                .collect();
            (TraceId(t.trace_id).to_hex(), spans)
        })
        .collect()
}

/// Reads until `done` holds, checking it every 2 s: decoding everything read so far is too
/// slow (in a debug build) to do after every message.
fn read_checked(reader: &mut Reader, timeout: Duration, done: impl Fn(&[OutMsg]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        reader.settle(Duration::from_secs(2));
        if done(&reader.messages) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_stays_within_the_budget_pauses_resumes_and_decides_every_trace() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(240), flood())
        .await
        .expect("the flood test finishes within 4 minutes");
}

/// The budget of the flood test, and what resident memory may exceed it by.
const BUDGET: u64 = 4 << 20;

async fn flood() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 4).await;
    create_topic(&output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Traces stay buffered 3 s (their root's grace): the steady rate needs about a third of
    // the budget, the flood about three times the budget.
    let config = RunConfig::new(&input, &output, rules.path())
        .set("kafka.commit_interval", "200ms")
        .set("completion.decision_wait", "3s")
        .set("completion.root_grace", "3s")
        .set("buffer.max_bytes", BUDGET)
        .set("shutdown_timeout", "10s");
    let instance = launch(dir.path(), "tailsift", &config).start();
    let (pid, addr) = (instance.child.id(), instance.addr);
    instance.wait_ready(Duration::from_secs(60)).await;

    // Steady: 100 traces/s for 2 s; flood: 1000 traces/s for 5 s; steady again for 2 s.
    let mut gen = Generator::new(GeneratorConfig::default(), 11);
    let base = 1_700_000_000_000_000_000u64;
    let phases = [(100u64, 2u64), (1000, 5), (100, 2)];
    let traces: Vec<Vec<GeneratedTrace>> = phases
        .iter()
        .map(|(rate, secs)| {
            (0..rate * secs)
                .map(|i| gen.next_trace(base + i * 1_000_000))
                .collect()
        })
        .collect();
    let all: Vec<GeneratedTrace> = traces.iter().flatten().cloned().collect();

    let sender = {
        let input = input.clone();
        let traces = traces.clone();
        std::thread::spawn(move || {
            let p = producer();
            for ((rate, _), phase) in phases.iter().zip(&traces) {
                let start = Instant::now();
                for (i, t) in phase.iter().enumerate() {
                    let key = TraceId(t.trace_id).to_hex();
                    for m in &t.messages {
                        send(&p, &input, &key, m);
                    }
                    // Pace by the phase's rate (catching up if behind).
                    let due = start + Duration::from_secs_f64(i as f64 / *rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            flush(&p);
        })
    };
    let (rss_before, _) = memory_of(pid);

    // Watch the metrics and memory while the flood goes through and drains.
    let rules_set = RuleSet::load(rules.path(), None).expect("rules");
    let kept: Vec<GeneratedTrace> = all
        .iter()
        .filter(|t| t.kind == TraceKind::Error || rules_set.sampled(&TraceId(t.trace_id), 10))
        .cloned()
        .collect();
    let expected: BTreeMap<String, BTreeSet<Vec<u8>>> = spans_by_key(&kept);
    let errors: BTreeSet<String> = all
        .iter()
        .filter(|t| t.kind == TraceKind::Error)
        .map(|t| TraceId(t.trace_id).to_hex())
        .collect();
    assert!(!errors.is_empty(), "the traffic has error traces");
    let (mut max_paused, mut max_buffered) = (0.0f64, 0.0f64);
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut decided = 0.0;
    while Instant::now() < deadline {
        let m = scrape(addr);
        max_paused = max_paused.max(metric(&m, "tailsift_paused_partitions", "").unwrap_or(0.0));
        max_buffered = max_buffered.max(metric(&m, "tailsift_buffered_bytes", "").unwrap_or(0.0));
        decided = metric(&m, "tailsift_traces_decided_total", "").unwrap_or(0.0);
        if sender.is_finished() && decided as usize >= all.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.join().expect("sender");
    let (rss_after, peak) = memory_of(pid);
    let m = scrape(addr);
    let memory_decided = metric(&m, "tailsift_traces_decided_total", "trigger=\"memory\"");
    eprintln!(
        "flood: budget {BUDGET} B; RSS before the flood {rss_before} B, after {rss_after} B, peak (VmHWM) {peak} B; \
         peak - before = {} B = {:.2}x budget; max buffered {max_buffered} B; max paused partitions {max_paused}; \
         decided {decided} of {}; decided early for memory {memory_decided:?}",
        peak.saturating_sub(rss_before),
        peak.saturating_sub(rss_before) as f64 / BUDGET as f64,
        all.len()
    );

    assert_eq!(
        decided as usize,
        all.len(),
        "every trace is decided: none dropped undecided"
    );
    assert!(max_paused > 0.0, "the flood paused fetching");
    assert_eq!(
        metric(&m, "tailsift_paused_partitions", ""),
        Some(0.0),
        "fetching resumed"
    );
    assert!(
        max_buffered <= BUDGET as f64 * 1.05,
        "the buffer stayed within its budget (max {max_buffered})"
    );
    // Resident memory: the runtime before the flood, plus the budget at the measured 1.3x,
    // plus the fixed overhead the README documents (librdkafka's queues at 1MiB each for
    // this budget, the interned contexts, allocator slack across threads): 24MiB.
    let bound = rss_before + BUDGET * 13 / 10 + (24 << 20);
    assert!(
        peak <= bound,
        "peak resident memory {peak} B exceeds {bound} B (RSS before the flood {rss_before} B)"
    );

    // Output: every error trace whole, exactly the sampled others, each whole, once.
    let mut reader = Reader::new(&output);
    let complete = |out: &[OutMsg]| {
        let got = output_spans(out);
        expected.iter().all(|(k, spans)| {
            got.get(k)
                .is_some_and(|g| g.iter().cloned().collect::<BTreeSet<_>>() == *spans)
        })
    };
    let whole = read_checked(&mut reader, Duration::from_secs(90), complete);
    reader.settle(secs(1));
    let got = output_spans(&reader.messages);
    let missing: Vec<&String> = errors
        .iter()
        .filter(|k| {
            got.get(*k)
                .map(|s| s.iter().cloned().collect::<BTreeSet<_>>())
                != expected.get(*k).cloned()
        })
        .collect();
    if !missing.is_empty() {
        // What a failure needs to be understood: each such trace's spans, out and expected,
        // and what the instance said about pausing and relief.
        let detail: Vec<String> = missing
            .iter()
            .map(|k| {
                let messages = all
                    .iter()
                    .find(|t| TraceId(t.trace_id).to_hex() == **k)
                    .map_or(0, |t| t.messages.len());
                format!(
                    "{k}: {} of {} spans out ({messages} messages)",
                    got.get(*k).map_or(0, |s| s.len()),
                    expected.get(*k).map_or(0, |s| s.len())
                )
            })
            .collect();
        let log = crate::fixture::instance::log_of(dir.path(), "tailsift");
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("paused") || l.contains("resumed") || l.contains("early"))
            .collect();
        panic!(
            "error traces not kept whole: {detail:?}; decided early for memory: \
             {memory_decided:?}; the instance said:\n{}",
            said.join("\n")
        );
    }
    assert!(whole, "every kept trace arrives whole");
    let unexpected: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        unexpected.is_empty(),
        "traces the rules drop were forwarded: {unexpected:?}"
    );
    for (k, spans) in &got {
        assert_eq!(spans.len(), expected[k].len(), "trace {k}: each span once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_giant_trace_is_decided_at_its_limit_and_the_others_are_unaffected() {
    own_process!(); // exact process-wide counts
    let pipe = pipeline(KEEP_ALL)
        .partitions(2)
        .config(|c| c.kafka.max_message_bytes = 4 << 20)
        .start()
        .await;
    let (p, input) = (producer(), &pipe.input);
    let giant = trace_id(9_000_000);
    let giant_hex = TraceId(giant).to_hex();
    let base = 1_700_000_000_000_000_000u64;
    let normal: Vec<[u8; 16]> = (0..300).map(|i| trace_id(9_100_000 + i)).collect();
    let normal_trace = |t: [u8; 16]| {
        vec![
            request(
                "orders",
                vec![span(t, 2, Some(1), "POST /orders", base + 1, base + 9)],
            ),
            request(
                "gateway",
                vec![span(t, 1, None, "POST /api/checkout", base, base + 10)],
            ),
        ]
    };
    // 100 000 spans of the giant trace in 100 messages of 1000, with the normal traces
    // interleaved (three after each giant message).
    let mut normals = normal.iter();
    for chunk in 0..100u64 {
        let spans = (0..1000u64)
            .map(|i| {
                let id = chunk * 1000 + i + 2;
                span(giant, id, Some(1), "batch item", base + id, base + id + 5)
            })
            .collect();
        send(&p, input, &giant_hex, &request("batch", spans));
        for t in normals.by_ref().take(3) {
            for m in normal_trace(*t) {
                send(&p, input, &TraceId(*t).to_hex(), &m);
            }
        }
    }
    flush(&p);

    let mut reader = pipe.reader();
    let want_normals: BTreeSet<String> = normal.iter().map(|t| TraceId(*t).to_hex()).collect();
    let done = |out: &[OutMsg]| {
        let got = output_spans(out);
        got.get(&giant_hex).is_some_and(|s| s.len() >= 100_000)
            && want_normals
                .iter()
                .all(|k| got.get(k).is_some_and(|s| s.len() == 2))
    };
    let all_there = read_checked(&mut reader, Duration::from_secs(90), done);
    reader.settle(secs(1));
    let got = output_spans(&reader.messages);
    assert!(
        all_there,
        "giant trace: {} spans out; normal traces complete: {}",
        got.get(&giant_hex).map_or(0, |s| s.len()),
        want_normals
            .iter()
            .filter(|k| got.get(*k).is_some_and(|s| s.len() == 2))
            .count()
    );
    assert_eq!(
        got[&giant_hex].iter().collect::<BTreeSet<_>>().len(),
        100_000,
        "every span of the giant trace, once"
    );
    let m = pipe.scrape();
    assert_eq!(
        metric(
            &m,
            "tailsift_traces_decided_total",
            "trigger=\"span_limit\""
        ),
        Some(1.0),
        "the giant trace was decided at the span limit"
    );
    assert_eq!(
        metric(&m, "tailsift_traces_decided_total", "trigger=\"memory\"").unwrap_or(0.0),
        0.0,
        "nothing was decided early for memory"
    );
    assert_eq!(
        pipe.late_kept(),
        100_000 - 10_000,
        "the spans after the limit followed the decision"
    );
    assert_eq!(
        pipe.kept(),
        1 + normal.len() as u64,
        "each normal trace decided once, on its own"
    );
    pipe.shutdown().await;
}
