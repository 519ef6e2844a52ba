//! Synthetic OpenTelemetry traces for the demo and for tests.
//!
//! A [`Generator`] simulates a small shop: a checkout request enters the `gateway`, which asks
//! `auth` to verify the caller and `orders` to place the order; `orders` checks stock with
//! `inventory` (which queries PostgreSQL), charges the card through `payment`, and publishes the
//! order to the `orders` Kafka topic, from which `fulfillment` consumes it. Each generated trace
//! comes back already encoded as the OTLP `ExportTraceServiceRequest` messages the services'
//! collectors would put on Kafka: one per service, leaf services first and the gateway, which
//! holds the root span, last.
//!
//! The traffic mix is set by [`GeneratorConfig`]: some card-declined errors, some slow calls,
//! some enterprise customers and some single-span health checks. Output depends only on the
//! configuration, the seed and the start times passed in.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

mod checkout;

/// Knobs for the traffic mix; all rates are probabilities in 0..=1.
///
/// The kinds are exclusive: each trace gets exactly one [`TraceKind`], and each rate is the
/// share of *all* traces of that kind. Rates outside 0..=1 (or NaN) are clamped; if they add up
/// to more than 1, the later kinds in the order health check, error, slow, enterprise get what
/// is left.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Share of checkouts where payment fails (card declined) and the error propagates up to
    /// the gateway. Default 0.02.
    pub error_rate: f64,
    /// Share of checkouts where payment or inventory takes 2..5 s, so the trace lasts over 2 s.
    /// Default 0.03.
    pub slow_rate: f64,
    /// Share of checkouts by an enterprise customer (`customer.tier = "enterprise"` on the
    /// gateway root span). Default 0.05.
    pub enterprise_rate: f64,
    /// Share of traces that are a single-span `GET /healthz` on the gateway. Default 0.10.
    pub health_check_rate: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            error_rate: 0.02,
            slow_rate: 0.03,
            enterprise_rate: 0.05,
            health_check_rate: 0.10,
        }
    }
}

/// What a generated trace is, for checking what a sampler kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A successful checkout by a free or pro customer, about 20..300 ms.
    Ordinary,
    /// A checkout where payment failed with "card declined"; several spans have status ERROR.
    Error,
    /// A successful checkout where payment or inventory took 2..5 s.
    Slow,
    /// A successful, normally fast checkout by an enterprise customer.
    Enterprise,
    /// A single gateway span `GET /healthz`.
    HealthCheck,
}

impl TraceKind {
    /// A short lowercase label, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Ordinary => "ordinary",
            TraceKind::Error => "error",
            TraceKind::Slow => "slow",
            TraceKind::Enterprise => "enterprise",
            TraceKind::HealthCheck => "health_check",
        }
    }
}

/// One generated trace, already encoded as the messages its services' collectors would export.
#[derive(Debug, Clone)]
pub struct GeneratedTrace {
    /// The trace id shared by all its spans.
    pub trace_id: [u8; 16],
    /// Encoded `ExportTraceServiceRequest` protobufs (prost::Message::encode_to_vec). One per
    /// service that took part (each holds that service's Resource and one ScopeSpans with that
    /// service's spans of this trace), in the order they would arrive: leaf services first,
    /// the gateway (which holds the root span) last.
    pub messages: Vec<Vec<u8>>,
    /// What kind of trace this is.
    pub kind: TraceKind,
    /// Number of spans over all messages.
    pub span_count: usize,
}

/// The services of the simulated shop; the discriminant indexes [`SERVICES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Gateway = 0,
    Auth = 1,
    Orders = 2,
    Inventory = 3,
    Payment = 4,
    Fulfillment = 5,
}

/// Static description of one service: its identity and the SDK / instrumentation it uses.
struct ServiceInfo {
    name: &'static str,
    version: &'static str,
    language: &'static str,
    sdk_version: &'static str,
    scope_name: &'static str,
    scope_version: &'static str,
    /// Replica-set hash used in pod names.
    pod_hash: &'static str,
}

const SERVICES: [ServiceInfo; 6] = [
    ServiceInfo {
        name: "gateway",
        version: "2.14.0",
        language: "java",
        sdk_version: "1.32.0",
        scope_name: "io.opentelemetry.netty-4.1",
        scope_version: "1.32.0",
        pod_hash: "7c9d5f6b8d",
    },
    ServiceInfo {
        name: "auth",
        version: "1.8.3",
        language: "go",
        sdk_version: "1.21.0",
        scope_name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
        scope_version: "0.46.1",
        pod_hash: "5b8f7c4d9",
    },
    ServiceInfo {
        name: "orders",
        version: "3.2.1",
        language: "java",
        sdk_version: "1.32.0",
        scope_name: "io.opentelemetry.spring-webmvc-6.0",
        scope_version: "1.32.0",
        pod_hash: "6d4c8b7f5c",
    },
    ServiceInfo {
        name: "inventory",
        version: "1.5.0",
        language: "python",
        sdk_version: "1.21.0",
        scope_name: "opentelemetry.instrumentation.flask",
        scope_version: "0.42b0",
        pod_hash: "84f6d9c7b",
    },
    ServiceInfo {
        name: "payment",
        version: "4.0.2",
        language: "nodejs",
        sdk_version: "1.18.1",
        scope_name: "@opentelemetry/instrumentation-http",
        scope_version: "0.45.1",
        pod_hash: "9f7b6c5d4",
    },
    ServiceInfo {
        name: "fulfillment",
        version: "1.1.7",
        language: "go",
        sdk_version: "1.21.0",
        scope_name: "go.opentelemetry.io/contrib/instrumentation/github.com/IBM/sarama/otelsarama",
        scope_version: "0.46.1",
        pod_hash: "58c9d7f6b",
    },
];

/// Replicas per service; each trace picks one per service.
const REPLICAS: usize = 3;
/// Partitions of the `orders` topic.
const ORDER_PARTITIONS: usize = 6;
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";
/// W3C trace flags: sampled.
const FLAG_SAMPLED: u32 = 1;
const NANOS_PER_MICRO: u64 = 1_000;

/// Generates traces; see the module docs for the simulated system.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    rng: SmallRng,
    /// `[service][replica]`: the Resource each replica's SDK reports.
    resources: Vec<Vec<Resource>>,
    /// `[service]`: the instrumentation scope of the service's spans.
    scopes: Vec<InstrumentationScope>,
    /// Next offset per partition of the `orders` topic.
    offsets: [i64; ORDER_PARTITIONS],
}

impl Generator {
    /// A generator for the given mix; the same config and seed give the same traces.
    pub fn new(config: GeneratorConfig, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let resources = SERVICES
            .iter()
            .map(|info| {
                (0..REPLICAS)
                    .map(|_| service_resource(info, &mut rng))
                    .collect()
            })
            .collect();
        let scopes = SERVICES
            .iter()
            .map(|info| InstrumentationScope {
                name: info.scope_name.to_string(),
                version: info.scope_version.to_string(),
                ..Default::default()
            })
            .collect();
        let mut offsets = [0i64; ORDER_PARTITIONS];
        for o in &mut offsets {
            *o = rng.random_range(100_000..2_000_000);
        }
        Generator {
            config,
            rng,
            resources,
            scopes,
            offsets,
        }
    }

    /// The configuration this generator was made with.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Next trace; `start_unix_nanos` is the root span's start time.
    pub fn next_trace(&mut self, start_unix_nanos: u64) -> GeneratedTrace {
        let kind = self.pick_kind();
        let trace_id = self.trace_id();
        let spans = match kind {
            TraceKind::HealthCheck => self.health_check(&trace_id, start_unix_nanos),
            _ => self.checkout(&trace_id, start_unix_nanos, kind),
        };
        let span_count = spans.len();
        let messages = self.encode(spans);
        GeneratedTrace {
            trace_id,
            messages,
            kind,
            span_count,
        }
    }

    fn pick_kind(&mut self) -> TraceKind {
        let c = &self.config;
        let bands = [
            (rate(c.health_check_rate), TraceKind::HealthCheck),
            (rate(c.error_rate), TraceKind::Error),
            (rate(c.slow_rate), TraceKind::Slow),
            (rate(c.enterprise_rate), TraceKind::Enterprise),
        ];
        let u: f64 = self.rng.random();
        let mut edge = 0.0;
        for (r, kind) in bands {
            edge += r;
            if u < edge {
                return kind;
            }
        }
        TraceKind::Ordinary
    }

    /// A random, non-zero trace id: all 16 bytes random, so the last 7 are uniformly random.
    fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            if id != [0u8; 16] {
                return id;
            }
        }
    }

    /// A random, non-zero span id.
    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.rng.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// A random duration of `lo..=hi` microseconds, in nanoseconds.
    fn us(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo..=hi) * NANOS_PER_MICRO
    }

    /// A random duration of 2..5 s, in nanoseconds.
    fn slow(&mut self) -> u64 {
        self.us(2_000_000, 5_000_000)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn health_check(&mut self, tid: &[u8; 16], start: u64) -> Vec<(Service, Span)> {
        let id = self.span_id();
        let end = start + self.us(150, 3_000);
        let probe_ip = format!(
            "10.0.{}.{}",
            self.rng.random_range(0..4u8),
            self.rng.random_range(2..255u8)
        );
        let attrs = vec![
            kv_str("http.request.method", "GET"),
            kv_str("http.route", "/healthz"),
            kv_str("url.path", "/healthz"),
            kv_str("url.scheme", "http"),
            kv_str("server.address", "gateway"),
            kv_int("server.port", 8080),
            kv_str("network.protocol.version", "1.1"),
            kv_str("user_agent.original", "kube-probe/1.29"),
            kv_str("client.address", probe_ip),
            kv_int("http.response.status_code", 200),
        ];
        vec![(
            Service::Gateway,
            span(
                tid,
                id,
                None,
                "GET /healthz",
                SpanKind::Server,
                (start, end),
                attrs,
            ),
        )]
    }

    /// Groups spans by service into one request each, ordered by when the service's last span
    /// ended (the gateway, holding the root, last), and encodes them.
    fn encode(&mut self, spans: Vec<(Service, Span)>) -> Vec<Vec<u8>> {
        let mut groups: Vec<(Service, u64, Vec<Span>)> = Vec::new();
        for (svc, s) in spans {
            match groups.iter_mut().find(|g| g.0 == svc) {
                Some(g) => {
                    g.1 = g.1.max(s.end_time_unix_nano);
                    g.2.push(s);
                }
                None => groups.push((svc, s.end_time_unix_nano, vec![s])),
            }
        }
        groups.sort_by_key(|g| (g.0 == Service::Gateway, g.1, g.0 as usize));
        groups
            .into_iter()
            .map(|(svc, _, mut spans)| {
                spans.sort_by_key(|s| s.start_time_unix_nano);
                let replica = self.rng.random_range(0..REPLICAS);
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: Some(self.resources[svc as usize][replica].clone()),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(self.scopes[svc as usize].clone()),
                            spans,
                            ..Default::default()
                        }],
                        schema_url: SCHEMA_URL.to_string(),
                    }],
                };
                request.encode_to_vec()
            })
            .collect()
    }
}

/// A rate clamped to 0..=1, NaN as 0.
fn rate(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// The Resource one replica of a service reports: pod and node names drawn from `rng`.
fn service_resource(info: &ServiceInfo, rng: &mut SmallRng) -> Resource {
    const POD_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(POD_CHARS[rng.random_range(0..POD_CHARS.len())]))
        .collect();
    let pod = format!("{}-{}-{}", info.name, info.pod_hash, suffix);
    let host = format!(
        "ip-10-0-{}-{}.ec2.internal",
        rng.random_range(0..64u8),
        rng.random_range(2..255u8)
    );
    Resource {
        attributes: vec![
            kv_str("service.name", info.name),
            kv_str("service.version", info.version),
            kv_str("service.namespace", "shop"),
            kv_str("deployment.environment.name", "demo"),
            kv_str("host.name", host),
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", pod),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.language", info.language),
            kv_str("telemetry.sdk.version", info.sdk_version),
        ],
        ..Default::default()
    }
}

/// A span with the given identity, timing and attributes; status unset, flags "sampled".
fn span(
    tid: &[u8; 16],
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &str,
    kind: SpanKind,
    (start, end): (u64, u64),
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: tid.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: FLAG_SAMPLED,
        name: name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

fn error_status(message: &str) -> Option<Status> {
    Some(Status {
        message: message.to_string(),
        code: StatusCode::Error as i32,
    })
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn kv_f64(key: &str, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}

#[cfg(test)]
mod tests;
