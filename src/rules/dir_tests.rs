//! Reading a rules directory (`dir.rs`): its files, their encodings and errors, and the
//! checks across files (unique names, a closing default rule).

use super::*;

/// A temporary directory holding `files` (name, contents).
fn dir_of(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    dir
}

#[test]
fn a_bom_upper_case_extensions_and_other_files_of_a_directory() {
    let dir = dir_of(&[
        (
            "10-a.YAML",
            "\u{feff}rules:\n  - name: a\n    conditions: trace.error = true\n    outcome: keep\n"
                .as_bytes(),
        ),
        (
            "90-default.Yml",
            b"rules:\n  - name: rest\n    outcome: drop\n",
        ),
        ("README.txt", b"not rules"),
    ]);
    let rules = load_dir(dir.path()).expect("both files read, the BOM skipped");
    let names: Vec<&str> = rules.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["a", "rest"]);
    let skipped = crate::rules::skipped_files(dir.path());
    assert_eq!(skipped, [dir.path().join("README.txt")]);

    let empty = dir_of(&[("rules.json", b"{}")]);
    let errs = load_dir(empty.path()).unwrap_err();
    assert!(
        errs[0]
            .message
            .contains("only files named *.yaml or *.yml are read, not rules.json"),
        "{errs:?}"
    );
}

#[test]
fn a_file_that_is_not_utf8_does_not_hide_the_other_files_errors() {
    let dir = dir_of(&[
        (
            "10-latin1.yaml",
            b"rules:\n  - name: caf\xe9\n    outcome: keep\n",
        ),
        ("20-b.yaml", b"rules:\n  - name: b\n    outcome: kep\n"),
    ]);
    let errs = load_dir(dir.path()).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].file.ends_with("10-latin1.yaml"), "{errs:?}");
    assert_eq!(errs[0].line, 2);
    assert!(errs[0].message.contains("not UTF-8 (byte 0xe9"), "{errs:?}");
    assert!(errs[1].file.ends_with("20-b.yaml"), "{errs:?}");
    assert!(errs[1].message.contains("did you mean `keep`"), "{errs:?}");
}

#[test]
fn a_missing_rules_directory_is_named() {
    let errs = load_dir(std::path::Path::new("/nonexistent/rules")).unwrap_err();
    let msg = RulesError(errs).to_string();
    assert!(
        msg.starts_with("/nonexistent/rules: rule -: rules.dir: cannot read the rules directory"),
        "{msg}"
    );
}

#[test]
fn every_file_of_a_directory_is_checked() {
    let dir = dir_of(&[
        ("10-a.yaml", b"rules:\n  - name: a\n    outcome: kep\n"),
        (
            "20-b.yaml",
            b"rules:\n  - name: b\n    conditions: span.x = 1\n    outcome: keep\n",
        ),
        (".hidden.yaml", b"not: rules"),
    ]);
    let errs = load_dir(dir.path()).unwrap_err();
    let files: Vec<_> = errs
        .iter()
        .map(|e| e.file.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(files, ["10-a.yaml", "20-b.yaml"], "{errs:?}");
    assert!(errs[0].message.contains("did you mean `keep`"), "{errs:?}");
}

#[test]
fn a_rule_set_needs_unique_names_and_a_closing_default() {
    let r = |name: &str, cond: bool| {
        let c = if cond {
            "    conditions: trace.error = true\n"
        } else {
            ""
        };
        parse_file(
            "f.yaml",
            &format!("rules:\n  - name: {name}\n{c}    outcome: keep\n"),
        )
        .unwrap()
        .remove(0)
    };
    let err = RuleSet::new(vec![r("a", true)], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the last rule must be the default"), "{err}");
    let err = RuleSet::new(vec![r("a", false), r("a", false)], None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unique across all rule files; `a` is first defined at f.yaml:2"),
        "{err}"
    );
    assert!(RuleSet::new(vec![r("a", true), r("b", false)], None).is_ok());
    // A rate limit lets traces fall through: it cannot close the set.
    let limited = parse_file(
        "f.yaml",
        "rules:\n  - name: limited\n    outcome: rate_limit\n    traces_per_second: 5\n",
    )
    .unwrap();
    let err = RuleSet::new(limited, None).unwrap_err().to_string();
    assert!(
        err.contains("f.yaml:2: rule `limited`: outcome: the default rule cannot be a rate_limit"),
        "{err}"
    );
}
