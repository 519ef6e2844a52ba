//! The field-level rewrite. A span is walked once: its attributes (field 9), its events' (11,
//! attributes at 3) and its links' (13, attributes at 4). Nothing is copied until the first
//! attribute that changes; from there the span is rebuilt from its original field bytes, only
//! the changed attributes (and the event or link holding them) re-encoded, and given a new
//! length. A span with nothing to redact costs one walk and no allocation (or only a search of
//! its bytes, when the prefilter proves it holds no named key), and leaves as it arrived.
//! Resources (`ResourceSpans.resource`, attributes at 1) likewise.

use std::sync::Arc;

use hmac::Mac;

use super::{serves, Action, Allowlist, Redaction};
use crate::otlp::wire::{len_field_size, put_len_prefix, Fields, Value, WireError};
use crate::otlp::SpanContext;

/// Distinct resources whose redaction is remembered; past this the memory starts afresh.
const RESOURCES_CACHED: usize = 4096;

/// A resource's redaction as remembered: the rewritten fields (or `None`, or why not), and
/// what the walk counted.
pub(super) type Remembered = (Result<Option<Arc<[u8]>>, Unparsable>, Tally);

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
    fn add(&mut self, other: &Tally) {
        if !other.attributes.is_empty() {
            if self.attributes.is_empty() {
                self.attributes.resize(other.attributes.len(), 0);
            }
            for (a, b) in self.attributes.iter_mut().zip(&other.attributes) {
                *a += b;
            }
        }
        self.rewritten += other.rewritten;
        self.refused += other.refused;
    }

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
    /// Bit `i`: entry `i` applies.
    active: u64,
    allow: Option<(usize, &'r Allowlist)>,
}

/// Buffers reused from span to span of a chunk: a rewritten span's fields, and a rewritten
/// event's or link's (built before their length is known).
#[derive(Default)]
struct Scratch {
    span: Vec<u8>,
    nested: Vec<u8>,
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
            active: self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.services.as_ref().is_none_or(|s| serves(s, service)))
                .fold(0, |m, (i, _)| m | 1 << i),
            allow: self
                .allowlists
                .iter()
                .enumerate()
                .find(|(_, a)| serves(&a.services, service))
                .map(|(i, a)| (self.entries.len() + i, a)),
        }
    }

    /// The context's resource fields redacted; `None`: unchanged. A resource the prefilter
    /// proves clean is not looked at further. Otherwise it is remembered by content: the
    /// resource of a service is the same in every message it sends, and walking its dozen
    /// attributes again for every forwarded trace was a quarter of redaction's cost. The
    /// content decides the plan too (the service is read from it). What the walk counted is
    /// remembered and counted again.
    fn resource(
        &self,
        plan: &Plan<'_>,
        ctx: &SpanContext,
        tally: &mut Tally,
        scratch: &mut Scratch,
    ) -> Result<Option<Arc<[u8]>>, Unparsable> {
        let fields = ctx.resource_fields();
        if !plan.may_change(fields) {
            return Ok(None);
        }
        if let Some((got, counted)) = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(fields)
        {
            tally.add(counted);
            return got.clone();
        }
        let mut counted = Tally::default();
        scratch.span.clear();
        let got = plan
            .message(
                fields,
                Level::ResourceSpans,
                &mut counted,
                &mut scratch.span,
                &mut scratch.nested,
            )
            .map(|changed| changed.then(|| Arc::from(scratch.span.as_slice())));
        tally.add(&counted);
        let mut cache = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= RESOURCES_CACHED {
            cache.clear();
        }
        cache.insert(fields.into(), (got.clone(), counted));
        got
    }

    /// Redacts one chunk of a forwarded trace: `spans` is a run of `ScopeSpans.spans` fields
    /// under `ctx`. Counts into `tally`.
    pub fn chunk(&self, ctx: &SpanContext, spans: &[u8], tally: &mut Tally) -> Chunk {
        let plan = self.plan(ctx.service_name());
        let mut chunk = Chunk::default();
        if plan.active == 0 && plan.allow.is_none() {
            return chunk;
        }
        let mut scratch = Scratch::default();
        match self.resource(&plan, ctx, tally, &mut scratch) {
            Ok(None) => {}
            Ok(Some(resource)) => {
                tally.rewritten += 1;
                chunk.context = Some(SpanContext::new(
                    resource.to_vec(),
                    ctx.scope_fields().to_vec(),
                ));
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
            if !plan.may_change(span) {
                continue;
            }
            let start = offset(spans, f.raw);
            scratch.span.clear();
            let result = plan.message(
                span,
                Level::Span,
                tally,
                &mut scratch.span,
                &mut scratch.nested,
            );
            if let Ok(false) = result {
                continue;
            }
            let out = chunk
                .spans
                .get_or_insert_with(|| Vec::with_capacity(spans.len() + 64));
            out.extend_from_slice(&spans[copied..start]);
            copied = start + f.raw.len();
            match result {
                Ok(_) => {
                    tally.rewritten += 1;
                    put_len_prefix(out, f.number, scratch.span.len());
                    out.extend_from_slice(&scratch.span);
                }
                Err(e) => {
                    tally.refused += 1;
                    chunk.refused.extend_from_slice(f.raw);
                    chunk.reason.get_or_insert(e);
                }
            }
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

/// An attribute's key and value. The layout every SDK writes — the key (under 128 bytes),
/// then the value (under 128 bytes), nothing else — is read without the general walk: most
/// attributes of most spans are only looked at for their key.
#[inline]
fn attr(kv: &[u8]) -> Result<Attr<'_>, Unparsable> {
    if let [0x0a, klen, rest @ ..] = kv {
        let klen = usize::from(*klen);
        if let Some((key, tail)) = rest.split_at_checked(klen).filter(|_| klen < 0x80) {
            let value = match tail {
                [] => Some(&[][..]),
                [0x12, vlen, value @ ..] if *vlen < 0x80 && usize::from(*vlen) == value.len() => {
                    Some(value)
                }
                _ => None,
            };
            if let Some(value) = value {
                return Ok(Attr {
                    key_raw: &kv[..2 + klen],
                    key,
                    value,
                });
            }
        }
    }
    attr_walked(kv)
}

fn attr_walked(kv: &[u8]) -> Result<Attr<'_>, Unparsable> {
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

/// Appends an attribute field `field` holding `key_raw` (the key field as it arrived) and a
/// string value.
fn put_string_kv(out: &mut Vec<u8>, field: u32, key_raw: &[u8], s: &[u8]) {
    let any = len_field_size(1, s.len());
    put_len_prefix(out, field, key_raw.len() + len_field_size(2, any));
    out.extend_from_slice(key_raw);
    put_len_prefix(out, 2, any);
    put_len_prefix(out, 1, s.len());
    out.extend_from_slice(s);
}

/// Hashed values remembered per thread, at most; past this the memory starts afresh.
const HASHES_REMEMBERED: usize = 1024;

type Memo = std::collections::HashMap<Box<[u8]>, [u8; 64], foldhash::fast::FixedState>;

thread_local! {
    /// The last hashed values and their hashes, for the redaction of this generation: an id
    /// repeats across the spans of a trace and the traces of a user, and an HMAC-SHA256 costs
    /// some 7 000 instructions without the CPU's SHA extensions.
    static HASHES: std::cell::RefCell<(u64, Memo)> = std::cell::RefCell::default();
}

/// The hex HMAC-SHA256 of `value` under `keyed`, remembered for `generation`'s redaction.
fn memo_hash(generation: u64, keyed: &hmac::Hmac<sha2::Sha256>, value: &[u8]) -> [u8; 64] {
    let compute = || {
        let mut h = keyed.clone();
        h.update(value);
        let mut hex = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(h.finalize().into_bytes(), &mut hex);
        hex
    };
    HASHES
        .try_with(|m| {
            let mut m = m.borrow_mut();
            if m.0 != generation {
                *m = (generation, Memo::default());
            }
            if let Some(hex) = m.1.get(value) {
                return *hex;
            }
            let hex = compute();
            if m.1.len() >= HASHES_REMEMBERED {
                m.1.clear();
            }
            m.1.insert(value.into(), hex);
            hex
        })
        .unwrap_or_else(|_| compute())
}

/// What becomes of an attribute that changes.
enum Fate<'a> {
    Remove,
    /// A new string value.
    Value(Vec<u8>),
    /// A keyed hash, hex.
    Hash([u8; 64]),
    /// The mask of a `replace`.
    Mask(&'a [u8]),
}

impl Fate<'_> {
    /// Appends the attribute's field, if it still has one.
    fn put(&self, out: &mut Vec<u8>, field: u32, key_raw: &[u8]) {
        match self {
            Fate::Remove => {}
            Fate::Value(v) => put_string_kv(out, field, key_raw, v),
            Fate::Hash(hex) => put_string_kv(out, field, key_raw, hex),
            Fate::Mask(m) => put_string_kv(out, field, key_raw, m),
        }
    }
}

impl Plan<'_> {
    /// Whether anything in `span` may change; `false` only when that is proved without
    /// walking it. An allowlist removes every key it does not list: always walked.
    #[inline]
    fn may_change(&self, span: &[u8]) -> bool {
        self.allow.is_some() || self.red.matcher.may_match(self.active, span)
    }

    fn slots(&self) -> usize {
        self.red.entries.len() + self.red.allowlists.len()
    }

    /// What becomes of the attribute `kv`, with its key field; `None`: it stays as it arrived.
    fn attribute<'k>(
        &self,
        kv: &'k [u8],
        tally: &mut Tally,
    ) -> Result<Option<(Fate<'_>, &'k [u8])>, Unparsable> {
        let a = attr(kv)?;
        if let Some((slot, allow)) = self.allow {
            if !allow.keys.matches(a.key) {
                tally.count(slot, self.slots());
                return Ok(Some((Fate::Remove, a.key_raw)));
            }
        }
        let hit = self
            .red
            .matcher
            .matching(&self.red.entries, self.active, a.key);
        if hit == 0 {
            return Ok(None);
        }
        let slot = hit.trailing_zeros() as usize;
        let fate = match &self.red.entries[slot].action {
            Action::Remove => Fate::Remove,
            Action::Replace(mask) => Fate::Mask(mask),
            Action::Hash => {
                // A hash entry cannot be compiled without a key (a load error).
                let Some(h) = &self.red.hasher else {
                    return Ok(None);
                };
                let text = value_text(a.value)?;
                let bytes = match &text {
                    Text::Str(s) => s,
                    Text::Other(b) => b.as_slice(),
                };
                Fate::Hash(memo_hash(self.red.generation, h, bytes))
            }
            Action::Scrub(scrub) => match value_text(a.value)? {
                Text::Str(s) => match scrub.apply(s) {
                    Some(v) => Fate::Value(v),
                    None => return Ok(None),
                },
                Text::Other(_) => return Ok(None),
            },
        };
        tally.count(slot, self.slots());
        Ok(Some((fate, a.key_raw)))
    }

    /// Writes `msg` rewritten (its fields, without tag or length) to `out`, which must be
    /// empty, and says so; `Ok(false)` when nothing in it changes, `out` left empty. `nested`
    /// is scratch for the messages inside (events, links, the resource).
    fn message(
        &self,
        msg: &[u8],
        level: Level,
        tally: &mut Tally,
        out: &mut Vec<u8>,
        nested: &mut Vec<u8>,
    ) -> Result<bool, Unparsable> {
        let attrs = level.attributes();
        let mut changed = false;
        let mut copied = 0;
        for f in Fields::new(msg) {
            let f = f.map_err(wire(level))?;
            let start = offset(msg, f.raw);
            if Some(f.number) == attrs {
                let kv = f
                    .value
                    .as_bytes()
                    .ok_or(Unparsable::NotMessage("an attribute"))?;
                let Some((fate, key_raw)) = self.attribute(kv, tally)? else {
                    continue;
                };
                out.extend_from_slice(&msg[copied..start]);
                fate.put(out, f.number, key_raw);
            } else if let Some(inner) = level.nested(f.number) {
                let body = f
                    .value
                    .as_bytes()
                    .ok_or(Unparsable::NotMessage(inner.name()))?;
                nested.clear();
                // Events and links hold no messages with attributes further down.
                if !self.message(body, inner, tally, nested, &mut Vec::new())? {
                    continue;
                }
                out.extend_from_slice(&msg[copied..start]);
                put_len_prefix(out, f.number, nested.len());
                out.extend_from_slice(nested);
            } else {
                continue;
            }
            changed = true;
            copied = start + f.raw.len();
        }
        if changed {
            out.extend_from_slice(&msg[copied..]);
        }
        Ok(changed)
    }
}
