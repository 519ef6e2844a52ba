//! `tailsift rules check/test/explain` as a user runs them, on the repository's rules and
//! their case files (so CI runs every case of `rules/cases/`), and on broken input.

use std::path::Path;
use std::process::{Command, Output};

fn tailsift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run tailsift")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn case_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir("rules/cases")
        .expect("rules/cases")
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_rule_file_has_a_case_file() {
    for rule_file in tailsift::rules::rule_files(Path::new("rules")).expect("rules") {
        let name = rule_file.file_name().expect("name").to_string_lossy();
        assert!(
            Path::new("rules/cases").join(&*name).is_file(),
            "rules/{name} has no rules/cases/{name}"
        );
    }
}

#[test]
fn the_language_reference_rules_pass_their_cases() {
    let mut files: Vec<String> = std::fs::read_dir("rules/cases/language")
        .expect("rules/cases/language")
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut args = vec!["rules", "test", "rules/language"];
    args.extend(files.iter().map(String::as_str));
    let out = tailsift(&args);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.trim_end().ends_with(" passed, 0 failed"), "{t}");
    // Every rule of the reference is the expected rule (or, for a factor rule, one of the
    // expected factors) of at least one case.
    let rules = tailsift::rules::RuleSet::load(Path::new("rules/language"), None).expect("rules");
    let cases: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("case file"))
        .collect();
    for r in rules.rules() {
        let factor = matches!(r.outcome, tailsift::rules::Outcome::Factor { .. });
        let expected = if factor {
            cases.contains(&format!("factors: [{}]", r.name))
        } else {
            cases.contains(&format!("rule: {}", r.name))
        };
        assert!(expected, "no case expects rule `{}`", r.name);
    }
    let out = tailsift(&["rules", "check", "--strict", "rules/language"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // Where each time-boxed rule stands, one line each.
    assert!(
        t.contains(
            "time-boxed: rule `debug-payment` (rules/language/30-time-boxed.yaml:7) is not active yet: from 2099-06-01T14:00:00Z until 2099-06-01T15:00:00Z\n"
        ),
        "{t}"
    );
    assert_eq!(t.matches("time-boxed: rule").count(), 2, "{t}");
}

#[test]
fn the_example_rules_pass_every_case() {
    let files = case_files();
    let mut args = vec!["rules", "test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = tailsift(&args);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let summary = t.lines().last().expect("summary line");
    let passed: usize = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("N passed");
    assert!(passed >= 20, "{summary}");
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
    // Every rule of the example set is the expected rule of at least one case.
    let rules = tailsift::rules::RuleSet::load(Path::new("rules"), None).expect("rules");
    let cases: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("case file"))
        .collect();
    for r in rules.rules() {
        assert!(
            cases.contains(&format!("rule: {}", r.name)),
            "no case expects rule `{}`",
            r.name
        );
    }
}

#[test]
fn a_failing_case_says_which_rule_matched_instead_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: probe expected as error\n    expect: { rule: errors, outcome: keep }\n    spans:\n      - { service: gateway, name: GET /healthz, attributes: { http.route: /healthz } }\n  - name: fine\n    expect: { outcome: drop }\n    spans:\n      - { service: gateway, name: GET /healthz, attributes: { http.route: /healthz } }\n",
    )
    .expect("write");
    let out = tailsift(&["rules", "test", "rules", &cases.display().to_string()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("  ok   fine"), "{t}");
    assert!(t.contains("FAIL probe expected as error"), "{t}");
    assert!(
        t.contains("got:      rule `drop-health-checks`, drop"),
        "{t}"
    );
    assert!(t.contains("✗ trace.error = true   (is false)"), "{t}");
    assert!(
        t.contains("✓ span.attr.http.route in [/healthz, /readyz, /livez, /health]"),
        "{t}"
    );
    assert!(t.trim_end().ends_with("1 passed, 1 failed"), "{t}");
}

#[test]
fn check_reports_every_error_with_file_line_rule_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: slow\n    conditions: trace.durration > 2s\n    outcome: keep\n  - name: limited\n    outcome: rate_limit\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        "rules:\n  - name: rest\n    outcome: keep\n    sample_rate: ten\n",
    )
    .expect("write");
    let out = tailsift(&["rules", "check", &dir.path().display().to_string()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    assert!(
        t.contains(&format!("{a}:3: rule `slow`: conditions: unknown field `trace.durration`, did you mean `trace.duration`?")),
        "{t}"
    );
    assert!(
        t.contains(&format!("{a}:5: rule `limited`: traces_per_second:")),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "{b}:4: rule `rest`: sample_rate: expected a whole number >= 1"
        )),
        "{t}"
    );
    assert!(t.contains("3 error(s)"), "{t}");
}

#[test]
fn explain_walks_the_rules_up_to_the_deciding_one() {
    let out = tailsift(&[
        "rules",
        "explain",
        "rules",
        "rules/cases/30-latency.yaml",
        "--case",
        "a slow payment provider call is kept whatever the route",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("rule `slow-checkout`"), "{t}");
    assert!(
        t.contains("✓ span: one span satisfies every condition: `POST /charge`"),
        "{t}"
    );
    assert!(t.contains("=> matched: KEEP (sample rate 1)"), "{t}");
    assert!(!t.contains("rule `baseline`"), "{t}");
    let out = tailsift(&[
        "rules",
        "explain",
        "rules",
        "rules/cases/30-latency.yaml",
        "--case",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no case named `nope`"));
}

/// Nine levels of nine aliases each: 9^9 nodes once expanded, from 500 bytes.
fn alias_bomb() -> String {
    let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

#[test]
fn an_alias_bomb_under_a_memory_limit_is_refused_at_once_with_its_line() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bomb.yaml"), alias_bomb()).expect("write");
    std::fs::write(
        dir.path().join("rest.yaml"),
        "rules:\n  - name: rest\n    outcome: drop\n",
    )
    .expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailsift"));
    cmd.args(["rules", "check", &dir.path().display().to_string()])
        .env("RUST_LOG", "off");
    // SAFETY: setrlimit is async-signal-safe; it only limits the child about to exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 512 << 20,
                rlim_max: 512 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run tailsift");
    let took = started.elapsed();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "an error, not an abort: {t}");
    // Expanded, the bomb would take minutes or exhaust the 512 MiB: refused at once means in
    // well under that, even on a loaded machine (1 s failed once with two cores busy).
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}: {t}"
    );
    let bomb = dir.path().join("bomb.yaml").display().to_string();
    assert!(t.contains(&format!("{bomb}:")), "{t}");
    assert!(t.contains("aliases (`*name`) expand to more than"), "{t}");
    assert!(
        !t.contains("panicked") && !t.contains("memory allocation"),
        "{t}"
    );
}

#[test]
fn check_notes_files_it_does_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("10-a.YAML"),
        "rules:\n  - name: a\n    outcome: keep\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("20-b.json"), "{}").expect("write");
    let out = tailsift(&["rules", "check", &dir.path().display().to_string()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("1 rules OK"), "{t}");
    assert!(
        t.contains("20-b.json is not read: rule files are named *.yaml or *.yml"),
        "{t}"
    );
}

#[test]
fn check_names_the_redaction_file_it_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("10-a.yaml"),
        "rules:\n  - name: a\n    outcome: keep\n",
    )
    .expect("write");
    // The repository's example, as a user would copy it beside their rules.
    std::fs::copy(
        "rules/redaction/redaction.yaml",
        dir.path().join("redaction.yaml"),
    )
    .expect("copy the example");
    let out = Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(["rules", "check", &dir.path().display().to_string()])
        .env("RUST_LOG", "off")
        .env("TAILSIFT_HASH_KEY", "0123456789abcdef-ci-key")
        .output()
        .expect("run tailsift");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("1 rules OK"), "{t}");
    let file = dir.path().join("redaction.yaml");
    assert!(
        t.contains(&format!("{}: 5 entries, 1 allowlists OK\n", file.display())),
        "{t}"
    );
}

/// Runs tailsift with its stdout a pipe whose reader has already gone (`... | head -1`).
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_tailsift"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run tailsift")
}

#[test]
fn a_closed_pipe_ends_explain_and_the_demo_without_a_panic() {
    let out = with_closed_stdout(&["rules", "explain", "rules", "rules/cases/30-latency.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");

    let out = with_closed_stdout(&[
        "demo",
        "--duration",
        "30",
        "--rate",
        "50",
        "--listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn the_demo_refuses_a_rules_directory_that_does_not_exist() {
    let out = tailsift(&[
        "demo",
        "--rules",
        "/nonexistent/rules",
        "--duration",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("invalid rules in /nonexistent/rules")
            && t.contains("cannot read the rules directory"),
        "{t}"
    );
}

#[test]
fn explain_honours_after_as_test_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: the third explosion in a second\n    trace_id: 4bf92f3577b34da6a3ffffffffffffff\n    after: 2\n    expect: { rule: span-explosion-drop }\n    spans:\n      - { name: batch, count: 2100 }\n",
    )
    .expect("write");
    let out = tailsift(&["rules", "test", "rules", &cases.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tailsift(&["rules", "explain", "rules", &cases.display().to_string()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("rule `span-explosion-sample`")
            && t.contains("=> conditions held and the sample picked it, but over max_traces_per_second: next rule"),
        "{t}"
    );
    assert!(t.contains("rule `span-explosion-drop`"), "{t}");
    assert!(t.contains("=> matched: DROP"), "{t}");
}

#[test]
fn check_warns_about_shadowed_rules_and_strict_fails_on_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n  - name: payment-errors\n    conditions: [trace.error = true, span.service = payment]\n    outcome: drop\n  - name: not-payment\n    conditions: span.service != payment\n    outcome: drop\n  - name: rest\n    outcome: keep\n",
    )
    .expect("write");
    let d = dir.path().display().to_string();
    let a = dir.path().join("a.yaml").display().to_string();
    let out = tailsift(&["rules", "check", &d]);
    let t = text(&out);
    assert!(out.status.success(), "warnings do not fail a check: {t}");
    assert!(t.contains(&format!("warning: {a}:5: rule `payment-errors`: conditions: this rule never decides a trace: rule `errors` ({a}:2) comes first")), "{t}");
    assert!(
        t.contains(&format!(
            "warning: {a}:9: rule `not-payment`: conditions: `span.service != payment` on its own"
        )),
        "{t}"
    );
    assert!(t.contains("4 rules OK, 2 warning(s)"), "{t}");
    let strict = tailsift(&["rules", "check", "--strict", &d]);
    assert!(!strict.status.success(), "{}", text(&strict));
    let clean = tailsift(&["rules", "check", "--strict", "rules"]);
    assert!(clean.status.success(), "{}", text(&clean));
}

#[test]
fn a_duplicate_rule_name_points_at_the_first_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        "rules:\n  - name: errors\n    outcome: keep\n",
    )
    .expect("write");
    let out = tailsift(&["rules", "check", &dir.path().display().to_string()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let a = dir.path().join("a.yaml").display().to_string();
    assert!(
        t.contains(&format!(
            "rule names must be unique across all rule files; `errors` is first defined at {a}:2"
        )),
        "{t}"
    );
}

#[test]
fn test_checks_the_marks_a_rule_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: wrong reason\n    trace_id: 4bf92f3577b34da6a3ffffffffffffff\n    expect: { marks: { sampling.reason: loop } }\n    spans:\n      - { name: batch, count: 2100 }\n",
    )
    .expect("write");
    let out = tailsift(&["rules", "test", "rules", &cases.display().to_string()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("expected: marks {sampling.reason: \"loop\"}")
            && t.contains("got:      rule `span-explosion-sample`, keep, sample rate 10, marks {sampling.reason: \"span-explosion\"}"),
        "{t}"
    );
}
