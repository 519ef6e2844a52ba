//! Logs of the binary on a real broker: text by default, JSON when the config says so, and no
//! line per span at info level.

use std::path::Path;
use std::time::Duration;

use crate::fixture::instance::{launch, log_of, Instance, RunConfig};
use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

/// The repository's example rules, by absolute path.
fn example_rules() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// Starts `tailsift run` with its own log settings; stderr goes to `<dir>/tailsift.log`.
fn start(config: &RunConfig) -> (Instance, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = launch(dir.path(), "tailsift", config).default_log().start();
    (inst, dir)
}

fn log_text(dir: &tempfile::TempDir) -> String {
    log_of(dir.path(), "tailsift")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_text_by_default_json_by_config_and_never_one_line_per_span() {
    let _turn = several_processes().await;
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let config = RunConfig::new(&input, &output, &example_rules())
        .set("completion.decision_wait", "1s")
        .set("completion.root_grace", "200ms");

    let (text_run, text_dir) = start(&config);
    assert!(
        eventually(Duration::from_secs(30), || log_text(&text_dir)
            .contains("partitions assigned"))
        .await,
        "{}",
        log_text(&text_dir)
    );
    let text = log_text(&text_dir);
    assert!(
        text.lines().all(|l| !l.trim_start().starts_with('{')),
        "text by default: {text}"
    );
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log file: {text:?}"
    );
    let start_line = text
        .lines()
        .find(|l| l.contains("tailsift running"))
        .expect("start line");
    assert!(
        start_line.contains(&format!("brokers={}", brokers()))
            && !start_line.contains("KafkaConfig {"),
        "the Kafka settings are readable: {start_line}"
    );
    drop(text_run);

    let (_json_run, json_dir) = start(&config.clone().set("log.format", "json"));
    assert!(
        eventually(Duration::from_secs(30), || log_text(&json_dir)
            .contains("partitions assigned"))
        .await,
        "{}",
        log_text(&json_dir)
    );
    // Traffic: 100 traces of 3 spans; the log must not grow with it.
    let before = log_text(&json_dir).lines().count();
    let p = producer();
    for n in 0..100 {
        let t = trace_id(n);
        let spans = vec![
            span(t, 1, None, "root", 1, 5),
            span(t, 2, Some(1), "a", 2, 3),
            span(t, 3, Some(1), "b", 3, 4),
        ];
        send(&p, &input, &TraceId(t).to_hex(), &request("svc", spans));
    }
    flush(&p);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let json = log_text(&json_dir);
    let lines: Vec<&str> = json.lines().collect();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    assert!(
        lines.len() - before < 10,
        "{} lines logged for 300 spans at info:\n{json}",
        lines.len() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_librdkafka_errors_are_rate_limited() {
    let _turn = several_processes().await;
    // Nothing listens there: every client of tailsift fails to connect, again and again.
    let dead = free_addr().to_string();
    let config = RunConfig::new("in", "out", &example_rules())
        .set("kafka.brokers", dead)
        .set("monitoring.lag_interval", "500ms");
    let (_run, dir) = start(&config);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let text = log_text(&dir);
    let librdkafka: Vec<&str> = text.lines().filter(|l| l.contains("librdkafka")).collect();
    println!(
        "broker down for 20 s: {} librdkafka lines, {} lines in all",
        librdkafka.len(),
        text.lines().count()
    );
    assert!(!librdkafka.is_empty(), "the outage is logged: {text}");
    assert!(
        librdkafka.len() <= 60,
        "{} librdkafka lines in 20 s:\n{text}",
        librdkafka.len()
    );
}
