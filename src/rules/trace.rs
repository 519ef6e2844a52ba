//! A trace as the rules read it ([`Evaluate`]), and the full walk over a buffered trace's
//! spans ([`TraceView`]): what `rules explain`, `rules test` and a trace buffered under older
//! rules are decided by (the pipeline reads [`super::Buffered`] instead).

use crate::buffer::TraceEntry;
use crate::otlp::view::{ContextView, SpanView};
use crate::otlp::wire::Fields;
use crate::otlp::TraceId;

use super::condition::{self, Cond, KeyField};

/// A trace as the rules see it: every span parsed once, with its resource and scope.
pub struct TraceView<'a> {
    /// The trace's id.
    pub id: TraceId,
    /// Every span that arrived, parsed once, with the resource and scope it came under.
    pub spans: Vec<(SpanView<'a>, ContextView<'a>)>,
    /// Index into `spans` of the root span, if it arrived.
    pub root: Option<usize>,
    /// From the earliest span start to the latest span end.
    pub duration_nanos: u64,
    /// Spans buffered for the trace.
    pub span_count: u32,
    /// Whether any span has error status.
    pub has_error: bool,
}

/// A view's spans; each decider thread keeps one such vector to reuse from trace to trace.
type Spans<'a> = Vec<(SpanView<'a>, ContextView<'a>)>;

/// Spans kept for reuse at most: a giant trace's vector is not held on to.
const REUSED_SPANS_MAX: usize = 4096;

thread_local! {
    /// The vector the last view on this thread gave back (empty), so that building a view
    /// allocates nothing in the steady state.
    static REUSED_SPANS: std::cell::Cell<Spans<'static>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<'a> TraceView<'a> {
    /// A view of a buffered trace: its spans parsed for the rules (nothing is copied).
    pub fn new(id: TraceId, entry: &'a TraceEntry) -> Self {
        // An empty vector of any lifetime coerces to a shorter one.
        let mut spans: Spans<'a> = REUSED_SPANS.try_with(|r| r.take()).unwrap_or_default();
        spans.reserve(entry.span_count as usize);
        // The root is the first root span to arrive (a trace may have several), as the
        // probes read it as spans arrive.
        let mut root = None;
        for (gi, g) in entry.groups.iter().enumerate() {
            let ctx = ContextView::new(&g.ctx);
            for f in Fields::new(&g.spans) {
                let Some((raw, bytes)) = f.ok().and_then(|f| Some((f.raw, f.value.as_bytes()?)))
                else {
                    break;
                };
                // Spans were walked once when they arrived; one that fails here is skipped.
                if let Ok(span) = SpanView::parse(bytes) {
                    let at = raw.as_ptr() as usize - g.spans.as_ptr() as usize;
                    if entry.root_at == Some((gi as u16, at as u32)) {
                        root = Some(spans.len());
                    }
                    spans.push((span, ctx));
                }
            }
        }
        let root = root.or_else(|| spans.iter().position(|(s, _)| s.is_root()));
        TraceView {
            id,
            spans,
            root,
            duration_nanos: entry.duration_nanos(),
            span_count: entry.span_count,
            has_error: entry.has_error,
        }
    }
}

impl Drop for TraceView<'_> {
    fn drop(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        if spans.capacity() > REUSED_SPANS_MAX {
            return;
        }
        spans.clear();
        // Forget the lifetime of the (now empty) vector, keeping its allocation: collecting
        // an emptied vector's iterator into one of the same layout reuses its buffer.
        let spans: Spans<'static> = spans.into_iter().map(|_| unreachable!()).collect();
        let _ = REUSED_SPANS.try_with(|r| r.set(spans));
    }
}

/// A trace as [`super::RuleSet::verdict`] reads it: the full walk over its spans ([`TraceView`]) or
/// what the buffer gathered as they arrived ([`super::Buffered`]).
pub trait Evaluate {
    /// The trace's id.
    fn id(&self) -> TraceId;
    /// Spans buffered for the trace.
    fn span_count(&self) -> u32;
    /// Whether the trace satisfies `c`.
    fn holds(&self, c: &Cond) -> bool;
    /// The hash of the trace's values of `keys`, in order.
    fn key(&self, keys: &[KeyField]) -> u64;
}

impl<T: Evaluate + ?Sized> Evaluate for &T {
    fn id(&self) -> TraceId {
        (**self).id()
    }
    fn span_count(&self) -> u32 {
        (**self).span_count()
    }
    fn holds(&self, c: &Cond) -> bool {
        (**self).holds(c)
    }
    fn key(&self, keys: &[KeyField]) -> u64 {
        (**self).key(keys)
    }
}

impl Evaluate for TraceView<'_> {
    fn id(&self) -> TraceId {
        self.id
    }
    fn span_count(&self) -> u32 {
        self.span_count
    }
    fn holds(&self, c: &Cond) -> bool {
        c.eval(self)
    }
    fn key(&self, keys: &[KeyField]) -> u64 {
        condition::key_hash(keys, self)
    }
}
