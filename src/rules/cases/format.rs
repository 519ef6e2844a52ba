//! The case-file format: what a case file says (a trace, in the compact form or as OTLP JSON,
//! and the outcome it should get), and reading one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

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
