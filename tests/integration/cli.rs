//! The binary's offline subcommands, run as a user runs them.

use std::process::Command;

fn tailsift(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(args)
        .env_remove("TAILSIFT_BROKERS")
        .env_remove("TAILSIFT_GROUP_INSTANCE_ID")
        .output()
        .expect("run tailsift");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_check_accepts_the_example_and_names_the_bad_key_of_a_broken_file() {
    let (ok, text) = tailsift(&["config", "check", "tailsift.example.yaml"]);
    assert!(ok, "{text}");
    assert!(text.contains("tailsift.example.yaml: OK"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\ncompletion:\n  decison_wait: 5s\n",
    )
    .unwrap();
    let (ok, text) = tailsift(&["config", "check", bad.to_str().unwrap()]);
    assert!(!ok, "a misspelt key must fail: {text}");
    assert!(text.contains("decison_wait"), "{text}");

    let (ok, text) = tailsift(&["config", "check", "does-not-exist.yaml"]);
    assert!(!ok);
    assert!(text.contains("cannot read does-not-exist.yaml"), "{text}");
}

#[test]
fn config_check_loads_the_rules_directory_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = |rules: &str| {
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!("kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\nrules:\n  dir: {rules}\n"),
        )
        .unwrap();
        path.display().to_string()
    };
    let (ok, text) = tailsift(&["config", "check", &config("/nonexistent/rules")]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("`rules.dir` (/nonexistent/rules): the rules do not load")
            && text.contains("cannot read the rules directory"),
        "{text}"
    );

    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("a.yaml"),
        "rules:\n  - name: a\n    conditions:\n    outcome: keep\n",
    )
    .unwrap();
    let (ok, text) = tailsift(&["config", "check", &config(&rules.display().to_string())]);
    assert!(!ok, "{text}");
    assert!(text.contains("a.yaml:3: rule `a`: conditions:"), "{text}");

    std::fs::write(
        rules.join("a.yaml"),
        "rules:\n  - name: a\n    outcome: keep\n",
    )
    .unwrap();
    let (ok, text) = tailsift(&["config", "check", &config(&rules.display().to_string())]);
    assert!(ok, "{text}");
    assert!(text.contains(": OK (1 rules from"), "{text}");
}

#[test]
fn config_errors_name_the_line_and_key_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "completion:\n  max_spans_per_trace: -1\n",
            "c.yaml:6:24: `completion.max_spans_per_trace`: expected a whole number from 0 to 4294967295",
        ),
        (
            "buffer:\n  max_bytes: [1]\n",
            "`buffer.max_bytes`: expected a size such as 512MiB, or a number of bytes",
        ),
        (
            "completion:\n  root_grace: 2m\n",
            "`completion.root_grace`: 2m is longer than completion.max_trace_age (1m)",
        ),
        ("decision_cache:\n  ttl: 0s\n", "`decision_cache.ttl`: must be above 0"),
        ("kafka:\n  brokers: again\n", "`kafka` is given twice in the same map"),
    ];
    for (extra, want) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!(
                "kafka:\n  brokers: b:9092\n  input_topics: [in]\n  output_topic: out\n{extra}"
            ),
        )
        .unwrap();
        let (ok, text) = tailsift(&["config", "check", path.to_str().unwrap()]);
        assert!(!ok, "{extra}: {text}");
        assert!(text.contains(want), "{extra}: {text}");
        for internal in ["untagged", "u32", "did not match any variant"] {
            assert!(!text.contains(internal), "{extra}: {text}");
        }
    }
}
