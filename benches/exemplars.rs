//! What exemplars cost on the core path: decode -> buffer -> RED -> complete -> decide ->
//! encode, with exemplars off and on (RED registering its series, the sampler offering the
//! spans of every kept trace). `cargo bench --bench exemplars` (criterion, CPU time).
//!
//! For an exact figure on a shared machine, count instructions of the measured function only:
//! `EXEMPLARS=off|on RULES=example|keep_all valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*core_path*' target/release/deps/exemplars-*` runs it once and exits.
//! Figures: BENCHMARKS.md, "Exemplars".

mod common;

use std::time::Duration;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};

use common::{traffic, CpuTime, Traffic};
use tailsift::offsets::MessageHold;
use tailsift::otlp::decode::Decoder;
use tailsift::rules::RuleSet;
use tailsift::sampler::Sampler;
use tailsift::telemetry::exemplars::Exemplars;
use tailsift::telemetry::red::{Red, RedLimits};

const TRACES: usize = 2_000;

/// A sampler and its RED counts, with or without exemplars.
fn setup(rules: &RuleSet, on: bool) -> (Sampler, Red) {
    let sampler = common::sampler(rules);
    let red = Red::new(RedLimits {
        max_services: 100,
        max_operations: 50,
    });
    if !on {
        return (sampler, red);
    }
    let ex = Exemplars::new();
    (sampler.with_exemplars(ex.clone()), red.with_exemplars(ex))
}

/// The ingest thread's work per message (ingest, then RED) and the decider's, once over `t`.
#[inline(never)]
fn core_path(s: &Sampler, red: &mut Red, t: &Traffic) {
    let mut d = Decoder::new();
    let now = tokio::time::Instant::now();
    for (i, m) in t.messages.iter().enumerate() {
        let hold = MessageHold::new(0, i as i64);
        if s.ingest(&mut d, m, &hold, false, now).is_ok() {
            red.observe(&d, m);
        }
    }
    red.flush();
    let decided = s.decide_due(now + Duration::from_secs(3600));
    // Every trace decided: by its completion here, or early (an early rule) as it was ingested.
    assert!(decided as u64 <= t.traces && s.buffered_traces() == 0);
}

fn rules(name: &str) -> RuleSet {
    match name {
        "keep_all" => common::keep_all_rules(),
        _ => common::example_rules(),
    }
}

fn exemplars(c: &mut Criterion<CpuTime>) {
    let t = traffic(TRACES, 42);
    let mut g = c.benchmark_group("Exemplars");
    g.throughput(Throughput::Elements(t.spans));
    g.measurement_time(Duration::from_secs(8));
    for rule_set in ["example_rules", "keep_all"] {
        let rules = rules(rule_set);
        for (mode, on) in [("off", false), ("on", true)] {
            g.bench_function(format!("core_path/{rule_set}/{mode}"), |b| {
                b.iter_batched(
                    || setup(&rules, on),
                    |(s, mut red)| {
                        core_path(&s, &mut red, &t);
                        (s, red)
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = exemplars
}

fn main() {
    // One run for callgrind: the second pass is counted (the first warms the RED series up,
    // as a running instance's are).
    if let Ok(mode) = std::env::var("EXEMPLARS") {
        let t = traffic(TRACES, 42);
        let rules = rules(&std::env::var("RULES").unwrap_or_default());
        let (s, mut red) = setup(&rules, mode == "on");
        let warm = traffic(TRACES, 7);
        warm_up(&s, &mut red, &warm);
        core_path(&s, &mut red, &t);
        println!("{} spans, exemplars {mode}", t.spans);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// Not counted by callgrind (`--toggle-collect` names `core_path` only).
#[inline(never)]
fn warm_up(s: &Sampler, red: &mut Red, t: &Traffic) {
    let mut d = Decoder::new();
    let now = tokio::time::Instant::now();
    for (i, m) in t.messages.iter().enumerate() {
        let hold = MessageHold::new(0, i as i64);
        if s.ingest(&mut d, m, &hold, false, now).is_ok() {
            red.observe(&d, m);
        }
    }
    red.flush();
    s.decide_due(now + Duration::from_secs(3600));
}
