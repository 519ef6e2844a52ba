//! Rule tests: case files describing traces and the outcome each should get, run like a test
//! suite (`tailsift rules test DIR CASES...`) and explained (`tailsift rules explain`).
//!
//! A case's trace is built as OTLP protobuf, decoded and buffered by the same code the
//! pipeline runs, so a case sees exactly what a live trace would.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde::Deserialize;
use tokio::time::Instant;

use super::condition::{KINDS, STATUSES};
use super::{explain, RuleSet, TraceView, Verdict};
use crate::buffer::{Buffer, Completion};
use crate::decision::{Decision, DecisionCache};
use crate::offsets::OffsetHold;
use crate::otlp::decode::Decoder;
use crate::otlp::TraceId;

/// A case file that cannot be used, with the reason (and its line, when it has one).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CaseError {
    /// The case file.
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// One trace and the outcome it should get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Names the case in the report (and derives its trace id when none is given).
    pub name: String,
    /// 32 hex digits; derived from the case name when absent.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The trace's spans, in the compact form.
    #[serde(default)]
    pub spans: Vec<CaseSpan>,
    /// An OTLP JSON request (as OpenTelemetry exporters write it) holding the trace: a path
    /// relative to the case file, or the JSON itself.
    #[serde(default)]
    pub otlp_json: Option<String>,
    /// Decide this many copies of the trace first, at the same instant, to test the stateful
    /// outcomes under load (a rate limit spent, a throughput key hot). Default 0.
    #[serde(default)]
    pub after: u32,
    /// The wall-clock instant the case is decided at (RFC 3339), for time-boxed rules.
    /// Default: now.
    #[serde(default)]
    pub at: Option<String>,
    /// What the case's trace should get.
    pub expect: Expect,
}

/// The outcome a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// The trace is kept (forwarded).
    Keep,
    /// The trace is dropped.
    Drop,
}

/// When a case's trace is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// By an early rule, as its spans arrive (trigger `early`).
    Early,
    /// When it is complete (no early rule is sure before).
    Complete,
}

/// What a case expects; every part given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The name of the rule that decides the trace.
    #[serde(default)]
    pub rule: Option<String>,
    /// Whether the trace is kept or dropped.
    #[serde(default)]
    pub outcome: Option<Expected>,
    /// The sample rate the trace is kept (or would have been kept) at: keep 1 in N.
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// The marks the deciding rule adds to the kept trace's spans (`{}`: none, as for a
    /// dropped trace).
    #[serde(default)]
    pub marks: Option<BTreeMap<String, AttrValue>>,
    /// The factor rules that multiplied the deciding rule's rate, in rule order (`[]`:
    /// none). A factor rule decides no trace, so this is how a case names one.
    #[serde(default)]
    pub factors: Option<Vec<String>>,
    /// What the trace's spans look like as they leave, redacted (see [`crate::redact::cases`]).
    #[serde(default)]
    pub forwarded: Option<Vec<crate::redact::cases::ForwardedSpan>>,
    /// When the trace is decided, its spans arriving one by one in the order the case gives
    /// them: `early` or `complete`.
    #[serde(default)]
    pub trigger: Option<When>,
}

/// A span in the compact form. Only `name` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpan {
    /// The span's name.
    pub name: String,
    /// The resource's `service.name`. Default `service`.
    #[serde(default)]
    pub service: Option<String>,
    /// A name other spans' `parent` can refer to.
    #[serde(default)]
    pub id: Option<String>,
    /// The parent's `id`. Absent: the first span is the root and the others are its
    /// children. An id no span has makes a parent that never arrived.
    #[serde(default)]
    pub parent: Option<String>,
    /// unspecified, internal, server, client, producer, consumer. Default server.
    #[serde(default)]
    pub kind: Option<String>,
    /// unset, ok, error. Default unset.
    #[serde(default)]
    pub status: Option<String>,
    /// Start, after the trace's start. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub start: Option<Duration>,
    /// Default 1ms.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// The span's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    /// Resource attributes besides `service.name`.
    #[serde(default)]
    pub resource: BTreeMap<String, AttrValue>,
    /// The instrumentation scope the span is under. Default: none.
    #[serde(default)]
    pub scope: Option<CaseScope>,
    /// This many copies of the span (distinct ids), for large traces. Default 1.
    #[serde(default)]
    pub count: Option<u32>,
    /// The span's events.
    #[serde(default)]
    pub events: Vec<CaseEvent>,
    /// The span's links (to spans of other traces).
    #[serde(default)]
    pub links: Vec<CaseLink>,
    /// The W3C tracestate (`Span.trace_state`).
    #[serde(default)]
    pub trace_state: Option<String>,
    /// `Span.flags` (the W3C trace flags in the low 8 bits: 1 is sampled).
    #[serde(default)]
    pub flags: Option<u32>,
}

/// A span event in a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEvent {
    /// The event's name.
    pub name: String,
    /// After the span's start. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub at: Option<Duration>,
    /// The event's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
}

/// A span link in a case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseLink {
    /// 32 hex digits; default: an id derived from the case's.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The link's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
}

/// The instrumentation scope of a case's span.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaseScope {
    /// The scope's name.
    #[serde(default)]
    pub name: String,
    /// The scope's version.
    #[serde(default)]
    pub version: String,
    /// The scope's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
}

/// An attribute value in a case file: a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string (quoted, or any YAML scalar that is not a number or boolean).
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction or exponent.
    Double(f64),
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AttrValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AttrValue, E> {
                Ok(AttrValue::Str(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AttrValue, E> {
                Ok(AttrValue::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AttrValue, E> {
                Ok(AttrValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AttrValue, E> {
                i64::try_from(v)
                    .map(AttrValue::Int)
                    .map_err(|_| E::custom(format!("{v} is too large for an int attribute")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AttrValue, E> {
                Ok(AttrValue::Double(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn any_value(v: &AttrValue) -> any_value::Value {
    match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
    }
}

fn attrs(m: &BTreeMap<String, AttrValue>) -> Result<Vec<KeyValue>, String> {
    m.iter()
        .map(|(k, v)| {
            Ok(KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(any_value(v)),
                }),
                ..KeyValue::default()
            })
        })
        .collect()
}

fn enum_index(names: &[&str], got: &str, what: &str) -> Result<i32, String> {
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(got))
        .map(|i| i as i32)
        .ok_or_else(|| format!("unknown {what} `{got}` (supported: {})", names.join(", ")))
}

/// Start of every case trace (2023-11-14), in Unix nanoseconds.
const BASE: u64 = 1_700_000_000_000_000_000;

impl Case {
    /// The case's trace id.
    pub fn trace_id(&self) -> Result<TraceId, String> {
        match &self.trace_id {
            Some(h) => hex::decode(h.trim())
                .ok()
                .and_then(|b| TraceId::from_slice(&b))
                .ok_or_else(|| {
                    format!("`trace_id`: expected 32 hex digits, not all zero, got `{h}`")
                }),
            None => Ok(TraceId(crate::otlp::build::trace_id(
                xxhash_rust::xxh3::xxh3_64(self.name.as_bytes()),
            ))),
        }
    }

    /// The case as encoded OTLP requests.
    pub fn requests(&self, base_dir: &Path) -> Result<Vec<Vec<u8>>, String> {
        match (&self.otlp_json, self.spans.is_empty()) {
            (Some(_), false) => Err("give either `spans` or `otlp_json`, not both".into()),
            (Some(j), true) => {
                let text = if j.trim_start().starts_with('{') {
                    j.clone()
                } else {
                    let p = base_dir.join(j);
                    std::fs::read_to_string(&p)
                        .map_err(|e| format!("`otlp_json`: cannot read {}: {e}", p.display()))?
                };
                // One request per line (JSON lines, as the file exporter writes), or one
                // document.
                let docs: Vec<&str> = if text.trim_start().starts_with('{')
                    && text.lines().filter(|l| !l.trim().is_empty()).count() > 1
                    && text.lines().all(|l| {
                        let l = l.trim();
                        l.is_empty() || (l.starts_with('{') && l.ends_with('}'))
                    }) {
                    text.lines().filter(|l| !l.trim().is_empty()).collect()
                } else {
                    vec![text.as_str()]
                };
                docs.into_iter()
                    .map(|d| json_request(d.as_bytes()))
                    .collect()
            }
            (None, true) => Err("a case needs `spans` (or `otlp_json`)".into()),
            (None, false) => Ok(vec![self.compact()?.encode_to_vec()]),
        }
    }

    fn compact(&self) -> Result<ExportTraceServiceRequest, String> {
        let trace = self.trace_id()?.0.to_vec();
        // Expand counts, give every span an 8-byte id.
        let mut spans: Vec<(&CaseSpan, u64)> = Vec::new();
        for s in &self.spans {
            for _ in 0..s.count.unwrap_or(1).max(1) {
                let id = spans.len() as u64 + 1;
                spans.push((s, id));
            }
        }
        let id_of = |name: &str| -> u64 {
            spans
                .iter()
                .find(|(s, _)| s.id.as_deref() == Some(name))
                .map(|(_, id)| *id)
                // A parent that never arrived: an id no span of the case has.
                .unwrap_or(xxhash_rust::xxh3::xxh3_64(name.as_bytes()) | (1 << 63))
        };
        let mut by_resource: Vec<(String, Vec<KeyValue>, CaseScope, Vec<Span>)> = Vec::new();
        for (i, (s, id)) in spans.iter().enumerate() {
            let parent = match (&s.parent, i) {
                (Some(p), _) => id_of(p).to_be_bytes().to_vec(),
                (None, 0) => Vec::new(),
                (None, _) => 1u64.to_be_bytes().to_vec(),
            };
            let start = BASE + s.start.unwrap_or_default().as_nanos() as u64;
            let dur = s.duration.unwrap_or(Duration::from_millis(1)).as_nanos() as u64;
            let at = |e: String| format!("span `{}`: {e}", s.name);
            let kind = match &s.kind {
                Some(k) => enum_index(&KINDS, k, "kind").map_err(at)?,
                None => 2,
            };
            let status = match &s.status {
                Some(st) => Some(Status {
                    message: String::new(),
                    code: enum_index(&STATUSES, st, "status").map_err(at)?,
                })
                .filter(|st| st.code != status::StatusCode::Unset as i32),
                None => None,
            };
            let span = Span {
                trace_id: trace.clone(),
                span_id: id.to_be_bytes().to_vec(),
                parent_span_id: parent,
                name: s.name.clone(),
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + dur,
                attributes: attrs(&s.attributes).map_err(at)?,
                status,
                events: s
                    .events
                    .iter()
                    .map(|e| {
                        Ok(span::Event {
                            time_unix_nano: start + e.at.unwrap_or_default().as_nanos() as u64,
                            name: e.name.clone(),
                            attributes: attrs(&e.attributes)?,
                            dropped_attributes_count: 0,
                        })
                    })
                    .collect::<Result<_, String>>()
                    .map_err(at)?,
                links: s
                    .links
                    .iter()
                    .map(|l| {
                        let trace_id = match &l.trace_id {
                            Some(h) => hex::decode(h.trim())
                                .ok()
                                .filter(|b| b.len() == 16)
                                .ok_or_else(|| {
                                    format!("link `trace_id`: expected 32 hex digits, got `{h}`")
                                })?,
                            None => {
                                let mut t = trace.clone();
                                t[0] ^= 0xff;
                                t
                            }
                        };
                        Ok(span::Link {
                            trace_id,
                            span_id: 1u64.to_be_bytes().to_vec(),
                            attributes: attrs(&l.attributes)?,
                            ..span::Link::default()
                        })
                    })
                    .collect::<Result<_, String>>()
                    .map_err(at)?,
                trace_state: s.trace_state.clone().unwrap_or_default(),
                flags: s.flags.unwrap_or(0),
                ..Span::default()
            };
            let service = s.service.clone().unwrap_or_else(|| "service".into());
            let res = attrs(&s.resource).map_err(at)?;
            let scope = s.scope.clone().unwrap_or_default();
            match by_resource
                .iter_mut()
                .find(|(sv, r, sc, _)| *sv == service && *r == res && *sc == scope)
            {
                Some(g) => g.3.push(span),
                None => by_resource.push((service, res, scope, vec![span])),
            }
        }
        let mut resource_spans = Vec::new();
        for (service, mut res, scope, spans) in by_resource {
            res.insert(
                0,
                KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service)),
                    }),
                    ..KeyValue::default()
                },
            );
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: res,
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: scope.name,
                        version: scope.version,
                        attributes: attrs(&scope.attributes)?,
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        Ok(ExportTraceServiceRequest { resource_spans })
    }
}

/// An OTLP JSON request as protobuf.
fn json_request(json: &[u8]) -> Result<Vec<u8>, String> {
    crate::otlp::json::to_proto(json).map_err(|e| format!("`otlp_json`: {e}"))
}

/// Reads a case file.
pub fn load(path: &Path) -> Result<Vec<Case>, CaseError> {
    let err = |message: String| CaseError {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: CaseFile = crate::yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(file.cases)
}

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

/// How `rules test` and `rules explain` say when a trace is decided.
pub fn show_when(at: &Option<(usize, usize, String)>) -> String {
    match at {
        Some((k, n, name)) => {
            format!("decided early (trigger early), when span {k} of {n} (`{name}`) arrives")
        }
        None => "decided when the trace completes (no early rule is sure before)".into(),
    }
}

/// The result of running case files.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases whose expectations held.
    pub passed: usize,
    /// Cases that failed, or could not be run (a bad file, a trace that cannot be built).
    pub failed: usize,
    /// What a test runner prints.
    pub text: String,
}

fn expectation(e: &Expect) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &e.rule {
        parts.push(format!("rule `{r}`"));
    }
    if let Some(o) = e.outcome {
        parts.push(if o == Expected::Keep { "keep" } else { "drop" }.to_string());
    }
    if let Some(n) = e.sample_rate {
        parts.push(format!("sample rate {n}"));
    }
    if let Some(m) = &e.marks {
        parts.push(format!("marks {}", show_marks(m)));
    }
    if let Some(f) = &e.factors {
        parts.push(format!("factors [{}]", f.join(", ")));
    }
    parts.join(", ")
}

/// The marks a verdict adds to the trace's spans: its rule's, when it keeps.
fn marks_of(set: &RuleSet, v: &Verdict) -> BTreeMap<String, AttrValue> {
    if !v.keep {
        return BTreeMap::new();
    }
    set.rules()[v.rule]
        .marks
        .iter()
        .map(|(k, m)| {
            let a = match m {
                super::MarkValue::Str(s) => AttrValue::Str(s.clone()),
                super::MarkValue::Int(n) => AttrValue::Int(*n),
                super::MarkValue::Double(d) => AttrValue::Double(*d),
                super::MarkValue::Bool(b) => AttrValue::Bool(*b),
            };
            (k.clone(), a)
        })
        .collect()
}

fn show_marks(m: &BTreeMap<String, AttrValue>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| match v {
            AttrValue::Str(s) => format!("{k}: {s:?}"),
            AttrValue::Bool(b) => format!("{k}: {b}"),
            AttrValue::Int(n) => format!("{k}: {n}"),
            AttrValue::Double(d) => format!("{k}: {d}"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn got(set: &RuleSet, v: &Verdict, factors: &[String]) -> String {
    let mut out = format!(
        "rule `{}`, {}, sample rate {}, marks {}",
        set.rules()[v.rule].name,
        if v.keep { "keep" } else { "drop" },
        v.sample_rate,
        show_marks(&marks_of(set, v))
    );
    if !factors.is_empty() {
        out += &format!(", factors [{}]", factors.join(", "));
    }
    out
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
            .map(|x| matches!(x.outcome, super::Outcome::Factor { .. }))
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
        .map(super::window::instant)
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
        let at = match case.at.as_deref().map(super::window::instant).transpose() {
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
