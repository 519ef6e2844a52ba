//! The catalog held against docs/metrics.md and /metrics, and the label values the code
//! records held against the catalog.

use std::collections::{BTreeMap, BTreeSet};

use metrics_exporter_prometheus::PrometheusBuilder;

use super::*;

const DOCS: &str = "docs/metrics.md";
const BEGIN: &str = "<!-- catalog: generated from src/telemetry/catalog.rs; `UPDATE_DOCS=1 cargo test --lib telemetry` rewrites it -->";
const END: &str = "<!-- end of catalog -->";

/// The labels column of a docs row: "`rule`, `outcome`: kept, dropped".
fn labels_cell(d: &MetricDef) -> String {
    d.labels
        .iter()
        .map(|l| match l.values {
            Values::Fixed(words) => format!("`{}`: {}", l.name, words.join(", ")),
            Values::Topics | Values::Rules | Values::Seen("") => format!("`{}`", l.name),
            Values::Seen(note) => format!("`{}` ({note})", l.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of docs/metrics.md, from the catalog.
fn docs_table() -> String {
    let mut t = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for d in CATALOG {
        let cells = [
            format!("`{}`", d.name),
            d.kind.as_str().to_string(),
            labels_cell(d),
            d.help.to_string(),
        ];
        for c in cells {
            // An empty cell is `| |`, a full one `| text |`.
            t += "| ";
            t += &c;
            if !c.is_empty() {
                t += " ";
            }
        }
        t += "|\n";
    }
    t
}

#[test]
fn the_docs_table_is_the_catalog() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOCS);
    let text = std::fs::read_to_string(&path).expect("docs/metrics.md");
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        panic!("{DOCS} lacks the markers of its generated table:\n{BEGIN}\n{END}");
    };
    let want = docs_table();
    let have = &text[b + BEGIN.len() + 1..e];
    if have != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let updated = format!("{}\n{want}{}", &text[..b + BEGIN.len()], &text[e..]);
            std::fs::write(&path, updated).expect("write docs/metrics.md");
        } else {
            panic!(
                "{DOCS} is not the catalog of src/telemetry/catalog.rs: run \
                 `UPDATE_DOCS=1 cargo test --lib telemetry` and commit the result"
            );
        }
    }
}

#[test]
fn every_metric_is_named_described_and_bucketed_once() {
    let mut names = BTreeSet::new();
    for d in CATALOG {
        assert!(names.insert(d.name), "{} is in the catalog twice", d.name);
        assert!(
            d.name.starts_with("tailsift_") || d.name.starts_with("process_"),
            "{}: prefix",
            d.name
        );
        assert_eq!(
            d.name.ends_with("_total"),
            d.kind == Kind::Counter,
            "{}: counters, and only they, end in _total",
            d.name
        );
        assert!(
            d.help.ends_with('.') && !d.help.contains(['|', '\n', '`']),
            "{}: help is one sentence or more, ending with a full stop, that fits a # HELP \
             line and a table cell",
            d.name
        );
        assert_eq!(
            d.buckets.is_some(),
            d.kind == Kind::Histogram,
            "{}: histograms, and only they, have buckets",
            d.name
        );
        if let Some(b) = d.buckets {
            assert!(!b.is_empty() && b.windows(2).all(|w| w[0] < w[1]));
        }
        let mut labels = BTreeSet::new();
        for l in d.labels {
            assert!(labels.insert(l.name), "{}: label {} twice", d.name, l.name);
            if let Values::Seen(note) = l.values {
                assert!(!note.contains(['`', '|', ')']));
            }
        }
    }
}

#[test]
fn label_lists_written_out_are_the_values_the_code_records() {
    let triggers: Vec<&str> = crate::decision::Trigger::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    let label = |metric: &str, label: &str| {
        let d = def(metric).expect("catalogued");
        match d.labels.iter().find(|l| l.name == label).map(|l| l.values) {
            Some(Values::Fixed(words)) => words.to_vec(),
            other => panic!("{metric}: {label} is {other:?}"),
        }
    };
    assert_eq!(label(TRACES_DECIDED, "trigger"), triggers);
    use crate::kafka::decision_log::read_back::Ended;
    let ended = [
        Ended::Complete,
        Ended::CutShort { left_out: 1 },
        Ended::Incomplete { why: "x".into() },
    ];
    assert_eq!(
        label(DECISION_LOG_READ_BACKS, "result"),
        ended.iter().map(Ended::as_str).collect::<Vec<_>>()
    );
    use crate::rules::{reload::mode_name, Mode};
    assert_eq!(
        label(RULES_INFO, "mode"),
        [mode_name(Mode::Enforce), mode_name(Mode::Shadow)]
    );
}

/// Series of `name` in a Prometheus text body, as sorted `k=v` label lists.
fn series(body: &str, name: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| {
            let inner = &l[name.len() + 1..l.rfind('}').expect("closing brace")];
            let mut pairs: Vec<&str> = inner.split(',').collect();
            pairs.sort_unstable();
            pairs.join(",").replace('"', "")
        })
        .collect()
}

#[test]
fn only_the_outcomes_a_rule_can_give_are_registered_at_start() {
    let yaml = "rules:
  - name: limited
    conditions: trace.span_count > 2000
    outcome: rate_limit
    traces_per_second: 1
  - name: errors
    conditions: trace.error = true
    outcome: keep
  - name: health
    conditions: span.name = health
    outcome: drop
  - name: baseline
    outcome: keep
    sample_rate: 10
";
    let rules = crate::rules::parse_file("t.yaml", yaml).expect("valid rules");
    let set = crate::rules::RuleSet::new(rules, None).expect("valid set");
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        init_series(&["spans".to_string()], set.rules())
    });
    let body = handle.render();

    // rule -> outcomes registered, each with every trigger.
    let mut decided: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for s in series(&body, TRACES_DECIDED) {
        let get = |k: &str| {
            s.split(',')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .expect("label")
                .to_string()
        };
        *decided
            .entry(get("rule"))
            .or_default()
            .entry(get("outcome"))
            .or_default() += 1;
    }
    let n = crate::decision::Trigger::ALL.len();
    let want: BTreeMap<String, BTreeMap<String, usize>> = [
        ("limited", &["kept"][..]),
        ("errors", &["kept"]),
        ("health", &["dropped"]),
        ("baseline", &["dropped", "kept"]),
    ]
    .into_iter()
    .map(|(r, o)| (r.into(), o.iter().map(|o| (o.to_string(), n)).collect()))
    .collect();
    assert_eq!(decided, want);

    assert_eq!(
        series(&body, RULE_TRACES)
            .into_iter()
            .filter(|s| s.contains("rule=health"))
            .collect::<Vec<_>>(),
        ["result=dropped,rule=health", "result=matched,rule=health"]
    );
    // The fixed words and the topics, all of them.
    assert_eq!(
        series(&body, LATE_SPANS),
        BTreeSet::from(["outcome=dropped".into(), "outcome=kept".into()])
    );
    assert_eq!(
        series(&body, MESSAGES_RECEIVED),
        BTreeSet::from(["topic=spans".into()])
    );
    assert_eq!(series(&body, DECISION_LOG_READ_BACKS).len(), 3);
    // Unlabelled metrics are there, labels met at run time are not.
    assert!(body.contains(&format!("\n{COMMITS} 0\n")));
    assert!(body.contains(&format!("\n{TRACES_BUFFERED} 0\n")));
    assert!(series(&body, CONSUMER_LAG).is_empty());
    assert!(series(&body, RED_REQUESTS).is_empty());
}

#[test]
fn label_values_convert_to_the_strings_of_the_catalog() {
    assert_eq!(Outcome::kept(true).as_str(), "kept");
    assert_eq!(
        metrics::SharedString::from(Outcome::Dropped),
        metrics::SharedString::const_str("dropped")
    );
    assert_eq!(
        RuleResult::ALL
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>(),
        RuleResult::NAMES
    );
    assert_eq!(HeadRead::complete(false), HeadRead::Incomplete);
}

#[test]
fn rules_info_and_process_metrics_are_rendered_with_the_catalog_help() {
    let recorder = PrometheusBuilder::new().build_recorder();
    set_rules_info("abc", "shadow");
    let body = render(&recorder.handle());
    let rules = def(RULES_INFO).expect("catalogued");
    assert!(body.contains(&format!(
        "# HELP {RULES_INFO} {}\n# TYPE {RULES_INFO} gauge\n{RULES_INFO}{{version=\"abc\",mode=\"shadow\"}} 1\n",
        rules.help
    )));
    if cfg!(target_os = "linux") {
        for d in CATALOG.iter().filter(|d| d.name.starts_with("process_")) {
            assert!(
                body.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())),
                "{} rendered",
                d.name
            );
        }
    }
}
