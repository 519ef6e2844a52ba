//! The configuration's parsing, defaults and checks, without Kafka.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::memory::{Budget, BudgetSource};
use crate::otlp::Encoding;

const MINIMAL: &str = "kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\n";

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("t.yaml"), text).map_err(|e| e.to_string())
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.completion.decision_wait, Duration::from_secs(10));
    assert_eq!(c.completion.root_grace, Duration::from_secs(2));
    assert_eq!(c.completion.max_trace_age, Duration::from_secs(60));
    assert_eq!(c.completion.max_spans_per_trace, 10_000);
    assert_eq!(
        c.buffer.max_bytes, None,
        "derived from the container at start"
    );
    assert_eq!(c.validate().unwrap().completion.max_trace_bytes, 16 << 20);
    let small = parse(&format!("{MINIMAL}buffer:\n  max_bytes: 4MiB\n")).unwrap();
    assert_eq!(
        small.validate().unwrap().completion.max_trace_bytes,
        16 << 20,
        "lowered to half the budget at start, not an error"
    );
    assert_eq!(
        (c.buffer.high_watermark, c.buffer.low_watermark),
        (0.9, 0.8)
    );
    assert_eq!(c.decision_cache.max_bytes, ByteSize(64 << 20));
    assert_eq!(c.decision_cache.max_entries, None);
    assert!(c.stress.enabled);
    assert_eq!(
        (c.stress.enter_lag, c.stress.exit_lag, c.stress.sample_rate),
        (500_000, 50_000, 10)
    );
    assert_eq!(c.stress.enter_after, Duration::from_secs(60));
    assert_eq!(c.kafka.group_id, "tailsift");
    assert_eq!(c.http.listen.port(), 8080);
}

#[test]
fn rejects_unknown_keys_and_bad_values_naming_the_key() {
    let cases = [
        (
            format!("{MINIMAL}bogus: 1\n"),
            "5:1: `bogus`: unknown key `bogus`",
        ),
        (
            format!("{MINIMAL}completion:\n  decison_wait: 5s\n"),
            "`completion.decison_wait`: unknown key `decison_wait`, did you mean `decision_wait`?",
        ),
        (
            format!("{MINIMAL}completion:\n  decision_wait: soon\n"),
            "decision_wait",
        ),
        (
            format!("{MINIMAL}buffer:\n  max_bytes: 12XB\n"),
            "unknown unit `XB`",
        ),
        (
            "kafka:\n  brokers: b\n  input_topics: [t]\n  output_topic: t\n".to_string(),
            "`kafka.output_topic`",
        ),
        (
            format!("{MINIMAL}  properties:\n    group.id: x\n"),
            "`group.id` is set by kafka.group_id",
        ),
        (
            "kafka:\n  brokers: b\n  input_topics: []\n  output_topic: o\n".to_string(),
            "kafka.input_topics",
        ),
        (
            format!("{MINIMAL}  dead_letter_topic: in\n"),
            "`kafka.dead_letter_topic`: `in` must be a topic of its own",
        ),
        (
            format!("{MINIMAL}  input_encoding: json\n"),
            "unknown value `json` (supported: otlp_proto, otlp_json)",
        ),
        (
            format!("{MINIMAL}  input_encodings:\n    other: otlp_json\n"),
            "`other` is not one of kafka.input_topics",
        ),
        (
            format!("{MINIMAL}monitoring:\n  lag_interval: 10s\n  stall_timeout: 5s\n"),
            "`monitoring.stall_timeout`",
        ),
        (
            format!("{MINIMAL}monitoring:\n  lag_interval: 1ms\n"),
            "`monitoring.lag_interval`",
        ),
        (
            format!("{MINIMAL}buffer:\n  max_bytes: 512KiB\n"),
            "at least 1MiB",
        ),
        (
            format!("{MINIMAL}buffer:\n  max_bytes: 8MiB\ncompletion:\n  max_trace_bytes: 5MiB\n"),
            "more than half of buffer.max_bytes",
        ),
        (
            format!("{MINIMAL}buffer:\n  high_watermark: 1.5\n"),
            "`buffer.high_watermark`",
        ),
        (
            format!("{MINIMAL}buffer:\n  high_watermark: 0.7\n  low_watermark: 0.8\n"),
            "below buffer.high_watermark",
        ),
        (
            format!("{MINIMAL}stress:\n  enter_lag: 100\n  exit_lag: 100\n"),
            "`stress.exit_lag`",
        ),
        (
            format!("{MINIMAL}stress:\n  sample_rate: 0\n"),
            "`stress.sample_rate`",
        ),
        (
            format!("{MINIMAL}decision_cache:\n  max_entries: 0\n"),
            "`decision_cache.max_entries`",
        ),
        (
            format!("{MINIMAL}decision_cache:\n  max_bytes: 100\n"),
            "at least 16 decisions",
        ),
        (
            format!("{MINIMAL}monitoring:\n  max_services: 0\n"),
            "`monitoring.max_services`",
        ),
        (
            format!("{MINIMAL}monitoring:\n  red_metrics: maybe\n"),
            "red_metrics",
        ),
        (
            format!("{MINIMAL}log:\n  format: xml\n"),
            "unknown value `xml` (supported: text, json)",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text).expect_err(&text);
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

#[test]
fn the_example_config_in_the_repository_is_valid_and_matches_the_defaults() {
    let path = Path::new("tailsift.example.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let example = Config::parse(path, &text).unwrap();
    let minimal = parse(MINIMAL).unwrap();
    assert_eq!(
        example.validate().unwrap().completion,
        minimal.validate().unwrap().completion
    );
    assert_eq!(example.buffer.max_bytes, minimal.buffer.max_bytes);
    assert_eq!(example.buffer.high_watermark, minimal.buffer.high_watermark);
    assert_eq!(example.buffer.low_watermark, minimal.buffer.low_watermark);
    assert_eq!(
        example.validate().unwrap().decision_cache_bytes,
        minimal.validate().unwrap().decision_cache_bytes
    );
    assert_eq!(example.kafka.commit_interval, minimal.kafka.commit_interval);
    assert_eq!(example.shutdown_timeout, minimal.shutdown_timeout);
    assert_eq!(example.http.listen, minimal.http.listen);
    assert_eq!(
        example.monitoring.lag_interval,
        minimal.monitoring.lag_interval
    );
    assert_eq!(
        example.monitoring.stall_timeout,
        minimal.monitoring.stall_timeout
    );
    assert!(example.monitoring.red_metrics && minimal.monitoring.red_metrics);
    assert_eq!(example.log.format, LogFormat::Text);
    assert_eq!(minimal.log.format, LogFormat::Text);
    let json = parse(&format!("{MINIMAL}log:\n  format: json\n")).unwrap();
    assert_eq!(json.log.format, LogFormat::Json);
    assert_eq!(
        example.monitoring.max_services,
        minimal.monitoring.max_services
    );
    assert_eq!(
        example.monitoring.max_operations_per_service,
        minimal.monitoring.max_operations_per_service
    );
}

#[test]
fn environment_overrides_brokers_and_group_instance_id_but_not_with_empty_values() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let mut c = parse(&format!("{MINIMAL}  group_instance_id: from-file\n")).unwrap();
    c.apply_env(env(&[]));
    assert_eq!(c.kafka.brokers, "b:9092");
    assert_eq!(c.kafka.group_instance_id.as_deref(), Some("from-file"));

    c.apply_env(env(&[
        (BROKERS_ENV, "k1:9092,k2:9092"),
        (GROUP_INSTANCE_ID_ENV, "tailsift-2"),
    ]));
    assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(c.kafka.group_instance_id.as_deref(), Some("tailsift-2"));

    let mut c = parse(MINIMAL).unwrap();
    c.apply_env(env(&[(BROKERS_ENV, " "), (GROUP_INSTANCE_ID_ENV, "")]));
    assert_eq!(c.kafka.brokers, "b:9092");
    assert_eq!(c.kafka.group_instance_id, None);
}

#[test]
fn input_encoding_defaults_to_proto_and_is_overridden_per_topic() {
    let c = parse(MINIMAL).unwrap();
    let topic = c.kafka.input_topics[0].clone();
    assert_eq!(c.encoding_of(&topic), Encoding::OtlpProto);
    let text = format!("{MINIMAL}  input_encoding: otlp_json\n");
    assert_eq!(
        parse(&text).unwrap().encoding_of(&topic),
        Encoding::OtlpJson
    );
    let text = format!(
        "{MINIMAL}  input_encoding: otlp_json\n  input_encodings:\n    {topic}: otlp_proto\n"
    );
    assert_eq!(
        parse(&text).unwrap().encoding_of(&topic),
        Encoding::OtlpProto
    );
}

#[test]
fn the_budget_and_the_decision_cache_bound_resolve_from_config_or_container() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.max"), "2147483648\n").unwrap();
    let derived = parse(MINIMAL).unwrap();
    let (b, source) = derived.budget_from(dir.path());
    assert_eq!(source, BudgetSource::CgroupV2 { limit: 2 << 30 });
    assert_eq!(b, Budget::new(1 << 30, 0.9, 0.8));
    let set = parse(&format!(
        "{MINIMAL}buffer:\n  max_bytes: 100MiB\n  high_watermark: 0.8\n  low_watermark: 0.5\ndecision_cache:\n  max_entries: 1000\n"
    ))
    .unwrap();
    let (b, source) = set.budget_from(dir.path());
    assert_eq!(source, BudgetSource::Configured);
    assert_eq!(
        (b.max_bytes, b.pause_above, b.resume_below),
        (100 << 20, 80 << 20, 50 << 20)
    );
    assert_eq!(
        set.validate().unwrap().decision_cache_bytes,
        1000 * crate::decision::CACHE_ENTRY_BYTES
    );
    assert_eq!(derived.validate().unwrap().decision_cache_bytes, 64 << 20);
}

#[test]
fn rules_settings_parse_and_marking_names_must_differ() {
    let c = parse(&format!(
        "{MINIMAL}rules:\n  mode: shadow\n  marking:\n    rule_attribute: sampling.rule\n    tracestate: false\n"
    ))
    .unwrap();
    let o = c.validate().unwrap().rule_options;
    assert_eq!(o.mode, crate::rules::Mode::Shadow);
    let m = o.marking.unwrap();
    assert_eq!(m.rule_attribute.as_deref(), Some("sampling.rule"));
    assert_eq!(
        m.sample_rate_attribute.as_deref(),
        Some("tailsift.sample_rate")
    );
    assert!(!m.tracestate);
    assert!(parse(MINIMAL)
        .unwrap()
        .validate()
        .unwrap()
        .rule_options
        .marking
        .is_none());
    assert!(parse(MINIMAL).unwrap().rules.reload);
    let err = parse(&format!(
        "{MINIMAL}rules:\n  marking:\n    rule_attribute: x\n    shadow_attribute: x\n"
    ))
    .unwrap_err();
    assert!(err.contains("rules.marking"), "{err}");
    let err = parse(&format!("{MINIMAL}rules:\n  mode: dry\n")).unwrap_err();
    assert!(err.contains("unknown value `dry`"), "{err}");
    let err = parse(&format!("{MINIMAL}rules:\n  marking:\n    rule_attr: x\n")).unwrap_err();
    assert!(err.contains("unknown key `rule_attr`"), "{err}");
}

#[test]
fn the_kafka_settings_line_is_readable_and_redacted() {
    let mut c = parse(&format!(
        "{MINIMAL}  properties:\n    security.protocol: SASL_SSL\n    sasl.password: hunter2\n"
    ))
    .unwrap();
    c.kafka.resolved_secrets.insert("sasl.password".into());
    let line = c.kafka.settings_line();
    assert_eq!(
        line,
        "brokers=b:9092 group=tailsift commit_interval=1s max_message_bytes=1000000 \
         properties={sasl.password=<redacted>, security.protocol=SASL_SSL}"
    );
}

#[test]
fn byte_sizes_accept_units() {
    assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
    assert_eq!("2GB".parse::<ByteSize>(), Ok(ByteSize(2_000_000_000)));
    assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
    assert!("lots".parse::<ByteSize>().is_err());
}

#[test]
fn a_missing_required_kafka_key_is_refused_by_name() {
    for (text, key) in [
        (
            "kafka:\n  input_topics: [in]\n  output_topic: out\n",
            "`kafka.brokers`",
        ),
        (
            "kafka:\n  brokers: b:9092\n  output_topic: out\n",
            "`kafka.input_topics`",
        ),
        (
            "kafka:\n  brokers: b:9092\n  input_topics: [in]\n",
            "`kafka.output_topic`",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let err = parse("http:\n  listen: 0.0.0.0:1\n").unwrap_err();
    assert!(
        err.contains("kafka"),
        "the kafka section is required: {err}"
    );
}

#[test]
fn an_empty_section_and_an_absent_one_mean_the_same_defaults() {
    let absent = parse(MINIMAL).unwrap();
    let empty = parse(&format!(
        "{MINIMAL}rules: {{}}\ncompletion: {{}}\nbuffer: {{}}\ndecision_cache: {{}}\n\
         http: {{}}\nmonitoring: {{}}\nlog: {{}}\nstress: {{}}\n"
    ))
    .unwrap();
    assert_eq!(format!("{absent:?}"), format!("{empty:?}"));
    let marked = parse(&format!("{MINIMAL}rules:\n  marking: {{}}\n")).unwrap();
    assert_eq!(marked.rules.marking, Some(MarkingConfig::default()));
    assert_eq!(
        MarkingConfig::default().rule_attribute,
        "tailsift.rule",
        "the documented default"
    );
}
