//! Split an OTLP `ExportTraceServiceRequest` into per-trace span groups.
//!
//! Spans stay the bytes they arrived in. Each span keeps a reference to its resource and scope
//! (a [`SpanContext`], shared by all spans of one `ScopeSpans`), and the few facts that
//! completion needs are read on the way: trace id, root or not, error or not, timestamps.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use thiserror::Error;

use super::group::ByTrace;
use super::intern::Interner;
use super::view::SpanView;
use super::wire::{split_short_field, Fields, Value, WireError};
use super::{SpanContext, TraceId};

/// The tag of `Span.attributes` (field 9, length-delimited), the field a span repeats most.
const ATTRIBUTE_TAG: u8 = (9 << 3) | 2;
/// One-byte tags of the other `Span` fields decoding reads, with their wire types: ids, name
/// and status length-delimited (2), kind a varint (0), times fixed64 (1).
const TRACE_ID_TAG: u8 = (1 << 3) | 2;
const SPAN_ID_TAG: u8 = (2 << 3) | 2;
const PARENT_SPAN_ID_TAG: u8 = (4 << 3) | 2;
const NAME_TAG: u8 = (5 << 3) | 2;
const KIND_TAG: u8 = 6 << 3;
const START_TAG: u8 = (7 << 3) | 1;
const END_TAG: u8 = (8 << 3) | 1;
const STATUS_TAG: u8 = (15 << 3) | 2;
/// `Span.flags` (field 16, fixed32): a two-byte tag, 0x85 0x01.
const FLAGS_TAG: [u8; 2] = [0x80 | (((16 << 3) | 5) & 0x7f), ((16 << 3) | 5) >> 7];
const FLAGS_TAG_FIRST: u8 = FLAGS_TAG[0];

/// Why a message could not be decoded. The message is skipped as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The protobuf is malformed.
    #[error("malformed protobuf in {at}: {source}")]
    Wire {
        /// The message type being read when it failed, such as `"Span"`.
        at: &'static str,
        /// What was wrong with the bytes.
        #[source]
        source: WireError,
    },
    /// A message of zero bytes, in either encoding.
    #[error("empty message")]
    Empty,
    /// The topic's encoding is `otlp_json` and the message is not an OTLP/JSON trace request.
    #[error(transparent)]
    Json(#[from] super::json::JsonError),
}

impl DecodeError {
    /// Every value of [`DecodeError::kind`].
    pub const KINDS: &'static [&'static str] = &["malformed_protobuf", "malformed_json", "empty"];

    /// A small fixed label for metrics and rate-limited logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Wire { .. } => "malformed_protobuf",
            DecodeError::Empty => "empty",
            DecodeError::Json(_) => "malformed_json",
        }
    }
}

/// The facts about one span that completion needs, read while decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanFacts {
    /// `start_time_unix_nano`: nanoseconds since the Unix epoch, 0 when absent.
    pub start: u64,
    /// `end_time_unix_nano`: nanoseconds since the Unix epoch, 0 when absent.
    pub end: u64,
    /// The span has no parent: its `parent_span_id` is absent or all zeros.
    pub is_root: bool,
    /// The span's status code is `STATUS_CODE_ERROR` (2).
    pub is_error: bool,
    /// `SpanKind` number: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: u8,
}

#[derive(Debug, Clone)]
struct SpanRec {
    trace_id: TraceId,
    ctx: u32,
    /// The `ScopeSpans.spans` field: tag, length and the span.
    raw: Range<usize>,
    /// Length of the tag and length prefix within `raw`.
    header: u8,
    facts: SpanFacts,
    /// Where the span id, parent span id, name and run of attributes (from the first
    /// attribute field to the end of the last) lie in the span, (offset, length) each, and its
    /// status code: what the rules' [`SpanView`] reads, found in the decoding walk so that no
    /// one walks the span again for them.
    slices: [(u32, u32); 4],
    status_code: u8,
}

/// Reusable decoder: keeps its scratch space between messages so decoding allocates only the
/// contexts it has not seen before (none in the steady state).
#[derive(Debug, Default)]
pub struct Decoder {
    spans: Vec<SpanRec>,
    contexts: Vec<Arc<SpanContext>>,
    /// One shared copy of each resource and scope, across messages.
    interner: Interner,
    /// Scratch for grouping the spans by trace.
    by_trace: ByTrace<SpanRec>,
    /// Scratch: the raw resource and scope fields of the `ScopeSpans` being read.
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// Spans skipped because their trace id is missing or invalid, in the last message.
    pub invalid_spans: usize,
}

/// The spans of one trace within one message.
pub struct TraceGroup<'a> {
    /// The trace every span of the group belongs to.
    pub trace_id: TraceId,
    buf: &'a [u8],
    spans: &'a [SpanRec],
    contexts: &'a [Arc<SpanContext>],
}

/// One span of a [`TraceGroup`].
pub struct GroupSpan<'a> {
    /// The span's encoded `Span` message, exactly as it arrived.
    pub bytes: &'a [u8],
    /// The same span with its `ScopeSpans.spans` tag and length: ready to append to output.
    pub field: &'a [u8],
    /// The resource and scope the span arrived under; clone the `Arc` to keep it.
    pub context: &'a Arc<SpanContext>,
    /// What completion needs to know about the span, read while decoding.
    pub facts: SpanFacts,
    slices: [(u32, u32); 4],
    status_code: u8,
}

impl<'a> GroupSpan<'a> {
    /// The span's id and its parent span id (empty when absent), as decoding found them
    /// (the last occurrence of each wins, as protobuf says).
    pub fn ids(&self) -> (&'a [u8], &'a [u8]) {
        (self.slice(0), self.slice(1))
    }

    /// The field decoding found at `slices[i]` (empty when absent).
    fn slice(&self, i: usize) -> &'a [u8] {
        let (at, len) = self.slices[i];
        self.bytes
            .get(at as usize..at as usize + len as usize)
            .unwrap_or_default()
    }

    /// The span as the rules read it, from what decoding found: no second walk. Times are
    /// read as decoding reads them (a varint where a fixed64 belongs still counts).
    pub fn view(&self) -> SpanView<'a> {
        SpanView {
            bytes: self.bytes,
            span_id: self.slice(0),
            parent_span_id: self.slice(1),
            name: self.slice(2),
            attrs: self.slice(3),
            memo: None,
            kind: u64::from(self.facts.kind),
            start: self.facts.start,
            end: self.facts.end,
            status_code: u64::from(self.status_code),
        }
    }
}

impl<'a> TraceGroup<'a> {
    /// Spans of the trace in this message.
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    /// Never true for a group from [`Decoder::groups`]: a group has at least one span.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    /// The group's spans, in the order they arrived within the message.
    pub fn spans(&self) -> impl Iterator<Item = GroupSpan<'a>> + '_ {
        self.spans.iter().map(|s| GroupSpan {
            bytes: &self.buf[s.raw.start + usize::from(s.header)..s.raw.end],
            field: &self.buf[s.raw.clone()],
            context: &self.contexts[s.ctx as usize],
            facts: s.facts,
            slices: s.slices,
            status_code: s.status_code,
        })
    }

    /// The group's span bytes regrouped by context (resource and scope), in order of first
    /// appearance: what a buffered trace entry holds, and what [`super::encode::encode_trace`]
    /// takes. For spans that are forwarded without being buffered (late spans, `route`).
    /// A context's spans that lie side by side in the message (how exporters write them) are
    /// borrowed from it, not copied: late spans of a kept trace cost no allocation here.
    pub fn chunks(&self) -> Chunks<'a> {
        let mut out = Chunks::new();
        for s in self.spans {
            let ctx = &self.contexts[s.ctx as usize];
            let field = &self.buf[s.raw.clone()];
            match out.iter_mut().find(|(c, _)| Arc::ptr_eq(c, ctx)) {
                Some((_, Cow::Borrowed(run))) if run.as_ptr_range().end == field.as_ptr() => {
                    let from = run.as_ptr() as usize - self.buf.as_ptr() as usize;
                    *run = &self.buf[from..s.raw.end];
                }
                Some((_, run)) => run.to_mut().extend_from_slice(field),
                None => out.push((ctx, Cow::Borrowed(field))),
            }
        }
        out
    }
}

/// A trace group's spans by context: see [`TraceGroup::chunks`].
pub type Chunks<'a> = smallvec::SmallVec<[(&'a Arc<SpanContext>, Cow<'a, [u8]>); 2]>;

/// Reads a `Status` message: its code (the last one wins) into `code`, and whether it is
/// `STATUS_CODE_ERROR` (2) into `is_error` (which stays set once a status said so).
fn read_status(status: &[u8], code: &mut u8, is_error: &mut bool) -> Result<(), DecodeError> {
    for s in Fields::new(status) {
        let s = s.map_err(wire("Status"))?;
        if s.number == 3 {
            let c = s.value.as_u64().unwrap_or(0);
            *code = c.min(255) as u8;
            *is_error |= c == 2;
        }
    }
    Ok(())
}

/// Asks the processor to fetch a message's bytes (up to 16 KiB of them) into its caches while
/// decoding starts on the first ones. A message is usually read cold (written by librdkafka's
/// thread, or long ago), and decoding does not read it front to back: it steps over the scope
/// spans to the resource's last field, then comes back for the resource and the spans, which
/// the processor's own prefetching does not foresee. Written by hand: the standard library's
/// prefetch hint is unstable, and no crate is needed for one instruction.
#[inline]
fn prefetch(buf: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for at in (0..buf.len().min(16 << 10)).step_by(64) {
        // SAFETY: a prefetch only hints; it reads nothing and cannot fault, and the address is
        // within `buf` anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                buf.as_ptr().add(at).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = buf;
}

fn wire(at: &'static str) -> impl Fn(WireError) -> DecodeError {
    move |source| DecodeError::Wire { at, source }
}

impl Decoder {
    /// A decoder with no scratch space and an empty interner: keep one across messages, so
    /// that both are reused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one message. On success the groups are available through [`Decoder::groups`]
    /// until the next call, and the count is the spans grouped (those without a valid trace id
    /// are left out and counted in [`Decoder::invalid_spans`]). After an error, do not call
    /// `groups` until a decode succeeds: the spans read before the fault are still there,
    /// unsorted, and may lack their context (reading them would panic).
    pub fn decode(&mut self, buf: &[u8]) -> Result<usize, DecodeError> {
        self.spans.clear();
        self.contexts.clear();
        self.invalid_spans = 0;
        self.interner.message();
        if buf.is_empty() {
            return Err(DecodeError::Empty);
        }
        prefetch(buf);
        let base = buf.as_ptr() as usize;
        for field in Fields::new(buf) {
            let field = field.map_err(wire("ExportTraceServiceRequest"))?;
            if field.number != 1 {
                continue;
            }
            let Some(rs) = field.value.as_bytes() else {
                continue;
            };
            self.resource_spans(rs, base)?;
        }
        // Each trace's spans side by side, in arrival order.
        self.by_trace.group(&mut self.spans, |s| s.trace_id);
        Ok(self.spans.len())
    }

    fn resource_spans(&mut self, rs: &[u8], base: usize) -> Result<(), DecodeError> {
        // First pass: the resource's own fields (resource, schema_url), kept raw.
        let mut resource = std::mem::take(&mut self.resource);
        resource.clear();
        for f in Fields::new(rs) {
            let f = f.map_err(wire("ResourceSpans"))?;
            if f.number == 1 || f.number == 3 {
                resource.extend_from_slice(f.raw);
            }
        }
        let result = self.scope_spans(rs, &resource, base);
        self.resource = resource;
        result
    }

    fn scope_spans(&mut self, rs: &[u8], resource: &[u8], base: usize) -> Result<(), DecodeError> {
        for f in Fields::new(rs) {
            let f = f.map_err(wire("ResourceSpans"))?;
            if f.number != 2 {
                continue;
            }
            let Some(ss) = f.value.as_bytes() else {
                continue;
            };
            let mut scope = std::mem::take(&mut self.scope);
            scope.clear();
            let mut first_span = None;
            let read = self.scope_fields(ss, &mut scope, &mut first_span, base);
            if read.is_ok() && first_span.is_some_and(|i| i < self.spans.len()) {
                let ctx = self.interner.get(resource, &scope);
                self.contexts.push(ctx);
            }
            self.scope = scope;
            read?;
        }
        Ok(())
    }

    fn scope_fields(
        &mut self,
        ss: &[u8],
        scope: &mut Vec<u8>,
        first_span: &mut Option<usize>,
        base: usize,
    ) -> Result<(), DecodeError> {
        for g in Fields::new(ss) {
            let g = g.map_err(wire("ScopeSpans"))?;
            match g.number {
                1 | 3 => scope.extend_from_slice(g.raw),
                2 => {
                    if let Some(span) = g.value.as_bytes() {
                        let ctx = self.contexts.len() as u32;
                        first_span.get_or_insert(self.spans.len());
                        let header = (g.raw.len() - span.len()) as u8;
                        self.span(g.raw, header, base, ctx)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn span(&mut self, raw: &[u8], header: u8, base: usize, ctx: u32) -> Result<(), DecodeError> {
        let span = &raw[usize::from(header)..];
        let mut trace_id = None;
        let mut facts = SpanFacts {
            is_root: true,
            ..SpanFacts::default()
        };
        let mut slices = [(0u32, 0u32); 4];
        let mut status_code = 0u8;
        // The addresses of the first attribute and of the end of the last one.
        let mut attrs = (0usize, 0usize);
        // Where a field's bytes lie within the span (spans are far below 4 GiB: Kafka
        // messages are).
        let at = |b: &[u8]| {
            (
                (b.as_ptr() as usize - span.as_ptr() as usize) as u32,
                b.len() as u32,
            )
        };
        let mut rest = span;
        while let [tag, ..] = *rest {
            // The short path: the fields every SDK writes, by their one-byte tags, read without
            // the general walk (whose decoding of a tag into number and wire type, and of the
            // value by wire type, was most of decoding a span). Anything else, or a field that
            // does not fit (a longer length, bytes past the end), takes the general walk below,
            // which reads it the same way or reports it malformed. Attributes first: a span
            // has more of them than of anything else.
            if let Some((_, mut after)) = split_short_field(rest, ATTRIBUTE_TAG) {
                // A span's attributes come one after the other: the whole run at once.
                while let Some((_, next)) = split_short_field(after, ATTRIBUTE_TAG) {
                    after = next;
                }
                let (from, to) = (rest.as_ptr() as usize, after.as_ptr() as usize);
                attrs = (if attrs.1 == 0 { from } else { attrs.0 }, to);
                rest = after;
                continue;
            }
            let short = match tag {
                TRACE_ID_TAG => split_short_field(rest, TRACE_ID_TAG).map(|(b, after)| {
                    trace_id = TraceId::from_slice(b);
                    after
                }),
                SPAN_ID_TAG => split_short_field(rest, SPAN_ID_TAG).map(|(b, after)| {
                    slices[0] = at(b);
                    after
                }),
                PARENT_SPAN_ID_TAG => {
                    split_short_field(rest, PARENT_SPAN_ID_TAG).map(|(b, after)| {
                        facts.is_root = b.iter().all(|&x| x == 0);
                        slices[1] = at(b);
                        after
                    })
                }
                NAME_TAG => split_short_field(rest, NAME_TAG).map(|(b, after)| {
                    slices[2] = at(b);
                    after
                }),
                KIND_TAG => match rest {
                    [_, kind, after @ ..] if *kind < 0x80 => {
                        facts.kind = *kind;
                        Some(after)
                    }
                    _ => None,
                },
                START_TAG => rest[1..].split_first_chunk::<8>().map(|(t, after)| {
                    facts.start = u64::from_le_bytes(*t);
                    after
                }),
                END_TAG => rest[1..].split_first_chunk::<8>().map(|(t, after)| {
                    facts.end = u64::from_le_bytes(*t);
                    after
                }),
                STATUS_TAG => match split_short_field(rest, STATUS_TAG) {
                    Some((status, after)) => {
                        read_status(status, &mut status_code, &mut facts.is_error)?;
                        Some(after)
                    }
                    None => None,
                },
                // `flags` (field 16, fixed32, added in OTLP 1.1), which recent SDKs write on
                // every span: not read, only passed.
                FLAGS_TAG_FIRST => match rest {
                    [_, second, _, _, _, _, after @ ..] if *second == FLAGS_TAG[1] => Some(after),
                    _ => None,
                },
                _ => None,
            };
            if let Some(after) = short {
                rest = after;
                continue;
            }
            let Some(f) = Fields::new(rest).next() else {
                break;
            };
            let f = f.map_err(wire("Span"))?;
            rest = &rest[f.raw.len()..];
            match (f.number, f.value) {
                (1, v) => trace_id = v.as_bytes().and_then(TraceId::from_slice),
                (2, Value::Bytes(b)) => slices[0] = at(b),
                (4, v) => {
                    facts.is_root = v.as_bytes().is_none_or(|b| b.iter().all(|&x| x == 0));
                    if let Value::Bytes(b) = v {
                        slices[1] = at(b);
                    }
                }
                (5, Value::Bytes(b)) => slices[2] = at(b),
                (9, _) => {
                    // The run of attributes: from the first one's tag to the last one's end.
                    let (from, to) = (f.raw.as_ptr() as usize, f.raw.as_ptr_range().end as usize);
                    attrs = (if attrs.1 == 0 { from } else { attrs.0 }, to);
                }
                (6, v) => facts.kind = v.as_u64().unwrap_or(0).min(255) as u8,
                (7, v) => facts.start = v.as_u64().unwrap_or(0),
                (8, v) => facts.end = v.as_u64().unwrap_or(0),
                (15, v) => {
                    if let Some(status) = v.as_bytes() {
                        read_status(status, &mut status_code, &mut facts.is_error)?;
                    }
                }
                _ => {}
            }
        }
        if attrs.1 != 0 {
            slices[3] = (
                (attrs.0 - span.as_ptr() as usize) as u32,
                (attrs.1 - attrs.0) as u32,
            );
        }
        match trace_id {
            Some(trace_id) => {
                let start = raw.as_ptr() as usize - base;
                self.spans.push(SpanRec {
                    trace_id,
                    ctx,
                    raw: start..start + raw.len(),
                    header,
                    facts,
                    slices,
                    status_code,
                });
            }
            None => self.invalid_spans += 1,
        }
        Ok(())
    }

    /// The per-trace groups of the last decoded message, in trace id order.
    pub fn groups<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = TraceGroup<'a>> + 'a {
        self.spans
            .chunk_by(|a, b| a.trace_id == b.trace_id)
            .map(move |spans| TraceGroup {
                trace_id: spans[0].trace_id,
                buf,
                spans,
                contexts: &self.contexts,
            })
    }
}
