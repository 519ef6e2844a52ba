//! Running cases: a case's trace buffered and decided by the pipeline's own code, checked
//! against what the case expects (`rules test`) or explained (`rules explain`).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::report::{expectation, got, marks_of, show_when, Report};
use super::{load, Case, CaseError, Expected, When};
use crate::buffer::{Buffer, Completion};
use crate::decision::{Decision, DecisionCache};
use crate::offsets::OffsetHold;
use crate::otlp::decode::Decoder;
use crate::rules::{explain, window, Outcome, RuleSet, TraceView};

/// A buffer of its own for one case, with what ingesting into it takes.
fn scratch(completion: Completion) -> (Buffer, DecisionCache, Arc<OffsetHold>) {
    let hold = Arc::new(OffsetHold {
        partition: 0,
        offset: 0,
    });
    (
        Buffer::new(completion),
        DecisionCache::new(16, Duration::from_secs(1)),
        hold,
    )
}

/// Buffers a case's requests as the pipeline would and hands the trace's view to `f`.
pub fn with_trace<R>(
    case: &Case,
    base_dir: &Path,
    f: impl FnOnce(&TraceView<'_>) -> R,
) -> Result<R, String> {
    let requests = case.requests(base_dir)?;
    let (buffer, cache, hold) = scratch(Completion::default());
    let mut decoder = Decoder::new();
    let mut ids = Vec::new();
    for r in &requests {
        decoder
            .decode(r)
            .map_err(|e| format!("the trace does not decode: {e}"))?;
        for g in decoder.groups(r) {
            if !ids.contains(&g.trace_id) {
                ids.push(g.trace_id);
            }
            buffer.ingest(&g, &hold, false, Instant::now(), &cache);
        }
    }
    let id = match ids.as_slice() {
        [id] => *id,
        [] => return Err("the case holds no span with a valid trace id".into()),
        many => match case.trace_id.as_ref().and_then(|_| case.trace_id().ok()) {
            Some(want) if many.contains(&want) => want,
            _ => {
                return Err(format!(
                    "the case holds {} traces; set `trace_id` to pick one",
                    many.len()
                ))
            }
        },
    };
    let mut out = None;
    buffer.take(&id, |id, entry| {
        out = Some(f(&TraceView::new(*id, entry)));
        Decision::Drop { rule: "-".into() }
    });
    out.ok_or_else(|| "the trace was not buffered".into())
}

/// When a case's trace would be decided, its spans arriving one at a time in the order the
/// case gives them: `Some((k, n, name))` when an early rule decides it as its `k`th span of `n`
/// (named `name`) arrives, `None` when only its completion does.
pub fn early_at(
    set: &RuleSet,
    case: &Case,
    base_dir: &Path,
) -> Result<Option<(usize, usize, String)>, String> {
    let requests = case.requests(base_dir)?;
    let (buffer, cache, hold) = scratch(Completion {
        max_spans_per_trace: u32::MAX,
        max_trace_bytes: u32::MAX,
        ..Completion::default()
    });
    let mut decoder = Decoder::new();
    let mut one = Decoder::new();
    // Each span alone, as its own message: the finest arrival order there is.
    let mut singles: Vec<(Vec<u8>, String)> = Vec::new();
    for r in &requests {
        decoder
            .decode(r)
            .map_err(|e| format!("the trace does not decode: {e}"))?;
        for g in decoder.groups(r) {
            for span in g.spans() {
                let name = String::from_utf8_lossy(span.view().name).into_owned();
                let msgs = crate::otlp::encode::encode_trace(
                    std::iter::once((&**span.context, span.field)),
                    usize::MAX,
                );
                singles.extend(msgs.into_iter().map(|m| (m.to_vec(), name.clone())));
            }
        }
    }
    let n = singles.len();
    let now = Instant::now();
    for (k, (msg, name)) in singles.iter().enumerate() {
        one.decode(msg)
            .map_err(|e| format!("the trace does not decode: {e}"))?;
        for g in one.groups(msg) {
            let got = buffer.ingest_with(&g, &hold, false, now, &cache, Some(set));
            if got == crate::buffer::Ingested::Full(crate::decision::Trigger::Early) {
                return Ok(Some((k + 1, n, name.clone())));
            }
        }
    }
    Ok(None)
}

/// Runs one case; `Ok(None)` when it passes, `Ok(Some(why))` when it fails.
fn run_case(set: &RuleSet, case: &Case, base_dir: &Path) -> Result<Option<String>, String> {
    let e = &case.expect;
    if e.rule.is_none()
        && e.outcome.is_none()
        && e.sample_rate.is_none()
        && e.marks.is_none()
        && e.factors.is_none()
        && e.forwarded.is_none()
        && e.trigger.is_none()
    {
        return Err(
            "`expect` needs at least one of rule, outcome, sample_rate, marks, factors, \
             forwarded, trigger"
                .into(),
        );
    }
    let is_factor = |name: &str| {
        set.rules()
            .iter()
            .find(|x| &*x.name == name)
            .map(|x| matches!(x.outcome, Outcome::Factor { .. }))
    };
    if let Some(r) = &e.rule {
        match is_factor(r) {
            None => return Err(format!("`expect.rule`: no rule is named `{r}`")),
            Some(true) => {
                return Err(format!(
                    "`expect.rule`: `{r}` is a factor rule, which decides no trace; expect \
                     `factors: [{r}]` (and the rule that decides)"
                ))
            }
            Some(false) => {}
        }
    }
    for f in e.factors.iter().flatten() {
        match is_factor(f) {
            None => return Err(format!("`expect.factors`: no rule is named `{f}`")),
            Some(false) => {
                return Err(format!(
                    "`expect.factors`: `{f}` is not a factor rule (`outcome: factor`)"
                ))
            }
            Some(true) => {}
        }
    }
    let at = case
        .at
        .as_deref()
        .map(window::instant)
        .transpose()
        .map_err(|e| format!("`at`: {e}"))?;
    if let Some(want) = &e.forwarded {
        let spans = crate::redact::cases::forwarded(set.redaction(), &case.requests(base_dir)?)?;
        let why = crate::redact::cases::check(&spans, want);
        if !why.is_empty() {
            return Ok(Some(format!("forwarded spans:\n{why}")));
        }
    }
    if let Some(want) = e.trigger {
        let at = early_at(set, case, base_dir)?;
        if (want == When::Early) != at.is_some() {
            return Ok(Some(format!(
                "expected: decided {}\ngot:      {}",
                match want {
                    When::Early => "early",
                    When::Complete => "when the trace completes",
                },
                show_when(&at)
            )));
        }
    }
    if e.rule.is_none()
        && e.outcome.is_none()
        && e.sample_rate.is_none()
        && e.marks.is_none()
        && e.factors.is_none()
    {
        return Ok(None);
    }
    with_trace(case, base_dir, |t| {
        let v = explain::case_verdict_at(set, t, case.after, at);
        let rule = &set.rules()[v.rule];
        let factors: Vec<String> = explain::factors(set, t, &v, at)
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        let ok = e.rule.as_deref().is_none_or(|r| r == &*rule.name)
            && e.outcome.is_none_or(|o| (o == Expected::Keep) == v.keep)
            && e.sample_rate.is_none_or(|n| n == v.sample_rate)
            && e.marks.as_ref().is_none_or(|m| *m == marks_of(set, &v))
            && e.factors.as_ref().is_none_or(|f| *f == factors);
        if ok {
            return None;
        }
        let mut why = String::new();
        let _ = writeln!(why, "expected: {}", expectation(e));
        let _ = writeln!(why, "got:      {}", got(set, &v, &factors));
        let _ = writeln!(why, "{}", explain::summary(t));
        if let Some(want) = e.rule.as_deref().filter(|w| *w != &*rule.name) {
            if let Some(w) = set.rules().iter().find(|r| &*r.name == want) {
                let pos = set.rules().iter().position(|r| &*r.name == want);
                if pos.is_some_and(|p| p > v.rule) {
                    let _ = writeln!(
                        why,
                        "rule `{want}` comes after `{}`, which matched first:",
                        rule.name
                    );
                } else {
                    let _ = writeln!(why, "rule `{want}` did not decide it:");
                }
                explain::rule(w, t, 1, &mut why);
            }
        }
        let _ = writeln!(why, "rule `{}` matched ({}):", rule.name, rule.describe());
        explain::rule(rule, t, 1, &mut why);
        Some(why)
    })
}

/// Runs every case of every file against the rule set.
pub fn run(set: &RuleSet, files: &[PathBuf]) -> Report {
    let mut r = Report::default();
    for file in files {
        let _ = writeln!(r.text, "{}", file.display());
        let base = file.parent().unwrap_or(Path::new("."));
        let cases = match load(file) {
            Ok(c) => c,
            Err(e) => {
                r.failed += 1;
                let _ = writeln!(r.text, "  FAIL (file) {e}");
                continue;
            }
        };
        for case in &cases {
            match run_case(set, case, base) {
                Ok(None) => {
                    r.passed += 1;
                    let _ = writeln!(r.text, "  ok   {}", case.name);
                }
                Ok(Some(why)) => {
                    r.failed += 1;
                    let _ = writeln!(r.text, "  FAIL {}", case.name);
                    for line in why.lines() {
                        let _ = writeln!(r.text, "       {line}");
                    }
                }
                Err(e) => {
                    r.failed += 1;
                    let _ = writeln!(r.text, "  FAIL {}: {e}", case.name);
                }
            }
        }
    }
    let _ = writeln!(r.text, "{} passed, {} failed", r.passed, r.failed);
    r
}

/// Explains every case of a file (or the one named `only`).
pub fn explain_file(set: &RuleSet, file: &Path, only: Option<&str>) -> Result<String, CaseError> {
    let cases = load(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = String::new();
    let mut n = 0;
    for case in cases.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
        n += 1;
        let _ = writeln!(out, "case `{}`", case.name);
        let at = match case.at.as_deref().map(window::instant).transpose() {
            Ok(at) => at,
            Err(e) => {
                let _ = writeln!(out, "  `at`: {e}");
                continue;
            }
        };
        match with_trace(case, base, |t| explain::explain_at(set, t, case.after, at)) {
            Ok(text) => {
                out.push_str(&text);
                if set.has_early() {
                    match early_at(set, case, base) {
                        Ok(at) => {
                            let _ = writeln!(out, "  {}", show_when(&at));
                        }
                        Err(e) => {
                            let _ = writeln!(out, "  cannot tell when it is decided: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  cannot build the trace: {e}");
            }
        }
        out.push('\n');
    }
    if n == 0 {
        return Err(CaseError {
            file: file.display().to_string(),
            message: match only {
                Some(o) => format!("no case named `{o}`"),
                None => "no cases".into(),
            },
        });
    }
    Ok(out)
}
