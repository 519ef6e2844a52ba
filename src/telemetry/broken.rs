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

use crate::rules::TraceView;
use crate::telemetry::red::{label, OTHER, UNKNOWN_SERVICE};

/// Adds the orphan spans of `view` to `out`, per service; returns whether the root is missing.
pub fn inspect(view: &TraceView<'_>, out: &mut Vec<(Box<[u8]>, u64)>) -> bool {
    let mut ids: smallvec::SmallVec<[&[u8]; 16]> =
        view.spans.iter().map(|(s, _)| s.span_id).collect();
    ids.sort_unstable();
    for (span, ctx) in &view.spans {
        if span.is_root() || ids.binary_search(&span.parent_span_id).is_ok() {
            continue;
        }
        let service = ctx.service_name().unwrap_or(UNKNOWN_SERVICE);
        match out.iter_mut().find(|(s, _)| **s == *service) {
            Some((_, n)) => *n += 1,
            None => out.push((Box::from(service), 1)),
        }
    }
    view.root.is_none()
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
mod tests {
    use super::*;
    use crate::buffer::{Buffer, Completion};
    use crate::decision::DecisionCache;
    use crate::offsets::OffsetHold;
    use crate::otlp::build::*;
    use crate::otlp::decode::Decoder;
    use crate::otlp::TraceId;
    use tokio::time::Instant;

    /// Buffers the spans (service, spans) of one trace and inspects them.
    fn check(
        parts: Vec<(&str, Vec<opentelemetry_proto::tonic::trace::v1::Span>)>,
    ) -> (Vec<(String, u64)>, bool) {
        let buffer = Buffer::new(Completion::default());
        let cache = DecisionCache::new(10, std::time::Duration::from_secs(1));
        let hold = Arc::new(OffsetHold {
            partition: 0,
            offset: 0,
        });
        let mut id = None;
        for (svc, spans) in parts {
            let req = request(svc, spans);
            let mut d = Decoder::new();
            d.decode(&req).unwrap();
            for g in d.groups(&req) {
                id = Some(g.trace_id);
                buffer.ingest(&g, &hold, false, Instant::now(), &cache);
            }
        }
        let id: TraceId = id.unwrap();
        let mut out = Vec::new();
        let mut no_root = false;
        buffer.take(&id, |id, e| {
            no_root = inspect(&TraceView::new(*id, e), &mut out);
            crate::decision::Decision::Drop { rule: "x".into() }
        });
        let out = out
            .into_iter()
            .map(|(s, n)| (String::from_utf8_lossy(&s).into_owned(), n))
            .collect();
        (out, no_root)
    }

    #[test]
    fn counts_spans_whose_parent_never_arrived_by_their_service() {
        let t = trace_id(5);
        // gateway(1) -> [missing 2, never exported by `auth`] -> orders(3), orders(4) under 3.
        let (orphans, no_root) = check(vec![
            ("gateway", vec![span(t, 1, None, "root", 0, 10)]),
            (
                "orders",
                vec![
                    span(t, 3, Some(2), "a", 1, 9),
                    span(t, 4, Some(3), "b", 2, 8),
                ],
            ),
            ("payment", vec![span(t, 5, Some(77), "c", 2, 8)]),
        ]);
        assert_eq!(
            orphans,
            vec![("orders".to_string(), 1), ("payment".to_string(), 1)]
        );
        assert!(!no_root);
    }

    #[test]
    fn a_whole_trace_has_no_orphans_and_a_missing_root_is_reported() {
        let t = trace_id(6);
        let whole = check(vec![(
            "svc",
            vec![span(t, 1, None, "r", 0, 10), span(t, 2, Some(1), "c", 1, 2)],
        )]);
        assert_eq!(whole, (vec![], false));
        let rootless = check(vec![("svc", vec![span(t, 2, Some(1), "c", 1, 2)])]);
        assert_eq!(rootless, (vec![("svc".to_string(), 1)], true));
    }
}
