//! Checkout traces for the failure tests, and the check of what reached the output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

use super::{flush, send, OutMsg};

/// Keeps every failed trace and half of the rest (deterministically on the trace id).
pub const RULES: &str = "rules:
  - name: errors
    conditions: trace.error = true
    outcome: keep
  - name: half
    outcome: keep
    sample_rate: 2
";

/// Trace `i` of run `run`: three messages (payment, orders, gateway with the root); every 7th
/// fails. Returns (trace id, messages, encoded spans).
pub fn trace(run: u64, i: u64) -> ([u8; 16], Vec<Vec<u8>>, BTreeSet<Vec<u8>>) {
    let t = trace_id(run << 32 | i);
    let base = 1_700_000_000_000_000_000 + i * 1_000_000;
    let mut pay = span(t, 3, Some(2), "POST /payments", base + 2, base + 8);
    if i.is_multiple_of(7) {
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
pub fn send_interleaved(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    run: u64,
    range: std::ops::Range<u64>,
    pace: Duration,
) {
    for s in range.start..range.end + 6 {
        for (lag, part) in [(0u64, 0usize), (3, 1), (6, 2)] {
            let Some(i) = s.checked_sub(lag) else {
                continue;
            };
            if range.contains(&i) {
                let (t, msgs, _) = trace(run, i);
                send(p, topic, &TraceId(t).to_hex(), &msgs[part]);
            }
        }
        std::thread::sleep(pace);
    }
    flush(p);
}

/// Trace id hex -> spans, of the traces of `range` the rules in `rules_dir` keep.
pub fn expected(
    rules_dir: &Path,
    run: u64,
    range: std::ops::Range<u64>,
) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let set = RuleSet::load(rules_dir, None).expect("rules");
    range
        .map(|i| (i, trace(run, i)))
        .filter(|(i, (t, _, _))| i % 7 == 0 || set.sampled(&TraceId(*t), 2))
        .map(|(_, (t, _, spans))| (TraceId(t).to_hex(), spans))
        .collect()
}

/// Whether every expected trace is in `out`, whole.
pub fn complete(expected: &BTreeMap<String, BTreeSet<Vec<u8>>>, out: &[OutMsg]) -> bool {
    let mut got: BTreeMap<&str, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for msg in out {
        for (_, s) in spans_of(&msg.payload).unwrap_or_default() {
            got.entry(&msg.key).or_default().insert(s.encode_to_vec());
        }
    }
    expected
        .iter()
        .all(|(k, spans)| got.get(k.as_str()).is_some_and(|g| g.is_superset(spans)))
}

/// What the output holds, checked against the promise.
#[derive(Debug)]
pub struct Verdict {
    pub kept_traces: usize,
    pub expected_spans: usize,
    pub spans_out: u64,
    pub duplicate_spans: u64,
    /// Expected traces missing or incomplete.
    pub missing: Vec<String>,
    /// Traces in the output the rules drop.
    pub unexpected: Vec<String>,
    /// Traces forwarded under two different rules or sample rates.
    pub conflicting: Vec<String>,
}

pub fn verdict(expected: &BTreeMap<String, BTreeSet<Vec<u8>>>, out: &[OutMsg]) -> Verdict {
    let mut spans_seen: BTreeMap<(String, Vec<u8>), u64> = BTreeMap::new();
    let mut decisions: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    for msg in out {
        decisions.entry(&msg.key).or_default().insert((
            msg.headers
                .get("tailsift.rule")
                .cloned()
                .unwrap_or_default(),
            msg.headers
                .get("tailsift.sample_rate")
                .cloned()
                .unwrap_or_default(),
        ));
        for (_, s) in spans_of(&msg.payload).expect("OTLP output") {
            *spans_seen
                .entry((msg.key.clone(), s.encode_to_vec()))
                .or_default() += 1;
        }
    }
    let missing = expected
        .iter()
        .filter(|(k, spans)| {
            spans
                .iter()
                .any(|s| !spans_seen.contains_key(&((*k).clone(), s.clone())))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let unexpected = decisions
        .keys()
        .filter(|k| !expected.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
    let conflicting = decisions
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(k, _)| k.to_string())
        .collect();
    Verdict {
        kept_traces: expected.len(),
        expected_spans: expected.values().map(BTreeSet::len).sum(),
        spans_out: spans_seen.values().sum(),
        duplicate_spans: spans_seen.values().map(|n| n - 1).sum(),
        missing,
        unexpected,
        conflicting,
    }
}

impl Verdict {
    /// Asserts the at-least-once promise: whole, nothing extra, one decision per trace.
    pub fn assert_promise_kept(&self) {
        assert!(
            self.missing.is_empty(),
            "{} kept traces lost or incomplete: {:?}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(5)]
        );
        assert!(
            self.unexpected.is_empty(),
            "traces the rules drop were forwarded: {:?}",
            self.unexpected
        );
        assert!(
            self.conflicting.is_empty(),
            "traces decided twice with different outcomes: {:?}",
            self.conflicting
        );
    }

    /// Duplicate spans per span of kept traces.
    pub fn duplicate_rate(&self) -> f64 {
        self.duplicate_spans as f64 / self.expected_spans.max(1) as f64
    }
}

/// Whether trace `i` has a late span: a queue consumer's span that reaches Kafka 3–5 s after
/// the trace's root (asynchronous work, longer than any `root_grace`). One trace in four.
pub fn has_late_span(i: u64) -> bool {
    i.is_multiple_of(4)
}

/// The late span of trace `i` of run `run` (see [`has_late_span`]): a CONSUMER span of the
/// `worker` service, child of the payment span, never failing. Alone, the rules would decide
/// it by `half`: a trace kept by `errors` whose late span is decided on its own loses it (or
/// gets a second decision).
pub fn late_span(run: u64, i: u64) -> ([u8; 16], Vec<u8>, Vec<u8>) {
    let t = trace_id(run << 32 | i);
    let base = 1_700_000_000_000_000_000 + i * 1_000_000;
    let mut s = span(
        t,
        4,
        Some(3),
        "process payment.settled",
        base + 20,
        base + 40,
    );
    s.kind = SpanKind::Consumer as i32;
    let encoded = s.encode_to_vec();
    (t, request("worker", vec![s]), encoded)
}

/// [`send_interleaved`], plus the late spans of the traces that have one, each sent a random
/// 3–5 s after its trace's root; returns once every late span is sent too.
pub fn send_with_late_spans(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    run: u64,
    range: std::ops::Range<u64>,
    pace: Duration,
) {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut late: std::collections::VecDeque<(std::time::Instant, u64)> = Default::default();
    let send_due = |late: &mut std::collections::VecDeque<(std::time::Instant, u64)>, all: bool| {
        while let Some(&(due, i)) = late.front() {
            if !all && due > std::time::Instant::now() {
                break;
            }
            if all {
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            let (t, msg, _) = late_span(run, i);
            send(p, topic, &TraceId(t).to_hex(), &msg);
            late.pop_front();
        }
    };
    for s in range.start..range.end + 6 {
        for (lag, part) in [(0u64, 0usize), (3, 1), (6, 2)] {
            let Some(i) = s.checked_sub(lag) else {
                continue;
            };
            if range.contains(&i) {
                let (t, msgs, _) = trace(run, i);
                send(p, topic, &TraceId(t).to_hex(), &msgs[part]);
                if part == 2 && has_late_span(i) {
                    let delay = Duration::from_millis(rng.random_range(3000..5000));
                    late.push_back((std::time::Instant::now() + delay, i));
                }
            }
        }
        // Delays differ: keep the queue in due order.
        late.make_contiguous().sort_by_key(|x| x.0);
        send_due(&mut late, false);
        std::thread::sleep(pace);
    }
    send_due(&mut late, true);
    flush(p);
}

/// [`expected`], with the late spans of the kept traces that have one.
pub fn expected_with_late_spans(
    rules_dir: &Path,
    run: u64,
    range: std::ops::Range<u64>,
) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let mut e = expected(rules_dir, run, range.clone());
    for i in range.filter(|i| has_late_span(*i)) {
        let (t, _, encoded) = late_span(run, i);
        if let Some(spans) = e.get_mut(&TraceId(t).to_hex()) {
            spans.insert(encoded);
        }
    }
    e
}
