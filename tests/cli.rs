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
