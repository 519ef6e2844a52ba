//! One undecided trace: its spans, grouped by the resource and scope they arrived under, the
//! facts its completion is judged by (arrival times, span count, bytes, the root), the offsets
//! it holds from being committed, and what the rules' probes saw in its spans as they arrived.

use std::sync::Arc;
use std::time::Duration;

use super::Completion;
use crate::decision::Trigger;
use crate::offsets::Holds;
use crate::otlp::decode::TraceGroup;
use crate::otlp::{id64, SpanContext};
use crate::rules::Probes;

/// Fixed bytes counted per buffered trace on top of its span data and its per-context
/// [`SpanGroup`]s: the entry, its key, its map slot at the map's usual load, its deadline-index
/// entry, the spilled group list and the allocator's headers. Measured, not derived: with
/// `cargo bench --bench memory` (traces of ~9 spans over ~6 services) resident memory exceeded
/// the span and group bytes by 666 bytes per trace (544 before the entry carried its offset
/// ranges for the head marks, 580 before it kept the parents it awaits, [`Awaited`]: 52 bytes
/// more, 632 before it kept the spans remote children point at: 84 more, and 716 before its
/// group list grew by half rather than doubled past four contexts: 50 less; each measured
/// against the build before it in one session). On the SDK recording (`-- sdk`: 12.8 spans
/// over 5 services) it counts 17 bytes a trace more than is resident.
pub const TRACE_OVERHEAD: usize = 666;

/// Spans of one trace that arrived under one resource and scope.
#[derive(Debug)]
pub struct SpanGroup {
    /// The resource and scope the spans arrived under.
    pub ctx: Arc<SpanContext>,
    /// `ScopeSpans.spans` fields (tag, length, span), as they arrived.
    pub spans: Vec<u8>,
}

/// One undecided trace.
#[derive(Debug)]
pub struct TraceEntry {
    /// When its first span arrived, in ms since the buffer's origin on the completion clock
    /// (time with reading paused for memory does not count).
    pub first_seen: u64,
    /// When its latest span arrived, on the same clock.
    pub last_seen: u64,
    /// When its first root span arrived, on the same clock; `None` while no root has.
    pub root_seen: Option<u64>,
    /// Earliest span start, in Unix ns.
    pub start_min: u64,
    /// Latest span end, in Unix ns.
    pub end_max: u64,
    /// Spans buffered, counted as they arrive: a span sent twice counts twice.
    pub span_count: u32,
    /// Span data and contexts counted against the memory budget, [`TRACE_OVERHEAD`] included.
    pub bytes: u32,
    /// Some span has status `ERROR`.
    pub has_error: bool,
    /// Some of its spans came from offsets read before (restart or rebalance replay).
    pub replayed: bool,
    /// The last look for an early rule that could decide the trace found none, and what that
    /// look reads ([`TraceEntry::early_state`]) has not changed since.
    pub(super) early_none: bool,
    /// The spans, one group per resource and scope, in the order the contexts first arrived.
    pub groups: smallvec::SmallVec<[SpanGroup; 1]>,
    /// The offsets this trace keeps from being committed.
    pub holds: Holds,
    /// Beside each hold, the first and last offsets this trace has spans at in that partition
    /// (the first can be below the hold: a head read back after a replay, see
    /// [`crate::heads`]). A decided trace whose range straddles the commit offset must be read
    /// back whole by whoever replays the partition.
    pub ranges: smallvec::SmallVec<[(i64, i64); 1]>,
    /// Where the first root span lies: its group, and the offset of its field in the group's
    /// `spans` (for the rules, which may read the root's fields when deciding).
    pub root_at: Option<(u16, u32)>,
    /// What the rules' probes found in the spans as they arrived (see [`crate::rules::Seen`]).
    pub seen: crate::rules::Seen,
    /// The deadline-index bucket that owns this trace.
    pub(super) scheduled: u64,
    /// Parent span ids that no span of the trace has answered yet, as far as arrival order
    /// tells: see [`Awaited`].
    pub awaited: Awaited,
}

/// The parents a trace's spans point at that have not arrived after them, kept as the spans
/// arrive so that deciding a whole trace need not read its spans again to count orphans
/// (the walk at decision time was the first read of a dropped trace's span bytes since they
/// were buffered: 12 % of the core path's time, for traces that nearly all have none).
///
/// A span's parent is *awaited* unless it is among the spans of the same message group, is
/// one of the spans *offered* before it (those a remote child points at: client and producer
/// spans, and the entry span of a service that made no client span for its calls, as a
/// gateway passing its context on does), or a span with its id arrives later. A child ends,
/// and is exported, before its parent; but services export in batches of their own, so a
/// caller's batch often reaches Kafka before its callee's, as a queue producer's does before
/// its consumer's. Either order leaves a whole trace awaiting nothing. When something is
/// awaited (a parent that never came; one that came first and was not offered, or was pushed
/// out of the eight kept; more awaited at once than there is room for), orphan
/// counting reads the spans as before: nothing awaited means no orphans, exactly, and
/// anything else means a look.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    ids: [u64; AWAITED],
    /// Ids of spans that arrived and that a remote child arriving later may point at (see
    /// above), up to [`OFFERED`]: once all slots are filled, a new one takes the place of an
    /// older one, in turn.
    offered: [u64; OFFERED],
    /// How many of `ids` are awaited; [`OVERFLOW`] when more were than there is room for.
    len: u8,
    /// How many of `offered` are filled.
    offers: u8,
    /// The slot of `offered` the next offer replaces once all are filled.
    next_offer: u8,
    /// Bit per slot of `offered`: a client or producer span's, which has one remote child and
    /// gives its slot up once that child came.
    once: u8,
}

/// Parents awaited at once, at most, before [`Awaited`] gives up: a service's callees export
/// before it, each awaiting one of its client spans.
const AWAITED: usize = 4;
/// Offered span ids kept for remote children that arrive after their parent. Generated
/// checkouts (six services, 3 000 traces) with each trace's messages shuffled: with 4 kept,
/// 23 % of the traces were read at decision time; with 6, 1.7 %; with 8, none.
const OFFERED: usize = 8;
const _: () = assert!(OFFERED <= 8, "`Awaited::once` has a bit per offered slot");
const OVERFLOW: u8 = u8::MAX;
/// Spans of one message group whose ids are compared with their parents: larger groups give
/// up (the trace's spans are then read at decision time).
const GROUP_IDS: usize = 32;

/// A span's parent as [`Awaited`] keeps it: [`id64`] of its id, 0 for a root (no parent, or
/// one of zeros). `id64` is never 0 for a parent: an 8-byte one of zeros is no parent, and
/// ids of other lengths hash with the top bit set.
fn parent_key(is_root: bool, parent: &[u8]) -> u64 {
    if is_root {
        0
    } else {
        id64(parent)
    }
}

impl Awaited {
    /// Whether no parent is awaited: the trace has no orphan span.
    pub fn none(&self) -> bool {
        self.len == 0
    }

    fn give_up(&mut self) {
        self.len = OVERFLOW;
    }

    /// Takes in one message group's spans (`(id, parent, remote)`, the parent 0 for a root:
    /// see [`parent_key`]; `remote` for a client or producer span, which a remote child may
    /// point at): its ids answer the parents awaited so far, and its parents not among its own
    /// ids nor offered before are awaited.
    fn take_in(&mut self, group: &[(u64, u64, bool)]) {
        if self.len == OVERFLOW {
            return;
        }
        let mut len = usize::from(self.len);
        let mut i = 0;
        while i < len {
            if group.iter().any(|(id, ..)| *id == self.ids[i]) {
                len -= 1;
                self.ids[i] = self.ids[len];
            } else {
                i += 1;
            }
        }
        for &(_, parent, _) in group {
            if parent == 0 || group.iter().any(|(id, ..)| *id == parent) || self.answer(parent) {
                continue;
            }
            if len == AWAITED {
                return self.give_up();
            }
            self.ids[len] = parent;
            len += 1;
        }
        self.len = len as u8;
        for &(id, parent, remote) in group {
            if remote {
                self.offer(id, true);
            } else if !group.iter().any(|(other, ..)| *other == parent)
                && !group.iter().any(|&(_, p, r)| r && p == id)
            {
                // A local root (its parent elsewhere, or none) whose calls made no client
                // span of their own, as a gateway passing its context on does: its remote
                // children point at it.
                self.offer(id, false);
            }
        }
    }

    /// Whether `parent` is among the offered; a client or producer span's slot is given up
    /// as its remote child arrives.
    fn answer(&mut self, parent: u64) -> bool {
        let n = usize::from(self.offers);
        let Some(i) = self.offered[..n].iter().position(|&o| o == parent) else {
            return false;
        };
        if self.once >> i & 1 == 1 {
            let last = n - 1;
            self.offered[i] = self.offered[last];
            let moved = self.once >> last & 1;
            self.once = (self.once & !(1 << i) | moved << i) & !(1 << last);
            self.offers -= 1;
        }
        true
    }

    /// Keeps `id` among the offered, in place of an older one once all slots are filled.
    fn offer(&mut self, id: u64, once: bool) {
        let slot = if usize::from(self.offers) < OFFERED {
            self.offers += 1;
            usize::from(self.offers) - 1
        } else {
            let s = usize::from(self.next_offer);
            self.next_offer = (self.next_offer + 1) % OFFERED as u8;
            s
        };
        self.offered[slot] = id;
        self.once = self.once & !(1 << slot) | u8::from(once) << slot;
    }
}

impl TraceEntry {
    /// What [`RuleSet::decides_early`](crate::rules::RuleSet::decides_early) reads of the
    /// trace, for a set whose early decisions are steady: the probes' bits, the error flag,
    /// whether the root arrived.
    pub fn early_state(&self) -> ([u64; 3], bool, bool) {
        (self.seen.bits(), self.has_error, self.root_seen.is_some())
    }

    /// The trace's duration from its first span start to its last span end.
    pub fn duration_nanos(&self) -> u64 {
        self.end_max.saturating_sub(self.start_min)
    }

    /// When the trace is complete, and by which trigger (the earliest wins).
    pub(super) fn deadline(&self, c: &Completion) -> (u64, Trigger) {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut best = (self.last_seen + ms(c.decision_wait), Trigger::Idle);
        if let Some(root) = self.root_seen {
            let t = root + ms(c.root_grace);
            if t < best.0 {
                best = (t, Trigger::Root);
            }
        }
        let t = self.first_seen + ms(c.max_trace_age);
        if t < best.0 {
            best = (t, Trigger::MaxAge);
        }
        best
    }

    pub(super) fn append(
        &mut self,
        group: &TraceGroup<'_>,
        now: u64,
        probes: Option<&Probes>,
    ) -> usize {
        let mut added = 0;
        // The group's (id, parent, remote) for `Awaited`: on the stack, not initialised ahead.
        let mut ids = smallvec::SmallVec::<[(u64, u64, bool); GROUP_IDS]>::new();
        let mut whole = true;
        for (i, span) in group.spans().enumerate() {
            if ids.len() < GROUP_IDS {
                let (id, parent) = span.ids();
                // Client (3) and producer (4) spans are what remote children point at.
                let remote = matches!(span.facts.kind, 3 | 4);
                ids.push((id64(id), parent_key(span.facts.is_root, parent), remote));
            } else {
                whole = false;
            }
            let slot = match self
                .groups
                .iter()
                .position(|g| Arc::ptr_eq(&g.ctx, span.context) || *g.ctx == **span.context)
            {
                Some(i) => i,
                None => {
                    if self.groups.len() == 1 && !self.groups.spilled() {
                        // A trace that crosses services usually crosses several: one
                        // allocation for up to four contexts rather than one per doubling.
                        self.groups.reserve_exact(3);
                    } else if self.groups.len() == self.groups.capacity() {
                        // Then by half, not double: a trace of five or six services (as
                        // checkouts are) fits six, and doubling to eight left 64 bytes of
                        // every such trace unused, which is what kept the SDK recording's
                        // small spans over the memory target (BENCHMARKS.md).
                        self.groups.reserve_exact(self.groups.len() / 2);
                    }
                    added += span.context.budget_size() + std::mem::size_of::<SpanGroup>();
                    self.groups.push(SpanGroup {
                        ctx: span.context.clone(),
                        spans: Vec::new(),
                    });
                    self.groups.len() - 1
                }
            };
            let spans = &mut self.groups[slot].spans;
            // Grow by what this message brings under this context (one allocation per
            // message, not per span), or by a quarter if more: doubling would leave up to
            // half of a big trace's buffer unused, and that is memory the budget pays for.
            if spans.capacity() - spans.len() < span.field.len() {
                let incoming: usize = group
                    .spans()
                    .skip(i)
                    .filter(|s| Arc::ptr_eq(s.context, span.context))
                    .map(|s| s.field.len())
                    .sum();
                spans.reserve_exact(incoming.max(spans.len() / 4));
            }
            let at = spans.len();
            spans.extend_from_slice(span.field);
            added += span.field.len();
            let f = span.facts;
            if self.span_count == 0 || f.start < self.start_min {
                self.start_min = f.start;
            }
            self.end_max = self.end_max.max(f.end);
            self.has_error |= f.is_error;
            let first_root = f.is_root && self.root_seen.is_none();
            if first_root {
                self.root_seen = Some(now);
                self.root_at = Some((slot.min(usize::from(u16::MAX)) as u16, at as u32));
            }
            if let Some(p) = probes {
                p.observe(&span, first_root, &mut self.seen);
            }
            self.span_count += 1;
        }
        match whole {
            true => self.awaited.take_in(&ids),
            false => self.awaited.give_up(),
        }
        self.last_seen = now;
        self.bytes = self.bytes.saturating_add(added as u32);
        added
    }
}
