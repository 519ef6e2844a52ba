//! OTLP trace data at the wire level: decode requests into per-trace groups, read spans for the
//! rules, and encode kept traces, all without re-encoding the spans themselves.

pub mod build;
pub mod decode;
pub mod encode;
mod group;
pub mod intern;
pub mod json;
pub mod mark;
pub mod view;
pub mod wire;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::Deserialize;

use decode::DecodeError;

/// How the messages of an input topic are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Protobuf `ExportTraceServiceRequest` (the Collector's `otlp_proto`, its default).
    #[default]
    OtlpProto,
    /// OTLP/JSON `ExportTraceServiceRequest` (the Collector's `otlp_json`).
    OtlpJson,
}

impl Encoding {
    /// The message as protobuf: `payload` itself, or its JSON converted into `scratch`.
    pub fn as_proto<'a>(
        self,
        payload: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], DecodeError> {
        match self {
            Encoding::OtlpProto => Ok(payload),
            Encoding::OtlpJson => {
                if payload.is_empty() {
                    return Err(DecodeError::Empty);
                }
                scratch.clear();
                json::to_proto_into(payload, scratch).map_err(DecodeError::Json)?;
                Ok(scratch)
            }
        }
    }
}

/// A span id as a number, for comparing ids (orphan counting): an 8-byte id (what the spec
/// requires) as it is, any other hashed with the top bit set (so never 0).
pub fn id64(id: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(id) {
        Ok(a) => u64::from_be_bytes(a),
        Err(_) => xxhash_rust::xxh3::xxh3_64(id) | 1 << 63,
    }
}

/// A 16-byte W3C trace id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// A trace id from its 16 bytes; `None` for a wrong length or the invalid all-zero id.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let a: [u8; 16] = b.try_into().ok()?;
        (a != [0; 16]).then_some(TraceId(a))
    }

    /// The 32-character lowercase hex form (the Kafka key upstream collectors use).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 56 random bits W3C trace context level 2 puts in the last 7 bytes.
    pub fn randomness(&self) -> u64 {
        let mut a = [0u8; 8];
        a[1..].copy_from_slice(&self.0[9..]);
        u64::from_be_bytes(a)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The resource and scope that a run of spans arrived under, kept as raw protobuf fields:
/// `ResourceSpans` minus its scope spans, and `ScopeSpans` minus its spans.
#[derive(Debug)]
pub struct SpanContext {
    bytes: Box<[u8]>,
    split: usize,
    /// Shared through the decoder's [`intern::Interner`]: its memory is bounded there, so a
    /// trace holding it does not count it against the budget.
    pub interned: bool,
    /// Where the `Resource` and `InstrumentationScope` messages lie in `bytes`: found once
    /// here, so that the rules do not walk the context again for every trace they look at.
    resource: std::ops::Range<usize>,
    scope: std::ops::Range<usize>,
    /// Where the resource's `service.name` string lies in `bytes`, if it has one: rules ask
    /// for a span's service once per span and condition, and the answer is the same for every
    /// span of the context, so it is looked up once here (an interned context: once per
    /// distinct resource), not by walking the resource's attributes each time.
    service: Option<std::ops::Range<usize>>,
    /// The generation of the last redaction (`redact::Redaction`) that found nothing to
    /// redact in this context's resource; 0: none yet. An interned context is forwarded under
    /// thousands of traces, and proving its resource clean again for each (a search of its
    /// few hundred bytes) was a tenth of redaction's cost (BENCHMARKS.md, "Redaction").
    /// Generations are never reused, so a reload cannot read another configuration's answer.
    pub(crate) resource_clean_for: std::sync::atomic::AtomicU64,
    /// Which of a rule set's span conditions no span of this context can pass, because what
    /// they require of the resource or scope (`span.service = payment` in an `all:`) it does
    /// not have: the set's probe generation in the high 32 bits, one bit per probe slot below
    /// 32 in the low; 0: not worked out yet (see `rules::Probes::observe`). Worked out once
    /// per context and rule set instead of once per span and condition.
    pub(crate) probes_blocked: std::sync::atomic::AtomicU64,
}

/// Equal when the fields are, interned or not.
impl PartialEq for SpanContext {
    fn eq(&self, other: &Self) -> bool {
        self.split == other.split && self.bytes == other.bytes
    }
}

impl Eq for SpanContext {}

impl SpanContext {
    /// A context from the raw `ResourceSpans` fields other than `scope_spans` and the raw
    /// `ScopeSpans` fields other than `spans`, as [`resource_fields`](Self::resource_fields)
    /// and [`scope_fields`](Self::scope_fields) give them back. Not interned: only the
    /// [`intern::Interner`] sets `interned`, on the contexts it keeps.
    pub fn new(mut resource: Vec<u8>, scope: Vec<u8>) -> Self {
        let split = resource.len();
        resource.extend_from_slice(&scope);
        let bytes = resource.into_boxed_slice();
        let resource = last_message(&bytes, 0..split);
        let scope = last_message(&bytes, split..bytes.len());
        let service = match view::find_attr(&bytes[resource.clone()], 1, b"service.name") {
            Some(view::AttrValue::Str(s)) => Some(range_in(&bytes, s)),
            _ => None,
        };
        SpanContext {
            bytes,
            split,
            interned: false,
            resource,
            scope,
            service,
            resource_clean_for: std::sync::atomic::AtomicU64::new(0),
            probes_blocked: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The resource's `service.name`, if it is a string.
    pub fn service_name(&self) -> Option<&[u8]> {
        self.service.clone().map(|r| &self.bytes[r])
    }

    /// The `Resource` message: the last field 1 of the resource fields (empty if none).
    pub fn resource_message(&self) -> &[u8] {
        &self.bytes[self.resource.clone()]
    }

    /// The `InstrumentationScope` message: the last field 1 of the scope fields (empty if
    /// none).
    pub fn scope_message(&self) -> &[u8] {
        &self.bytes[self.scope.clone()]
    }

    /// Raw `ResourceSpans` fields other than `scope_spans` (resource, schema_url).
    pub fn resource_fields(&self) -> &[u8] {
        &self.bytes[..self.split]
    }

    /// Raw `ScopeSpans` fields other than `spans` (scope, schema_url).
    pub fn scope_fields(&self) -> &[u8] {
        &self.bytes[self.split..]
    }

    /// Bytes this context occupies.
    pub fn size(&self) -> usize {
        self.bytes.len() + std::mem::size_of::<Self>()
    }

    /// Bytes a trace holding this context counts against the memory budget: none for an
    /// interned context (bounded by the interner), else its size.
    pub fn budget_size(&self) -> usize {
        if self.interned {
            0
        } else {
            self.size()
        }
    }
}

/// Where, within `bytes`, the payload of the last length-delimited field 1 of `bytes[within]`
/// lies (a repeated singular field: the last one wins); empty when there is none.
fn last_message(bytes: &[u8], within: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let base = bytes.as_ptr() as usize;
    wire::Fields::new(&bytes[within])
        .filter_map(Result::ok)
        .filter(|f| f.number == 1)
        .filter_map(|f| f.value.as_bytes())
        .last()
        .map_or(0..0, |b| {
            let start = b.as_ptr() as usize - base;
            start..start + b.len()
        })
}

/// Where `part`, a slice of `bytes`, lies in it.
fn range_in(bytes: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
    start..start + part.len()
}
