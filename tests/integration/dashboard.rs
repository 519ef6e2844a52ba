//! `dashboards/tailsift.json` is an importable Grafana dashboard whose every query reads
//! metrics of the catalog (docs/metrics.md).

use std::collections::BTreeSet;

use serde_json::Value;

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `tailsift_*` names a PromQL expression reads, histogram suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tailsift_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| !b.ends_with("_total"))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn catalog() -> BTreeSet<String> {
    read("docs/metrics.md")
        .lines()
        .filter(|l| l.starts_with("| `tailsift_"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn the_dashboard_is_grafana_json_and_queries_only_catalogued_metrics() {
    let dash: Value = serde_json::from_str(&read("dashboards/tailsift.json")).expect("valid JSON");
    assert_eq!(dash["title"], "tailsift");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "a current Grafana schema"
    );
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );

    let catalog = catalog();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].as_u64().is_some(), "panel {id} gridPos.{k}");
        }
        assert!(g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {id} uses the variable"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} queries something");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {id}: {expr}");
            for n in names {
                assert!(
                    catalog.contains(&n),
                    "panel {id} queries {n}, not in docs/metrics.md"
                );
                queried.insert(n);
            }
        }
    }
    // What the dashboard promises to show.
    for must in [
        "tailsift_spans_received_total",
        "tailsift_spans_forwarded_total",
        "tailsift_traces_decided_total",
        "tailsift_traces_buffered",
        "tailsift_consumer_lag",
        "tailsift_decision_latency_seconds",
        "tailsift_red_requests_total",
        "tailsift_red_errors_total",
        "tailsift_red_duration_seconds",
        "tailsift_orphan_spans_total",
    ] {
        assert!(queried.contains(must), "no panel shows {must}");
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names("histogram_quantile(0.9, sum by (le) (rate(tailsift_red_duration_seconds_bucket{a=\"b\"}[5m]))) / tailsift_x_total"),
        vec!["tailsift_red_duration_seconds", "tailsift_x_total"]
    );
}

/// The Helm chart ships a copy of the dashboard (a chart cannot read outside its directory):
/// `scripts/check-chart.sh --sync` refreshes it. Checked here too, so that `cargo test` says so
/// before CI's chart step does.
#[test]
fn the_chart_ships_the_dashboard_as_it_is() {
    assert!(
        read("dashboards/tailsift.json") == read("helm/tailsift/files/dashboards/tailsift.json"),
        "helm/tailsift/files/dashboards/tailsift.json differs from dashboards/tailsift.json: run scripts/check-chart.sh --sync"
    );
}
