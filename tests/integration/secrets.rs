//! Secrets in the config, with the real binary: `${env:..}` and `${file:..}` property values are
//! resolved at load, and the secret never shows in the logs or on the HTTP port.

use std::path::Path;
use std::time::Duration;

use crate::fixture::instance::{launch, log_of, RunConfig};
use crate::fixture::*;

const SECRET_ENV: &str = "correct-horse-battery-staple";
const SECRET_FILE: &str = "tr0ub4dor-and-3";

/// A SASL config whose password comes from `${env:..}`, the producer's from `${file:..}`.
fn config(rules: &Path, secret_file: &Path) -> RunConfig {
    RunConfig::new(&unique("in"), &unique("out"), rules)
        .property("security.protocol", "SASL_PLAINTEXT")
        .property("sasl.mechanism", "PLAIN")
        .property("sasl.username", "tailsift")
        .property("sasl.password", "${env:TAILSIFT_TEST_SASL_PASSWORD}")
        .producer_property(
            "sasl.password",
            &format!("${{file:{}}}", secret_file.display()),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_env_and_file_are_used_but_never_logged_or_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_dir(&[("r.yaml", KEEP_ALL)]);
    let secret_file = dir.path().join("password");
    std::fs::write(&secret_file, format!("{SECRET_FILE}\n")).expect("write secret");
    let inst = launch(dir.path(), "secret", &config(rules.path(), &secret_file))
        .env("TAILSIFT_TEST_SASL_PASSWORD", SECRET_ENV)
        .start();
    // The broker speaks no SASL: the clients fail to authenticate and keep retrying, while the
    // process and its HTTP port run.
    let addr = inst.addr;
    assert!(
        eventually(Duration::from_secs(30), || http_get(addr, "/healthz")
            .is_ok_and(|(s, _)| s == 200))
        .await,
        "tailsift runs with a SASL config"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/config",
        "/debug/config",
        "/",
    ] {
        let (_, body) = http_get(addr, path).expect("http");
        for secret in [SECRET_ENV, SECRET_FILE, "sasl.password"] {
            assert!(!body.contains(secret), "{path} exposes {secret:?}");
        }
    }
    drop(inst);
    let log = log_of(dir.path(), "secret");
    assert!(
        log.contains("tailsift running") && log.contains("<redacted>"),
        "the config is logged, redacted: {log}"
    );
    assert!(
        log.contains("SASL_PLAINTEXT"),
        "non-secret settings are logged"
    );
    for secret in [SECRET_ENV, SECRET_FILE] {
        assert!(!log.contains(secret), "the log leaks {secret:?}");
    }
}

#[test]
fn config_check_names_a_missing_secret_without_printing_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.yaml");
    let text = config(dir.path(), &dir.path().join("no-such-file"))
        .yaml()
        .replace("{listen}", "127.0.0.1:0");
    std::fs::write(&path, &text).expect("write");
    let run = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tailsift"));
        c.args(["config", "check"]).arg(&path);
        c.env_remove("TAILSIFT_TEST_SASL_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(&[]);
    assert!(!ok);
    assert!(
        text.contains("kafka.properties") && text.contains("TAILSIFT_TEST_SASL_PASSWORD"),
        "{text}"
    );
    let (ok, text) = run(&[("TAILSIFT_TEST_SASL_PASSWORD", SECRET_ENV)]);
    assert!(!ok, "the secret file is missing");
    assert!(
        text.contains("kafka.producer_properties") && text.contains("cannot read secret file"),
        "{text}"
    );
    assert!(!text.contains(SECRET_ENV), "{text}");
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_scram_configs_are_accepted_by_the_kafka_clients() {
    // The test broker speaks neither TLS nor SASL: what is checked is that librdkafka was
    // built with TLS and SCRAM (no "not supported" at client creation) and tailsift runs on.
    for (protocol, mechanism) in [("SASL_SSL", "SCRAM-SHA-512"), ("SSL", "PLAIN")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = rules_dir(&[("r.yaml", KEEP_ALL)]);
        let config = RunConfig::new(&unique("in"), &unique("out"), rules.path())
            .property("security.protocol", protocol)
            .property("sasl.mechanism", mechanism)
            .property("sasl.username", "tailsift")
            .property("sasl.password", "${env:TAILSIFT_TEST_SASL_PASSWORD}")
            .property("ssl.endpoint.identification.algorithm", "none");
        let mut inst = launch(dir.path(), "tls", &config)
            .env("TAILSIFT_TEST_SASL_PASSWORD", SECRET_ENV)
            .start();
        let addr = inst.addr;
        let up = eventually(Duration::from_secs(30), || {
            http_get(addr, "/healthz").is_ok_and(|(s, _)| s == 200)
        })
        .await;
        let running = inst.is_running();
        drop(inst);
        let log = log_of(dir.path(), "tls");
        assert!(
            up && running,
            "{protocol}/{mechanism}: tailsift starts: {log}"
        );
        assert!(
            !log.contains("not supported"),
            "{protocol}/{mechanism}: {log}"
        );
        assert!(!log.contains(SECRET_ENV), "the log leaks the password");
    }
}

#[cfg(not(feature = "tls"))]
#[test]
fn without_the_tls_feature_a_tls_config_fails_at_start_saying_how_to_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.yaml");
    let text = format!(
        "kafka:\n  brokers: {}\n  input_topics: [i]\n  output_topic: o\n  properties:\n    security.protocol: SASL_SSL\n    sasl.mechanism: SCRAM-SHA-512\nrules:\n  dir: rules\nhttp:\n  listen: 127.0.0.1:0\n",
        brokers()
    );
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("TAILSIFT_BROKERS")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--features tls"), "{err}");
}
