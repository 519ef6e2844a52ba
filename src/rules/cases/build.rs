//! A case's trace built as OTLP protobuf requests, from the compact form or from OTLP JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use super::{AttrValue, Case, CaseScope, CaseSpan};
use crate::otlp::TraceId;
use crate::rules::condition::{KINDS, STATUSES};

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
