//! One walk per span: the span conditions of a rule set evaluated as the spans arrive.
//!
//! Every span-level part of a trace condition (`span:`, `every:`, `root:`, `count(...)`, and a
//! bare span field, which means "some span") is a [`Probe`] with a slot. When a span joins its
//! buffered trace, the buffer runs the set's probes on it once, with the span as decoding read
//! it (no second walk), and folds the results into the trace's [`Seen`]: which probes some
//! span passed, which every span passed, the root span's results, and counts. Deciding the
//! trace then reads those bits and the trace's own facts (duration, span count, error,
//! services, bytes); it parses one span at most (the root, for a throughput or dynamic
//! sampler's key).
//!
//! The bits belong to the rule set that computed them: each set has a generation, and a trace
//! whose spans were seen under another (a reload while it was buffered) is decided by the full
//! walk over its spans ([`super::TraceView`]) instead, with the same result. Sets with more
//! than [`MAX_PROBES`] probes always take the full walk.
//!
//! Because what is known only grows as spans arrive, a condition can also be *settled*: sure
//! to hold, or sure not to, whatever spans come later ([`Buffered::settle`]). Early rules
//! (`early: true`) decide a trace as soon as they are settled to hold and every rule before
//! them is settled not to; which rules can, from their conditions' form alone, is worked out
//! when the rules load (`early.rs`).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::buffer::TraceEntry;
use crate::otlp::decode::GroupSpan;
use crate::otlp::view::{AttrMemo, ContextView, SpanView};
use crate::otlp::wire::Fields;
use crate::otlp::SpanContext;
use crate::otlp::TraceId;

use super::condition::{self, Cond, KeyField, Literal, Op, Probe, SpanCond, TraceField, Val};
use super::Rule;

/// Probes a set may have for the incremental evaluation: one bit each in a trace's masks.
pub const MAX_PROBES: usize = 64;

/// How a trace condition applies a probe to the spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Some span passes (`span:`).
    Some,
    /// Every span passes (`every:`).
    Every,
    /// The root span passes (`root:`).
    Root,
    /// Spans that pass, counted (`count(...)`): the counter's index.
    Count(u16),
}

/// The probes of one rule set, in slot order.
#[derive(Debug, Default)]
pub struct Probes {
    /// 0: the set has too many probes, every trace takes the full walk.
    generation: u32,
    list: Vec<(Kind, SpanCond)>,
    counters: usize,
    /// The slots of the `every:` probes.
    every_mask: u64,
    /// The slots of the `span:` probes.
    some_mask: u64,
    /// The slots of the `root:` probes.
    root_mask: u64,
    /// Every slot.
    all_mask: u64,
    /// The span attributes the `root:` probes read, when more than one: looked up in one walk
    /// of the root's attributes.
    root_keys: Vec<Vec<u8>>,
    /// What the probes in slots below [`GUARDED`] require of a span's resource or scope
    /// alone (see [`SpanCond::context_guard`]), with their slot's bit: worked out once per
    /// context (see [`Probes::blocked`]), so that a span of the `inventory` service skips the
    /// probes of `span.service = payment and ...` without evaluating them.
    guards: Vec<(u64, SpanCond)>,
}

/// Probe slots that can have a context guard: a context keeps which guards it fails in 32
/// bits beside the set's generation (`SpanContext::probes_blocked`).
const GUARDED: usize = 32;

/// Generations are unique per process; 0 means "none".
static GENERATION: AtomicU32 = AtomicU32::new(1);

impl Probes {
    /// Gives every probe of `rules` its slot and collects them.
    pub(crate) fn assign(rules: &mut [Rule]) -> Self {
        let mut p = Probes {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed).max(1),
            ..Probes::default()
        };
        for r in rules.iter_mut() {
            if let Some(c) = &mut r.condition {
                p.collect(c);
            }
        }
        if p.list.len() > MAX_PROBES {
            p.generation = 0;
        }
        for (kind, cond) in &p.list {
            if *kind == Kind::Root {
                attr_keys(cond, &mut p.root_keys);
            }
        }
        if p.root_keys.len() < 2 || p.root_keys.len() > AttrMemo::MAX_KEYS {
            p.root_keys.clear(); // one lookup walks once anyway; many would spill the memo
        }
        p.guards = (p.list.iter().enumerate().take(GUARDED))
            .filter_map(|(slot, (_, c))| Some((1u64 << slot, c.context_guard()?)))
            .collect();
        p
    }

    fn collect(&mut self, c: &mut Cond) {
        let (probe, kind) = match c {
            Cond::All(cs) | Cond::Any(cs) => {
                cs.iter_mut().for_each(|c| self.collect(c));
                return;
            }
            Cond::Not(c) => return self.collect(c),
            Cond::Trace(..) => return,
            Cond::AnySpan(p) => (p, Kind::Some),
            Cond::EverySpan(p) => (p, Kind::Every),
            Cond::Root(p) => (p, Kind::Root),
            Cond::Count(p, ..) => {
                p.counter = self.counters.min(usize::from(u16::MAX)) as u16;
                self.counters += 1;
                let kind = Kind::Count(p.counter);
                (p, kind)
            }
        };
        probe.slot = self.list.len().min(usize::from(u16::MAX - 1)) as u16;
        if self.list.len() < 64 {
            let bit = 1 << self.list.len();
            self.all_mask |= bit;
            match kind {
                Kind::Every => self.every_mask |= bit,
                Kind::Some => self.some_mask |= bit,
                Kind::Root => self.root_mask |= bit,
                Kind::Count(_) => {}
            }
        }
        self.list.push((kind, probe.cond.clone()));
    }

    /// Whether traces are evaluated as their spans arrive (the set has few enough probes).
    pub fn enabled(&self) -> bool {
        self.generation != 0
    }

    /// The state of a new trace under these probes.
    pub fn start(&self) -> Seen {
        Seen {
            generation: self.generation,
            every: u64::MAX,
            counts: smallvec::smallvec![0; self.counters],
            ..Seen::default()
        }
    }

    /// Runs the probes on one span joining a trace whose state is `seen`; `first_root` says
    /// the span is the trace's first root span. A trace seen under other probes (a reload)
    /// is left alone: it will be decided by the full walk.
    #[inline]
    pub fn observe(&self, span: &GroupSpan<'_>, first_root: bool, seen: &mut Seen) {
        if seen.generation != self.generation || self.generation == 0 || self.list.is_empty() {
            return;
        }
        let view = span.view();
        let memo;
        let root_view = if first_root && !self.root_keys.is_empty() {
            memo = AttrMemo::new(&view, &self.root_keys);
            SpanView {
                memo: Some(&memo),
                ..view
            }
        } else {
            view
        };
        let ctx = ContextView::new(span.context);
        let blocked = self.blocked(span.context, &view, &ctx);
        // The probes this span can change: not those its context fails, nor a `span:` one
        // some span passed already, nor an `every:` one some span failed, nor a `root:` one
        // unless this is the root. Their slots are visited by their bits.
        let mut todo = self.all_mask & !blocked;
        todo &= !(seen.some & self.some_mask) & !(!seen.every & self.every_mask);
        if !first_root {
            todo &= !self.root_mask;
        }
        let mut passed = 0u64;
        while todo != 0 {
            let slot = todo.trailing_zeros() as usize;
            let bit = 1u64 << slot;
            todo &= todo - 1;
            let Some((kind, cond)) = self.list.get(slot) else {
                break;
            };
            match kind {
                Kind::Root => {
                    if cond.eval(&root_view, &ctx) {
                        seen.root |= bit;
                    }
                }
                Kind::Count(i) => {
                    if cond.eval(&view, &ctx) {
                        if let Some(n) = seen.counts.get_mut(usize::from(*i)) {
                            *n = n.saturating_add(1);
                        }
                    }
                }
                Kind::Some | Kind::Every => {
                    if cond.eval(&view, &ctx) {
                        passed |= bit;
                    }
                }
            }
        }
        seen.some |= passed;
        seen.every &= passed | !self.every_mask;
    }

    /// The bits of the probes that no span of `context` can pass (their guard fails), worked
    /// out on the first span of the context under these probes and kept in the context.
    #[inline]
    fn blocked(&self, context: &SpanContext, view: &SpanView<'_>, ctx: &ContextView<'_>) -> u64 {
        if self.guards.is_empty() {
            return 0;
        }
        let tag = u64::from(self.generation) << 32;
        let known = context.probes_blocked.load(Ordering::Relaxed);
        if known & !0xffff_ffff == tag {
            return known & 0xffff_ffff;
        }
        // The guards read the context only; the span is there because evaluation takes one.
        let blocked = (self.guards.iter())
            .filter(|(_, g)| !g.eval(view, ctx))
            .fold(0, |m, (bit, _)| m | bit);
        context
            .probes_blocked
            .store(tag | blocked, Ordering::Relaxed);
        blocked
    }

    /// Whether `seen` was computed under these probes.
    pub(crate) fn current(&self, seen: &Seen) -> bool {
        self.generation != 0 && seen.generation == self.generation
    }
}

/// What a buffered trace's spans showed the probes, so far. About 48 bytes per trace (one
/// counter inline; more `count(...)` probes spill to the heap).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    generation: u32,
    /// Bit per slot: some span passed the probe.
    some: u64,
    /// Bit per slot: every span so far passed the probe (all ones before the first span).
    every: u64,
    /// Bit per slot: the root span passed the probe (0 while the root has not arrived).
    root: u64,
    counts: smallvec::SmallVec<[u32; 1]>,
}

impl Seen {
    /// The probes' bits: some span passed, every span passed, the root passed.
    pub(crate) fn bits(&self) -> [u64; 3] {
        [self.some, self.every, self.root]
    }
}

/// A buffered trace, as the rules read it from what the buffer gathered as its spans
/// arrived: the incremental counterpart of [`super::TraceView`].
pub struct Buffered<'a> {
    /// The trace's id.
    pub id: TraceId,
    entry: &'a TraceEntry,
    root: OnceCell<Option<(SpanView<'a>, ContextView<'a>)>>,
}

impl<'a> Buffered<'a> {
    /// The trace `id` buffered as `entry`; its `seen` must be current for the rule set.
    pub fn new(id: TraceId, entry: &'a TraceEntry) -> Self {
        Buffered {
            id,
            entry,
            root: OnceCell::new(),
        }
    }

    /// The root span, parsed on first use (the only span deciding may parse).
    fn root(&self) -> Option<&(SpanView<'a>, ContextView<'a>)> {
        self.root
            .get_or_init(|| {
                let (group, at) = self.entry.root_at?;
                let g = self.entry.groups.get(usize::from(group))?;
                let field = g.spans.get(at as usize..)?;
                let bytes = Fields::new(field).next()?.ok()?.value.as_bytes()?;
                Some((SpanView::parse(bytes).ok()?, ContextView::new(&g.ctx)))
            })
            .as_ref()
    }

    fn trace_value(&self, f: TraceField) -> Val<'static> {
        let e = self.entry;
        match f {
            TraceField::Duration => Val::Num(e.duration_nanos() as f64),
            TraceField::SpanCount => Val::Num(f64::from(e.span_count)),
            TraceField::Error => Val::Bool(e.has_error),
            TraceField::RootPresent => Val::Bool(e.root_seen.is_some()),
            TraceField::ServiceCount => Val::Num(condition::distinct_services(
                e.groups.iter().map(|g| g.ctx.service_name()),
            ) as f64),
            TraceField::Bytes => Val::Num(
                e.groups
                    .iter()
                    .flat_map(|g| Fields::new(&g.spans).map_while(Result::ok))
                    .filter_map(|f| f.value.as_bytes())
                    .map(<[u8]>::len)
                    .sum::<usize>() as f64,
            ),
        }
    }

    fn bit(mask: u64, p: &Probe) -> bool {
        p.slot < 64 && mask & (1u64 << p.slot) != 0
    }

    fn count(&self, p: &Probe) -> u32 {
        self.entry
            .seen
            .counts
            .get(usize::from(p.counter))
            .copied()
            .unwrap_or(0)
    }

    /// Whether the trace satisfies `c`, from what its spans showed the probes.
    pub fn holds(&self, c: &Cond) -> bool {
        let seen = &self.entry.seen;
        match c {
            Cond::All(cs) => cs.iter().all(|c| self.holds(c)),
            Cond::Any(cs) => cs.iter().any(|c| self.holds(c)),
            Cond::Not(c) => !self.holds(c),
            Cond::Trace(f, op, _) => op.test(Some(self.trace_value(*f))),
            Cond::AnySpan(p) => Self::bit(seen.some, p),
            Cond::EverySpan(p) => Self::bit(seen.every, p),
            Cond::Root(p) => Self::bit(seen.root, p),
            Cond::Count(p, op, _) => op.test(Some(Val::Num(f64::from(self.count(p))))),
        }
    }

    /// Whether `c` holds now, and whether that is settled: no span arriving later can change
    /// it. What is known only grows: a span that passed stays passed, counts, the span count,
    /// the duration, the bytes and the services only grow, an error stays, a root stays.
    pub fn settle(&self, c: &Cond) -> (bool, bool) {
        let seen = &self.entry.seen;
        match c {
            Cond::All(cs) => {
                let mut all = (true, true);
                for c in cs {
                    match self.settle(c) {
                        (false, true) => return (false, true),
                        (v, s) => all = (all.0 && v, all.1 && s),
                    }
                }
                all
            }
            Cond::Any(cs) => {
                let mut any = (false, true);
                for c in cs {
                    match self.settle(c) {
                        (true, true) => return (true, true),
                        (v, s) => any = (any.0 || v, any.1 && s),
                    }
                }
                any
            }
            Cond::Not(c) => {
                let (v, s) = self.settle(c);
                (!v, s)
            }
            Cond::AnySpan(p) => {
                let v = Self::bit(seen.some, p);
                (v, v)
            }
            Cond::EverySpan(p) => {
                let v = Self::bit(seen.every, p);
                (v, !v)
            }
            Cond::Root(p) => (Self::bit(seen.root, p), self.entry.root_seen.is_some()),
            Cond::Count(p, op, _) => {
                let v = op.test(Some(Val::Num(f64::from(self.count(p)))));
                (v, growing_settled(op, v))
            }
            Cond::Trace(f, op, _) => {
                let v = op.test(Some(self.trace_value(*f)));
                let settled = match f {
                    TraceField::Error | TraceField::RootPresent => flag_settled(op, v),
                    TraceField::Duration
                    | TraceField::SpanCount
                    | TraceField::ServiceCount
                    | TraceField::Bytes => growing_settled(op, v),
                };
                (v, settled)
            }
        }
    }
}

/// The distinct span attributes `c` reads, added to `out`.
fn attr_keys(c: &SpanCond, out: &mut Vec<Vec<u8>>) {
    match c {
        SpanCond::All(cs) | SpanCond::Any(cs) => cs.iter().for_each(|c| attr_keys(c, out)),
        SpanCond::Not(c) => attr_keys(c, out),
        SpanCond::Field(condition::SpanField::Attr(k), ..) => {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
        SpanCond::Field(..) => {}
    }
}

/// For a number that only grows: `> x` and `>= x` stay true once true; `< x` and `<= x` stay
/// false once false. Nothing else is sure before the trace completes.
fn growing_settled(op: &Op, v: bool) -> bool {
    match op {
        Op::Gt(_) | Op::Ge(_) => v,
        Op::Lt(_) | Op::Le(_) => !v,
        _ => false,
    }
}

/// For a flag that can only turn on (`trace.error`, `trace.root_present`): once on, every
/// test of it is settled; while off, a test that holds only when it is off is not.
fn flag_settled(op: &Op, v: bool) -> bool {
    let on_means = |l: &Literal| matches!(l, Literal::Bool(true));
    match op {
        // `= true` true: settled; `= false` false (flag on): settled.
        Op::Eq(l) => on_means(l) == v,
        Op::Ne(l) => on_means(l) != v,
        Op::Exists => true,
        Op::NotExists => true,
        _ => false,
    }
}

impl super::Evaluate for Buffered<'_> {
    fn id(&self) -> TraceId {
        self.id
    }
    fn span_count(&self) -> u32 {
        self.entry.span_count
    }
    fn holds(&self, c: &Cond) -> bool {
        Buffered::holds(self, c)
    }
    fn key(&self, keys: &[KeyField]) -> u64 {
        let root = self.root().copied();
        let first = self.entry.groups.first().map(|g| ContextView::new(&g.ctx));
        condition::hash_keys(keys, |k| k.value(|f| self.trace_value(f), root, first))
    }
}
