//! Hot reload through the running pipeline on a real broker, with the rules directory laid out
//! as Kubernetes mounts a ConfigMap: files are symlinks through `..data`, which an update
//! replaces atomically. A valid change is swapped in; a bad one keeps the old rules.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use crate::fixture::*;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;

const MS: u64 = 1_000_000;

/// Publishes `files` as a new ConfigMap version in `dir`: a fresh `..<version>` directory, then
/// `..data` swapped to it with a rename, and a top-level symlink per file.
fn publish(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let real = dir.join(format!("..{version}"));
    std::fs::create_dir(&real).expect("version dir");
    for (name, text) in files {
        std::fs::write(real.join(name), text).expect("write");
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("file symlink");
        }
    }
}

fn info_version(body: &str) -> Option<String> {
    let line = body
        .lines()
        .find(|l| l.starts_with("tailsift_rules_info{"))?;
    let v = line.split("version=\"").nth(1)?;
    Some(v.split('"').next()?.to_string())
}

const DROP_ALL: &str = "rules:\n  - name: reload-drop-all\n    outcome: drop\n";
const KEEP_ALL: &str = "rules:\n  - name: reload-keep-all\n    outcome: keep\n";
const BAD: &str =
    "rules:\n  - name: reload-bad\n    conditions: span.nmae = x\n    outcome: keep\n";

/// 500 bytes of nested aliases: 9^9 nodes once expanded (it aborted the process before).
fn alias_bomb() -> String {
    let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_is_swapped_in_and_a_bad_one_keeps_the_old_rules() {
    // The reload metrics are process-wide, and SIGHUP reaches every pipeline of the process.
    own_process!();
    let dir = tempfile::tempdir().expect("tempdir");
    publish(dir.path(), "v1", &[("rules.yaml", DROP_ALL)]);
    // The file watch must do it: no periodic check.
    let pipe = pipeline_on(dir.path())
        .config(|c| c.rules.poll_interval = Duration::ZERO)
        .start()
        .await;
    let v1 = info_version(&pipe.scrape()).expect("version exposed");
    assert_eq!(
        pipe.scrape().matches("tailsift_rules_info{").count(),
        1,
        "one series"
    );

    let p = producer();
    let send_one = |n: u64| {
        let t = trace_id(9_000_000 + n);
        let s = span(
            t,
            1,
            None,
            "GET /",
            1_700_000_000_000 * MS,
            1_700_000_000_005 * MS,
        );
        send(
            &p,
            &pipe.input,
            &TraceId(t).to_hex(),
            &request("gateway", vec![s]),
        );
        flush(&p);
        TraceId(t).to_hex()
    };
    send_one(1);
    assert!(eventually(Duration::from_secs(20), || pipe.dropped() == 1).await);

    // A valid update.
    publish(dir.path(), "v2", &[("rules.yaml", KEEP_ALL)]);
    assert!(
        eventually(Duration::from_secs(20), || {
            let body = pipe.scrape();
            metric(&body, "tailsift_rules_reloads_total", "result=\"success\"") == Some(1.0)
                && info_version(&body).is_some_and(|v| v != v1)
        })
        .await,
        "the update is loaded: {}",
        pipe.scrape()
    );
    let v2 = info_version(&pipe.scrape()).expect("version");
    let kept = send_one(2);
    let mut reader = pipe.reader();
    assert!(
        reader.read_key(Duration::from_secs(20), &kept),
        "the new rules keep the trace"
    );
    assert_eq!(
        reader.messages[0].headers["tailsift.rule"],
        "reload-keep-all"
    );

    // A bad update (a mistake and an alias bomb): the old rules stay, the failure is
    // counted, the version does not move, the process lives.
    let bomb = alias_bomb();
    publish(
        dir.path(),
        "v3",
        &[
            ("rules.yaml", KEEP_ALL),
            ("zz-bad.yaml", BAD),
            ("zz-bomb.yaml", &bomb),
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &pipe.scrape(),
            "tailsift_rules_reloads_total",
            "result=\"failure\""
        ) == Some(1.0))
        .await,
        "the bad update is counted"
    );
    assert_eq!(info_version(&pipe.scrape()).as_deref(), Some(v2.as_str()));
    let still = send_one(3);
    assert!(
        reader.read_key(Duration::from_secs(20), &still),
        "the old rules still run"
    );
    assert_eq!(
        reader.messages.last().expect("message").headers["tailsift.rule"],
        "reload-keep-all"
    );

    // SIGHUP reloads even when nothing changed (here: the bad file is still there).
    let failures = |b: &str| metric(b, "tailsift_rules_reloads_total", "result=\"failure\"");
    // SAFETY: sends a signal to this process, which handles SIGHUP (the reloader listens).
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
    assert!(
        eventually(Duration::from_secs(10), || failures(&pipe.scrape())
            == Some(2.0))
        .await,
        "SIGHUP re-reads the directory"
    );
    pipe.shutdown().await;
}
