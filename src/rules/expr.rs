//! Condition expressions: `FIELD OPERATOR VALUE` strings and the `all`/`any`/`not`/`span`/
//! `root` groups around them, type-checked and compiled once, at load.

use std::sync::Arc;

use regex::bytes::Regex;

use super::condition::{Cond, Literal, Op, Probe, SpanCond};
use super::field::{field, Field, Ty};
use super::yaml::{Kind, Node};

const GROUP_KEYS: [&str; 6] = ["all", "any", "not", "span", "root", "every"];
const OPS: [&str; 15] = [
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "starts-with",
    "ends-with",
    "contains",
    "not-contains",
    "in",
    "not-in",
    "exists",
    "not-exists",
    "matches",
];
/// Suggests the closest of `options` to `got`, for "did you mean".
pub(crate) fn did_you_mean<'a>(got: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (strsim::jaro_winkler(got, o), *o))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

pub(crate) fn unknown(what: &str, got: &str, options: &[&str]) -> String {
    let hint = did_you_mean(got, options)
        .map(|o| format!(", did you mean `{o}`?"))
        .unwrap_or_default();
    format!(
        "unknown {what} `{got}`{hint} (supported: {})",
        options.join(", ")
    )
}

/// A value as written after the operator, before it meets its field's type.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Str(String),
    Num(f64, String),
    Dur(u64),
    Bool(bool),
}

impl Raw {
    fn describe(&self) -> String {
        match self {
            Raw::Str(s) => format!("the string `{s}`"),
            Raw::Num(_, s) => format!("the number {s}"),
            Raw::Dur(d) => format!("a duration ({}ns)", d),
            Raw::Bool(b) => format!("the boolean {b}"),
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    };
    Some((n * scale) as u64)
}

fn quoted(s: &str) -> Option<&str> {
    ['"', '\'']
        .into_iter()
        .find_map(|q| s.strip_prefix(q).and_then(|r| r.strip_suffix(q)))
}

fn parse_raw(s: &str) -> Result<Raw, String> {
    let s = s.trim();
    if let Some(inner) = quoted(s) {
        return Ok(Raw::Str(inner.to_string()));
    }
    match s {
        "true" => return Ok(Raw::Bool(true)),
        "false" => return Ok(Raw::Bool(false)),
        _ => {}
    }
    // Rust reads `nan`, `inf` and `1e400` (infinity) as numbers: no attribute equals them and
    // no comparison with them means anything, so they are refused rather than half-accepted.
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() => return Ok(Raw::Num(n, s.to_string())),
        Ok(_) => {
            return Err(format!(
                "`{s}` is not a finite number; quote it ('{s}') to compare with that text"
            ))
        }
        Err(_) => {}
    }
    if let Some(d) = parse_duration(s) {
        return Ok(Raw::Dur(d));
    }
    Ok(Raw::Str(s.to_string()))
}

fn parse_list(s: &str) -> Result<Vec<Raw>, String> {
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list like [a, b], got `{s}`"))?;
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in inner.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, ',') => items.push(parse_raw(&std::mem::take(&mut cur))?),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        items.push(parse_raw(&cur)?);
    }
    Ok(items)
}

/// Turns a value into a literal of the field's type, or says why it does not fit.
fn literal(ty: Ty, raw: Raw) -> Result<Literal, String> {
    match (ty, raw) {
        (Ty::Duration, Raw::Dur(d)) => Ok(Literal::Num(d as f64)),
        (Ty::Duration, Raw::Num(0.0, _)) => Ok(Literal::Num(0.0)),
        (Ty::Duration, other) => Err(format!(
            "expected a duration such as 250ms, 2s or 1m, got {}",
            other.describe()
        )),
        (Ty::Number, Raw::Num(n, _)) => Ok(Literal::Num(n)),
        (Ty::Number, other) => Err(format!("expected a number, got {}", other.describe())),
        (Ty::Bool, Raw::Bool(b)) => Ok(Literal::Bool(b)),
        (Ty::Bool, other) => Err(format!("expected true or false, got {}", other.describe())),
        (Ty::Enum(names), Raw::Str(s)) if names.contains(&s.to_lowercase().as_str()) => {
            Ok(Literal::Str(s.to_lowercase().into_bytes()))
        }
        (Ty::Enum(names), other) => {
            let hint = match &other {
                Raw::Str(s) => did_you_mean(&s.to_lowercase(), names)
                    .map(|o| format!(", did you mean `{o}`?"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Err(format!(
                "expected one of {}, got {}{hint}",
                names.join(", "),
                other.describe()
            ))
        }
        (Ty::Str, Raw::Str(s) | Raw::Num(_, s)) => Ok(Literal::Str(s.into_bytes())),
        (Ty::Str, other) => Err(format!("expected a string, got {}", other.describe())),
        (Ty::Attr, Raw::Str(s)) => Ok(Literal::Str(s.into_bytes())),
        (Ty::Attr, Raw::Num(n, _)) => Ok(Literal::Num(n)),
        (Ty::Attr, Raw::Bool(b)) => Ok(Literal::Bool(b)),
        (Ty::Attr, Raw::Dur(_)) => {
            Err("attributes compare with numbers, strings or booleans, not durations".to_string())
        }
    }
}

fn text(ty: Ty, raw: Raw, op: &str) -> Result<Vec<u8>, String> {
    match (ty, raw) {
        (Ty::Str | Ty::Attr, Raw::Str(s) | Raw::Num(_, s)) => Ok(s.into_bytes()),
        (Ty::Str | Ty::Attr, other) => {
            Err(format!("`{op}` takes a string, got {}", other.describe()))
        }
        (ty, _) => Err(format!(
            "`{op}` works on strings; this field is {}",
            ty.name()
        )),
    }
}

fn number(ty: Ty, raw: Raw, op: &str) -> Result<f64, String> {
    match (ty, raw) {
        (Ty::Duration, Raw::Dur(d)) => Ok(d as f64),
        (Ty::Duration, other) => Err(format!(
            "`{op}` on a duration takes a duration such as 250ms or 2s, got {}",
            other.describe()
        )),
        (Ty::Number | Ty::Attr, Raw::Num(n, _)) => Ok(n),
        (Ty::Number | Ty::Attr, other) => {
            Err(format!("`{op}` takes a number, got {}", other.describe()))
        }
        (ty, _) => Err(format!(
            "`{op}` compares numbers or durations; this field is {}",
            ty.name()
        )),
    }
}

fn op(ty: Ty, name: &str, value: Option<&str>) -> Result<Op, String> {
    let need = || value.ok_or_else(|| format!("`{name}` needs a value"));
    let one = || need().and_then(parse_raw);
    Ok(match name {
        "=" => Op::Eq(literal(ty, one()?)?),
        "!=" => Op::Ne(literal(ty, one()?)?),
        "<" => Op::Lt(number(ty, one()?, name)?),
        "<=" => Op::Le(number(ty, one()?, name)?),
        ">" => Op::Gt(number(ty, one()?, name)?),
        ">=" => Op::Ge(number(ty, one()?, name)?),
        "starts-with" => Op::StartsWith(text(ty, one()?, name)?),
        "ends-with" => Op::EndsWith(text(ty, one()?, name)?),
        "contains" => Op::Contains(text(ty, one()?, name)?),
        "not-contains" => Op::NotContains(text(ty, one()?, name)?),
        "matches" => {
            let pattern = text(ty, one()?, name)?;
            let pattern = String::from_utf8_lossy(&pattern).into_owned();
            Op::Matches(Regex::new(&pattern).map_err(|e| format!("invalid regex: {e}"))?)
        }
        "in" | "not-in" => {
            let items = parse_list(need()?)?
                .into_iter()
                .map(|r| literal(ty, r))
                .collect::<Result<Vec<_>, _>>()?;
            if items.is_empty() {
                return Err(format!(
                    "`{name} []` is an empty list: `in []` holds for no trace and `not-in []` \
                     for every one; list at least one value"
                ));
            }
            if name == "in" {
                Op::In(items)
            } else {
                Op::NotIn(items)
            }
        }
        "exists" | "not-exists" => {
            if value.is_some() {
                return Err(format!("`{name}` takes no value"));
            }
            if name == "exists" {
                Op::Exists
            } else {
                Op::NotExists
            }
        }
        other => return Err(unknown("operator", other, &OPS)),
    })
}

/// Where a condition sits: at trace level, or inside a `span:`/`root:` group.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Trace,
    Span,
}

enum Parsed {
    Trace(Cond),
    Span(SpanCond),
}

/// The positive twin of a negative operator (`!=` of `=`...), for messages.
fn positive_twin(op: &str) -> Option<&'static str> {
    match op {
        "!=" => Some("="),
        "not-in" => Some("in"),
        "not-contains" => Some("contains"),
        "not-exists" => Some("exists"),
        _ => None,
    }
}

/// Splits `s` at the commas outside quotes, brackets and parentheses.
fn top_level_items(s: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(' | '{') => depth += 1,
            (None, ']' | ')' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect()
}

/// The index of the parenthesis that closes the one opening `s` (outside quotes).
fn closing_paren(s: &str) -> Option<usize> {
    let (mut depth, mut quote) = (0i32, None);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => {
                depth -= 1;
                if depth == 0 {
                    return (c == ')').then_some(i);
                }
            }
            _ => {}
        }
    }
    None
}

const COUNT_FORM: &str = "`count(SPAN CONDITIONS) OPERATOR N`, e.g. \
    `count(span.service = db, span.kind = client) > 100` or `count(span: [span.status = error]) >= 3`";

/// Parses `count(c1, c2, ...) OP N` (or `count(span: [c1, c2]) OP N`): how many spans satisfy
/// every condition of the group, compared with a number.
fn count(expr: &str, scope: Scope) -> Result<Parsed, String> {
    if scope == Scope::Span {
        return Err(format!(
            "`{expr}`: `count(...)` is a trace condition and cannot be tested on one span \
             inside a span/root/every group"
        ));
    }
    let body = &expr["count".len()..];
    let close = closing_paren(body)
        .ok_or_else(|| format!("`{expr}`: unbalanced parentheses; expected {COUNT_FORM}"))?;
    let inner = body[1..close].trim();
    let inner = inner.strip_prefix("span:").map_or(inner, str::trim);
    let inner = inner
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(inner);
    let items = top_level_items(inner);
    if items.is_empty() {
        return Err(format!("`{expr}`: {EMPTY_LIST}"));
    }
    let mut conds = Vec::new();
    for item in items {
        match predicate(item, Scope::Span)? {
            (Parsed::Span(c), _) => conds.push(c),
            (Parsed::Trace(_), _) => {
                return Err(format!("`{expr}`: `{item}` is not a span condition"))
            }
        }
    }
    let rest = body[close + 1..].trim();
    let mut parts = rest.splitn(2, char::is_whitespace);
    let op_name = parts.next().filter(|o| !o.is_empty()).ok_or_else(|| {
        format!("`{expr}`: the count is compared with a number: expected {COUNT_FORM}")
    })?;
    let value = parts.next().map(str::trim).filter(|v| !v.is_empty());
    if !["=", "!=", "<", "<=", ">", ">="].contains(&op_name) {
        let msg = unknown("operator", op_name, &["=", "!=", "<", "<=", ">", ">="]);
        return Err(format!("`{expr}`: a count compares with a number: {msg}"));
    }
    let op = op(Ty::Number, op_name, value).map_err(|e| format!("`{expr}`: {e}"))?;
    let group = if conds.len() == 1 {
        conds.remove(0)
    } else {
        SpanCond::All(conds)
    };
    Ok(Parsed::Trace(Cond::Count(
        Probe::new(group),
        op,
        expr.trim().into(),
    )))
}

/// Parses one comparison; the second part is a lint about it, if any.
fn predicate(expr: &str, scope: Scope) -> Result<(Parsed, Option<String>), String> {
    if expr.trim_start().starts_with("count(") {
        return count(expr.trim(), scope).map(|p| (p, None));
    }
    let mut parts = expr.trim().splitn(3, char::is_whitespace);
    let name = parts.next().unwrap_or_default();
    let op_name = parts.next().ok_or_else(|| {
        format!("`{expr}`: expected `FIELD OPERATOR VALUE`, e.g. `span.status = error`")
    })?;
    let value = parts.next().map(str::trim).filter(|v| !v.is_empty());
    let (f, ty) = field(name)?;
    // A condition compares a field with a literal; an unquoted field name on the right would
    // silently be compared as text.
    if let Some(v) = value.filter(|v| quoted(v).is_none() && field(v).is_ok()) {
        return Err(format!(
            "`{expr}`: `{v}` is a field name, but a condition compares a field with a value, \
             not with another field; quote it ('{v}') to compare with that text"
        ));
    }
    let op = op(ty, op_name, value).map_err(|e| format!("`{expr}`: {e}"))?;
    let label: Arc<str> = expr.trim().into();
    let mut lint = None;
    if let (Field::Span(_), Scope::Trace, Some(twin)) = (&f, scope, positive_twin(op_name)) {
        let positive = format!(
            "{name} {twin}{}",
            value.map(|v| format!(" {v}")).unwrap_or_default()
        );
        lint = Some(format!(
            "`{label}` on its own tests every span and holds when *some* span passes it (here: \
             some span is not like that), which is nearly every trace; to say that no span is, \
             write `not: {positive}`; for one span with several conditions, use `span: [...]`"
        ));
    }
    let parsed = match (f, scope) {
        (Field::Trace(t), Scope::Trace) => Parsed::Trace(Cond::Trace(t, op, label)),
        (Field::Trace(_), Scope::Span) => {
            return Err(format!(
            "`{name}` is a trace field and cannot be tested on one span inside a span/root/every group"
        ))
        }
        (Field::Span(f), Scope::Span) => Parsed::Span(SpanCond::Field(f, op, label)),
        (Field::Span(f), Scope::Trace) => {
            Parsed::Trace(Cond::AnySpan(Probe::new(SpanCond::Field(f, op, label))))
        }
        (Field::Root(f), Scope::Trace) => Parsed::Trace(Cond::Root(Probe::new(SpanCond::Field(
            f, op, label,
        )))),
        (Field::Root(_), Scope::Span) => {
            return Err(format!(
                "`{name}`: inside a span/root/every group use `span.` fields"
            ))
        }
    };
    Ok((parsed, lint))
}

/// A condition error or warning: the line it is on, and what is wrong.
pub(crate) type Located = (usize, String);

/// What parsing a rule's conditions found: errors (the rule is refused) and warnings (it
/// loads, and `rules check` says what looks wrong).
#[derive(Debug, Default)]
pub(crate) struct Diags {
    pub errors: Vec<Located>,
    pub warnings: Vec<Located>,
}

impl Diags {
    fn push(&mut self, e: Located) {
        self.errors.push(e);
    }
}

/// Parses the `conditions` of a rule (a trace-level condition). Errors go to `errs`.
pub(crate) fn trace_cond(v: &Node, errs: &mut Diags) -> Option<Cond> {
    match cond(v, Scope::Trace, errs)? {
        Parsed::Trace(c) => Some(c),
        Parsed::Span(_) => None,
    }
}

fn span_cond(v: &Node, errs: &mut Diags) -> Option<SpanCond> {
    match cond(v, Scope::Span, errs)? {
        Parsed::Span(c) => Some(c),
        Parsed::Trace(_) => None,
    }
}

/// Why an empty list of conditions is refused.
pub(crate) const EMPTY_LIST: &str = "an empty list of conditions: `[]` and `all: []` would hold \
    for every trace and `any: []` for none; write at least one condition (a rule that should \
    match every trace is the default rule: leave out `conditions`)";

fn list(v: &Node, scope: Scope, errs: &mut Diags) -> Option<Vec<Parsed>> {
    match &v.kind {
        Kind::Seq(items) if items.is_empty() => {
            errs.push((v.line, EMPTY_LIST.into()));
            None
        }
        Kind::Seq(items) => {
            let parsed: Vec<_> = items.iter().map(|i| cond(i, scope, errs)).collect();
            parsed.into_iter().collect()
        }
        _ => cond(v, scope, errs).map(|c| vec![c]),
    }
}

fn combine(items: Vec<Parsed>, scope: Scope, any: bool) -> Parsed {
    match scope {
        Scope::Trace => {
            let cs = items
                .into_iter()
                .filter_map(|p| match p {
                    Parsed::Trace(c) => Some(c),
                    Parsed::Span(_) => None,
                })
                .collect();
            Parsed::Trace(if any { Cond::Any(cs) } else { Cond::All(cs) })
        }
        Scope::Span => {
            let cs = items
                .into_iter()
                .filter_map(|p| match p {
                    Parsed::Span(c) => Some(c),
                    Parsed::Trace(_) => None,
                })
                .collect();
            Parsed::Span(if any {
                SpanCond::Any(cs)
            } else {
                SpanCond::All(cs)
            })
        }
    }
}

/// Parses a condition: a string (one comparison), a list (all of them), or a one-key map
/// (`all`, `any`, `not`, `span`, `root`). Errors go to `errs`; `None` when any occurred.
/// Every item of a list is parsed even after an error, so that all errors are reported.
fn cond(v: &Node, scope: Scope, errs: &mut Diags) -> Option<Parsed> {
    let line = v.line;
    match &v.kind {
        Kind::Null => {
            errs.push((line, "expected a condition, got nothing".into()));
            None
        }
        Kind::Scalar { text, .. } => match predicate(text, scope) {
            Ok((p, lint)) => {
                if let Some(w) = lint {
                    errs.warnings.push((line, w));
                }
                Some(p)
            }
            Err(e) => {
                errs.push((line, e));
                None
            }
        },
        Kind::Seq(_) => list(v, scope, errs).map(|items| combine(items, scope, false)),
        Kind::Map(m) if m.len() == 1 => {
            let (k, inner) = &m[0];
            let key = k.as_str().unwrap_or_default();
            match (key, scope) {
                ("all", _) => list(inner, scope, errs).map(|i| combine(i, scope, false)),
                ("any", _) => list(inner, scope, errs).map(|i| combine(i, scope, true)),
                ("not", Scope::Trace) => {
                    trace_cond(inner, errs).map(|c| Parsed::Trace(Cond::Not(Box::new(c))))
                }
                ("not", Scope::Span) => {
                    span_cond(inner, errs).map(|c| Parsed::Span(SpanCond::Not(Box::new(c))))
                }
                ("span", Scope::Trace) => {
                    span_cond(inner, errs).map(|c| Parsed::Trace(Cond::AnySpan(Probe::new(c))))
                }
                ("root", Scope::Trace) => {
                    span_cond(inner, errs).map(|c| Parsed::Trace(Cond::Root(Probe::new(c))))
                }
                ("every", Scope::Trace) => {
                    span_cond(inner, errs).map(|c| Parsed::Trace(Cond::EverySpan(Probe::new(c))))
                }
                ("span" | "root" | "every", Scope::Span) => {
                    errs.push((
                        k.line,
                        format!("`{key}` groups cannot nest inside a span/root/every group"),
                    ));
                    None
                }
                (other, _) => {
                    errs.push((k.line, unknown("condition group", other, &GROUP_KEYS)));
                    None
                }
            }
        }
        Kind::Map(_) => {
            errs.push((
                line,
                format!(
                    "a condition map has exactly one key, one of: {}",
                    GROUP_KEYS.join(", ")
                ),
            ));
            None
        }
    }
}
