//! Building OTLP requests from short descriptions: for tests, fixtures and benchmarks.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A well-spread trace id derived from `n` (the last 7 bytes are what samplers read).
pub fn trace_id(n: u64) -> [u8; 16] {
    let h = xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes());
    let mut id = h.to_be_bytes();
    id[0] |= 1; // never the invalid all-zero id
    id
}

/// A span of `trace` with id `id` (non-zero), child of `parent` (a root when `None`).
pub fn span(
    trace: [u8; 16],
    id: u64,
    parent: Option<u64>,
    name: &str,
    start: u64,
    end: u64,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.to_string(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Span::default()
    }
}

/// A string attribute.
pub fn attr_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

/// An integer attribute.
pub fn attr_int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

/// Marks a span failed.
pub fn with_error(mut s: Span) -> Span {
    s.status = Some(Status {
        message: "failed".into(),
        code: status::StatusCode::Error as i32,
    });
    s
}

/// Adds attributes to a span.
pub fn with_attrs(mut s: Span, attrs: Vec<KeyValue>) -> Span {
    s.attributes.extend(attrs);
    s
}

/// The `ResourceSpans` of one service holding `spans` under one scope.
pub fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![attr_str("service.name", service)],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: format!("{service}-instrumentation"),
                version: "1.0.0".into(),
                ..InstrumentationScope::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// An encoded request from one service.
pub fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    encode(vec![resource_spans(service, spans)])
}

/// An encoded request of several services' spans.
pub fn encode(resource_spans: Vec<ResourceSpans>) -> Vec<u8> {
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

/// Every span of an encoded request with its service name, for checking output.
pub fn spans_of(payload: &[u8]) -> Result<Vec<(String, Span)>, prost::DecodeError> {
    let req = ExportTraceServiceRequest::decode(payload)?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push((service.clone(), s));
            }
        }
    }
    Ok(out)
}
