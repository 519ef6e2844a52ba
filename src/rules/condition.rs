//! Compiled conditions and their evaluation against a trace.
//!
//! Conditions are parsed and type-checked once, at load (see `parse.rs`); evaluation does no
//! parsing and allocates nothing.

use std::sync::Arc;

use regex::bytes::Regex;

use crate::otlp::view::{find_attr, AttrValue, ContextView, SpanView};
use crate::otlp::wire::{Fields, Value};

use super::TraceView;

/// A condition over the whole trace.
#[derive(Debug, Clone)]
pub enum Cond {
    /// Every condition holds (a list, `all:`).
    All(Vec<Cond>),
    /// At least one condition holds (`any:`).
    Any(Vec<Cond>),
    /// The condition does not hold (`not:`).
    Not(Box<Cond>),
    /// A trace field's test, with the text it was written as (for `rules explain`).
    Trace(TraceField, Op, Arc<str>),
    /// True when at least one span satisfies the span condition (all of a group on one span).
    AnySpan(Probe),
    /// True when the root span arrived and satisfies the span condition.
    Root(Probe),
    /// True when every span satisfies the span condition (`every:`).
    EverySpan(Probe),
    /// The number of spans that satisfy the span condition, compared (`count(...) > N`), with
    /// the text it was written as.
    Count(Probe, Op, Arc<str>),
}

/// A span condition a trace condition applies to its spans (some, every, the root's, or
/// counted): the buffer evaluates it on each span as the span arrives, and keeps the result
/// per trace in the probe's slot (see `seen.rs`).
#[derive(Debug, Clone)]
pub struct Probe {
    /// The condition on one span.
    pub cond: SpanCond,
    /// Its slot in a rule set's probes, given when the set is built.
    pub(crate) slot: u16,
    /// For a `count(...)`: its counter among the set's counts.
    pub(crate) counter: u16,
}

impl Probe {
    /// A probe not yet given a slot.
    pub(crate) fn new(cond: SpanCond) -> Self {
        Probe {
            cond,
            slot: u16::MAX,
            counter: u16::MAX,
        }
    }
}

impl std::ops::Deref for Probe {
    type Target = SpanCond;
    fn deref(&self) -> &SpanCond {
        &self.cond
    }
}

/// A condition over one span.
#[derive(Debug, Clone)]
pub enum SpanCond {
    /// Every condition holds on the span.
    All(Vec<SpanCond>),
    /// At least one condition holds on the span.
    Any(Vec<SpanCond>),
    /// The condition does not hold on the span.
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
    /// The encoded size of the trace's spans, in bytes (what the Collector's bytes limiting
    /// counts).
    Bytes,
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
    /// The W3C tracestate of the span (`Span.trace_state`).
    TraceState,
    /// `Span.flags`: the W3C trace flags in the low 8 bits.
    Flags,
    /// The W3C sampled flag (bit 0 of the flags).
    Sampled,
    EventCount,
    LinkCount,
    /// The name of one of the span's events (a span has several: see [`SpanField::is_multi`]).
    EventName,
    /// An attribute of one of the span's events.
    EventAttr(Vec<u8>),
    /// An attribute of one of the span's links.
    LinkAttr(Vec<u8>),
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
    /// Whether this is the negation of another operator (`!=` of `=`...).
    pub(crate) fn is_negative(&self) -> bool {
        matches!(
            self,
            Op::Ne(_) | Op::NotContains(_) | Op::NotIn(_) | Op::NotExists
        )
    }

    /// Applies the operator to a value that may be missing. Negative operators are the exact
    /// negation of their positive twin, so they hold when the value is missing.
    pub(crate) fn test(&self, v: Option<Val<'_>>) -> bool {
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

/// `Span` field numbers the rules read beyond [`SpanView`]'s.
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_EVENTS: u32 = 11;
const SPAN_LINKS: u32 = 13;
const SPAN_FLAGS: u32 = 16;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRS: u32 = 3;
const LINK_ATTRS: u32 = 4;

/// The payloads of the length-delimited fields numbered `n` of a message.
fn messages(msg: &[u8], n: u32) -> impl Iterator<Item = &[u8]> {
    Fields::new(msg)
        .map_while(Result::ok)
        .filter(move |f| f.number == n)
        .filter_map(|f| f.value.as_bytes())
}

/// The last field numbered `n` of a message (a singular field appended later wins).
fn last(msg: &[u8], n: u32) -> Option<Value<'_>> {
    Fields::new(msg)
        .map_while(Result::ok)
        .filter(|f| f.number == n)
        .last()
        .map(|f| f.value)
}

impl SpanField {
    /// Whether a span has any number of values of this field (one per event or link): an
    /// operator holds when one of them passes it, a negative one when none fails it (so
    /// `!=` stays the exact negation of `=`).
    pub(crate) fn is_multi(&self) -> bool {
        matches!(
            self,
            SpanField::EventName | SpanField::EventAttr(_) | SpanField::LinkAttr(_)
        )
    }

    /// Whether the field is read from the span's resource or scope, not the span: the same
    /// for every span of one context.
    pub(crate) fn of_context(&self) -> bool {
        matches!(
            self,
            SpanField::Service
                | SpanField::ResourceAttr(_)
                | SpanField::ScopeName
                | SpanField::ScopeVersion
                | SpanField::ScopeAttr(_)
        )
    }

    /// Each value of a multi-valued field on one span (see [`SpanField::is_multi`]).
    pub(crate) fn values<'a>(&self, span: &SpanView<'a>) -> smallvec::SmallVec<[Val<'a>; 4]> {
        let (n, f): (u32, &dyn Fn(&'a [u8]) -> Option<Val<'a>>) = match self {
            SpanField::EventName => (SPAN_EVENTS, &|e| match last(e, EVENT_NAME) {
                Some(Value::Bytes(b)) => Some(Val::Str(b)),
                _ => Some(Val::Str(b"")),
            }),
            SpanField::EventAttr(k) => (SPAN_EVENTS, &|e| {
                find_attr(e, EVENT_ATTRS, k).map(Val::from)
            }),
            SpanField::LinkAttr(k) => (SPAN_LINKS, &|l| find_attr(l, LINK_ATTRS, k).map(Val::from)),
            _ => return smallvec::SmallVec::new(),
        };
        messages(span.bytes, n).filter_map(f).collect()
    }

    /// Applies `op` to the field on one span, whether it has one value or several.
    #[inline]
    pub(crate) fn test(&self, op: &Op, span: &SpanView<'_>, ctx: &ContextView<'_>) -> bool {
        if !self.is_multi() {
            return op.test(self.value(span, ctx));
        }
        let values = self.values(span);
        if op.is_negative() {
            values.iter().all(|v| op.test(Some(*v)))
        } else {
            values.iter().any(|v| op.test(Some(*v)))
        }
    }

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
            SpanField::TraceState => match last(span.bytes, SPAN_TRACE_STATE) {
                Some(Value::Bytes(b)) => Some(Val::Str(b)),
                _ => Some(Val::Str(b"")),
            },
            SpanField::Flags => Some(Val::Num(flags(span) as f64)),
            SpanField::Sampled => Some(Val::Bool(flags(span) & 1 == 1)),
            SpanField::EventCount => {
                Some(Val::Num(messages(span.bytes, SPAN_EVENTS).count() as f64))
            }
            SpanField::LinkCount => Some(Val::Num(messages(span.bytes, SPAN_LINKS).count() as f64)),
            // Several values: see `values`.
            SpanField::EventName | SpanField::EventAttr(_) | SpanField::LinkAttr(_) => None,
        }
    }
}

/// The W3C trace flags of a span (the low 8 bits of `Span.flags`; 0 when absent).
fn flags(span: &SpanView<'_>) -> u64 {
    last(span.bytes, SPAN_FLAGS)
        .and_then(Value::as_u64)
        .unwrap_or(0)
        & 0xff
}

impl SpanCond {
    /// Whether the condition reads the span's resource and scope only.
    pub(crate) fn of_context(&self) -> bool {
        match self {
            SpanCond::All(cs) | SpanCond::Any(cs) => cs.iter().all(SpanCond::of_context),
            SpanCond::Not(c) => c.of_context(),
            SpanCond::Field(f, ..) => f.of_context(),
        }
    }

    /// What the condition requires of the span's resource and scope alone, if anything: a
    /// condition on those only that every span passing this one passes (the condition itself
    /// when it reads nothing else; its context-only parts when it is an `all:`). A span whose
    /// context fails it fails this condition, whatever the span holds.
    pub(crate) fn context_guard(&self) -> Option<SpanCond> {
        if self.of_context() {
            return Some(self.clone());
        }
        let SpanCond::All(cs) = self else {
            return None;
        };
        let mut parts: Vec<SpanCond> = cs.iter().filter_map(SpanCond::context_guard).collect();
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(SpanCond::All(parts)),
        }
    }

    /// Whether the span, under its resource and scope `ctx`, satisfies the condition.
    pub fn eval(&self, span: &SpanView<'_>, ctx: &ContextView<'_>) -> bool {
        match self {
            SpanCond::All(cs) => cs.iter().all(|c| c.eval(span, ctx)),
            SpanCond::Any(cs) => cs.iter().any(|c| c.eval(span, ctx)),
            SpanCond::Not(c) => !c.eval(span, ctx),
            SpanCond::Field(f, op, _) => f.test(op, span, ctx),
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
            TraceField::ServiceCount => {
                Val::Num(distinct_services(t.spans.iter().map(|(_, c)| c.service_name())) as f64)
            }
            TraceField::Bytes => {
                Val::Num(t.spans.iter().map(|(s, _)| s.bytes.len()).sum::<usize>() as f64)
            }
        }
    }
}

/// Distinct service names of a trace (spans without one count as one more service). Computed
/// only when a rule asks: services are few, so a small vector beats a hash set.
pub(crate) fn distinct_services<'a>(services: impl Iterator<Item = Option<&'a [u8]>>) -> usize {
    let mut seen: smallvec::SmallVec<[Option<&[u8]>; 8]> = smallvec::SmallVec::new();
    for s in services {
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
    /// A trace field (`trace.duration`, `trace.error`...).
    Trace(TraceField),
    /// A field of the root span (`root.service`, `root.attr.http.route`...).
    Root(SpanField),
    /// A resource attribute: the root span's resource's, or the first span's while the root
    /// has not arrived (a trace's spans mostly share a few resources).
    Resource(Vec<u8>),
}

/// The hash of a trace's key: its values of `keys`, in order.
pub(crate) fn key_hash(keys: &[KeyField], t: &TraceView<'_>) -> u64 {
    let root = t.root.and_then(|i| t.spans.get(i)).copied();
    let first = t.spans.first().map(|(_, c)| *c);
    hash_keys(keys, |k| k.value(|f| f.value(t), root, first))
}

/// The hash of the values `value` gives each of `keys`, in order.
pub(crate) fn hash_keys<'a>(
    keys: &[KeyField],
    mut value: impl FnMut(&KeyField) -> Option<Val<'a>>,
) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for k in keys {
        hash_value(value(k), &mut h);
    }
    h.digest()
}

impl KeyField {
    /// The field's value for a trace whose trace fields `trace` gives, with its root span (if
    /// it arrived) and the context of its first span.
    pub(crate) fn value<'a>(
        &self,
        trace: impl FnOnce(TraceField) -> Val<'static>,
        root: Option<(SpanView<'a>, ContextView<'a>)>,
        first: Option<ContextView<'a>>,
    ) -> Option<Val<'a>> {
        match self {
            KeyField::Trace(f) => Some(trace(*f)),
            KeyField::Root(f) => root.and_then(|(s, ctx)| f.value(&s, &ctx)),
            // The root span's resource, or the first span's while the root has not arrived.
            KeyField::Resource(k) => root
                .map(|(_, ctx)| ctx)
                .or(first)
                .and_then(|c| c.resource_attr(k))
                .map(Val::from),
        }
    }
}

/// Feeds a key field's value into `h` (a missing value hashes as such).
pub(crate) fn hash_value(v: Option<Val<'_>>, h: &mut xxhash_rust::xxh3::Xxh3) {
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

impl Cond {
    /// Whether the condition reads a number that grows as spans arrive (duration, span
    /// count, services, bytes, a count of spans): its answer can change with any span, where
    /// the others change only when a probe's bit, the error flag or the root's arrival does.
    pub(crate) fn reads_growing(&self) -> bool {
        match self {
            Cond::All(cs) | Cond::Any(cs) => cs.iter().any(Cond::reads_growing),
            Cond::Not(c) => c.reads_growing(),
            Cond::Trace(f, ..) => !matches!(f, TraceField::Error | TraceField::RootPresent),
            Cond::Count(..) => true,
            Cond::AnySpan(_) | Cond::Root(_) | Cond::EverySpan(_) => false,
        }
    }

    /// Whether the trace satisfies the condition (compiled at load: no parsing here).
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
            Cond::EverySpan(c) => t.spans.iter().all(|(s, ctx)| c.eval(s, ctx)),
            Cond::Count(c, op, _) => op.test(Some(Val::Num(count(c, t) as f64))),
        }
    }
}

/// The spans of a trace that satisfy a span condition.
pub(crate) fn count(c: &SpanCond, t: &TraceView<'_>) -> usize {
    t.spans.iter().filter(|(s, ctx)| c.eval(s, ctx)).count()
}
