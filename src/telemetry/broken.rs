//! Broken traces, found at decision time: spans whose parent span never arrived (orphans),
//! counted per service, and traces decided without a root span.
//!
//! An orphan's service is the one whose span points at a parent nobody exported: usually its
//! caller propagated context but did not export its own span (not instrumented, exporting
//! elsewhere, or sampled out upstream), or a span was lost on the way. A trace decided early
//! (`max_age`, `span_limit`, `memory`) may count a parent that was merely late.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::buffer::TraceEntry;
use crate::otlp::id64;
use crate::otlp::view::SpanView;
use crate::otlp::wire::{split_short_field, Fields};
use crate::telemetry::red::{label, OTHER, UNKNOWN_SERVICE};

/// Adds the orphan spans of a buffered trace to `out`, per service; returns whether the root
/// is missing. A trace whose spans' parents were all answered as they arrived (see
/// [`crate::buffer::Awaited`]) has none, and its spans are not read; the others are walked
/// (`walk_entry`).
pub fn inspect_entry(entry: &TraceEntry, out: &mut Vec<(Box<[u8]>, u64)>) -> bool {
    if !entry.awaited.none() {
        walk_entry(entry, out);
    }
    entry.root_seen.is_none()
}

/// Adds the orphan spans of a buffered trace to `out`, per service, reading each span's ids
/// only (the fields SDKs write first), not the whole span: see [`span_ids`]. Ids are compared
/// as numbers (8-byte ids as they are, others hashed), in scratch vectors the thread keeps,
/// so counting allocates nothing.
fn walk_entry(entry: &TraceEntry, out: &mut Vec<(Box<[u8]>, u64)>) {
    /// Span ids, and (parent id, group) of the spans that have a parent.
    type Scratch = (Vec<u64>, Vec<(u64, u16)>);
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = const {
            std::cell::RefCell::new((Vec::new(), Vec::new()))
        };
    }
    let mut count = |(ids, parents): &mut Scratch| {
        ids.clear();
        parents.clear();
        for (gi, g) in entry.groups.iter().enumerate() {
            each_span(&g.spans, |span| {
                let (id, parent) = span_ids(span);
                ids.push(id64(id));
                if !parent.iter().all(|&b| b == 0) {
                    parents.push((id64(parent), gi as u16));
                }
            });
        }
        // Most traces have a few dozen spans at most: looking each parent up in the ids as
        // they are beats sorting them first.
        let sorted = ids.len() > 32;
        if sorted {
            ids.sort_unstable();
        }
        for (parent, gi) in parents.iter() {
            let found = if sorted {
                ids.binary_search(parent).is_ok()
            } else {
                ids.contains(parent)
            };
            if found {
                continue;
            }
            let service = entry
                .groups
                .get(usize::from(*gi))
                .and_then(|g| g.ctx.service_name())
                .unwrap_or(UNKNOWN_SERVICE);
            match out.iter_mut().find(|(s, _)| **s == *service) {
                Some((_, n)) => *n += 1,
                None => out.push((Box::from(service), 1)),
            }
        }
        if ids.capacity() > 4096 {
            *ids = Vec::new();
            *parents = Vec::new();
        }
    };
    if SCRATCH.try_with(|s| count(&mut s.borrow_mut())).is_err() {
        count(&mut (Vec::new(), Vec::new()));
    }
}

/// Calls `f` with each span of a group's `ScopeSpans.spans` fields, in order, up to the first
/// malformed field.
fn each_span(spans: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rest = spans;
    while !rest.is_empty() {
        // Spans shorter than 16 KiB, as nearly all are: their tag and a one- or two-byte
        // length, read without the general walk.
        if let Some((span, after)) = split_short_field(rest, SPANS_TAG) {
            rest = after;
            f(span);
            continue;
        }
        let Some(Ok(field)) = Fields::new(rest).next() else {
            break;
        };
        rest = &rest[field.raw.len()..];
        if let Some(span) = field.value.as_bytes() {
            f(span);
        }
    }
}

/// The one-byte tag of `ScopeSpans.spans` (field 2, length-delimited).
const SPANS_TAG: u8 = 2 << 3 | 2;

/// A span's id and parent span id. Every SDK writes a span's fields in field-number order, and
/// the ids are fields 2 and 4: reading stops at the first field numbered above 4, so that
/// counting orphans does not walk the attributes. A span whose id was not found before that
/// (an encoder writing in another order) is walked whole.
pub fn span_ids(span: &[u8]) -> (&[u8], &[u8]) {
    // How SDKs write it, read without the general walk (this runs for every span decided):
    // one-byte tags and lengths, trace id, span id, perhaps a trace state, perhaps a parent.
    let mut rest = span;
    let (mut id, mut parent) = (None, &[][..]);
    while let [tag, len, tail @ ..] = rest {
        let (field, len) = (tag >> 3, usize::from(*len));
        if tag & 7 != 2 || field == 0 || field > 4 || len >= 0x80 || tail.len() < len {
            break;
        }
        let (value, after) = tail.split_at(len);
        match field {
            2 => id = Some(value),
            4 => parent = value,
            _ => {}
        }
        rest = after;
    }
    match (id, rest.first()) {
        // Stopped at a later field: the ids were all before it.
        (Some(id), Some(tag)) if tag >> 3 > 4 => return (id, parent),
        (Some(id), None) => return (id, parent),
        _ => {}
    }
    // Another encoding (long lengths, fields out of order): the whole walk.
    SpanView::parse(span).map_or((&[][..], &[][..]), |v| (v.span_id, v.parent_span_id))
}

/// Service labels of the orphan counter, capped: services beyond `max_services` are `other`.
#[derive(Debug)]
pub struct ServiceLabels {
    max: AtomicUsize,
    known: Mutex<HashMap<Box<[u8]>, Arc<str>>>,
}

impl Default for ServiceLabels {
    fn default() -> Self {
        ServiceLabels {
            max: AtomicUsize::new(100),
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl ServiceLabels {
    /// Sets the cap (`monitoring.max_services`; 100 until set), once at start: services
    /// already labelled keep their label.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Counts orphans per service (once per batch of decisions).
    pub fn record(&self, orphans: &[(Box<[u8]>, u64)]) {
        if orphans.is_empty() {
            return;
        }
        let max = self.max.load(Ordering::Relaxed);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (service, n) in orphans {
            let l = match known.get(service) {
                Some(l) => l.clone(),
                None if known.len() >= max => Arc::from(OTHER),
                None => {
                    let l = label(service);
                    known.insert(service.clone(), l.clone());
                    l
                }
            };
            metrics::counter!(crate::telemetry::ORPHAN_SPANS, "service" => l.to_string())
                .increment(*n);
        }
    }
}

#[cfg(test)]
mod tests;
