//! RED metrics (rate, errors, duration) from every span, before sampling.
//!
//! tailsift sees 100% of the spans, so it can count requests per service and operation without
//! the bias of whatever fraction it keeps. Only SERVER and CONSUMER spans count (a request
//! handled, a message processed); the operation is the span's `http.route` attribute, else its
//! name. The ingest thread owns one [`Red`]: each message's spans are added to local counts
//! (no locks, no allocation once a service and operation are known), and [`Red::flush`]
//! records them into the metrics once per tick, one update per series.
//!
//! Cardinality is capped: at most `max_services` services (more are counted as service
//! `other`) and `max_operations` operations per service (more as operation `other`); spans
//! folded that way are counted in `tailsift_red_overflow_spans_total`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::otlp::decode::Decoder;
use crate::otlp::view::{AttrValue, ContextView, SpanView};
use crate::otlp::SpanContext;
use crate::telemetry as m;
use crate::telemetry::exemplars::Exemplars;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The operation of a span: its `http.route` string attribute if set and not empty, else its
/// name. Read from what decoding found (the span's name and its run of attributes), with the
/// lookup the rules use, so a span repeating the attribute is read as the rules read it (the
/// last one wins). Walking the whole span again for it cost RED ~680 instructions per span,
/// and the exemplars of kept traces paid it a second time (BENCHMARKS.md).
pub(crate) fn operation<'a>(span: &SpanView<'a>) -> &'a [u8] {
    match span.attr(b"http.route") {
        Some(AttrValue::Str(route)) if !route.is_empty() => route,
        _ => span.name,
    }
}

/// The label of whatever goes over a cardinality cap.
pub const OTHER: &str = "other";
/// The service of spans whose resource has no `service.name` (OpenTelemetry's default).
pub const UNKNOWN_SERVICE: &[u8] = b"unknown_service";
/// Longest label value kept (longer names are cut at a character boundary).
const MAX_LABEL: usize = 128;

const SERVER: u8 = 2;
const CONSUMER: u8 = 5;

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct RedLimits {
    /// Services with their own label (`monitoring.max_services`); the rest count as `other`.
    pub max_services: usize,
    /// Operations with their own label per service (`monitoring.max_operations_per_service`);
    /// the rest count as `other`.
    pub max_operations: usize,
}

struct Op {
    requests: u64,
    errors: u64,
    /// Per bucket of [`m::RED_DURATION_BUCKETS`] (and one above the last): count and sum.
    buckets: Vec<(u64, f64)>,
    requests_c: metrics::Counter,
    errors_c: metrics::Counter,
    duration_h: metrics::Histogram,
}

struct Service {
    label: Arc<str>,
    /// Per kind (server, consumer): operation -> index in `ops`.
    by_name: [Map<Box<[u8]>, usize>; 2],
    ops: Vec<Op>,
    /// (kind) -> index of the `other` operation, once created.
    other: [Option<usize>; 2],
    overflow: u64,
    overflow_c: metrics::Counter,
    /// Its number in the exemplar store, if there is one.
    exemplars: Option<(Arc<Exemplars>, usize)>,
}

/// Local RED counts of the ingest thread.
pub struct Red {
    limits: RedLimits,
    by_name: Map<Box<[u8]>, usize>,
    services: Vec<Service>,
    other: Option<usize>,
    /// Per message: context address -> service index (contexts are shared by their spans).
    ctx_cache: Vec<(usize, usize)>,
    /// Where the series are registered for exemplars of kept traces, if anywhere.
    exemplars: Option<Arc<Exemplars>>,
}

/// A label value from bytes: lossy UTF-8, cut to `MAX_LABEL` (128) bytes.
pub fn label(b: &[u8]) -> Arc<str> {
    let s = String::from_utf8_lossy(b);
    let mut end = s.len().min(MAX_LABEL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&s[..end])
}

fn kind_index(kind: u8) -> usize {
    usize::from(kind == CONSUMER)
}

fn kind_label(kind: u8) -> m::RedKind {
    if kind == CONSUMER {
        m::RedKind::Consumer
    } else {
        m::RedKind::Server
    }
}

impl Op {
    fn new(service: &Arc<str>, operation: &Arc<str>, kind: u8) -> Self {
        let labels = [
            ("service", service.to_string()),
            ("operation", operation.to_string()),
            ("kind", kind_label(kind).as_str().to_string()),
        ];
        Op {
            requests: 0,
            errors: 0,
            buckets: vec![(0, 0.0); m::RED_DURATION_BUCKETS.len() + 1],
            requests_c: metrics::counter!(m::RED_REQUESTS, &labels),
            errors_c: metrics::counter!(m::RED_ERRORS, &labels),
            duration_h: metrics::histogram!(m::RED_DURATION, &labels),
        }
    }

    fn add(&mut self, seconds: f64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        let b = m::RED_DURATION_BUCKETS.partition_point(|le| *le < seconds);
        let slot = &mut self.buckets[b];
        slot.0 += 1;
        slot.1 += seconds;
    }

    fn flush(&mut self) {
        if self.requests == 0 {
            return;
        }
        self.requests_c.increment(self.requests);
        self.errors_c.increment(self.errors);
        for (count, sum) in &mut self.buckets {
            if *count > 0 {
                // The mean of a bucket's samples lies in that bucket: recording it `count`
                // times keeps both the bucket counts and the sum exact.
                self.duration_h
                    .record_many(*sum / *count as f64, *count as usize);
                *count = 0;
                *sum = 0.0;
            }
        }
        self.requests = 0;
        self.errors = 0;
    }
}

impl Service {
    /// A service `name` (`None`: the `other` of services over the cap) labelled `label`.
    fn new(label: Arc<str>, name: Option<&[u8]>, exemplars: Option<&Arc<Exemplars>>) -> Self {
        let overflow_c = metrics::counter!(m::RED_OVERFLOW, "service" => label.to_string());
        overflow_c.absolute(0);
        Service {
            label,
            by_name: [Map::default(), Map::default()],
            ops: Vec::new(),
            other: [None; 2],
            overflow: 0,
            overflow_c,
            exemplars: exemplars.map(|e| (e.clone(), e.add_service(name))),
        }
    }

    /// Creates the series of operation `name` (`None`: `other`) labelled `label`.
    fn push_op(&mut self, kind: u8, name: Option<&[u8]>, label: Arc<str>) -> usize {
        if let Some((ex, service)) = &self.exemplars {
            ex.add_series(*service, kind, name, (&self.label, &label));
        }
        self.ops.push(Op::new(&self.label, &label, kind));
        self.ops.len() - 1
    }

    /// The operation's index, and whether it went over the cap (counted as `other`).
    fn op(&mut self, kind: u8, name: &[u8], max: usize) -> (usize, bool) {
        let k = kind_index(kind);
        if let Some(i) = self.by_name[k].get(name) {
            return (*i, false);
        }
        if self.by_name[0].len() + self.by_name[1].len() >= max {
            if let Some(i) = self.other[k] {
                return (i, true);
            }
            let i = self.push_op(kind, None, Arc::from(OTHER));
            self.other[k] = Some(i);
            return (i, true);
        }
        let i = self.push_op(kind, Some(name), label(name));
        self.by_name[k].insert(Box::from(name), i);
        (i, false)
    }
}

impl Red {
    /// Empty counts; nothing is recorded into the metrics before [`Red::flush`].
    pub fn new(limits: RedLimits) -> Self {
        Red {
            limits,
            by_name: Map::default(),
            services: Vec::new(),
            other: None,
            ctx_cache: Vec::new(),
            exemplars: None,
        }
    }

    /// Registers every series in `exemplars`, so that kept traces' spans can be offered to
    /// the series that counted them (see [`crate::telemetry::exemplars`]).
    pub fn with_exemplars(mut self, exemplars: Arc<Exemplars>) -> Self {
        self.exemplars = Some(exemplars);
        self
    }

    fn service(&mut self, ctx: &Arc<SpanContext>) -> usize {
        let addr = Arc::as_ptr(ctx) as usize;
        if let Some((_, i)) = self.ctx_cache.iter().find(|(a, _)| *a == addr) {
            return *i;
        }
        let view = ContextView::new(ctx);
        let name = view.service_name().unwrap_or(UNKNOWN_SERVICE);
        let i = match self.by_name.get(name) {
            Some(i) => *i,
            None if self.by_name.len() >= self.limits.max_services => match self.other {
                Some(i) => i,
                None => {
                    let other = Service::new(Arc::from(OTHER), None, self.exemplars.as_ref());
                    self.services.push(other);
                    self.other = Some(self.services.len() - 1);
                    self.services.len() - 1
                }
            },
            None => {
                let service = Service::new(label(name), Some(name), self.exemplars.as_ref());
                self.services.push(service);
                let i = self.services.len() - 1;
                self.by_name.insert(Box::from(name), i);
                i
            }
        };
        self.ctx_cache.push((addr, i));
        i
    }

    /// Counts the SERVER and CONSUMER spans of the message `decoder` last decoded from `buf`.
    pub fn observe(&mut self, decoder: &Decoder, buf: &[u8]) {
        self.ctx_cache.clear();
        for group in decoder.groups(buf) {
            for span in group.spans() {
                let kind = span.facts.kind;
                if kind != SERVER && kind != CONSUMER {
                    continue;
                }
                let op = operation(&span.view());
                let s = self.service(span.context);
                let max = self.limits.max_operations;
                let over_service_cap = Some(s) == self.other;
                let service = &mut self.services[s];
                let (o, over_op_cap) = service.op(kind, op, max);
                service.overflow += u64::from(over_service_cap || over_op_cap);
                let secs = span.facts.end.saturating_sub(span.facts.start) as f64 / 1e9;
                service.ops[o].add(secs, span.facts.is_error);
            }
        }
    }

    /// Records the counts gathered since the last flush.
    pub fn flush(&mut self) {
        for s in &mut self.services {
            for op in &mut s.ops {
                op.flush();
            }
            if s.overflow > 0 {
                s.overflow_c.increment(s.overflow);
                s.overflow = 0;
            }
        }
    }

    /// Services and operations tracked (for tests).
    pub fn series(&self) -> usize {
        self.services.iter().map(|s| s.ops.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::build::*;

    fn decoded(req: &[u8]) -> Decoder {
        let mut d = Decoder::new();
        d.decode(req).expect("decodes");
        d
    }

    #[test]
    fn counts_server_and_consumer_spans_by_route_or_name_and_caps_operations() {
        let t = trace_id(1);
        let mut client = span(t, 2, Some(1), "call", 0, 5_000_000);
        client.kind = SpanKind::Client as i32;
        let mut consumer = span(t, 3, Some(2), "process order", 0, 2_000_000);
        consumer.kind = SpanKind::Consumer as i32;
        let routed = with_attrs(
            span(t, 1, None, "GET /items/42", 0, 30_000_000),
            vec![attr_str("http.route", "/items/{id}")],
        );
        let req = request("shop", vec![routed, client, consumer]);
        let mut red = Red::new(RedLimits {
            max_services: 10,
            max_operations: 2,
        });
        red.observe(&decoded(&req), &req);
        let shop = &red.services[red.by_name[&b"shop"[..]]];
        assert_eq!(shop.ops.len(), 2, "the client span is not a request");
        assert!(shop.by_name[1].contains_key(&b"process order"[..]));
        let routed_op = &shop.ops[shop.by_name[0][&b"/items/{id}"[..]]];
        assert_eq!(routed_op.requests, 1);
        // 30 ms lands in the bucket whose bound is 0.05.
        let b = m::RED_DURATION_BUCKETS
            .iter()
            .position(|le| *le == 0.05)
            .unwrap();
        assert_eq!(routed_op.buckets[b].0, 1);

        // A third operation goes over the cap of two: counted as `other`.
        let extra = with_error(span(t, 4, None, "GET /new", 0, 1));
        let req2 = request("shop", vec![extra.clone(), extra]);
        red.observe(&decoded(&req2), &req2);
        let shop = &red.services[red.by_name[&b"shop"[..]]];
        assert_eq!(shop.overflow, 2);
        let other = &shop.ops[shop.other[0].unwrap()];
        assert_eq!((other.requests, other.errors), (2, 2));
        assert_eq!(red.series(), 3);
        red.flush();
        assert_eq!(red.services[0].ops[0].requests, 0, "flushed");
    }

    #[test]
    fn services_over_the_cap_count_as_other() {
        let mut red = Red::new(RedLimits {
            max_services: 1,
            max_operations: 10,
        });
        for (i, svc) in ["a", "b", "c"].iter().enumerate() {
            let req = request(svc, vec![span(trace_id(i as u64), 1, None, "op", 0, 1)]);
            red.observe(&decoded(&req), &req);
        }
        assert_eq!(red.services.len(), 2);
        let other = &red.services[red.other.unwrap()];
        assert_eq!(&*other.label, OTHER);
        assert_eq!(other.overflow, 2);
        assert_eq!(other.ops[0].requests, 2);
    }

    #[test]
    fn the_operation_is_the_route_wherever_it_is_else_the_name() {
        use prost::Message;
        let t = trace_id(1);
        let long_key = "k".repeat(200); // a key of a two-byte length: walked, not skipped
        let cases = [
            (vec![], "name"),
            (vec![attr_str("http.route", "/a")], "/a"),
            (
                vec![
                    attr_str("x", "1"),
                    attr_str(&long_key, "2"),
                    attr_str("http.route", "/b"),
                ],
                "/b",
            ),
            (vec![attr_str("http.route", "")], "name"),
            (vec![attr_str("http.routes", "/c")], "name"),
            (vec![attr_int("http.route", 7)], "name"),
            // Repeated, as the rules read it: the last one wins.
            (
                vec![attr_str("http.route", "/d"), attr_str("http.route", "/e")],
                "/e",
            ),
        ];
        for (attrs, want) in cases {
            let s = with_attrs(span(t, 1, None, "name", 0, 1), attrs);
            let bytes = s.encode_to_vec();
            let parsed = SpanView::parse(&bytes).expect("a span");
            assert_eq!(operation(&parsed), want.as_bytes(), "{want}, parsed");
            // As RED reads it: from what decoding found.
            let req = request("svc", vec![s]);
            let mut d = Decoder::new();
            d.decode(&req).expect("decodes");
            let ops: Vec<Vec<u8>> = d
                .groups(&req)
                .flat_map(|g| {
                    g.spans()
                        .map(|s| operation(&s.view()).to_vec())
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(ops, vec![want.as_bytes().to_vec()], "{want}, decoded");
        }
    }

    #[test]
    fn labels_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let l = label(long.as_bytes());
        assert!(l.len() <= MAX_LABEL && l.chars().all(|c| c == 'é'));
        assert_eq!(&*label(b"\xff ok"), "\u{fffd} ok");
    }
}
