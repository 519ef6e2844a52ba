//! What early rules save in memory: long traces (spans spread over a minute, the root last, as
//! a long request or queue-driven work exports them), a tenth failing early in their life,
//! decided with the errors rule early and not.
//!
//! `cargo bench --bench early` feeds the same traffic to two samplers in simulated time (100 ms
//! steps, each step's spans ingested, then the complete traces decided) and prints the buffer
//! each held: its peak and mean bytes and traces, on an ordinary day (a tenth failing) and in an
//! incident (half failing). `TAILSIFT_BENCH_TRACES` scales it (default 2 000).

mod common;

use std::time::Duration;

use tailsift::offsets::MessageHold;
use tailsift::otlp::build::*;
use tailsift::otlp::decode::Decoder;
use tailsift::rules::{parse_file, RuleSet};

const MS: u64 = 1_000_000;
/// Spans per trace, one every two seconds: a minute.
const SPANS: u64 = 30;
const STEP: Duration = Duration::from_millis(100);

fn rules(early: bool) -> RuleSet {
    let text = format!(
        "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n    early: {early}\n  - name: rest\n    outcome: keep\n    sample_rate: 10\n"
    );
    RuleSet::new(parse_file("early.yaml", &text).expect("rules"), None).expect("set")
}

/// (arrival in ms since the start, message) for every span of every trace, in arrival order;
/// and the arrival of each error trace's failing span.
fn traffic(traces: u64, fail_every: u64) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for n in 0..traces {
        let t = trace_id(n);
        // A trace starts every 50 ms: with a minute each, about 1 200 under way at once.
        let start = n * 50;
        let failing = n % fail_every == 0;
        for i in 1..=SPANS {
            let at = start + (i - 1) * 2_000;
            let root = i == SPANS;
            let mut s = span(
                t,
                i,
                if root { None } else { Some(SPANS) },
                if root { "POST /api/jobs" } else { "process" },
                (start + (i - 1) * 2_000) * MS,
                (start + (i - 1) * 2_000 + if root { 60_000 } else { 1_500 }) * MS,
            );
            s = with_attrs(
                s,
                vec![
                    attr_str("job.step", "transform"),
                    attr_int("job.items", 100),
                ],
            );
            if failing && i == 2 {
                s = with_error(s);
                failures.push(at);
            }
            out.push((
                at,
                request(if root { "gateway" } else { "worker" }, vec![s]),
            ));
        }
    }
    out.sort_by_key(|m| m.0);
    (out, failures)
}

fn run(name: &str, set: &RuleSet, traffic: &[(u64, Vec<u8>)]) {
    let s = common::sampler(set);
    let mut d = Decoder::new();
    let start = tokio::time::Instant::now();
    let end = traffic.last().map_or(0, |m| m.0) + 70_000;
    let (mut peak_bytes, mut peak_traces, mut sum_bytes, mut steps) = (0u64, 0usize, 0u128, 0u64);
    let mut next = 0;
    let mut now_ms = 0;
    while now_ms <= end {
        let now = start + Duration::from_millis(now_ms);
        while next < traffic.len() && traffic[next].0 <= now_ms {
            let hold = MessageHold::new(0, next as i64);
            let _ = s.ingest(&mut d, &traffic[next].1, &hold, false, now);
            next += 1;
        }
        s.decide_due(now);
        let bytes = s.buffered_bytes();
        peak_bytes = peak_bytes.max(bytes);
        peak_traces = peak_traces.max(s.buffered_traces());
        sum_bytes += u128::from(bytes);
        steps += 1;
        now_ms += STEP.as_millis() as u64;
    }
    println!(
        "{name:<26} peak {:>7.1} MB, {:>5} traces   mean {:>7.1} MB",
        peak_bytes as f64 / 1e6,
        peak_traces,
        sum_bytes as f64 / steps as f64 / 1e6
    );
}

fn main() {
    let traces = std::env::var("TAILSIFT_BENCH_TRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    // An ordinary day (a tenth failing) and an incident (half failing).
    for fail_every in [10, 2] {
        let (traffic, failures) = traffic(traces, fail_every);
        println!(
            "{traces} traces of {SPANS} spans over a minute (root last), {} failing at their second span; buffered bytes as counted against the budget",
            failures.len()
        );
        run("  errors kept early", &rules(true), &traffic);
        run("  errors kept at the end", &rules(false), &traffic);
    }
}
