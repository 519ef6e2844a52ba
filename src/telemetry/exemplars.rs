//! Exemplars of the RED metrics, taken only from kept traces.
//!
//! RED counts 100% of the spans on the ingest thread, before any trace is decided, so an
//! exemplar picked there would usually point at a trace the rules later drop ("trace not
//! found"). Here the exemplars are offered at the decision instead: when a trace is kept, the
//! decider walks the spans it already parsed for the rules (the [`TraceView`]) and offers each
//! SERVER or CONSUMER span to the series RED counted it in; late spans of a kept trace, which
//! are forwarded at once, refresh them too. Dropped traces are never offered, and cost nothing.
//!
//! **Which series.** RED names its series on the ingest thread (first come, capped: further
//! services and operations count as `other`). [`Red`](super::red::Red) registers every
//! series it creates here, with the names that lead to it, so that a span offered at
//! decision time lands on exactly the series that counted it, `other` included. A span of a
//! series RED has not created yet (the first span of a new operation in a trace decided while
//! its own message is ingested, at the span limit) offers nothing.
//!
//! **Memory.** Per series, one exemplar per duration bucket (12), one for the request counter
//! and one for the error counter, the latest winning: 14 slots of 48 bytes, about 700 bytes
//! a series with the labels. Series are capped by RED's caps (`monitoring.max_services` x
//! (`max_operations_per_service` + 2 `other`s)): at the defaults, 101 x 52 series, at most
//! 3.6 MB, and a few KB in practice (one per operation seen).
//!
//! **Cost.** One uncontended lock per kept trace; per SERVER/CONSUMER span of it, the walk for
//! `http.route` RED does at ingest, and two hash lookups.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::otlp::decode::TraceGroup;
use crate::otlp::view::SpanView;
use crate::otlp::TraceId;
use crate::rules::TraceView;
use crate::telemetry as m;
use crate::telemetry::red::{operation, UNKNOWN_SERVICE};

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const SERVER: u64 = 2;
const CONSUMER: u64 = 5;

/// Slots of the duration histogram: one per bucket bound and one above the last (`+Inf`).
pub const BUCKETS: usize = m::RED_DURATION_BUCKETS.len() + 1;

/// One exemplar: a span of a kept trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The kept trace.
    pub trace_id: [u8; 16],
    /// The span (as sent: up to 8 bytes, zero-padded).
    pub span_id: [u8; 8],
    /// The span's duration in seconds (the histogram's observation).
    pub seconds: f64,
    /// The span's end, Unix nanoseconds (0 when absent: no timestamp is exposed).
    pub end_unix_nanos: u64,
    /// The sample rate of the rule that kept the trace (1 in N): the weight of the exemplar.
    pub sample_rate: u32,
}

/// The exemplars of one RED series (service, operation, kind).
#[derive(Debug, Clone)]
pub struct SeriesExemplars {
    /// Its `service` label.
    pub service: Arc<str>,
    /// Its `operation` label.
    pub operation: Arc<str>,
    /// Its `kind` label.
    pub kind: m::RedKind,
    /// Per bucket of [`m::RED_DURATION_BUCKETS`] (and `+Inf`): the latest span there.
    pub buckets: [Option<Exemplar>; BUCKETS],
    /// The latest span counted in `tailsift_red_requests_total`.
    pub requests: Option<Exemplar>,
    /// The latest error span counted in `tailsift_red_errors_total`.
    pub errors: Option<Exemplar>,
}

/// RED's naming of one service: its operations by kind and name, and its `other`s.
#[derive(Default)]
struct ServiceIndex {
    ops: [Map<Box<[u8]>, usize>; 2],
    other: [Option<usize>; 2],
}

#[derive(Default)]
struct Inner {
    services: Map<Box<[u8]>, usize>,
    other_service: Option<usize>,
    index: Vec<ServiceIndex>,
    series: Vec<SeriesExemplars>,
}

/// The exemplars of every RED series, shared by RED (which registers series), the deciders
/// (which offer kept spans) and `/metrics` (which shows them in OpenMetrics).
#[derive(Default)]
pub struct Exemplars {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Exemplars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exemplars")
            .field("series", &self.lock().series.len())
            .finish()
    }
}

fn kind_index(kind: u64) -> usize {
    usize::from(kind == CONSUMER)
}

impl Exemplars {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Exemplars::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// RED created a service: `name`, or `None` for the `other` of services over the cap.
    /// Returns its number, for [`Exemplars::add_series`].
    pub fn add_service(&self, name: Option<&[u8]>) -> usize {
        let mut g = self.lock();
        let i = g.index.len();
        g.index.push(ServiceIndex::default());
        match name {
            Some(n) => {
                g.services.insert(Box::from(n), i);
            }
            None => g.other_service = Some(i),
        }
        i
    }

    /// RED created a series of `service` (a number from [`Exemplars::add_service`]):
    /// operation `name` of span kind `kind` (2 server, 5 consumer), or `None` for the `other`
    /// of operations over the cap; `labels` are its service and operation labels.
    pub fn add_series(
        &self,
        service: usize,
        kind: u8,
        name: Option<&[u8]>,
        labels: (&Arc<str>, &Arc<str>),
    ) {
        let mut g = self.lock();
        let i = g.series.len();
        let k = kind_index(u64::from(kind));
        let Some(s) = g.index.get_mut(service) else {
            return;
        };
        match name {
            Some(n) => {
                s.ops[k].insert(Box::from(n), i);
            }
            None => s.other[k] = Some(i),
        }
        g.series.push(SeriesExemplars {
            service: labels.0.clone(),
            operation: labels.1.clone(),
            kind: if k == 1 {
                m::RedKind::Consumer
            } else {
                m::RedKind::Server
            },
            buckets: [None; BUCKETS],
            requests: None,
            errors: None,
        });
    }

    /// Offers the SERVER and CONSUMER spans of a trace just kept with `sample_rate`.
    pub fn offer_trace(&self, view: &TraceView<'_>, sample_rate: u32) {
        let mut g = self.lock();
        for (span, ctx) in &view.spans {
            let service = ctx.service_name().unwrap_or(UNKNOWN_SERVICE);
            g.offer(&view.id, span, service, sample_rate);
        }
    }

    /// Offers the SERVER and CONSUMER spans of a kept trace's late spans (one message's).
    pub fn offer_group(&self, group: &TraceGroup<'_>, sample_rate: u32) {
        let mut g = self.lock();
        for s in group.spans() {
            let kind = u64::from(s.facts.kind);
            if kind != SERVER && kind != CONSUMER {
                continue;
            }
            let Ok(span) = SpanView::parse(s.bytes) else {
                continue;
            };
            let service = s.context.service_name().unwrap_or(UNKNOWN_SERVICE);
            g.offer(&group.trace_id, &span, service, sample_rate);
        }
    }

    /// Calls `f` with every series' exemplars (for `/metrics`), under the store's lock.
    pub fn with_series<R>(&self, f: impl FnOnce(&[SeriesExemplars]) -> R) -> R {
        f(&self.lock().series)
    }

    /// A copy of the exemplars of every series (for tests).
    pub fn snapshot(&self) -> Vec<SeriesExemplars> {
        self.with_series(<[_]>::to_vec)
    }
}

impl Inner {
    /// The series RED counts a span of `service`, `kind` and operation `op` in, by RED's
    /// rules: a name it registered, else its `other` once a cap made one.
    fn series(&self, service: &[u8], kind: u64, op: &[u8]) -> Option<usize> {
        let s = self.services.get(service).copied().or(self.other_service)?;
        let s = &self.index[s];
        let k = kind_index(kind);
        s.ops[k].get(op).copied().or(s.other[k])
    }

    fn offer(&mut self, trace: &TraceId, span: &SpanView<'_>, service: &[u8], rate: u32) {
        if span.kind != SERVER && span.kind != CONSUMER {
            return;
        }
        let op = operation(span);
        let Some(i) = self.series(service, span.kind, op) else {
            return;
        };
        let seconds = span.duration_nanos() as f64 / 1e9;
        let mut span_id = [0u8; 8];
        let n = span.span_id.len().min(8);
        span_id[..n].copy_from_slice(&span.span_id[..n]);
        let e = Exemplar {
            trace_id: trace.0,
            span_id,
            seconds,
            end_unix_nanos: span.end,
            sample_rate: rate,
        };
        let series = &mut self.series[i];
        let b = m::RED_DURATION_BUCKETS.partition_point(|le| *le < seconds);
        series.buckets[b] = Some(e);
        series.requests = Some(e);
        if span.status_code == 2 {
            series.errors = Some(e);
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
    use crate::telemetry::red::{Red, RedLimits};
    use tokio::time::Instant;

    /// Runs `req` (one trace) through RED, buffers it, and offers it as kept at rate 10.
    fn observe_and_keep(red: &mut Red, ex: &Exemplars, req: &[u8]) -> TraceId {
        let mut d = Decoder::new();
        d.decode(req).expect("decodes");
        red.observe(&d, req);
        let buffer = Buffer::new(Completion::default());
        let cache = DecisionCache::new(10, std::time::Duration::from_secs(1));
        let hold = Arc::new(OffsetHold {
            partition: 0,
            offset: 0,
        });
        let mut id = None;
        for g in d.groups(req) {
            id = Some(g.trace_id);
            buffer.ingest(&g, &hold, false, Instant::now(), &cache);
        }
        let id = id.expect("a trace");
        buffer.take(&id, |id, e| {
            ex.offer_trace(&TraceView::new(*id, e), 10);
            crate::decision::Decision::Drop { rule: "x".into() }
        });
        id
    }

    fn find<'a>(all: &'a [SeriesExemplars], svc: &str, op: &str) -> &'a SeriesExemplars {
        all.iter()
            .find(|s| &*s.service == svc && &*s.operation == op)
            .unwrap_or_else(|| panic!("no series {svc}/{op}"))
    }

    #[test]
    fn a_kept_span_lands_in_its_series_and_bucket_with_the_rate() {
        let ex = Exemplars::new();
        let mut red = Red::new(RedLimits {
            max_services: 10,
            max_operations: 10,
        })
        .with_exemplars(ex.clone());
        let t = trace_id(7);
        let routed = with_attrs(
            span(t, 1, None, "GET /items/42", 1_000, 30_001_000),
            vec![attr_str("http.route", "/items/{id}")],
        );
        let mut client = span(t, 2, Some(1), "call", 0, 5_000_000);
        client.kind = SpanKind::Client as i32;
        let failed = with_error(span(t, 3, Some(2), "check", 0, 2_000_000_000));
        let id = observe_and_keep(
            &mut red,
            &ex,
            &request("shop", vec![routed, client, failed]),
        );

        let all = ex.snapshot();
        assert_eq!(all.len(), 2, "the client span is no RED series");
        let routed = find(&all, "shop", "/items/{id}");
        let b = m::RED_DURATION_BUCKETS.partition_point(|le| *le < 0.03);
        assert_eq!(m::RED_DURATION_BUCKETS[b], 0.05);
        let e = routed.buckets[b].expect("an exemplar in the 50 ms bucket");
        assert_eq!(e.trace_id, id.0);
        assert_eq!(e.span_id, 1u64.to_be_bytes());
        assert_eq!(
            (e.seconds, e.sample_rate, e.end_unix_nanos),
            (0.03, 10, 30_001_000)
        );
        assert_eq!(routed.buckets.iter().flatten().count(), 1);
        assert_eq!(routed.requests, Some(e));
        assert_eq!(routed.errors, None, "not an error span");
        let check = find(&all, "shop", "check");
        assert!(
            check.errors.is_some(),
            "the error span is the error exemplar"
        );
        let b = m::RED_DURATION_BUCKETS.iter().position(|le| *le == 2.5);
        assert!(
            check.buckets[b.unwrap()].is_some(),
            "2 s lands in the 2.5 s bucket"
        );
    }

    #[test]
    fn spans_over_the_caps_land_in_the_other_series_red_counted_them_in() {
        let ex = Exemplars::new();
        let mut red = Red::new(RedLimits {
            max_services: 1,
            max_operations: 1,
        })
        .with_exemplars(ex.clone());
        let req = |n: u64, svc: &str, op: &str| {
            request(svc, vec![span(trace_id(n), 1, None, op, 0, 1_000_000)])
        };
        observe_and_keep(&mut red, &ex, &req(1, "a", "one"));
        let over_op = observe_and_keep(&mut red, &ex, &req(2, "a", "two"));
        let over_service = observe_and_keep(&mut red, &ex, &req(3, "b", "one"));
        let all = ex.snapshot();
        let labels: Vec<_> = all.iter().map(|s| (&*s.service, &*s.operation)).collect();
        assert_eq!(labels, [("a", "one"), ("a", "other"), ("other", "one")]);
        assert_eq!(all[1].requests.map(|e| e.trace_id), Some(over_op.0));
        assert_eq!(all[2].requests.map(|e| e.trace_id), Some(over_service.0));
    }

    #[test]
    fn a_span_of_a_series_red_has_not_seen_offers_nothing() {
        let ex = Exemplars::new();
        let t = trace_id(1);
        let req = request("new", vec![span(t, 1, None, "op", 0, 1)]);
        let mut d = Decoder::new();
        d.decode(&req).expect("decodes");
        for g in d.groups(&req) {
            ex.offer_group(&g, 1);
        }
        assert!(ex.snapshot().is_empty());
    }
}
