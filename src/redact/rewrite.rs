//! The field-level rewrite. A span is walked once: its attributes (field 9), its events' (11,
//! attributes at 3) and its links' (13, attributes at 4). Nothing is copied until the first
//! attribute that changes; from there the span is rebuilt from its original field bytes, only
//! the changed attributes (and the event or link holding them) re-encoded, and given a new
//! length. A span with nothing to redact costs one walk and no allocation, and leaves as it
//! arrived. Resources (`ResourceSpans.resource`, attributes at 1) likewise.

use hmac::Mac;

use super::{serves, Action, Allowlist, Entry, Redaction};
use crate::otlp::wire::{put_len_prefix, Fields, Value, WireError};
use crate::otlp::SpanContext;

/// Why a span (or resource) cannot be redacted: it is then not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unparsable {
    /// A message inside the span does not parse.
    #[error("{what} does not parse: {source}")]
    Wire {
        /// Which message.
        what: &'static str,
        /// The wire error.
        source: WireError,
    },
    /// A field that must be a message has a numeric wire type.
    #[error("{0} is not a message")]
    NotMessage(&'static str),
}

/// What one forward redacted, added to the counters once (see [`Redaction::record`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Attributes changed, per entry then per allowlist (empty until the first).
    pub attributes: Vec<u64>,
    /// Spans and resources rewritten.
    pub rewritten: u64,
    /// Spans not forwarded: their attributes could not be parsed.
    pub refused: u64,
}

impl Tally {
    fn count(&mut self, slot: usize, slots: usize) {
        if self.attributes.is_empty() {
            self.attributes.resize(slots, 0);
        }
        self.attributes[slot] += 1;
    }
}

/// The entries and allowlist that apply to one service.
struct Plan<'r> {
    red: &'r Redaction,
    entries: smallvec::SmallVec<[(usize, &'r Entry); 8]>,
    allow: Option<(usize, &'r Allowlist)>,
}

/// Where attributes sit in each message redaction walks into.
#[derive(Clone, Copy)]
enum Level {
    Span,
    Event,
    Link,
    ResourceSpans,
    Resource,
}

impl Level {
    fn attributes(self) -> Option<u32> {
        match self {
            Level::Span => Some(9),
            Level::Event => Some(3),
            Level::Link => Some(4),
            Level::Resource => Some(1),
            Level::ResourceSpans => None,
        }
    }

    fn nested(self, field: u32) -> Option<Level> {
        match (self, field) {
            (Level::Span, 11) => Some(Level::Event),
            (Level::Span, 13) => Some(Level::Link),
            (Level::ResourceSpans, 1) => Some(Level::Resource),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Span => "span",
            Level::Event => "span event",
            Level::Link => "span link",
            Level::ResourceSpans => "resource spans",
            Level::Resource => "resource",
        }
    }
}

/// One chunk of a forwarded trace after redaction.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The context with its resource redacted; `None`: unchanged.
    pub context: Option<SpanContext>,
    /// The span fields rewritten; `None`: unchanged, forward the original bytes.
    pub spans: Option<Vec<u8>>,
    /// Span fields (tag and length included) that cannot be redacted and are not forwarded,
    /// with the first reason.
    pub refused: Vec<u8>,
    /// Why the first refused span was refused.
    pub reason: Option<Unparsable>,
}

impl Redaction {
    fn plan(&self, service: Option<&[u8]>) -> Plan<'_> {
        Plan {
            red: self,
            entries: self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.services.as_ref().is_none_or(|s| serves(s, service)))
                .collect(),
            allow: self
                .allowlists
                .iter()
                .enumerate()
                .find(|(_, a)| serves(&a.services, service))
                .map(|(i, a)| (self.entries.len() + i, a)),
        }
    }

    /// Redacts one chunk of a forwarded trace: `spans` is a run of `ScopeSpans.spans` fields
    /// under `ctx`. Counts into `tally`.
    pub fn chunk(&self, ctx: &SpanContext, spans: &[u8], tally: &mut Tally) -> Chunk {
        let plan = self.plan(ctx.service_name());
        let mut chunk = Chunk::default();
        if plan.entries.is_empty() && plan.allow.is_none() {
            return chunk;
        }
        match plan.message(ctx.resource_fields(), Level::ResourceSpans, tally) {
            Ok(None) => {}
            Ok(Some(resource)) => {
                tally.rewritten += 1;
                chunk.context = Some(SpanContext::new(resource, ctx.scope_fields().to_vec()));
            }
            Err(e) => {
                // Every span of the chunk would leave under an unredacted resource.
                tally.refused += Fields::new(spans).count() as u64;
                chunk.refused = spans.to_vec();
                chunk.reason = Some(e);
                chunk.spans = Some(Vec::new());
                return chunk;
            }
        }
        let mut copied = 0;
        for f in Fields::new(spans) {
            // The run was walked when it arrived; a field that fails now ends it, as in encoding.
            let Ok(f) = f else { break };
            let Value::Bytes(span) = f.value else {
                continue;
            };
            let start = offset(spans, f.raw);
            let replacement = match plan.message(span, Level::Span, tally) {
                Ok(None) => continue,
                Ok(Some(new)) => {
                    tally.rewritten += 1;
                    let mut field = Vec::with_capacity(new.len() + 6);
                    put_len_prefix(&mut field, f.number, new.len());
                    field.extend_from_slice(&new);
                    field
                }
                Err(e) => {
                    tally.refused += 1;
                    chunk.refused.extend_from_slice(f.raw);
                    chunk.reason.get_or_insert(e);
                    Vec::new()
                }
            };
            let out = chunk
                .spans
                .get_or_insert_with(|| Vec::with_capacity(spans.len() + 64));
            out.extend_from_slice(&spans[copied..start]);
            out.extend_from_slice(&replacement);
            copied = start + f.raw.len();
        }
        if let Some(out) = &mut chunk.spans {
            out.extend_from_slice(&spans[copied..]);
        }
        chunk
    }
}

/// Where `part`, a slice of `whole`, starts in it.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

fn wire(what: Level) -> impl Fn(WireError) -> Unparsable {
    move |source| Unparsable::Wire {
        what: what.name(),
        source,
    }
}

/// An attribute as found: its key field's raw bytes, its key, its `AnyValue` payload.
struct Attr<'a> {
    key_raw: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
}

fn attr(kv: &[u8]) -> Result<Attr<'_>, Unparsable> {
    let mut a = Attr {
        key_raw: &[],
        key: &[],
        value: &[],
    };
    for f in Fields::new(kv) {
        let f = f.map_err(|source| Unparsable::Wire {
            what: "attribute",
            source,
        })?;
        match (f.number, f.value) {
            (1, Value::Bytes(k)) => {
                a.key_raw = f.raw;
                a.key = k;
            }
            (2, Value::Bytes(v)) => a.value = v,
            (1 | 2, _) => return Err(Unparsable::NotMessage("an attribute's key or value")),
            _ => {}
        }
    }
    Ok(a)
}

/// An `AnyValue`'s text for hashing and scrubbing: a string as it is, numbers and booleans as
/// they print, bytes, arrays and maps as their encoded bytes. `None` for a string-only use.
enum Text<'a> {
    Str(&'a [u8]),
    Other(Vec<u8>),
}

fn value_text(any: &[u8]) -> Result<Text<'_>, Unparsable> {
    let mut text = Text::Other(Vec::new());
    for f in Fields::new(any) {
        let f = f.map_err(|source| Unparsable::Wire {
            what: "attribute value",
            source,
        })?;
        text = match (f.number, f.value) {
            (1, Value::Bytes(s)) => Text::Str(s),
            (2, Value::Varint(b)) => Text::Other(if b != 0 {
                b"true".to_vec()
            } else {
                b"false".to_vec()
            }),
            (3, Value::Varint(i)) => Text::Other((i as i64).to_string().into_bytes()),
            (4, Value::Fixed64(d)) => Text::Other(f64::from_bits(d).to_string().into_bytes()),
            (5..=7, Value::Bytes(b)) => Text::Other(b.to_vec()),
            (1..=7, _) => return Err(Unparsable::NotMessage("an attribute value")),
            _ => text,
        };
    }
    Ok(text)
}

/// A `KeyValue` payload with `key_raw` (the key field as it arrived) and a string value.
fn string_kv(key_raw: &[u8], s: &[u8]) -> Vec<u8> {
    let any = crate::otlp::wire::len_field_size(1, s.len());
    let mut out = Vec::with_capacity(key_raw.len() + any + 8);
    out.extend_from_slice(key_raw);
    put_len_prefix(&mut out, 2, any);
    put_len_prefix(&mut out, 1, s.len());
    out.extend_from_slice(s);
    out
}

impl Plan<'_> {
    fn slots(&self) -> usize {
        self.red.entries.len() + self.red.allowlists.len()
    }

    /// The attribute's fate: `None` kept as it is, `Some(None)` removed, `Some(Some(kv))`
    /// replaced by the `KeyValue` payload `kv`.
    fn attribute(
        &self,
        kv: &[u8],
        tally: &mut Tally,
    ) -> Result<Option<Option<Vec<u8>>>, Unparsable> {
        let a = attr(kv)?;
        if let Some((slot, allow)) = self.allow {
            if !allow.keys.matches(a.key) {
                tally.count(slot, self.slots());
                return Ok(Some(None));
            }
        }
        let Some((slot, entry)) = self.entries.iter().find(|(_, e)| e.keys.matches(a.key)) else {
            return Ok(None);
        };
        let new = match &entry.action {
            Action::Remove => None,
            Action::Replace(mask) => Some(string_kv(a.key_raw, mask)),
            Action::Hash => {
                let text = value_text(a.value)?;
                let bytes = match &text {
                    Text::Str(s) => s,
                    Text::Other(b) => b.as_slice(),
                };
                // A hash entry cannot be compiled without a key (a load error).
                let Some(h) = &self.red.hasher else {
                    return Ok(None);
                };
                let mut h = h.clone();
                h.update(bytes);
                let hex = hex::encode(h.finalize().into_bytes());
                Some(string_kv(a.key_raw, hex.as_bytes()))
            }
            Action::Scrub(scrub) => match value_text(a.value)? {
                Text::Str(s) => match scrub.apply(s) {
                    Some(v) => Some(string_kv(a.key_raw, &v)),
                    None => return Ok(None),
                },
                Text::Other(_) => return Ok(None),
            },
        };
        tally.count(*slot, self.slots());
        Ok(Some(new))
    }

    /// The message rewritten (its fields, without tag or length), or `None` when nothing in it
    /// changes.
    fn message(
        &self,
        msg: &[u8],
        level: Level,
        tally: &mut Tally,
    ) -> Result<Option<Vec<u8>>, Unparsable> {
        let attrs = level.attributes();
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        for f in Fields::new(msg) {
            let f = f.map_err(wire(level))?;
            let replacement = if Some(f.number) == attrs {
                let kv = f
                    .value
                    .as_bytes()
                    .ok_or(Unparsable::NotMessage("an attribute"))?;
                match self.attribute(kv, tally)? {
                    None => continue,
                    Some(None) => Vec::new(),
                    Some(Some(kv)) => {
                        let mut field = Vec::with_capacity(kv.len() + 4);
                        put_len_prefix(&mut field, f.number, kv.len());
                        field.extend_from_slice(&kv);
                        field
                    }
                }
            } else if let Some(inner) = level.nested(f.number) {
                let body = f
                    .value
                    .as_bytes()
                    .ok_or(Unparsable::NotMessage(inner.name()))?;
                match self.message(body, inner, tally)? {
                    None => continue,
                    Some(new) => {
                        let mut field = Vec::with_capacity(new.len() + 6);
                        put_len_prefix(&mut field, f.number, new.len());
                        field.extend_from_slice(&new);
                        field
                    }
                }
            } else {
                continue;
            };
            let start = offset(msg, f.raw);
            let o = out.get_or_insert_with(|| Vec::with_capacity(msg.len()));
            o.extend_from_slice(&msg[copied..start]);
            o.extend_from_slice(&replacement);
            copied = start + f.raw.len();
        }
        if let Some(o) = &mut out {
            o.extend_from_slice(&msg[copied..]);
        }
        Ok(out)
    }
}
