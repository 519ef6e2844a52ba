//! Compiled conditions and their evaluation against a trace.
//!
//! Conditions are parsed and type-checked once, at load (see `parse.rs`); evaluation does no
//! parsing and allocates nothing.

use std::sync::Arc;

use regex::bytes::Regex;

use crate::otlp::view::{AttrValue, ContextView, SpanView};

use super::TraceView;

/// A condition over the whole trace.
#[derive(Debug, Clone)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    /// A trace field's test, with the text it was written as (for `rules explain`).
    Trace(TraceField, Op, Arc<str>),
    /// True when at least one span satisfies the span condition (all of a group on one span).
    AnySpan(SpanCond),
    /// True when the root span arrived and satisfies the span condition.
    Root(SpanCond),
}

/// A condition over one span.
#[derive(Debug, Clone)]
pub enum SpanCond {
    All(Vec<SpanCond>),
    Any(Vec<SpanCond>),
    Not(Box<SpanCond>),
    /// A span field's test, with the text it was written as (for `rules explain`).
    Field(SpanField, Op, Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceField {
    Duration,
    SpanCount,
    Error,
    RootPresent,
    /// Distinct `service.name`s among the trace's spans.
    ServiceCount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanField {
    Name,
    Kind,
    Status,
    Duration,
    Service,
    Attr(Vec<u8>),
    ResourceAttr(Vec<u8>),
    ScopeName,
    ScopeVersion,
    ScopeAttr(Vec<u8>),
}

/// A typed value to compare with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(Vec<u8>),
    Num(f64),
    Bool(bool),
}

/// A comparison, with its compiled operand.
#[derive(Debug, Clone)]
pub enum Op {
    Eq(Literal),
    Ne(Literal),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
    StartsWith(Vec<u8>),
    EndsWith(Vec<u8>),
    Contains(Vec<u8>),
    NotContains(Vec<u8>),
    In(Vec<Literal>),
    NotIn(Vec<Literal>),
    Exists,
    NotExists,
    Matches(Regex),
}

/// A field's value on one span or trace, borrowed from the bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Str(&'a [u8]),
    Num(f64),
    Bool(bool),
    /// A value that exists but compares with nothing (arrays, maps, bytes).
    Opaque,
}

impl<'a> From<AttrValue<'a>> for Val<'a> {
    fn from(v: AttrValue<'a>) -> Self {
        match v {
            AttrValue::Str(s) => Val::Str(s),
            AttrValue::Bool(b) => Val::Bool(b),
            AttrValue::Int(_) | AttrValue::Double(_) => Val::Num(v.as_f64().unwrap_or(0.0)),
            AttrValue::Bytes(_) | AttrValue::Composite(_) => Val::Opaque,
        }
    }
}

fn lit_eq(v: Val<'_>, l: &Literal) -> bool {
    match (v, l) {
        (Val::Str(a), Literal::Str(b)) => a == b.as_slice(),
        (Val::Num(a), Literal::Num(b)) => a == *b,
        (Val::Bool(a), Literal::Bool(b)) => a == *b,
        _ => false,
    }
}

impl Op {
    /// Applies the operator to a value that may be missing. Negative operators are the exact
    /// negation of their positive twin, so they hold when the value is missing.
    fn test(&self, v: Option<Val<'_>>) -> bool {
        let num = || match v {
            Some(Val::Num(n)) => Some(n),
            _ => None,
        };
        let s = || match v {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        };
        match self {
            Op::Eq(l) => v.is_some_and(|v| lit_eq(v, l)),
            Op::Ne(l) => !v.is_some_and(|v| lit_eq(v, l)),
            Op::Lt(x) => num().is_some_and(|n| n < *x),
            Op::Le(x) => num().is_some_and(|n| n <= *x),
            Op::Gt(x) => num().is_some_and(|n| n > *x),
            Op::Ge(x) => num().is_some_and(|n| n >= *x),
            Op::StartsWith(p) => s().is_some_and(|s| s.starts_with(p)),
            Op::EndsWith(p) => s().is_some_and(|s| s.ends_with(p)),
            Op::Contains(p) => s().is_some_and(|s| contains(s, p)),
            Op::NotContains(p) => !s().is_some_and(|s| contains(s, p)),
            Op::In(ls) => v.is_some_and(|v| ls.iter().any(|l| lit_eq(v, l))),
            Op::NotIn(ls) => !v.is_some_and(|v| ls.iter().any(|l| lit_eq(v, l))),
            Op::Exists => v.is_some(),
            Op::NotExists => v.is_none(),
            Op::Matches(re) => s().is_some_and(|s| re.is_match(s)),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

pub(crate) const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
pub(crate) const STATUSES: [&str; 3] = ["unset", "ok", "error"];

fn enum_name(names: &'static [&'static str], n: u64) -> &'static [u8] {
    names
        .get(n as usize)
        .copied()
        .unwrap_or("unknown")
        .as_bytes()
}

impl SpanField {
    pub(crate) fn value<'a>(&self, span: &SpanView<'a>, ctx: &ContextView<'a>) -> Option<Val<'a>> {
        match self {
            SpanField::Name => Some(Val::Str(span.name)),
            SpanField::Kind => Some(Val::Str(enum_name(&KINDS, span.kind))),
            SpanField::Status => Some(Val::Str(enum_name(&STATUSES, span.status_code))),
            SpanField::Duration => Some(Val::Num(span.duration_nanos() as f64)),
            SpanField::Service => ctx.service_name().map(Val::Str),
            SpanField::Attr(k) => span.attr(k).map(Val::from),
            SpanField::ResourceAttr(k) => ctx.resource_attr(k).map(Val::from),
            SpanField::ScopeName => ctx.scope_name().map(Val::Str),
            SpanField::ScopeVersion => ctx.scope_version().map(Val::Str),
            SpanField::ScopeAttr(k) => ctx.scope_attr(k).map(Val::from),
        }
    }
}

impl SpanCond {
    pub fn eval(&self, span: &SpanView<'_>, ctx: &ContextView<'_>) -> bool {
        match self {
            SpanCond::All(cs) => cs.iter().all(|c| c.eval(span, ctx)),
            SpanCond::Any(cs) => cs.iter().any(|c| c.eval(span, ctx)),
            SpanCond::Not(c) => !c.eval(span, ctx),
            SpanCond::Field(f, op, _) => op.test(f.value(span, ctx)),
        }
    }
}

impl TraceField {
    pub(crate) fn value(self, t: &TraceView<'_>) -> Val<'static> {
        match self {
            TraceField::Duration => Val::Num(t.duration_nanos as f64),
            TraceField::SpanCount => Val::Num(f64::from(t.span_count)),
            TraceField::Error => Val::Bool(t.has_error),
            TraceField::RootPresent => Val::Bool(t.root.is_some()),
            TraceField::ServiceCount => Val::Num(service_count(t) as f64),
        }
    }
}

/// Distinct service names of a trace (spans without one count as one more service). Computed
/// only when a rule asks: services are few, so a small vector beats a hash set.
fn service_count(t: &TraceView<'_>) -> usize {
    let mut seen: smallvec::SmallVec<[Option<&[u8]>; 8]> = smallvec::SmallVec::new();
    for (_, ctx) in &t.spans {
        let s = ctx.service_name();
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.len()
}

/// A field whose value, per trace, makes up a throughput sampler's key: a trace field or a
/// field of the root span (one value per trace).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyField {
    Trace(TraceField),
    Root(SpanField),
}

impl KeyField {
    /// Feeds the field's value for `t` into `h` (a missing value hashes as such).
    pub(crate) fn hash_into(&self, t: &TraceView<'_>, h: &mut xxhash_rust::xxh3::Xxh3) {
        let v = match self {
            KeyField::Trace(f) => Some(f.value(t)),
            KeyField::Root(f) => t
                .root
                .and_then(|i| t.spans.get(i))
                .and_then(|(s, ctx)| f.value(s, ctx)),
        };
        match v {
            None => h.update(&[0]),
            Some(Val::Str(s)) => {
                h.update(&[1]);
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s);
            }
            Some(Val::Num(n)) => {
                h.update(&[2]);
                h.update(&n.to_bits().to_le_bytes());
            }
            Some(Val::Bool(b)) => h.update(&[3, u8::from(b)]),
            Some(Val::Opaque) => h.update(&[4]),
        }
    }
}

impl Cond {
    pub fn eval(&self, t: &TraceView<'_>) -> bool {
        match self {
            Cond::All(cs) => cs.iter().all(|c| c.eval(t)),
            Cond::Any(cs) => cs.iter().any(|c| c.eval(t)),
            Cond::Not(c) => !c.eval(t),
            Cond::Trace(f, op, _) => op.test(Some(f.value(t))),
            Cond::AnySpan(c) => t.spans.iter().any(|(s, ctx)| c.eval(s, ctx)),
            Cond::Root(c) => t
                .root
                .and_then(|i| t.spans.get(i))
                .is_some_and(|(s, ctx)| c.eval(s, ctx)),
        }
    }
}
