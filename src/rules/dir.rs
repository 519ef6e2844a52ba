//! A rules directory: which of its files are rule files (`*.yaml`, `*.yml`; hidden files
//! skipped), reading them whole, parsing them together so every file's errors are reported,
//! the checks only the whole set can answer (unique names, a closing default), and the
//! version string of the directory's content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::file::parse_file;
use super::{Outcome, Rule, RuleError};

/// Whether a file name is a rule file's: `*.yaml` or `*.yml`, in any case.
fn is_rule_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// The visible files of `dir`, sorted. Hidden files (such as the `..data` entries of a
/// Kubernetes ConfigMap volume) are skipped; symlinks are followed.
fn visible_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The rule files of `dir`: `*.yaml`/`*.yml` (any case), in lexical order.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(visible_files(dir)?
        .into_iter()
        .filter(|p| is_rule_file(p))
        .collect())
}

/// The visible files of `dir` that are not rule files (and so are not read), for warnings.
pub fn skipped_files(dir: &Path) -> Vec<PathBuf> {
    visible_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !is_rule_file(p))
        .collect()
}

/// A rule file as read: its bytes, or why it could not be read.
pub type ReadFile = (PathBuf, Result<Vec<u8>, String>);

/// Reads the rule files of a directory. Only a directory that cannot be listed is an error
/// here; a file that cannot be read is reported with the others' errors by [`parse_files`].
pub fn read_dir(dir: &Path) -> Result<Vec<ReadFile>, Vec<RuleError>> {
    let files = rule_files(dir).map_err(|e| {
        vec![RuleError {
            file: dir.display().to_string(),
            line: 0,
            rule: "-".into(),
            field: "rules.dir".into(),
            message: format!("cannot read the rules directory: {e}"),
        }]
    })?;
    Ok(files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).map_err(|e| format!("cannot read the file: {e}"));
            (p, bytes)
        })
        .collect())
}

/// A file's text, or an error naming the line of its first byte that is not UTF-8.
fn text_of(file: &str, bytes: &Result<Vec<u8>, String>) -> Result<String, RuleError> {
    let err = |line: usize, message: String| RuleError {
        file: file.to_string(),
        line,
        rule: "-".into(),
        field: "-".into(),
        message,
    };
    let bytes = bytes.as_ref().map_err(|e| err(0, e.clone()))?;
    String::from_utf8(bytes.clone()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        err(
            line,
            format!(
                "not UTF-8 (byte 0x{:02x} at offset {at}): rule files are UTF-8 text",
                bytes[at]
            ),
        )
    })
}

/// Compiles the read files of a directory and checks the whole set. Every file is checked,
/// whatever the others' errors.
pub fn parse_files(dir: &Path, files: &[ReadFile]) -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (path, bytes) in files {
        if crate::redact::is_redaction_file(path) {
            continue; // not rules: see crate::redact
        }
        let name = path.display().to_string();
        match text_of(&name, bytes).map(|text| parse_file(&name, &text)) {
            Ok(Ok(r)) => rules.extend(r),
            Ok(Err(e)) => errors.extend(e),
            Err(e) => errors.push(e),
        }
    }
    // With rules left out for their errors, only the name check still says something true
    // about the set.
    let file_errors = !errors.is_empty();
    errors.extend(
        check_set(&rules, dir)
            .into_iter()
            .filter(|e| !file_errors || e.field == "name"),
    );
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Loads every rule file of `dir`, in lexical order, and checks the whole set.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, Vec<RuleError>> {
    parse_files(dir, &read_dir(dir)?)
}

/// A short hash of a rules directory's content (file names and bytes): the rules' version.
pub fn version(files: &[ReadFile]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (p, bytes) in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let bytes = match bytes {
            Ok(b) => b.as_slice(),
            Err(e) => e.as_bytes(),
        };
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("{:012x}", h.digest() >> 16)
}

/// Checks what no single file can: unique names, and a default rule closing the set.
pub fn check_set(rules: &[Rule], dir: &Path) -> Vec<RuleError> {
    let mut errors = Vec::new();
    let mut seen: HashMap<&str, &Rule> = HashMap::new();
    for r in rules {
        if let Some(first) = seen.get(&*r.name) {
            errors.push(RuleError {
                file: r.file.clone(),
                line: r.line,
                rule: format!("`{}`", r.name),
                field: "name".into(),
                message: format!(
                    "rule names must be unique across all rule files; `{}` is first defined at \
                     {}:{}",
                    r.name, first.file, first.line
                ),
            });
        } else {
            seen.insert(&r.name, r);
        }
    }
    match rules.last() {
        None => {
            let skipped: Vec<String> = skipped_files(dir)
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            errors.push(RuleError {
                file: dir.display().to_string(),
                line: 0,
                rule: "-".into(),
                field: "-".into(),
                message: format!(
                    "no rules found: add at least a default rule (one without conditions){}",
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; only files named *.yaml or *.yml are read, not {}",
                            skipped.join(", ")
                        )
                    }
                ),
            })
        }
        Some(last) => {
            // What the default rule (the last) may not be, and which field says so.
            let problem = if last.condition.is_some() {
                Some((
                    "conditions",
                    "the last rule must be the default: a rule without conditions, so that \
                     every trace gets a deliberate outcome",
                ))
            } else if matches!(last.outcome, Outcome::RateLimit { .. }) {
                Some((
                    "outcome",
                    "the default rule cannot be a rate_limit: traces over the limit fall \
                     through to the next rule, and there is none; use keep, drop or \
                     throughput",
                ))
            } else if matches!(last.outcome, Outcome::Factor { .. }) {
                Some((
                    "outcome",
                    "the default rule cannot be a factor: a factor decides no trace, it \
                     multiplies the rate of the rule that decides next, and there is none; \
                     use keep, drop or throughput",
                ))
            } else if last.active.is_some() {
                Some((
                    "active_until",
                    "the default rule cannot be time-boxed (`active_from`, `active_until`): \
                     outside its window no rule would decide a trace",
                ))
            } else if last.max_per_second.is_some() {
                Some((
                    "max_traces_per_second",
                    "the default rule cannot have `max_traces_per_second`: traces over it fall \
                     through to the next rule, and there is none; put the capped rule before \
                     a default that says what happens to the rest",
                ))
            } else {
                None
            };
            if let Some((field, message)) = problem {
                errors.push(RuleError {
                    file: last.file.clone(),
                    line: last.line,
                    rule: format!("`{}`", last.name),
                    field: field.into(),
                    message: message.into(),
                });
            }
        }
    }
    errors
}
