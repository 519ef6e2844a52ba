//! The field-level rewrite. A span is walked once: its attributes (field 9), its events' (11,
//! attributes at 3) and its links' (13, attributes at 4). Nothing is copied until the first
//! attribute that changes; from there the span is rebuilt from its original field bytes, only
//! the changed attributes (and the event or link holding them) re-encoded, and given a new
//! length. A span with nothing to redact costs one walk and no allocation (or only a search of
//! its bytes, when the prefilter proves it holds no named key), and leaves as it arrived.
//! Resources (`ResourceSpans.resource`, attributes at 1) likewise.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::memo::memo_hash;
use super::read::{attr, value_text, Text, Walk};
use super::{serves, Action, Allowlist, Redaction};
use crate::otlp::wire::{len_field_size, put_len_prefix, Fields, WireError};
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

/// Buffers reused from span to span, and chunk to chunk on one thread: a rewritten span's
/// fields, and a rewritten event's or link's (built before their length is known). Fresh
/// buffers per chunk grew by doubling for every rewritten span, a tenth of what writing the
/// changed attributes cost (BENCHMARKS.md, "Redaction").
#[derive(Default)]
struct Scratch {
    span: Vec<u8>,
    nested: Vec<u8>,
}

/// Scratch capacity kept between chunks, at most: one very large span does not pin its size.
const SCRATCH_KEPT: usize = 256 << 10;

impl Scratch {
    fn trim(&mut self) {
        for b in [&mut self.span, &mut self.nested] {
            if b.capacity() > SCRATCH_KEPT {
                *b = Vec::new();
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
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
    /// Boxed: a chunk is returned for every run of spans, nearly always without one, and
    /// moving a context inline cost a copy of its size each time.
    pub context: Option<Box<SpanContext>>,
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
        let mut active = self.matcher.unscoped;
        // Only the entries naming services are compared with this one: once per chunk.
        // At most MAX_ENTRIES (64) entries; none: no bit.
        let all = u64::MAX
            .checked_shr(64 - self.entries.len().min(super::MAX_ENTRIES) as u32)
            .unwrap_or(0);
        let mut scoped = all & !active;
        while scoped != 0 {
            let i = scoped.trailing_zeros() as usize;
            scoped &= scoped - 1;
            if self.entries[i]
                .services
                .as_ref()
                .is_none_or(|s| serves(s, service))
            {
                active |= 1 << i;
            }
        }
        Plan {
            red: self,
            active,
            allow: self
                .allowlists
                .iter()
                .enumerate()
                .find(|(_, a)| serves(&a.services, service))
                .map(|(i, a)| (self.entries.len() + i, a)),
        }
    }

    /// The context's resource fields redacted; `None`: unchanged. A context whose resource
    /// was found clean under this redaction says so itself (`resource_clean_for`), and is not
    /// looked at again: an interned context comes back with trace after trace. A resource the
    /// prefilter proves clean is not looked at further. Otherwise it is remembered by content:
    /// the resource of a service is the same in every message it sends, and walking its dozen
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
        if ctx.resource_clean_for.load(Ordering::Relaxed) == self.generation {
            return Ok(None);
        }
        let got = self.resource_walked(plan, ctx, tally, scratch);
        if let Ok(None) = got {
            // Unchanged means nothing was counted either: the next time costs nothing.
            ctx.resource_clean_for
                .store(self.generation, Ordering::Relaxed);
        }
        got
    }

    fn resource_walked(
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
                0,
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
        if plan.active == 0 && plan.allow.is_none() {
            return Chunk::default();
        }
        SCRATCH
            .try_with(|s| match s.try_borrow_mut() {
                Ok(mut s) => {
                    let chunk = self.chunk_with(&plan, ctx, spans, tally, &mut s);
                    s.trim();
                    chunk
                }
                Err(_) => self.chunk_with(&plan, ctx, spans, tally, &mut Scratch::default()),
            })
            .unwrap_or_else(|_| self.chunk_with(&plan, ctx, spans, tally, &mut Scratch::default()))
    }

    #[inline]
    fn chunk_with(
        &self,
        plan: &Plan<'_>,
        ctx: &SpanContext,
        spans: &[u8],
        tally: &mut Tally,
        scratch: &mut Scratch,
    ) -> Chunk {
        let mut chunk = Chunk::default();
        match self.resource(plan, ctx, tally, scratch) {
            Ok(None) => {}
            Ok(Some(resource)) => {
                tally.rewritten += 1;
                chunk.context = Some(Box::new(SpanContext::new(
                    resource.to_vec(),
                    ctx.scope_fields().to_vec(),
                )));
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
        // The prefilter searches the whole run, not span by span: one search finds the next
        // span that may hold a named key, and the spans before it are skipped unwalked
        // (BENCHMARKS.md: a search per span cost more in calls than in bytes). It never
        // skips a span holding a key: a match is the leftmost at or after where the search
        // began, so no key's bytes start between there and the match, and every span ending
        // before the match holds none (a key inside a span starts inside it). A match across
        // two spans, or in a span's tag, only walks a span for nothing.
        let search = plan.searcher();
        // Where the next match starts; `None`: not searched yet; `usize::MAX`: no more.
        let mut next: Option<usize> = None;
        for f in Walk::new(spans) {
            let (number, span, field) = match f {
                Ok((number, Some(span), field)) => (number, span, field),
                Ok(_) => continue,
                // The run was walked when it arrived; a field that fails now ends it, as in
                // encoding.
                Err(_) => break,
            };
            let start = field.start;
            // Where in the span the first named key may start: nothing before it is looked up.
            let mut clean_before = 0;
            if let Some(search) = search {
                let at = match next {
                    Some(at) if at >= start => at,
                    _ => {
                        let found = search
                            .find_in(spans, aho_corasick::Span::from(start..spans.len()))
                            .map_or(usize::MAX, |m| m.start());
                        next = Some(found);
                        found
                    }
                };
                if at == usize::MAX {
                    break;
                }
                if at >= field.end {
                    continue;
                }
                clean_before = at.saturating_sub(offset(spans, span));
            }
            scratch.span.clear();
            let result = plan.message(
                span,
                Level::Span,
                clean_before,
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
            copied = field.end;
            match result {
                Ok(_) => {
                    tally.rewritten += 1;
                    put_len_prefix(out, number, scratch.span.len());
                    out.extend_from_slice(&scratch.span);
                }
                Err(e) => {
                    tally.refused += 1;
                    chunk.refused.extend_from_slice(&spans[field]);
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

    /// The search that proves a run of spans clean; `None`: every span is walked (as by
    /// [`may_change`](Self::may_change)).
    #[inline]
    fn searcher(&self) -> Option<&aho_corasick::packed::Searcher> {
        match self.allow {
            Some(_) => None,
            None => self.red.matcher.searcher(self.active),
        }
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
    ///
    /// `clean_before`: the prefilter found no named key starting before this offset, so the
    /// attributes that end before it are only checked to parse, not looked up (a key inside
    /// an attribute starts inside it). Those attributes are still read, so that a span that
    /// may hold a key is refused for any broken attribute, wherever it sits, as when every
    /// attribute is looked up.
    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        msg: &[u8],
        level: Level,
        clean_before: usize,
        tally: &mut Tally,
        out: &mut Vec<u8>,
        nested: &mut Vec<u8>,
    ) -> Result<bool, Unparsable> {
        let attrs = level.attributes();
        let mut changed = false;
        let mut copied = 0;
        for f in Walk::new(msg) {
            let (number, bytes, field) = f.map_err(wire(level))?;
            if Some(number) == attrs {
                let kv = bytes.ok_or(Unparsable::NotMessage("an attribute"))?;
                if field.end <= clean_before {
                    attr(kv)?;
                    continue;
                }
                let Some((fate, key_raw)) = self.attribute(kv, tally)? else {
                    continue;
                };
                out.extend_from_slice(&msg[copied..field.start]);
                fate.put(out, number, key_raw);
            } else if let Some(inner) = level.nested(number) {
                let body = bytes.ok_or(Unparsable::NotMessage(inner.name()))?;
                nested.clear();
                // Events and links hold no messages with attributes further down.
                if !self.message(body, inner, 0, tally, nested, &mut Vec::new())? {
                    continue;
                }
                out.extend_from_slice(&msg[copied..field.start]);
                put_len_prefix(out, number, nested.len());
                out.extend_from_slice(nested);
            } else {
                continue;
            }
            changed = true;
            copied = field.end;
        }
        if changed {
            out.extend_from_slice(&msg[copied..]);
        }
        Ok(changed)
    }
}
