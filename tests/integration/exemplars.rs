//! Exemplars that always lead to a trace, on a real broker: `/metrics` scraped with the
//! OpenMetrics `Accept` header Prometheus sends is parsed by a real OpenMetrics parser (the
//! Python `prometheus_client`, installed into a virtualenv by this test), and every exemplar's
//! trace id is a trace in the output topic, none a dropped one; the plain scrape stays the
//! classic Prometheus text. The dashboard's latency panels ask Grafana for exemplars.
//!
//! In a process of its own: the metrics recorder is global to the process.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

const MS: u64 = 1_000_000;
const BASE: u64 = 1_700_000_000_000 * MS;
/// What Prometheus sends with `--enable-feature=exemplar-storage`.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// GETs `path` with an `Accept` header; returns (content type, body).
fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// A virtualenv with `prometheus_client` from PyPI, made once per target directory.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openmetrics-venv");
    let py = venv.join("bin/python");
    let ready = || {
        Command::new(&py)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (with python3-venv) is needed to parse OpenMetrics");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "prometheus_client>=0.17,<1"])
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install prometheus_client");
    }
    assert!(ready(), "prometheus_client imports");
    py
}

/// Parses `om` (OpenMetrics) and `classic` (Prometheus text) with prometheus_client; returns
/// the OpenMetrics samples that carry an exemplar, and the classic text's sample count.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as classic
out = []
for family in om(open(sys.argv[1]).read()):
    for s in family.samples:
        if s.exemplar is not None:
            ts = s.exemplar.timestamp
            out.append({"family": family.name, "type": family.type, "name": s.name,
                        "labels": s.labels, "exemplar": s.exemplar.labels,
                        "value": s.exemplar.value, "timestamp": None if ts is None else float(ts)})
n = sum(len(f.samples) for f in classic(open(sys.argv[2]).read()))
print(json.dumps({"exemplars": out, "classic_samples": n}))
"#;

fn parse(om: &str, classic: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("om.txt"), dir.path().join("classic.txt"));
    std::fs::write(&a, om).expect("write");
    std::fs::write(&b, classic).expect("write");
    let out = Command::new(python())
        .args(["-c", PARSE])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the parsers refused the scrape: {}\n--- OpenMetrics scrape:\n{om}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Durations of the frontend's root span, one per trace in turn: across the buckets.
const ROOT_MS: [u64; 6] = [3, 20, 40, 150, 700, 3_000];

/// Trace `n`: frontend SERVER root at a route, its CLIENT call, and the stock SERVER span
/// (an error for every 10th trace).
fn trace(n: u64) -> Vec<(&'static str, Vec<Span>)> {
    let t = trace_id(n);
    let d = ROOT_MS[(n % 6) as usize] * MS;
    let root = with_attrs(
        span(t, 1, None, "GET /api/items/42", BASE, BASE + d),
        vec![attr_str("http.route", "/api/items/{id}")],
    );
    let mut call = span(t, 2, Some(1), "call stock", BASE, BASE + d / 2);
    call.kind = SpanKind::Client as i32;
    let mut stock = span(t, 3, Some(2), "check", BASE, BASE + d / 2);
    if n.is_multiple_of(10) {
        stock = with_error(stock);
    }
    vec![("frontend", vec![root, call]), ("stock", vec![stock])]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exemplar_is_a_kept_trace_in_the_output_topic_and_none_a_dropped_one() {
    own_process!(); // every exemplar in /metrics must be this test's
    let pipe = pipeline(
        "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n  - name: baseline\n    outcome: keep\n    sample_rate: 3\n",
    )
    .partitions(2)
    .start()
    .await;
    let (input, output) = (pipe.input.clone(), pipe.output.clone());
    let addr = pipe.addr();

    let p = producer();
    let traces = 90u64;
    for n in 0..traces {
        let key = TraceId(trace_id(n)).to_hex();
        for (svc, spans) in trace(n) {
            send(&p, &input, &key, &request(svc, spans));
        }
    }
    flush(&p);
    let plain = || scrape(addr, None).1;
    let value = |b: &str, labels: &str| metric(b, "tailsift_traces_decided_total", labels);
    assert!(
        eventually(Duration::from_secs(30), || value(&plain(), "")
            == Some(traces as f64))
        .await,
        "every trace decided:\n{}",
        plain()
    );
    let kept_count = value(&plain(), "outcome=\"kept\"").unwrap_or(0.0) as usize;
    let mut reader = Reader::new(&output);
    let keys = |m: &[OutMsg]| m.iter().map(|m| m.key.clone()).collect::<BTreeSet<_>>();
    assert!(
        reader.read_until(Duration::from_secs(30), |m| keys(m).len() >= kept_count),
        "{kept_count} kept traces in the output topic"
    );
    let sent: BTreeSet<String> = (0..traces).map(|n| TraceId(trace_id(n)).to_hex()).collect();
    let kept = keys(&reader.messages);
    let dropped: BTreeSet<String> = sent.difference(&kept).cloned().collect();
    assert!(
        !dropped.is_empty() && kept.len() == kept_count,
        "the baseline keeps 1 in 3: some traces dropped ({}), {kept_count} kept",
        dropped.len()
    );

    // Late spans: one of a dropped trace, then one of a kept trace, both 7 s long in stock's
    // `check` series (bucket le=10, which no trace above reached): the kept one refreshes it.
    let late_of = |pick: &BTreeSet<String>| {
        (0..traces)
            .find(|n| !n.is_multiple_of(10) && pick.contains(&TraceId(trace_id(*n)).to_hex()))
            .expect("a trace")
    };
    let (late_dropped, late_kept) = (late_of(&dropped), late_of(&kept));
    for n in [late_dropped, late_kept] {
        let late = span(trace_id(n), 9, Some(1), "check", BASE, BASE + 7_000 * MS);
        send(
            &p,
            &input,
            &TraceId(trace_id(n)).to_hex(),
            &request("stock", vec![late]),
        );
        flush(&p);
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            metric(&plain(), "tailsift_late_spans_total", "") == Some(2.0)
        })
        .await,
        "late spans followed their decisions"
    );
    assert!(
        reader.read_until(Duration::from_secs(20), |m| m.len() > kept_count
            && m.iter()
                .any(|m| m.key == TraceId(trace_id(late_kept)).to_hex())),
        "the late kept span was forwarded"
    );

    // The OpenMetrics scrape, as Prometheus asks for it, parsed by prometheus_client.
    let (om_type, om) = scrape(addr, Some(PROMETHEUS_ACCEPT));
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    let (plain_type, classic) = scrape(addr, None);
    assert_eq!(
        plain_type, "text/plain; charset=utf-8",
        "the classic text, unchanged"
    );
    assert!(!classic.contains("# EOF") && !classic.contains(" # {"));
    let parsed = parse(&om, &classic);
    assert!(
        parsed["classic_samples"].as_u64().unwrap_or(0) > 100,
        "{parsed}"
    );
    let exemplars = parsed["exemplars"].as_array().expect("exemplars");

    let mut by_series: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for e in exemplars {
        let label = |k: &str| e["labels"][k].as_str().unwrap_or_default().to_string();
        let trace = e["exemplar"]["trace_id"].as_str().expect("trace_id");
        assert!(
            kept.contains(trace),
            "exemplar of a trace not in the output topic: {e}"
        );
        assert!(!dropped.contains(trace), "exemplar of a dropped trace: {e}");
        let n = (0..traces)
            .find(|n| TraceId(trace_id(*n)).to_hex() == trace)
            .expect("sent");
        let rate = if n.is_multiple_of(10) { "1" } else { "3" };
        assert_eq!(
            e["exemplar"]["sample_rate"], rate,
            "the keeping rule's rate: {e}"
        );
        assert_eq!(
            e["exemplar"]["span_id"].as_str().map(str::len),
            Some(16),
            "{e}"
        );
        assert!(
            e["timestamp"].as_f64().is_some_and(|t| t > 1.7e9),
            "the span's end: {e}"
        );
        let name = e["name"].as_str().unwrap_or_default();
        if name == "tailsift_red_errors_total" {
            assert!(
                n.is_multiple_of(10),
                "error exemplars from error traces: {e}"
            );
        }
        if name == "tailsift_red_duration_seconds_bucket" {
            let le: f64 = label("le").parse().unwrap_or(f64::INFINITY);
            let v = e["value"].as_f64().expect("value");
            assert!(v <= le, "an exemplar in its bucket: {e}");
        } else {
            assert_eq!(e["type"], "counter", "{e}");
        }
        *by_series
            .entry((label("service"), label("operation"), name.to_string()))
            .or_default() += 1;
    }
    // Every RED series that kept traces passed through has its exemplars.
    let frontend = ("frontend".to_string(), "/api/items/{id}".to_string());
    let stock = ("stock".to_string(), "check".to_string());
    for (svc, op) in [&frontend, &stock] {
        let get = |m: &str| {
            by_series
                .get(&(svc.clone(), op.clone(), m.to_string()))
                .copied()
        };
        assert_eq!(
            get("tailsift_red_requests_total"),
            Some(1),
            "{svc}/{op}: {by_series:?}"
        );
        assert!(
            get("tailsift_red_duration_seconds_bucket").unwrap_or(0) >= 4,
            "{by_series:?}"
        );
    }
    assert_eq!(
        by_series.get(&(
            stock.0.clone(),
            stock.1.clone(),
            "tailsift_red_errors_total".into()
        )),
        Some(&1)
    );
    // The late kept span refreshed the 10 s bucket; the late dropped one did not.
    let slow = exemplars
        .iter()
        .find(|e| e["labels"]["service"] == "stock" && e["labels"]["le"] == "10.0")
        .expect("an exemplar in stock's 10 s bucket");
    assert_eq!(
        slow["exemplar"]["trace_id"],
        TraceId(trace_id(late_kept)).to_hex()
    );
    pipe.shutdown().await;
}

/// The latency panels ask Grafana for exemplars, and a trace datasource variable (Tempo or
/// Jaeger) is there to follow them.
#[test]
fn the_dashboards_latency_panels_show_exemplars_with_a_trace_datasource() {
    for path in [
        "dashboards/tailsift.json",
        "helm/tailsift/files/dashboards/tailsift.json",
    ] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .expect("dashboard");
        let dash: Value = serde_json::from_str(&text).expect("JSON");
        let vars = dash["templating"]["list"].as_array().expect("variables");
        let traces = vars
            .iter()
            .find(|v| v["type"] == "datasource" && v["name"] == "traces")
            .unwrap_or_else(|| panic!("{path}: a `traces` datasource variable"));
        assert!(["tempo", "jaeger"].contains(&traces["query"].as_str().unwrap_or_default()));
        let panels = dash["panels"].as_array().expect("panels");
        let latency: Vec<&Value> = panels
            .iter()
            .filter(|p| {
                p["targets"].as_array().is_some_and(|t| {
                    t.iter().any(|t| {
                        t["expr"]
                            .as_str()
                            .is_some_and(|e| e.contains("tailsift_red_duration_seconds_bucket"))
                    })
                })
            })
            .collect();
        assert!(!latency.is_empty(), "{path}: a RED latency panel");
        for p in latency {
            let targets = p["targets"].as_array().expect("targets");
            assert!(
                targets.iter().any(|t| t["exemplar"] == true),
                "{path}: panel {} asks for exemplars",
                p["title"]
            );
            let links = p["fieldConfig"]["defaults"]["links"].as_array();
            assert!(
                links.is_some_and(|l| l.iter().any(|l| {
                    l["url"]
                        .as_str()
                        .is_some_and(|u| u.contains("${traces}") && u.contains("trace_id"))
                })),
                "{path}: panel {} links exemplars to the trace datasource",
                p["title"]
            );
        }
    }
}
