//! One rule file: YAML in, compiled rules out. Every mistake of the file is reported, each
//! with its file, line, rule and field, and what would have been accepted. Reading a whole
//! directory of them is `dir`'s job.

use std::time::Duration;

use super::expr::{self, unknown};
use super::yaml::{self, Kind, Node};
use super::{DynamicSpec, Outcome, Rule, RuleError, ThroughputSpec};

const RULE_KEYS: [&str; 19] = [
    "name",
    "description",
    "conditions",
    "outcome",
    "sample_rate",
    "traces_per_second",
    "keys",
    "window",
    "max_keys",
    "max_traces_per_second",
    "marks",
    "goal_sample_rate",
    "active_from",
    "active_until",
    "decay_to_sample_rate",
    "factor",
    "min_traces",
    "min_traces_window",
    "early",
];
const OUTCOMES: [&str; 6] = [
    "keep",
    "drop",
    "rate_limit",
    "throughput",
    "dynamic",
    "factor",
];

/// The keys each outcome takes besides name, description, conditions and outcome.
fn extras(outcome: &str) -> &'static [&'static str] {
    match outcome {
        "keep" => &[
            "sample_rate",
            "max_traces_per_second",
            "marks",
            "decay_to_sample_rate",
            "min_traces",
            "min_traces_window",
            "early",
        ],
        "drop" => &["min_traces", "min_traces_window", "early"],
        "rate_limit" => &["traces_per_second", "marks"],
        "throughput" => &[
            "traces_per_second",
            "keys",
            "window",
            "max_keys",
            "max_traces_per_second",
            "marks",
            "min_traces",
            "min_traces_window",
        ],
        "dynamic" => &[
            "goal_sample_rate",
            "keys",
            "window",
            "max_keys",
            "max_traces_per_second",
            "marks",
            "min_traces",
            "min_traces_window",
        ],
        "factor" => &["factor"],
        _ => &[],
    }
}

/// Default adaptation window of a throughput rule.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Default bound on the distinct keys a throughput rule tracks.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The errors of one rule, each located by file, rule, line and field.
pub(super) struct Errors<'a> {
    file: &'a str,
    rule: String,
    out: &'a mut Vec<RuleError>,
}

impl Errors<'_> {
    /// Reports a mistake at `line` in `field`.
    pub(super) fn push(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.out.push(RuleError {
            file: self.file.to_string(),
            line,
            rule: self.rule.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

fn positive(v: &Node, what: &str) -> Result<f64, String> {
    if v.is_non_finite() {
        return Err(format!(
            "{} is not a finite number: expected {what} greater than 0",
            v.describe()
        ));
    }
    v.as_f64()
        .filter(|n| *n > 0.0)
        .ok_or_else(|| format!("expected {what} greater than 0, got {}", v.describe()))
}

fn rule(file: &str, index: usize, v: &Node, errors: &mut Vec<RuleError>) -> Option<Rule> {
    let label = v
        .get("name")
        .and_then(Node::as_str)
        .map(|n| format!("`{n}`"))
        .unwrap_or_else(|| format!("#{}", index + 1));
    let mut err = Errors {
        file,
        rule: label,
        out: errors,
    };
    let before = err.out.len();
    let Some(m) = v.as_map() else {
        err.push(
            v.line,
            "-",
            format!(
                "a rule is a map (name, conditions, outcome...), got {}",
                v.describe()
            ),
        );
        return None;
    };
    let mut dups = Vec::new();
    yaml::duplicate_keys(v, true, &mut dups);
    for (line, key, first) in dups {
        err.push(
            line,
            key.trim_matches('`'),
            format!("{key} is given twice (first on line {first}): each key may appear once"),
        );
    }
    let outcome_name = v.get("outcome").and_then(Node::as_str);
    for (k, _) in m {
        let key = k.as_str().unwrap_or("?");
        if !RULE_KEYS.contains(&key) {
            err.push(k.line, key, unknown("key", key, &RULE_KEYS));
        } else if let Some(o) = outcome_name.filter(|o| OUTCOMES.contains(o)) {
            let own = extras(o);
            let extra = ![
                "name",
                "description",
                "conditions",
                "outcome",
                "active_from",
                "active_until",
            ]
            .contains(&key);
            if extra && !own.contains(&key) {
                let takes: Vec<&str> = OUTCOMES
                    .iter()
                    .copied()
                    .filter(|x| extras(x).contains(&key))
                    .collect();
                err.push(
                    k.line,
                    key,
                    format!(
                        "`{key}` applies to `outcome: {}` only; this rule's outcome is `{o}`{}",
                        takes.join("` or `outcome: "),
                        if own.is_empty() {
                            String::new()
                        } else {
                            format!(", which takes {}", own.join(", "))
                        }
                    ),
                );
            }
        }
    }
    let name = match v.get("name").and_then(Node::as_str) {
        Some(n) if !n.trim().is_empty() => Some(n.to_string()),
        _ => {
            err.push(v.line, "name", "every rule needs a non-empty `name`");
            None
        }
    };
    let mut warnings = Vec::new();
    let description = v
        .get("description")
        .and_then(Node::as_str)
        .map(str::to_string);
    let condition = match v.get("conditions") {
        None => None,
        Some(c) if c.is_null() => {
            err.push(
                c.line,
                "conditions",
                "`conditions:` is empty; to make this the default rule (it matches every \
                 trace) leave `conditions` out, otherwise list at least one condition",
            );
            None
        }
        Some(c) => {
            let mut diags = expr::Diags::default();
            let parsed = expr::trace_cond(c, &mut diags);
            for (line, e) in diags.errors {
                err.push(line, "conditions", e);
            }
            for (line, w) in diags.warnings {
                warnings.push(RuleError {
                    file: file.to_string(),
                    line,
                    rule: err.rule.clone(),
                    field: "conditions".into(),
                    message: w,
                });
            }
            parsed
        }
    };
    let num = |err: &mut Errors<'_>, key: &str, what: &str| -> Option<f64> {
        let v = v.get(key)?;
        positive(v, what).map_err(|e| err.push(v.line, key, e)).ok()
    };
    let outcome = match outcome_name {
        Some("keep") => {
            let sample_rate = match v.get("sample_rate") {
                None => Some(1),
                Some(r) => match r.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if n >= 1 => Some(n),
                    _ => {
                        err.push(
                            r.line,
                            "sample_rate",
                            format!(
                                "expected a whole number >= 1 (keep 1 in N), got {}",
                                r.describe()
                            ),
                        );
                        None
                    }
                },
            };
            sample_rate.map(|sample_rate| Outcome::Keep { sample_rate })
        }
        Some("drop") => Some(Outcome::Drop),
        Some("rate_limit") => match v.get("traces_per_second") {
            None => {
                err.push(
                    v.line,
                    "traces_per_second",
                    "`outcome: rate_limit` needs `traces_per_second: N` (traces kept per second \
                     by the whole fleet)",
                );
                None
            }
            Some(_) => num(
                &mut err,
                "traces_per_second",
                "a number of traces per second",
            )
            .map(|per_second| Outcome::RateLimit { per_second }),
        },
        Some("factor") => match v.get("factor") {
            None => {
                err.push(
                    v.line,
                    "factor",
                    "`outcome: factor` needs `factor: F` (the rule that decides next keeps F \
                     times as many: its 1 in N becomes 1 in N/F)",
                );
                None
            }
            Some(_) => num(&mut err, "factor", "a factor (keep F times as many)")
                .map(|factor| Outcome::Factor { factor }),
        },
        Some("throughput") => throughput(v, &mut err, num),
        Some("dynamic") => dynamic(v, &mut err, num),
        Some(other) => {
            let line = v.get("outcome").map_or(v.line, |o| o.line);
            err.push(line, "outcome", unknown("outcome", other, &OUTCOMES));
            None
        }
        None => {
            err.push(
                v.line,
                "outcome",
                "every rule needs an `outcome`: keep, drop, rate_limit, throughput, dynamic or \
                 factor",
            );
            None
        }
    };
    let max_per_second = num(
        &mut err,
        "max_traces_per_second",
        "a number of kept traces per second",
    );
    let marks = match v.get("marks").map(super::marks::parse) {
        None => Vec::new(),
        Some(Ok(m)) => m,
        Some(Err(es)) => {
            for (line, e) in es {
                err.push(line, "marks", e);
            }
            Vec::new()
        }
    };
    let (active, decay_to) = super::window::parse(v, &mut err);
    let minimum = super::minimum::parse(v, &mut err);
    let early = early(v, condition.is_some(), max_per_second.is_some(), &mut err);
    if err.out.len() > before {
        return None;
    }
    Some(Rule {
        name: name?.into(),
        description,
        condition,
        outcome: outcome?,
        file: file.to_string(),
        line: v.line,
        warnings,
        max_per_second,
        marks,
        active,
        decay_to,
        minimum,
        early,
    })
}

/// `early: true|false`. An early rule decides a trace as soon as its outcome is sure, so it
/// must be one whose outcome depends on the trace alone: keep (at a sample rate) or drop, with
/// conditions, and no cap that could send the trace on to the next rule.
fn early(v: &Node, has_conditions: bool, capped: bool, err: &mut Errors<'_>) -> bool {
    let Some(n) = v.get("early") else {
        return false;
    };
    let on = match n.kind {
        Kind::Scalar {
            value: yaml::Scalar::Bool(b),
            ..
        } => b,
        _ => {
            err.push(
                n.line,
                "early",
                format!("`early` is true or false, got {}", n.describe()),
            );
            return false;
        }
    };
    if on && !has_conditions {
        err.push(
            n.line,
            "early",
            "an early rule needs `conditions`: without any it would decide every trace that \
             reaches it at its first span",
        );
    }
    if on && capped {
        err.push(
            n.line,
            "early",
            "an early rule cannot have `max_traces_per_second`: a trace over the cap goes on to \
             the next rule, which cannot be sure of its outcome before the trace completes",
        );
    }
    on
}

fn throughput(
    v: &Node,
    err: &mut Errors<'_>,
    num: impl Fn(&mut Errors<'_>, &str, &str) -> Option<f64>,
) -> Option<Outcome> {
    let per_second = match v.get("traces_per_second") {
        None => {
            err.push(
                v.line,
                "traces_per_second",
                "`outcome: throughput` needs `traces_per_second: N` (the target per key)",
            );
            None
        }
        Some(_) => num(err, "traces_per_second", "a number of traces per second"),
    };
    let (keys, window, max_keys) = keyed(v, err, "throughput");
    Some(Outcome::Throughput(ThroughputSpec {
        per_second: per_second?,
        keys: keys?,
        window: window?,
        max_keys: max_keys?,
    }))
}

fn dynamic(
    v: &Node,
    err: &mut Errors<'_>,
    num: impl Fn(&mut Errors<'_>, &str, &str) -> Option<f64>,
) -> Option<Outcome> {
    let goal = match v.get("goal_sample_rate") {
        None => {
            err.push(
                v.line,
                "goal_sample_rate",
                "`outcome: dynamic` needs `goal_sample_rate: N` (keep 1 in N on average)",
            );
            None
        }
        Some(g) => num(err, "goal_sample_rate", "a sample rate (keep 1 in N)").and_then(|n| {
            if n >= 1.0 {
                Some(n)
            } else {
                err.push(
                    g.line,
                    "goal_sample_rate",
                    format!("expected a sample rate of at least 1 (keep 1 in N), got {n}"),
                );
                None
            }
        }),
    };
    let (keys, window, max_keys) = keyed(v, err, "dynamic");
    Some(Outcome::Dynamic(DynamicSpec {
        goal_rate: goal?,
        keys: keys?,
        window: window?,
        max_keys: max_keys?,
    }))
}

/// The keys, window and key bound of a keyed sampler (`throughput`, `dynamic`).
type Keyed = (
    Option<Vec<super::KeyField>>,
    Option<Duration>,
    Option<usize>,
);

fn keyed(v: &Node, err: &mut Errors<'_>, outcome: &str) -> Keyed {
    let keys = match v.get("keys") {
        None => {
            err.push(
                v.line,
                "keys",
                format!(
                    "`outcome: {outcome}` needs `keys: [...]`, e.g. [root.service, \
                     root.attr.http.route, trace.error]"
                ),
            );
            None
        }
        Some(k) => {
            let items: Vec<&Node> = match &k.kind {
                Kind::Seq(items) => items.iter().collect(),
                _ if k.as_str().is_some() => vec![k],
                _ => Vec::new(),
            };
            if items.is_empty() {
                err.push(
                    k.line,
                    "keys",
                    "expected a list of fields, e.g. [root.service]",
                );
                None
            } else {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str().map(|s| super::field::key_field(s.trim())) {
                        Some(Ok(f)) => out.push(f),
                        Some(Err(e)) => err.push(item.line, "keys", e),
                        None => err.push(
                            item.line,
                            "keys",
                            format!("expected a field name, got {}", item.describe()),
                        ),
                    }
                }
                Some(out)
            }
        }
    };
    let window = match v.get("window") {
        None => Some(DEFAULT_WINDOW),
        Some(w) => match w.as_str().and_then(expr::parse_duration) {
            Some(ns) if ns >= 1_000_000_000 => Some(Duration::from_nanos(ns)),
            _ => {
                err.push(
                    w.line,
                    "window",
                    format!(
                        "expected a duration of at least 1s, e.g. 30s, got {}",
                        w.describe()
                    ),
                );
                None
            }
        },
    };
    let max_keys = match v.get("max_keys") {
        None => Some(DEFAULT_MAX_KEYS),
        Some(n) => match n.as_u64().filter(|n| *n >= 1) {
            Some(n) => Some(n as usize),
            None => {
                err.push(
                    n.line,
                    "max_keys",
                    format!("expected a whole number >= 1, got {}", n.describe()),
                );
                None
            }
        },
    };
    (keys, window, max_keys)
}

/// Parses one rule file's text. All of its errors are reported, not just the first.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    let top_err = |line: usize, field: &str, message: String| RuleError {
        file: file.to_string(),
        line,
        rule: "-".into(),
        field: field.into(),
        message,
    };
    let doc = yaml::parse(text)
        .map_err(|e| vec![top_err(e.line, "-", format!("invalid YAML: {}", e.message))])?;
    let Some(m) = doc.as_map() else {
        return Err(vec![top_err(
            doc.line,
            "-",
            "a rule file is a map with a `rules:` list".into(),
        )]);
    };
    let mut errors = Vec::new();
    for (k, _) in m {
        let key = k.as_str().unwrap_or("?");
        if key != "rules" {
            errors.push(top_err(k.line, key, unknown("key", key, &["rules"])));
        }
    }
    let mut dups = Vec::new();
    yaml::duplicate_keys(&doc, false, &mut dups);
    for (line, key, first) in dups {
        errors.push(top_err(
            line,
            key.trim_matches('`'),
            format!("{key} is given twice (first on line {first}): a file has one `rules:` list"),
        ));
    }
    let items = match doc.get("rules").map(|r| (r, &r.kind)) {
        Some((_, Kind::Seq(items))) => items,
        Some((r, _)) => {
            errors.push(top_err(
                r.line,
                "rules",
                format!("expected a list of rules, got {}", r.describe()),
            ));
            return Err(errors);
        }
        None => {
            errors.push(top_err(
                doc.line,
                "rules",
                "expected a `rules:` list".into(),
            ));
            return Err(errors);
        }
    };
    let rules: Vec<_> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| rule(file, i, v, &mut errors))
        .collect();
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}
