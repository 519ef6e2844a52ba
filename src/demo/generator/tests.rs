use super::*;
use std::collections::{HashMap, HashSet};

const T0: u64 = 1_700_000_000_000_000_000;

/// A decoded message: the service name and its spans.
struct Decoded {
    service: String,
    spans: Vec<Span>,
}

fn decode(trace: &GeneratedTrace) -> Vec<Decoded> {
    trace
        .messages
        .iter()
        .map(|m| {
            let req = ExportTraceServiceRequest::decode(&m[..]).unwrap();
            assert_eq!(req.resource_spans.len(), 1);
            let rs = &req.resource_spans[0];
            let res = rs.resource.as_ref().unwrap();
            for key in [
                "service.name",
                "service.version",
                "service.namespace",
                "deployment.environment.name",
                "host.name",
                "k8s.pod.name",
            ] {
                assert!(str_attr(&res.attributes, key).is_some(), "missing {key}");
            }
            assert_eq!(rs.scope_spans.len(), 1);
            let ss = &rs.scope_spans[0];
            let scope = ss.scope.as_ref().unwrap();
            assert!(!scope.name.is_empty() && !scope.version.is_empty());
            Decoded {
                service: str_attr(&res.attributes, "service.name")
                    .unwrap()
                    .to_string(),
                spans: ss.spans.clone(),
            }
        })
        .collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn all_spans(d: &[Decoded]) -> Vec<&Span> {
    d.iter().flat_map(|m| m.spans.iter()).collect()
}

fn root(d: &[Decoded]) -> &Span {
    let roots: Vec<&Span> = all_spans(d)
        .into_iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1);
    roots[0]
}

fn duration(s: &Span) -> u64 {
    s.end_time_unix_nano - s.start_time_unix_nano
}

fn traces(config: GeneratorConfig, seed: u64, n: usize) -> Vec<GeneratedTrace> {
    let mut g = Generator::new(config, seed);
    (0..n)
        .map(|i| g.next_trace(T0 + i as u64 * 1_000_000))
        .collect()
}

#[test]
fn traces_are_well_formed() {
    for (i, trace) in traces(GeneratorConfig::default(), 1, 3_000)
        .iter()
        .enumerate()
    {
        assert_ne!(trace.trace_id, [0u8; 16]);
        let d = decode(trace);
        let spans = all_spans(&d);
        assert_eq!(spans.len(), trace.span_count);

        // One trace id, unique non-zero span ids.
        let mut ids = HashSet::new();
        for s in &spans {
            assert_eq!(s.trace_id, trace.trace_id.to_vec());
            assert_eq!(s.span_id.len(), 8);
            assert_ne!(s.span_id, vec![0u8; 8]);
            assert!(ids.insert(s.span_id.clone()), "duplicate span id");
            assert!(s.start_time_unix_nano < s.end_time_unix_nano);
        }

        // Exactly one root, in the last message, from the gateway.
        let r = root(&d);
        let last = d.last().unwrap();
        assert!(last.spans.iter().any(|s| s.parent_span_id.is_empty()));
        assert_eq!(last.service, "gateway");
        assert_eq!(r.kind, SpanKind::Server as i32);
        assert_eq!(r.start_time_unix_nano, T0 + i as u64 * 1_000_000);

        // One message per service.
        let services: HashSet<&str> = d.iter().map(|m| m.service.as_str()).collect();
        assert_eq!(services.len(), d.len());

        // Parents exist and contain their children.
        let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (&s.span_id[..], *s)).collect();
        for s in &spans {
            if s.parent_span_id.is_empty() {
                continue;
            }
            let p = by_id
                .get(&s.parent_span_id[..])
                .unwrap_or_else(|| panic!("parent of {} missing", s.name));
            assert!(
                s.start_time_unix_nano > p.start_time_unix_nano,
                "{}",
                s.name
            );
            assert!(s.end_time_unix_nano < p.end_time_unix_nano, "{}", s.name);
            for e in &s.events {
                assert!(e.time_unix_nano >= s.start_time_unix_nano);
                assert!(e.time_unix_nano <= s.end_time_unix_nano);
            }
        }
    }
}

#[test]
fn ordinary_checkout_shape() {
    let config = GeneratorConfig {
        error_rate: 0.0,
        slow_rate: 0.0,
        enterprise_rate: 0.0,
        health_check_rate: 0.0,
    };
    for trace in traces(config, 2, 500) {
        assert_eq!(trace.kind, TraceKind::Ordinary);
        let d = decode(&trace);
        let order: Vec<&str> = d.iter().map(|m| m.service.as_str()).collect();
        assert_eq!(order[0], "auth");
        assert_eq!(&order[order.len() - 2..], ["orders", "gateway"]);
        assert_eq!(order.len(), 6);
        assert!((10..=11).contains(&trace.span_count));

        let r = root(&d);
        assert_eq!(r.name, "POST /api/checkout");
        assert_eq!(str_attr(&r.attributes, "http.route"), Some("/api/checkout"));
        assert_eq!(
            int_attr(&r.attributes, "http.response.status_code"),
            Some(200)
        );
        assert!(str_attr(&r.attributes, "user_agent.original").is_some());
        assert!(str_attr(&r.attributes, "customer.id").is_some());
        let tier = str_attr(&r.attributes, "customer.tier");
        assert!(tier == Some("free") || tier == Some("pro"));
        let ms = duration(r) / 1_000_000;
        assert!((15..=300).contains(&ms), "ordinary took {ms} ms");

        let spans = all_spans(&d);
        let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        for n in [
            "POST /auth/verify",
            "POST /orders",
            "GET /inventory/{sku}",
            "SELECT inventory",
            "POST /payments",
            "orders publish",
            "orders process",
        ] {
            assert!(names.contains(n), "missing {n}");
        }
        assert!(spans.iter().all(|s| s.status.is_none()));
        let db = spans.iter().find(|s| s.name == "SELECT inventory").unwrap();
        assert_eq!(
            str_attr(&db.attributes, "db.system.name"),
            Some("postgresql")
        );
        assert!(str_attr(&db.attributes, "db.query.text").is_some());
        for (name, kind) in [
            ("orders publish", SpanKind::Producer),
            ("orders process", SpanKind::Consumer),
        ] {
            let s = spans.iter().find(|s| s.name == name).unwrap();
            assert_eq!(s.kind, kind as i32);
            assert_eq!(str_attr(&s.attributes, "messaging.system"), Some("kafka"));
            assert_eq!(
                str_attr(&s.attributes, "messaging.destination.name"),
                Some("orders")
            );
        }
    }
}

#[test]
fn error_traces_carry_error_status() {
    let config = GeneratorConfig {
        error_rate: 1.0,
        ..GeneratorConfig::default()
    };
    let mut seen = 0;
    for trace in traces(config, 3, 300) {
        if trace.kind == TraceKind::HealthCheck {
            continue;
        }
        assert_eq!(trace.kind, TraceKind::Error);
        seen += 1;
        let d = decode(&trace);
        let spans = all_spans(&d);
        let pay = spans
            .iter()
            .find(|s| s.name == "POST /payments" && s.kind == SpanKind::Server as i32)
            .unwrap();
        let st = pay.status.as_ref().unwrap();
        assert_eq!(st.code, StatusCode::Error as i32);
        assert_eq!(st.message, "card declined");
        let ev = pay.events.iter().find(|e| e.name == "exception").unwrap();
        assert!(str_attr(&ev.attributes, "exception.type").is_some());
        assert!(str_attr(&ev.attributes, "exception.message").is_some());

        let orders = spans.iter().find(|s| s.name == "POST /orders").unwrap();
        assert_eq!(
            int_attr(&orders.attributes, "http.response.status_code"),
            Some(502)
        );
        assert_eq!(
            orders.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        let r = root(&d);
        assert_eq!(
            int_attr(&r.attributes, "http.response.status_code"),
            Some(500)
        );
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
    }
    assert!(seen > 200);

    // No error status anywhere outside error traces.
    for trace in traces(GeneratorConfig::default(), 4, 2_000) {
        let has_error = all_spans(&decode(&trace)).iter().any(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.code == StatusCode::Error as i32)
        });
        assert_eq!(has_error, trace.kind == TraceKind::Error);
    }
}

#[test]
fn slow_traces_last_over_two_seconds() {
    let mut slow = 0;
    for trace in traces(GeneratorConfig::default(), 5, 5_000) {
        let d = decode(&trace);
        let dur = duration(root(&d));
        if trace.kind == TraceKind::Slow {
            slow += 1;
            assert!(dur > 2_000_000_000, "slow trace took {dur} ns");
            assert!(dur < 6_000_000_000);
        } else {
            assert!(dur < 300_000_000, "{:?} trace took {dur} ns", trace.kind);
        }
    }
    assert!(slow > 50);
}

#[test]
fn health_checks_are_single_spans() {
    let config = GeneratorConfig {
        health_check_rate: 1.0,
        ..GeneratorConfig::default()
    };
    for trace in traces(config, 6, 200) {
        assert_eq!(trace.kind, TraceKind::HealthCheck);
        assert_eq!(trace.span_count, 1);
        assert_eq!(trace.messages.len(), 1);
        let d = decode(&trace);
        assert_eq!(d[0].service, "gateway");
        let r = root(&d);
        assert_eq!(r.name, "GET /healthz");
        assert_eq!(r.kind, SpanKind::Server as i32);
        assert_eq!(str_attr(&r.attributes, "http.route"), Some("/healthz"));
    }
}

#[test]
fn enterprise_tier_only_on_enterprise_traces() {
    for trace in traces(GeneratorConfig::default(), 7, 3_000) {
        let d = decode(&trace);
        let tier = str_attr(&root(&d).attributes, "customer.tier").map(str::to_string);
        let enterprise = tier.as_deref() == Some("enterprise");
        assert_eq!(enterprise, trace.kind == TraceKind::Enterprise);
        if trace.kind == TraceKind::HealthCheck {
            assert_eq!(tier, None);
        }
    }
}

#[test]
fn mix_matches_config() {
    let config = GeneratorConfig::default();
    let n = 20_000usize;
    let mut counts: HashMap<TraceKind, usize> = HashMap::new();
    let mut g = Generator::new(config.clone(), 8);
    for i in 0..n {
        *counts.entry(g.next_trace(T0 + i as u64).kind).or_default() += 1;
    }
    let ordinary = 1.0
        - config.error_rate
        - config.slow_rate
        - config.enterprise_rate
        - config.health_check_rate;
    for (kind, p) in [
        (TraceKind::Error, config.error_rate),
        (TraceKind::Slow, config.slow_rate),
        (TraceKind::Enterprise, config.enterprise_rate),
        (TraceKind::HealthCheck, config.health_check_rate),
        (TraceKind::Ordinary, ordinary),
    ] {
        let got = *counts.get(&kind).unwrap_or(&0) as f64 / n as f64;
        let tolerance = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (got - p).abs() < tolerance,
            "{kind:?}: got {got}, want {p} ± {tolerance}"
        );
    }
}

#[test]
fn rates_are_clamped() {
    let config = GeneratorConfig {
        error_rate: f64::NAN,
        slow_rate: -1.0,
        enterprise_rate: 7.0,
        health_check_rate: 0.0,
    };
    for trace in traces(config, 9, 100) {
        assert_eq!(trace.kind, TraceKind::Enterprise);
    }
}

#[test]
fn span_sizes_are_realistic() {
    let mut spans = 0usize;
    let mut span_bytes = 0usize;
    let mut message_bytes = 0usize;
    let ts = traces(GeneratorConfig::default(), 10, 5_000);
    for trace in &ts {
        for d in decode(trace) {
            for s in &d.spans {
                spans += 1;
                span_bytes += s.encoded_len();
            }
        }
        message_bytes += trace.messages.iter().map(Vec::len).sum::<usize>();
    }
    let per_span = span_bytes as f64 / spans as f64;
    let per_trace = spans as f64 / ts.len() as f64;
    println!(
        "spans/trace {per_trace:.2}, span bytes {per_span:.1}, message bytes/span {:.1}",
        message_bytes as f64 / spans as f64
    );
    assert!((150.0..=500.0).contains(&per_span), "{per_span} bytes/span");
    assert!((8.0..=11.0).contains(&per_trace), "{per_trace} spans/trace");
}

#[test]
fn same_seed_same_output() {
    let a = traces(GeneratorConfig::default(), 42, 500);
    let b = traces(GeneratorConfig::default(), 42, 500);
    let c = traces(GeneratorConfig::default(), 43, 500);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.trace_id, y.trace_id);
        assert_eq!(x.messages, y.messages);
        assert_eq!(x.kind, y.kind);
        assert_eq!(x.span_count, y.span_count);
    }
    assert!(a.iter().zip(&c).any(|(x, z)| x.messages != z.messages));
}

#[test]
fn trace_ids_are_random() {
    let ts = traces(GeneratorConfig::default(), 11, 4_000);
    let unique: HashSet<[u8; 16]> = ts.iter().map(|t| t.trace_id).collect();
    assert_eq!(unique.len(), ts.len());
    // Each of the low 56 bits is set about half the time.
    for bit in 0..56 {
        let set = ts
            .iter()
            .filter(|t| {
                let mut low = [0u8; 8];
                low[1..].copy_from_slice(&t.trace_id[9..]);
                u64::from_be_bytes(low) >> bit & 1 == 1
            })
            .count();
        assert!((1_800..=2_200).contains(&set), "bit {bit}: {set}");
    }
}
