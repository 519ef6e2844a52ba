//! TLS to the broker, with the real binary and a broker of the test's own that accepts only
//! TLS connections: with the broker's CA in `kafka.properties`, every client tailsift makes
//! (consumer, producer, lag, read and head marks) works and every kept trace reaches the
//! output; with another CA, tailsift stays up, unready, and says why.

use crate::fixture as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::broker::Broker;
use common::instance::{start, Spec};
use common::traffic::{self, RULES};
use common::*;

/// A self-signed certificate for 127.0.0.1 and its key, made with the `openssl` command.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the TLS test needs the `openssl` command (.ci/run installs it)");
    assert!(status.success(), "openssl made a certificate");
    (cert, key)
}

fn config_text(broker: &str, input: &str, output: &str, ca: &Path, rules: &Path) -> String {
    format!(
        "kafka:\n  brokers: {broker}\n  input_topics: [{input}]\n  output_topic: {output}\n  group_id: {}\n  commit_interval: 200ms\n  properties:\n    security.protocol: SSL\n    ssl.ca.location: {}\nrules:\n  dir: {}\ncompletion:\n  decision_wait: 1500ms\n  root_grace: 300ms\nmonitoring:\n  lag_interval: 500ms\nhttp:\n  listen: \"{{listen}}\"\nshutdown_timeout: 10s\n",
        unique("tls-group"),
        ca.display(),
        rules.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_every_kept_trace_arrives_and_a_wrong_ca_is_reported_unready() {
    tokio::time::timeout(Duration::from_secs(180), tls())
        .await
        .expect("the TLS test finishes within 3 minutes");
}

async fn tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "broker");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let broker = Broker::start_with(
        dir.path(),
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
    let ca = cert.display().to_string();
    let ssl = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", ca.as_str()),
    ];
    let (input, output) = (unique("in"), unique("out"));
    create_topic_with(&broker.addr, &input, 2, &ssl).await;
    create_topic_with(&broker.addr, &output, 1, &ssl).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);

    let text = config_text(&broker.addr, &input, &output, &cert, rules.path());
    let inst = start(
        dir.path(),
        &text,
        Spec {
            name: "tls",
            instance_id: None,
        },
        &[],
    );
    inst.wait_ready(Duration::from_secs(60)).await;
    let p = producer_with(&broker.addr, &ssl);
    let (run, n) = (11, 200);
    traffic::send_interleaved(&p, &input, run, 0..n, Duration::from_millis(1));

    let expected = traffic::expected(rules.path(), run, 0..n);
    let mut reader = Reader::with(&broker.addr, &output, &ssl);
    let whole = reader.read_until(Duration::from_secs(60), |m| traffic::complete(&expected, m));
    let v = traffic::verdict(&expected, &reader.messages);
    assert!(
        whole,
        "every kept trace whole over TLS: missing {:?}",
        v.missing
    );
    v.assert_promise_kept();
    // The lag comes from a client of its own: it too speaks TLS.
    let lag_seen = eventually(Duration::from_secs(20), || {
        http_get(inst.addr, "/metrics").is_ok_and(|(_, b)| b.contains("tailsift_consumer_lag{"))
    })
    .await;
    assert!(lag_seen, "the lag is measured over TLS");
    assert_eq!(inst.metric("tailsift_lag_query_failures_total", ""), 0.0);

    // The same with a CA that did not sign the broker's certificate: no connection, no crash,
    // unready with the reason, and the log says what failed.
    let wrong = config_text(&broker.addr, &input, &output, &other_ca, rules.path());
    let mut untrusted = start(
        dir.path(),
        &wrong,
        Spec {
            name: "untrusted",
            instance_id: None,
        },
        &[],
    );
    let addr = untrusted.addr;
    let answered = eventually(Duration::from_secs(30), || {
        http_get(addr, "/readyz").is_ok_and(|(s, _)| s == 503)
    })
    .await;
    assert!(answered, "tailsift serves /readyz while it cannot connect");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, why) = http_get(addr, "/readyz").expect("readyz");
    assert_eq!(status, 503, "never ready without a trusted broker: {why}");
    assert!(
        untrusted.child.try_wait().expect("wait").is_none(),
        "tailsift keeps running"
    );
    untrusted.kill9();
    let log = std::fs::read_to_string(dir.path().join("untrusted.log")).unwrap_or_default();
    assert!(
        log.contains("certificate verify failed") || log.contains("SSL handshake failed"),
        "the log says the broker's certificate was not trusted: {}",
        &log[..log.len().min(2000)]
    );
}
