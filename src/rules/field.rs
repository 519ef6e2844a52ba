//! Field names: what `trace.`, `span.`, `root.`, `resource.` and `scope.` fields exist, the
//! type of each (which decides the operators and values it takes), and which can key a sampler.

use super::condition::{KeyField, SpanField, TraceField, KINDS, STATUSES};
use super::expr::unknown;

pub(crate) const FIELDS: [&str; 24] = [
    "trace.duration",
    "trace.span_count",
    "trace.error",
    "trace.root",
    "trace.service_count",
    "trace.bytes",
    "span.name",
    "span.kind",
    "span.status",
    "span.duration",
    "span.service",
    "span.attr.<key>",
    "span.trace_state",
    "span.flags",
    "span.sampled",
    "span.event.name",
    "span.event.attr.<key>",
    "span.event_count",
    "span.link.attr.<key>",
    "span.link_count",
    "resource.attr.<key>",
    "scope.name",
    "scope.version",
    "scope.attr.<key>",
];

/// The type a field's values have, which decides the operators and values it accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ty {
    Duration,
    Number,
    Bool,
    Str,
    Enum(&'static [&'static str]),
    /// Attributes: typed by their value at run time, so the literal decides the comparison.
    Attr,
}

impl Ty {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ty::Duration => "a duration",
            Ty::Number => "a number",
            Ty::Bool => "a boolean",
            Ty::Str => "a string",
            Ty::Enum(_) => "one of a fixed set of names",
            Ty::Attr => "an attribute",
        }
    }
}

pub(crate) enum Field {
    Trace(TraceField),
    Span(SpanField),
    Root(SpanField),
}

fn span_field(rest: &str) -> Option<(SpanField, Ty)> {
    Some(match rest {
        "name" => (SpanField::Name, Ty::Str),
        "kind" => (SpanField::Kind, Ty::Enum(&KINDS)),
        "status" => (SpanField::Status, Ty::Enum(&STATUSES)),
        "duration" => (SpanField::Duration, Ty::Duration),
        "service" => (SpanField::Service, Ty::Str),
        "trace_state" => (SpanField::TraceState, Ty::Str),
        "flags" => (SpanField::Flags, Ty::Number),
        "sampled" => (SpanField::Sampled, Ty::Bool),
        "event.name" => (SpanField::EventName, Ty::Str),
        "event_count" => (SpanField::EventCount, Ty::Number),
        "link_count" => (SpanField::LinkCount, Ty::Number),
        _ => {
            let key = |prefix: &str| {
                rest.strip_prefix(prefix)
                    .filter(|k| !k.is_empty())
                    .map(|k| k.as_bytes().to_vec())
            };
            if let Some(k) = key("attr.") {
                (SpanField::Attr(k), Ty::Attr)
            } else if let Some(k) = key("event.attr.") {
                (SpanField::EventAttr(k), Ty::Attr)
            } else {
                (SpanField::LinkAttr(key("link.attr.")?), Ty::Attr)
            }
        }
    })
}

pub(crate) fn field(name: &str) -> Result<(Field, Ty), String> {
    let found = match name.split_once('.') {
        Some(("trace", f)) => match f {
            "duration" => Some((Field::Trace(TraceField::Duration), Ty::Duration)),
            "span_count" => Some((Field::Trace(TraceField::SpanCount), Ty::Number)),
            "error" => Some((Field::Trace(TraceField::Error), Ty::Bool)),
            "root" => Some((Field::Trace(TraceField::RootPresent), Ty::Bool)),
            "service_count" => Some((Field::Trace(TraceField::ServiceCount), Ty::Number)),
            "bytes" => Some((Field::Trace(TraceField::Bytes), Ty::Number)),
            _ => None,
        },
        Some(("span", f)) => span_field(f).map(|(f, t)| (Field::Span(f), t)),
        Some(("root", f)) => span_field(f).map(|(f, t)| (Field::Root(f), t)),
        Some(("resource", f)) => f.strip_prefix("attr.").filter(|k| !k.is_empty()).map(|k| {
            (
                Field::Span(SpanField::ResourceAttr(k.as_bytes().to_vec())),
                Ty::Attr,
            )
        }),
        Some(("scope", f)) => match f {
            "name" => Some((Field::Span(SpanField::ScopeName), Ty::Str)),
            "version" => Some((Field::Span(SpanField::ScopeVersion), Ty::Str)),
            _ => f.strip_prefix("attr.").filter(|k| !k.is_empty()).map(|k| {
                (
                    Field::Span(SpanField::ScopeAttr(k.as_bytes().to_vec())),
                    Ty::Attr,
                )
            }),
        },
        _ => None,
    };
    found.ok_or_else(|| unknown("field", name, &FIELDS))
}

/// Parses a sampler key: a trace field, a root-span field or a resource attribute (one value
/// per trace).
pub(crate) fn key_field(name: &str) -> Result<KeyField, String> {
    match field(name)? {
        (Field::Span(SpanField::ResourceAttr(k)), _) => Ok(KeyField::Resource(k)),
        (Field::Trace(f), _) => Ok(KeyField::Trace(f)),
        (Field::Root(f), _) if f.is_multi() => Err(format!(
            "`{name}` has one value per event or link, but a key needs one value per trace"
        )),
        (Field::Root(f), _) => Ok(KeyField::Root(f)),
        (Field::Span(_), _) => Err(format!(
            "`{name}` has one value per span, but a key needs one value per trace: use a \
             `trace.` field, a `resource.attr.` or the root span's (`root.{}`)",
            name.split_once('.')
                .map_or(name, |(scope, rest)| if scope == "span" {
                    rest
                } else {
                    name
                })
        )),
    }
}
