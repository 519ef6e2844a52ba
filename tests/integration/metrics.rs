//! `/metrics` after known traffic on a real broker: the counters equal what was sent, and the
//! catalog in docs/metrics.md (generated from src/telemetry/catalog.rs, which a unit test
//! checks) matches what is exposed, both ways.
//!
//! The test runs in a process of its own: the metrics recorder is global to the process, so
//! the counts seen are exactly this test's traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::fixture::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

const MS: u64 = 1_000_000;
const BASE: u64 = 1_700_000_000_000 * MS;

/// Metric name -> (type, label names), from the `# TYPE` lines and the samples of `/metrics`.
fn exposed(body: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                out.entry(name.to_string()).or_default().0 = kind.to_string();
            }
        }
    }
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let base = out
            .keys()
            .filter(|n| {
                sample == n.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_suffix(s) == Some(n.as_str()))
            })
            .max_by_key(|n| n.len())
            .cloned()
            .unwrap_or_else(|| panic!("sample `{line}` has no # TYPE line"));
        let labels = out.get_mut(&base).map(|e| &mut e.1).expect("known");
        if let Some(l) = line[name_end..].strip_prefix('{') {
            let l = &l[..l.rfind('}').expect("closing brace")];
            for pair in l.split("\",") {
                let key = pair.split('=').next().unwrap_or_default().trim();
                if !key.is_empty() && key != "le" {
                    labels.insert(key.to_string());
                }
            }
        }
    }
    out
}

/// Metric name -> (type, label names), from the table rows of docs/metrics.md.
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string("docs/metrics.md").expect("docs/metrics.md");
    let mut out = BTreeMap::new();
    for row in text
        .lines()
        .filter(|l| l.starts_with("| `tailsift_") || l.starts_with("| `process_"))
    {
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cols.len() >= 5, "catalog row with too few columns: {row}");
        let name = cols[1].trim_matches('`').to_string();
        let labels: BTreeSet<String> = cols[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let dup = out.insert(name.clone(), (cols[2].to_string(), labels));
        assert!(dup.is_none(), "{name} is documented twice");
    }
    out
}

/// A trace of three spans in two messages: a SERVER root at `route` (or with an error
/// below), a CLIENT call and the called service's SERVER span.
fn trace(n: u64, error: bool) -> Vec<(&'static str, Vec<Span>)> {
    let t = trace_id(n);
    let root = with_attrs(
        span(t, 1, None, "GET /api/items/{id}", BASE, BASE + 80 * MS),
        vec![attr_str("http.route", "/api/items/{id}")],
    );
    let mut call = span(t, 2, Some(1), "call stock", BASE + MS, BASE + 60 * MS);
    call.kind = SpanKind::Client as i32;
    let mut stock = span(t, 3, Some(2), "check", BASE + 2 * MS, BASE + 50 * MS);
    if error {
        stock = with_error(stock);
    }
    vec![("frontend", vec![root, call]), ("stock", vec![stock])]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_traffic_sent_and_the_catalog_matches_what_is_exposed() {
    own_process!();
    // A redaction file too, on a key the traffic does not set: its counters are in the
    // catalog, and registered at zero from the start.
    let rules = rules_dir(&[
        ("rules.yaml", ERRORS_ELSE_DROP),
        (
            "redaction.yaml",
            "attributes:\n  - name: ids\n    key: enduser.id\n    action: remove\n",
        ),
    ]);
    let pipe = pipeline_on(rules.path())
        .partitions(2)
        .config(|c| c.monitoring.lag_interval = Duration::from_millis(200))
        .start()
        .await;
    let input = &pipe.input;

    // Known traffic: 10 error traces (kept), 20 ordinary ones (dropped), one malformed message.
    let p = producer();
    let (mut messages, mut spans, mut bytes) = (0u64, 0u64, 0u64);
    let mut send_msg = |key: &str, payload: &[u8], n_spans: u64| {
        send(&p, input, key, payload);
        messages += 1;
        spans += n_spans;
        bytes += payload.len() as u64;
    };
    let (errors, ordinary) = (10u64, 20u64);
    for n in 0..errors + ordinary {
        let key = TraceId(trace_id(n)).to_hex();
        for (svc, s) in trace(n, n < errors) {
            let k = s.len() as u64;
            send_msg(&key, &request(svc, s), k);
        }
    }
    // Broken traces: 5 whose middle span (the CLIENT call) never arrives, 3 with only the
    // stock span (no root either). All dropped.
    let (broken, rootless) = (5u64, 3u64);
    let first_broken = errors + ordinary;
    for n in first_broken..first_broken + broken + rootless {
        let key = TraceId(trace_id(n)).to_hex();
        let mut parts = trace(n, false);
        parts[0].1.truncate(1); // frontend sends its root only, not the call
        if n >= first_broken + broken {
            parts.remove(0);
        }
        for (svc, s) in parts {
            let k = s.len() as u64;
            send_msg(&key, &request(svc, s), k);
        }
    }
    send_msg("garbage", b"\x0a\xff\xff\xff\x0f not protobuf", 0);
    flush(&p);
    let all = errors + ordinary + broken + rootless;
    let dropped = ordinary + broken + rootless;

    let scrape = || pipe.scrape();
    let value = |body: &str, name: &str, labels: &str| metric(body, name, labels).unwrap_or(0.0);
    let decided = |b: &str| value(b, "tailsift_traces_decided_total", "");
    assert!(
        eventually(Duration::from_secs(30), || {
            let b = scrape();
            decided(&b) == all as f64
                && value(&b, "tailsift_spans_forwarded_total", "") == (3 * errors) as f64
        })
        .await,
        "every trace decided and every kept span forwarded:\n{}",
        scrape()
    );

    // Late spans: one of a kept trace (forwarded), one of a dropped trace.
    let late = |n: u64| span(trace_id(n), 9, Some(1), "late", BASE, BASE + MS);
    send_msg(
        &TraceId(trace_id(0)).to_hex(),
        &request("stock", vec![late(0)]),
        1,
    );
    send_msg(
        &TraceId(trace_id(errors)).to_hex(),
        &request("stock", vec![late(errors)]),
        1,
    );
    flush(&p);
    assert!(
        eventually(Duration::from_secs(20), || {
            let b = scrape();
            value(&b, "tailsift_late_spans_total", "") == 2.0
                && value(&b, "tailsift_spans_forwarded_total", "") == (3 * errors + 1) as f64
        })
        .await,
        "late spans counted:\n{}",
        scrape()
    );

    let topic = format!("topic=\"{input}\"");
    let checks: Vec<(&str, String, f64)> = vec![
        (
            "tailsift_messages_received_total",
            topic.clone(),
            messages as f64,
        ),
        ("tailsift_spans_received_total", topic.clone(), spans as f64),
        ("tailsift_bytes_received_total", topic.clone(), bytes as f64),
        (
            "tailsift_decode_failures_total",
            "kind=\"malformed_protobuf\"".into(),
            1.0,
        ),
        (
            "tailsift_traces_decided_total",
            "outcome=\"kept\",rule=\"errors\"".into(),
            errors as f64,
        ),
        (
            "tailsift_traces_decided_total",
            "outcome=\"dropped\",rule=\"rest\"".into(),
            dropped as f64,
        ),
        (
            "tailsift_traces_decided_total",
            "rule=\"rest\",trigger=\"root\"".into(),
            (ordinary + broken) as f64,
        ),
        (
            "tailsift_traces_decided_total",
            "rule=\"rest\",trigger=\"idle\"".into(),
            rootless as f64,
        ),
        ("tailsift_late_spans_total", "outcome=\"kept\"".into(), 1.0),
        (
            "tailsift_late_spans_total",
            "outcome=\"dropped\"".into(),
            1.0,
        ),
        (
            "tailsift_messages_produced_total",
            String::new(),
            (errors + 1) as f64,
        ),
        (
            "tailsift_decision_latency_seconds_count",
            String::new(),
            (errors + 1) as f64,
        ),
        (
            "tailsift_trace_duration_seconds_count",
            String::new(),
            all as f64,
        ),
        (
            "tailsift_trace_spans_sum",
            String::new(),
            (3 * (errors + ordinary) + 2 * broken + rootless) as f64,
        ),
        // RED, before sampling: every SERVER span, kept or not, late or not.
        (
            "tailsift_red_requests_total",
            "kind=\"server\",operation=\"/api/items/{id}\",service=\"frontend\"".into(),
            (errors + ordinary + broken) as f64,
        ),
        (
            "tailsift_red_requests_total",
            "operation=\"check\",service=\"stock\"".into(),
            all as f64,
        ),
        (
            "tailsift_red_requests_total",
            "operation=\"late\",service=\"stock\"".into(),
            2.0,
        ),
        (
            "tailsift_red_requests_total",
            "kind=\"consumer\"".into(),
            0.0,
        ),
        (
            "tailsift_red_errors_total",
            "operation=\"check\",service=\"stock\"".into(),
            errors as f64,
        ),
        (
            "tailsift_red_errors_total",
            "service=\"frontend\"".into(),
            0.0,
        ),
        (
            "tailsift_red_duration_seconds_count",
            "service=\"frontend\"".into(),
            (errors + ordinary + broken) as f64,
        ),
        (
            "tailsift_red_duration_seconds_bucket",
            "le=\"0.05\",operation=\"/api/items/{id}\"".into(),
            0.0,
        ),
        (
            "tailsift_red_duration_seconds_bucket",
            "le=\"0.1\",operation=\"/api/items/{id}\"".into(),
            (errors + ordinary + broken) as f64,
        ),
        ("tailsift_red_overflow_spans_total", String::new(), 0.0),
        // Broken traces: the stock spans whose parent (the call) never arrived.
        (
            "tailsift_orphan_spans_total",
            "service=\"stock\"".into(),
            (broken + rootless) as f64,
        ),
        (
            "tailsift_orphan_spans_total",
            "service=\"frontend\"".into(),
            0.0,
        ),
        (
            "tailsift_traces_without_root_total",
            String::new(),
            rootless as f64,
        ),
        ("tailsift_traces_buffered", String::new(), 0.0),
        ("tailsift_assigned_partitions", String::new(), 2.0),
        // Traces with their root lasted 80 ms, the rootless ones 48 ms.
        (
            "tailsift_trace_duration_seconds_bucket",
            "le=\"0.05\"".into(),
            rootless as f64,
        ),
        (
            "tailsift_trace_duration_seconds_bucket",
            "le=\"0.1\"".into(),
            all as f64,
        ),
    ];
    // RED counts are flushed once per commit tick: wait for the last one.
    let mismatches = |body: &str| -> Vec<String> {
        checks
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = labels_match(body, name, labels);
                (got != *want).then(|| format!("{name}{{{labels}}} = {got}, want {want}"))
            })
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || mismatches(&scrape()).is_empty()).await,
        "{:#?}\n{}",
        mismatches(&scrape()),
        scrape()
    );
    let body = scrape();
    let red_sum = labels_match(
        &body,
        "tailsift_red_duration_seconds_sum",
        "service=\"frontend\"",
    );
    let want_sum = 0.08 * (errors + ordinary + broken) as f64;
    assert!(
        (red_sum - want_sum).abs() < 1e-6,
        "RED duration sum {red_sum}, want {want_sum}"
    );

    // The catalog, both ways.
    let exposed = exposed(&body);
    let documented = documented();
    let undocumented: Vec<_> = exposed
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in docs/metrics.md: {undocumented:?}"
    );
    let missing: Vec<_> = documented
        .keys()
        .filter(|n| !exposed.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}"
    );
    for (name, (kind, labels)) in &documented {
        let (ekind, elabels) = &exposed[name];
        assert_eq!(kind, ekind, "type of {name}");
        assert_eq!(labels, elabels, "label names of {name}");
        assert!(name.starts_with("tailsift_") || name.starts_with("process_"));
    }
    pipe.shutdown().await;
}

/// Sum of the samples of `name` whose labels contain every `k="v"` of `labels` (comma
/// separated, in any order); 0 if there is none.
fn labels_match(body: &str, name: &str, labels: &str) -> f64 {
    metric(body, name, labels).unwrap_or(0.0)
}
