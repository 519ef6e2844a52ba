//! Traffic and helpers shared by the benchmarks.
//!
//! Traffic comes from the demo generator: checkout traces of about 10 spans (a tenth are
//! single-span health checks), spans of about 370 bytes with the attributes SDKs really set,
//! one message per service per trace, as collectors keyed by trace id export them. Messages of
//! [`IN_FLIGHT`] consecutive traces are interleaved, so the buffer sees that many traces under
//! way at once rather than one trace at a time.

#![allow(dead_code)] // each bench uses its own part

use std::sync::Arc;
use std::time::Duration;

use tailsift::buffer::Completion;
use tailsift::decision::{Decision, DecisionCache};
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::otlp::TraceId;
use tailsift::rules::{parse_file, RuleSet};
use tailsift::sampler::{Output, Sampler, Ticket};

/// The SDK recording's reader (`recording`, `messages`, `replayed`).
#[path = "../../tests/data/sdk_traffic.rs"]
pub mod recording;

/// Traffic recorded from the OpenTelemetry SDK (`tests/data/sdk-traffic.bin`: five services,
/// each exporting with the SDK's `BatchSpanProcessor` at its defaults), its messages in export
/// order: batches of the spans of many traces, 13 spans a trace of about 200 bytes each.
pub fn sdk_traffic() -> Traffic {
    let recording = recording::recording();
    let messages: Vec<Vec<u8>> = recording::messages(&recording)
        .into_iter()
        .map(|(_, m)| m.to_vec())
        .collect();
    let mut d = tailsift::otlp::decode::Decoder::new();
    let mut traces = std::collections::HashSet::new();
    let mut spans = 0;
    for m in &messages {
        spans += d.decode(m).expect("the SDK's messages decode") as u64;
        traces.extend(d.groups(m).map(|g| g.trace_id));
    }
    Traffic {
        bytes: messages.iter().map(|m| m.len() as u64).sum(),
        messages,
        spans,
        traces: traces.len() as u64,
    }
}

/// Traces whose messages are interleaved with each other.
pub const IN_FLIGHT: usize = 1_000;

pub struct Traffic {
    pub messages: Vec<Vec<u8>>,
    pub spans: u64,
    pub traces: u64,
    pub bytes: u64,
}

/// `traces` generated traces (seeded: the same every run), interleaved [`IN_FLIGHT`] at a time.
pub fn traffic(traces: usize, seed: u64) -> Traffic {
    let mut gen = Generator::new(GeneratorConfig::default(), seed);
    let mut tagged = Vec::new();
    let mut spans = 0;
    for i in 0..traces {
        let t = gen.next_trace(1_700_000_000_000_000_000 + i as u64 * 1_000_000);
        spans += t.span_count as u64;
        for (j, m) in t.messages.into_iter().enumerate() {
            tagged.push((i / IN_FLIGHT, j, i, m));
        }
    }
    // Window by window: every trace's first message, then every second message, and so on.
    tagged.sort_by_key(|t| (t.0, t.1, t.2));
    let messages: Vec<Vec<u8>> = tagged.into_iter().map(|t| t.3).collect();
    let bytes = messages.iter().map(|m| m.len() as u64).sum();
    Traffic {
        messages,
        spans,
        traces: traces as u64,
        bytes,
    }
}

/// Drops kept traces at once (an instant acknowledgement), after making sure they were built.
pub struct Discard;

impl Output for Discard {
    fn send(&self, _: &TraceId, _: &Decision, messages: Vec<(Vec<u8>, Ticket)>) {
        std::hint::black_box(messages);
    }
}

/// The repository's example rules (`rules/`).
pub fn example_rules() -> RuleSet {
    tailsift::demo::embedded_rules().expect("example rules")
}

/// The example rules with no rule `early`: every trace stays buffered until it completes
/// (for measuring what the buffer holds).
pub fn example_rules_at_completion() -> RuleSet {
    let rules = tailsift::demo::EMBEDDED_RULES
        .iter()
        .flat_map(|(name, text)| {
            parse_file(name, &text.replace("early: true", "early: false")).expect("example rules")
        })
        .collect();
    RuleSet::new(rules, None).expect("example rule set")
}

/// One rule that keeps everything: every trace is encoded, the output's worst case.
pub fn keep_all_rules() -> RuleSet {
    let rules = parse_file(
        "keep-all.yaml",
        "rules:\n  - name: everything\n    outcome: keep\n",
    )
    .expect("keep-all rule");
    RuleSet::new(rules, None).expect("keep-all rule set")
}

/// Resident memory of this process, in bytes (`VmRSS` in `/proc/self/status`).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn sampler(rules: &RuleSet) -> Sampler {
    Sampler::new(
        Completion::default(),
        rules.clone(),
        DecisionCache::new(1_000_000, Duration::from_secs(300)),
        Arc::new(Discard),
        1_000_000,
    )
}

/// Criterion measurement in CPU time of this process (all its threads) rather than wall
/// time: on a shared machine, time spent waiting for a core says nothing about the code, and
/// spans per CPU-second is the per-core throughput the targets speak of.
pub struct CpuTime;

static WALL: criterion::measurement::WallTime = criterion::measurement::WallTime;

fn process_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl criterion::measurement::Measurement for CpuTime {
    type Intermediate = std::time::Duration;
    type Value = std::time::Duration;

    fn start(&self) -> Self::Intermediate {
        process_cpu()
    }
    fn end(&self, started: Self::Intermediate) -> Self::Value {
        process_cpu().saturating_sub(started)
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        // Values are nanoseconds, as wall time's are.
        criterion::measurement::Measurement::formatter(&WALL)
    }
}
