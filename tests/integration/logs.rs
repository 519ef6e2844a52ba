//! Logs of the binary on a real broker: text by default, JSON when the config says so, and no
//! line per span at info level.

use crate::fixture as common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tailsift run` on a config with `extra` appended; stderr goes to a file.
fn start(input: &str, output: &str, extra: &str) -> (Killed, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tailsift.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {}\n  input_topics: [{input}]\n  output_topic: {output}\n  group_id: {}\n\
             rules:\n  dir: {}/rules\ncompletion:\n  decision_wait: 1s\n  root_grace: 200ms\n\
             http:\n  listen: 127.0.0.1:0\n{extra}",
            brokers(),
            unique("group"),
            env!("CARGO_MANIFEST_DIR"),
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("TAILSIFT_LOG_FORMAT")
        .env_remove("TAILSIFT_BROKERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tailsift");
    (Killed(child), dir)
}

fn log_text(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_text_by_default_json_by_config_and_never_one_line_per_span() {
    let (input, output) = (unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;

    let (text_run, text_dir) = start(&input, &output, "");
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

    let (_json_run, json_dir) = start(&input, &output, "log:\n  format: json\n");
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
    // Nothing listens there: every client of tailsift fails to connect, again and again.
    let dead = common::instance::free_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tailsift.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {dead}\n  input_topics: [in]\n  output_topic: out\n\
             rules:\n  dir: {}/rules\nmonitoring:\n  lag_interval: 500ms\nhttp:\n  listen: 127.0.0.1:0\n",
            env!("CARGO_MANIFEST_DIR"),
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("TAILSIFT_LOG_FORMAT")
        .env_remove("TAILSIFT_BROKERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tailsift");
    let _run = Killed(child);
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
