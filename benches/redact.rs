//! What redaction costs on the kept path: the whole in-process path (decode -> buffer ->
//! complete -> decide -> encode) with a fifth of the traces kept: without redaction, with five
//! entries on the demo traffic's attributes (a keyed hash, a SQL scrub, a replace, an
//! email/card scrub on two keys, a removal), and with one entry on a key no span sets (what a
//! rarely set sensitive key costs: the prefilter's case).
//!
//! `cargo bench --bench redact` (criterion, CPU time). For a firm figure on a noisy machine,
//! count instructions: `TAILSIFT_BENCH_DRIVER=plain|redact|rare valgrind --tool=callgrind
//! --collect-atstart=no --toggle-collect='*run_path*' target/release/deps/redact-*` runs the
//! path once and exits.

mod common;

use std::time::Duration;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};

use common::{traffic, CpuTime, Traffic};
use tailsift::offsets::MessageHold;
use tailsift::otlp::decode::Decoder;
use tailsift::rules::{parse_file, RuleSet};

const TRACES: usize = 2_000;

/// Five entries, each matching attributes the demo generator sets.
pub const FIVE: &str = r#"
hash_key: ${env:BENCH_KEY}
attributes:
  - name: customer-id
    key: customer.id
    action: hash
  - name: sql
    key: db.query.text
    action: scrub
    patterns: [sql_literals]
  - name: client-address
    key: client.address
    action: replace
  - name: contact
    key: [url.full, exception.message]
    action: scrub
    patterns: [email, card_number]
  - name: user-agent
    key: user_agent.original
    action: remove
"#;

/// One entry on a key the demo traffic never sets.
pub const RARE: &str = r#"
attributes:
  - name: request-body
    key: http.request.body.content
    action: remove
"#;

/// Keeps 1 in 5 traces (by trace id), with the redaction file `redaction` if any.
fn rules(redaction: Option<&str>) -> RuleSet {
    let rules = parse_file(
        "fifth.yaml",
        "rules:\n  - name: fifth\n    outcome: keep\n    sample_rate: 5\n",
    )
    .expect("rule");
    let set = RuleSet::new(rules, None).expect("rule set");
    let Some(text) = redaction else {
        return set;
    };
    let env = |k: &str| (k == "BENCH_KEY").then(|| "bench-hash-key-0123456789".to_string());
    set.with_redaction(Some(
        tailsift::redact::parse("redaction.yaml", text, &env).expect("redaction"),
    ))
}

#[inline(never)]
fn run_path(rules: &RuleSet, t: &Traffic) -> usize {
    let s = common::sampler(rules);
    let mut d = Decoder::new();
    let now = tokio::time::Instant::now();
    for (i, m) in t.messages.iter().enumerate() {
        let hold = MessageHold::new(0, i as i64);
        let _ = s.ingest(&mut d, m, &hold, false, now);
    }
    let decided = s.decide_due(now + Duration::from_secs(3600));
    // Every trace decided: by its completion here, or early (an early rule) as it was ingested.
    assert!(decided as u64 <= t.traces && s.buffered_traces() == 0);
    decided
}

fn sampler(c: &mut Criterion<CpuTime>) {
    let t = traffic(TRACES, 42);
    let mut g = c.benchmark_group("Sampler");
    g.throughput(Throughput::Elements(t.spans));
    g.measurement_time(Duration::from_secs(8));
    for (name, redaction) in [
        ("ingest_decide_encode/keep_fifth", None),
        ("ingest_decide_encode/keep_fifth_redact5", Some(FIVE)),
        ("ingest_decide_encode/keep_fifth_redact_rare", Some(RARE)),
    ] {
        let rules = rules(redaction);
        g.bench_function(name, |b| {
            b.iter_batched(|| (), |()| run_path(&rules, &t), BatchSize::LargeInput)
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = sampler
}

fn main() {
    // The callgrind driver: one run of the path, nothing else measured.
    if let Ok(which) = std::env::var("TAILSIFT_BENCH_DRIVER") {
        let t = traffic(TRACES * 5, 42);
        let rules = rules(match which.as_str() {
            "redact" => Some(FIVE),
            "rare" => Some(RARE),
            _ => None,
        });
        std::hint::black_box(run_path(&rules, &t));
        println!("{which}: {} traces, {} spans", t.traces, t.spans);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
