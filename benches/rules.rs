//! Rule evaluation per trace, for the example rule set in `rules/` (the embedded copy).
//!
//! Run with `cargo bench --bench rules`. Traces come from the demo generator (checkout traces
//! of ~10 spans over several services, with errors, slow calls, enterprise customers and
//! health checks), buffered by the real decoder and buffer. Measured per trace:
//! - `RuleSet/view_and_decide`: parse the trace's spans for the rules (the `TraceView`) and
//!   run the rules, as a decider does for every trace;
//! - `RuleSet/decide`: the rules alone, on a view built beforehand;
//! - `Cond/*`: one condition alone, for what each construct costs (`every`, `count`, span
//!   events, tracestate, trace bytes, beside an attribute of any span);
//! - `Outcome/*`: a rule set of one rule and a default, decided, for what time boxes, decaying
//!   rates, factors and minimums add to a plain `keep 1 in 10`;
//! - `Marks/mark_spans`: marking a kept trace's spans (rule, rate, tracestate).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tailsift::buffer::{Buffer, Completion, TraceEntry};
use tailsift::decision::{Decision, DecisionCache};
use tailsift::demo::generator::{Generator, GeneratorConfig};
use tailsift::offsets::OffsetHold;
use tailsift::otlp::decode::Decoder;
use tailsift::otlp::mark::Marking;
use tailsift::otlp::TraceId;
use tailsift::rules::TraceView;

/// Buffers `n` generated traces and takes them out whole.
fn traces(n: usize) -> Vec<(TraceId, TraceEntry)> {
    let mut gen = Generator::new(GeneratorConfig::default(), 7);
    let buffer = Buffer::new(Completion::default());
    let cache = DecisionCache::new(16, Duration::from_secs(1));
    let hold = Arc::new(OffsetHold {
        partition: 0,
        offset: 0,
    });
    let mut d = Decoder::new();
    let now = tokio::time::Instant::now();
    for i in 0..n {
        let t = gen.next_trace(1_700_000_000_000_000_000 + i as u64 * 1_000_000);
        for m in &t.messages {
            if d.decode(m).is_ok() {
                for g in d.groups(m) {
                    buffer.ingest(&g, &hold, false, now, &cache);
                }
            }
        }
    }
    buffer
        .ids_where(|_| true)
        .into_iter()
        .filter_map(|id| {
            buffer
                .take(&id, |_, _| Decision::Drop { rule: "-".into() })
                .map(|(e, _)| (id, e))
        })
        .collect()
}

fn rules(c: &mut Criterion) {
    let set = tailsift::demo::embedded_rules().expect("example rules");
    let traces = traces(2_000);
    let now = tokio::time::Instant::now();
    let mut g = c.benchmark_group("RuleSet");
    g.throughput(Throughput::Elements(traces.len() as u64));
    g.bench_function("view_and_decide", |b| {
        b.iter(|| {
            let mut kept = 0;
            for (id, e) in &traces {
                let view = TraceView::new(*id, e);
                kept += usize::from(set.decide_at(&view, now).is_keep());
            }
            kept
        })
    });
    let views: Vec<TraceView<'_>> = traces
        .iter()
        .map(|(id, e)| TraceView::new(*id, e))
        .collect();
    g.bench_function("decide", |b| {
        b.iter(|| {
            views
                .iter()
                .filter(|v| set.decide_at(v, now).is_keep())
                .count()
        })
    });
    g.finish();

    // What one condition costs per trace, the new constructs beside an old one (an attribute
    // of any span) that walks the same bytes.
    let mut g = c.benchmark_group("Cond");
    g.throughput(Throughput::Elements(views.len() as u64));
    for (name, expr) in [
        (
            "any_span_attr",
            "span.attr.http.response.status_code >= 500",
        ),
        ("every", "{every: span.duration < 1s}"),
        ("count", "count(span.kind = client) > 3"),
        ("event_name", "span.event.name = exception"),
        ("trace_state", "span.trace_state contains 'acme=debug'"),
        ("trace_bytes", "trace.bytes > 100000"),
    ] {
        let text = format!("rules:\n  - name: r\n    conditions: {expr}\n    outcome: keep\n");
        let rules = tailsift::rules::parse_file("bench.yaml", &text).expect("condition");
        let cond = rules[0].condition.clone().expect("condition");
        g.bench_function(name, |b| {
            b.iter(|| views.iter().filter(|v| cond.eval(v)).count())
        });
    }
    g.finish();

    // What the outcomes of item 5 add to deciding a trace: each set's first rule matches
    // every trace (`trace.span_count > 0`), so its outcome runs for each.
    let mut g = c.benchmark_group("Outcome");
    g.throughput(Throughput::Elements(views.len() as u64));
    let rule = "  - name: r\n    conditions: trace.span_count > 0\n    outcome: keep\n    sample_rate: 10\n";
    let rest = "  - name: rest\n    outcome: drop\n";
    let window = "    active_from: 2000-01-01T00:00:00Z\n    active_until: 2999-01-01T00:00:00Z\n";
    for (name, text) in [
        ("keep", format!("{rule}{rest}")),
        ("time_boxed", format!("{rule}{window}{rest}")),
        (
            "time_boxed_decaying",
            format!("{rule}{window}    decay_to_sample_rate: 100\n{rest}"),
        ),
        (
            "factor_then_keep",
            format!("  - name: f\n    conditions: trace.span_count > 0\n    outcome: factor\n    factor: 2\n{rule}{rest}"),
        ),
        ("min_traces", format!("{rule}    min_traces: 5\n{rest}")),
    ] {
        let rules = tailsift::rules::parse_file("bench.yaml", &format!("rules:\n{text}"))
            .expect("outcome");
        let set = tailsift::rules::RuleSet::new(rules, None).expect("set");
        g.bench_function(name, |b| {
            b.iter(|| views.iter().filter(|v| set.decide_at(v, now).is_keep()).count())
        });
    }
    g.finish();

    let marking = Marking {
        rule_attribute: Some("tailsift.rule".into()),
        sample_rate_attribute: Some("tailsift.sample_rate".into()),
        shadow_attribute: None,
        tracestate: true,
    };
    let decision = Decision::Keep {
        rule: "baseline".into(),
        sample_rate: 10,
    };
    let marks = marking
        .marks(decision.mark().expect("forwarded"), false)
        .expect("marks");
    let mut g = c.benchmark_group("Marks");
    g.throughput(Throughput::Elements(traces.len() as u64));
    g.bench_function("mark_spans", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            for (_, e) in &traces {
                for group in &e.groups {
                    out.clear();
                    marks.mark_spans(&group.spans, &mut out);
                }
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = rules
}
criterion_main!(benches);
