//! The checkout flow of the simulated shop, one method per leg.
//!
//! The order's facts that several legs need are drawn first, into an [`Order`]; then the
//! gateway's root span lays out its children front to back, each leg taking the time it starts
//! at and returning the time it ends, so every child lies strictly inside its parent. The
//! random draws happen in a fixed order (the order's facts, then each leg as it runs) and that
//! order is part of the output: moving a draw changes every later trace of a seed.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::Span;
use rand::{Rng, RngCore};

use super::{
    error_status, kv_f64, kv_int, kv_str, span, Generator, Service, TraceKind, ORDER_PARTITIONS,
};

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "ShopApp/4.2.1 (Android 14; Pixel 8) okhttp/4.12.0",
    "ShopApp/4.2.0 (iOS 17.1; iPhone15,2) CFNetwork/1485",
];

const CARD_DECLINED_STACK: &str = "CardDeclinedError: card declined\n    at charge (/app/src/charge.js:42:11)\n    at async handlePayment (/app/src/routes/payments.js:27:5)";

/// The spans of one trace so far, each with the service that reports it.
type Spans = Vec<(Service, Span)>;

/// The facts of one checkout that the legs share, drawn before any span is laid out.
struct Order {
    /// The trace all the checkout's spans belong to.
    tid: [u8; 16],
    /// The gateway's root span, parent of the `auth` and `orders` calls.
    root_id: [u8; 8],
    /// When the root span starts.
    start: u64,
    /// Payment declines the card and the error propagates up to the gateway.
    failed: bool,
    /// In a [`TraceKind::Slow`] checkout, the inventory's SELECT takes 2..5 s.
    slow_inventory: bool,
    /// In a [`TraceKind::Slow`] checkout, the payment takes 2..5 s.
    slow_payment: bool,
    /// `enterprise`, `pro` or `free`, on the root span.
    customer_tier: &'static str,
    customer_id: String,
    order_id: String,
    sku: String,
    items: i64,
    amount_cents: u32,
    /// Partition of the `orders` topic the order is published to.
    partition: usize,
    user_agent: &'static str,
    client_ip: String,
    /// Whether the client reached the gateway over HTTP/2.
    h2: bool,
}

impl Order {
    /// The status code `payment` answers the charge with.
    fn payment_status(&self) -> i64 {
        if self.failed {
            402
        } else {
            200
        }
    }
}

impl Generator {
    /// The checkout flow, as spans for `encode`: the order's facts are drawn, then the gateway's
    /// root span lays out every other leg inside it.
    pub(super) fn checkout(&mut self, tid: &[u8; 16], start: u64, kind: TraceKind) -> Spans {
        let order = self.order(*tid, start, kind);
        let mut out = Vec::with_capacity(12);
        self.gateway(&order, &mut out);
        out
    }

    /// Draws the order's facts. Each draw has its own statement so that their order, which
    /// the output depends on, is plain to see.
    fn order(&mut self, tid: [u8; 16], start: u64, kind: TraceKind) -> Order {
        let (slow_inventory, slow_payment) = if kind == TraceKind::Slow {
            let inv = self.rng.random_bool(0.4);
            (inv, !inv)
        } else {
            (false, false)
        };
        let customer_tier = if kind == TraceKind::Enterprise {
            "enterprise"
        } else if self.rng.random_bool(0.3) {
            "pro"
        } else {
            "free"
        };
        let customer_id = if customer_tier == "enterprise" {
            format!("cust-{}", self.rng.random_range(100_000..100_250u32))
        } else {
            format!("cust-{}", self.rng.random_range(100_250..1_000_000u32))
        };
        let order_id = format!("ord-{:012x}", self.rng.next_u64() >> 16);
        let sku = format!("SKU-{:05}", self.rng.random_range(1..40_000u32));
        let items = self.rng.random_range(1..=6i64);
        let amount_cents = self.rng.random_range(500..50_000u32);
        let partition = self.rng.random_range(0..ORDER_PARTITIONS);
        let user_agent = self.pick(&USER_AGENTS);
        let network = self.pick(&["198.51.100", "203.0.113", "192.0.2"]);
        let client_ip = format!("{network}.{}", self.rng.random_range(1..255u8));
        let h2 = self.rng.random_bool(0.6);
        let root_id = self.span_id();
        Order {
            tid,
            root_id,
            start,
            failed: kind == TraceKind::Error,
            slow_inventory,
            slow_payment,
            customer_tier,
            customer_id,
            order_id,
            sku,
            items,
            amount_cents,
            partition,
            user_agent,
            client_ip,
            h2,
        }
    }

    /// The gateway's root span `POST /api/checkout`: it has `auth` verify the caller, then
    /// `orders` place the order, and answers 500 when that failed.
    fn gateway(&mut self, o: &Order, out: &mut Spans) {
        let auth_start = o.start + self.us(300, 2_000);
        let auth_end = self.auth(o, auth_start, out);
        let orders_start = auth_end + self.us(200, 1_000);
        let orders_end = self.orders(o, orders_start, out);
        let end = orders_end + self.us(200, 1_000);
        let mut attrs = vec![
            kv_str("http.request.method", "POST"),
            kv_str("http.route", "/api/checkout"),
            kv_str("url.path", "/api/checkout"),
            kv_str("url.scheme", "https"),
            kv_str("server.address", "shop.example.com"),
            kv_int("server.port", 443),
            kv_str("network.protocol.version", if o.h2 { "2" } else { "1.1" }),
            kv_str("client.address", o.client_ip.clone()),
            kv_str("user_agent.original", o.user_agent),
            kv_int(
                "http.response.status_code",
                if o.failed { 500 } else { 200 },
            ),
            kv_str("customer.id", o.customer_id.clone()),
            kv_str("customer.tier", o.customer_tier),
        ];
        if o.failed {
            attrs.push(kv_str("error.type", "500"));
        }
        let mut root = span(
            &o.tid,
            o.root_id,
            None,
            "POST /api/checkout",
            SpanKind::Server,
            (o.start, end),
            attrs,
        );
        if o.failed {
            root.status = error_status("checkout failed: card declined");
        }
        out.push((Service::Gateway, root));
    }

    /// `auth` verifies the caller's token. Returns when its span ends.
    fn auth(&mut self, o: &Order, start: u64, out: &mut Spans) -> u64 {
        let id = self.span_id();
        let end = start + self.us(3_000, 20_000);
        let mut attrs = internal_server_attrs("POST", "/auth/verify", "/auth/verify", "auth", 200);
        attrs.push(kv_str("auth.method", "jwt"));
        out.push((
            Service::Auth,
            span(
                &o.tid,
                id,
                Some(o.root_id),
                "POST /auth/verify",
                SpanKind::Server,
                (start, end),
                attrs,
            ),
        ));
        end
    }

    /// `orders` places the order: it checks stock with `inventory`, charges the card through
    /// `payment` and, only if the charge went through, publishes the order to Kafka. Returns
    /// when its span ends.
    fn orders(&mut self, o: &Order, start: u64, out: &mut Spans) -> u64 {
        let id = self.span_id();
        let inventory_start = start + self.us(200, 1_000);
        let inventory_end = self.inventory(o, id, inventory_start, out);
        let payment_start = inventory_end + self.us(100, 800);
        let mut t = self.payment(o, id, payment_start, out);
        if !o.failed {
            let publish_start = t + self.us(100, 500);
            t = self.publish(o, id, publish_start, out);
        }
        let end = t + self.us(200, 1_000);
        let status = if o.failed { 502 } else { 201 };
        let mut attrs = internal_server_attrs("POST", "/orders", "/orders", "orders", status);
        attrs.push(kv_str("order.id", o.order_id.clone()));
        attrs.push(kv_int("order.items", o.items));
        if o.failed {
            attrs.push(kv_str("error.type", "502"));
        }
        let mut orders = span(
            &o.tid,
            id,
            Some(o.root_id),
            "POST /orders",
            SpanKind::Server,
            (start, end),
            attrs,
        );
        if o.failed {
            orders.status = error_status("payment failed: card declined");
        }
        out.push((Service::Orders, orders));
        end
    }

    /// `orders` asks `inventory` for the SKU's stock: the CLIENT span in `orders` around the
    /// SERVER span in `inventory`, which queries PostgreSQL. Returns when the client span ends.
    fn inventory(&mut self, o: &Order, parent: [u8; 8], start: u64, out: &mut Spans) -> u64 {
        let client_id = self.span_id();
        let server_start = start + self.us(100, 500);
        let server_id = self.span_id();
        let queries_start = server_start + self.us(200, 1_000);
        let queries_done = self.inventory_queries(o, server_id, queries_start, out);
        let server_end = queries_done + self.us(100, 1_000);
        let path = format!("/inventory/{}", o.sku);
        out.push((
            Service::Inventory,
            span(
                &o.tid,
                server_id,
                Some(client_id),
                "GET /inventory/{sku}",
                SpanKind::Server,
                (server_start, server_end),
                internal_server_attrs("GET", "/inventory/{sku}", path.clone(), "inventory", 200),
            ),
        ));
        let client_end = server_end + self.us(100, 500);
        out.push((
            Service::Orders,
            span(
                &o.tid,
                client_id,
                Some(parent),
                "GET /inventory/{sku}",
                SpanKind::Client,
                (start, client_end),
                internal_client_attrs("GET", &path, "/inventory/{sku}", "inventory", 200),
            ),
        ));
        client_end
    }

    /// The inventory server's queries: a SELECT of the SKU's stock (the slow part of a slow
    /// inventory call) and, for 40% of orders, an UPDATE that reserves it. Each query is
    /// followed by 50..300 µs of work; returns when the work after the last one is done.
    fn inventory_queries(
        &mut self,
        o: &Order,
        parent: [u8; 8],
        start: u64,
        out: &mut Spans,
    ) -> u64 {
        let select_id = self.span_id();
        let select_end = start
            + if o.slow_inventory {
                self.slow()
            } else {
                self.us(1_000, 20_000)
            };
        out.push((
            Service::Inventory,
            db_span(
                &o.tid,
                select_id,
                parent,
                "SELECT",
                "SELECT sku, available, reserved FROM inventory WHERE sku = $1",
                (start, select_end),
            ),
        ));
        let mut t = select_end + self.us(50, 300);
        if self.rng.random_bool(0.4) {
            let update_id = self.span_id();
            let update_end = t + self.us(1_000, 10_000);
            out.push((
                Service::Inventory,
                db_span(
                    &o.tid,
                    update_id,
                    parent,
                    "UPDATE",
                    "UPDATE inventory SET reserved = reserved + $1 WHERE sku = $2",
                    (t, update_end),
                ),
            ));
            t = update_end + self.us(50, 300);
        }
        t
    }

    /// `orders` charges the card through `payment`: the CLIENT span in `orders` around the
    /// SERVER span in `payment`. A declined card is a 402 and an error on both. Returns when
    /// the client span ends.
    fn payment(&mut self, o: &Order, parent: [u8; 8], start: u64, out: &mut Spans) -> u64 {
        let client_id = self.span_id();
        let server_start = start + self.us(100, 500);
        let server_end = self.payment_server(o, client_id, server_start, out);
        let client_end = server_end + self.us(100, 500);
        let attrs = internal_client_attrs(
            "POST",
            "/payments",
            "/payments",
            "payment",
            o.payment_status(),
        );
        let mut client = span(
            &o.tid,
            client_id,
            Some(parent),
            "POST /payments",
            SpanKind::Client,
            (start, client_end),
            attrs,
        );
        if o.failed {
            client.attributes.push(kv_str("error.type", "402"));
            client.status = error_status("");
        }
        out.push((Service::Orders, client));
        client_end
    }

    /// The `payment` server's `POST /payments`; when the card is declined it also carries the
    /// exception event a Node.js SDK records, shortly before the span ends. Returns when the
    /// span ends.
    fn payment_server(&mut self, o: &Order, parent: [u8; 8], start: u64, out: &mut Spans) -> u64 {
        let id = self.span_id();
        let end = start
            + if o.slow_payment {
                self.slow()
            } else if o.failed {
                self.us(20_000, 120_000)
            } else {
                self.us(15_000, 200_000)
            };
        let mut attrs = internal_server_attrs(
            "POST",
            "/payments",
            "/payments",
            "payment",
            o.payment_status(),
        );
        attrs.extend([
            kv_str("payment.provider", "stripe"),
            kv_f64("payment.amount", f64::from(o.amount_cents) / 100.0),
            kv_str("payment.currency", "USD"),
        ]);
        let mut server = span(
            &o.tid,
            id,
            Some(parent),
            "POST /payments",
            SpanKind::Server,
            (start, end),
            attrs,
        );
        if o.failed {
            server
                .attributes
                .push(kv_str("error.type", "CardDeclinedError"));
            server.status = error_status("card declined");
            server.events.push(Event {
                time_unix_nano: end - self.us(100, 1_000),
                name: "exception".to_string(),
                attributes: vec![
                    kv_str("exception.type", "CardDeclinedError"),
                    kv_str("exception.message", "card declined"),
                    kv_str("exception.stacktrace", CARD_DECLINED_STACK),
                ],
                ..Default::default()
            });
        }
        out.push((Service::Payment, server));
        end
    }

    /// `orders` publishes the placed order to the `orders` topic. The PRODUCER span covers the
    /// publish until the broker's ack, and `fulfillment` picks the record up within it. Returns
    /// when the producer span ends.
    fn publish(&mut self, o: &Order, parent: [u8; 8], start: u64, out: &mut Spans) -> u64 {
        let id = self.span_id();
        let consumed = self.fulfillment(o, id, start, out);
        let end = consumed + self.us(100, 1_000);
        out.push((
            Service::Orders,
            span(
                &o.tid,
                id,
                Some(parent),
                "orders publish",
                SpanKind::Producer,
                (start, end),
                vec![
                    kv_str("messaging.system", "kafka"),
                    kv_str("messaging.destination.name", "orders"),
                    kv_str("messaging.operation.type", "send"),
                    kv_str("messaging.operation.name", "publish"),
                    kv_str(
                        "messaging.destination.partition.id",
                        o.partition.to_string(),
                    ),
                    kv_str("messaging.kafka.message.key", o.order_id.clone()),
                    kv_str("messaging.client.id", "orders-producer-1"),
                    kv_str("server.address", "kafka"),
                    kv_int("server.port", 9092),
                ],
            ),
        ));
        end
    }

    /// `fulfillment` consumes the order record published at `published`, at the partition's
    /// next offset. Returns when its CONSUMER span ends.
    fn fulfillment(&mut self, o: &Order, parent: [u8; 8], published: u64, out: &mut Spans) -> u64 {
        let id = self.span_id();
        let start = published + self.us(300, 2_000);
        let end = start + self.us(1_000, 6_000);
        let offset = self.offsets[o.partition];
        self.offsets[o.partition] += 1;
        out.push((
            Service::Fulfillment,
            span(
                &o.tid,
                id,
                Some(parent),
                "orders process",
                SpanKind::Consumer,
                (start, end),
                vec![
                    kv_str("messaging.system", "kafka"),
                    kv_str("messaging.destination.name", "orders"),
                    kv_str("messaging.operation.type", "process"),
                    kv_str("messaging.operation.name", "process"),
                    kv_str("messaging.consumer.group.name", "fulfillment"),
                    kv_str(
                        "messaging.destination.partition.id",
                        o.partition.to_string(),
                    ),
                    kv_int("messaging.kafka.offset", offset),
                    kv_str("messaging.kafka.message.key", o.order_id.clone()),
                ],
            ),
        ));
        end
    }
}

/// The attributes every in-cluster HTTP server span starts with: plain HTTP/1.1 on port 8080.
fn internal_server_attrs(
    method: &str,
    route: &str,
    path: impl Into<String>,
    service: &str,
    status: i64,
) -> Vec<KeyValue> {
    vec![
        kv_str("http.request.method", method),
        kv_str("http.route", route),
        kv_str("url.path", path),
        kv_str("url.scheme", "http"),
        kv_str("server.address", service),
        kv_int("server.port", 8080),
        kv_str("network.protocol.version", "1.1"),
        kv_int("http.response.status_code", status),
    ]
}

/// The attributes of an in-cluster HTTP client span calling `service` on port 8080.
fn internal_client_attrs(
    method: &str,
    path: &str,
    template: &str,
    service: &str,
    status: i64,
) -> Vec<KeyValue> {
    vec![
        kv_str("http.request.method", method),
        kv_str("url.full", format!("http://{service}:8080{path}")),
        kv_str("url.template", template),
        kv_str("server.address", service),
        kv_int("server.port", 8080),
        kv_str("network.protocol.version", "1.1"),
        kv_int("http.response.status_code", status),
    ]
}

/// A PostgreSQL CLIENT span of the inventory service on the `inventory` table.
fn db_span(
    tid: &[u8; 16],
    id: [u8; 8],
    parent: [u8; 8],
    operation: &str,
    query: &str,
    times: (u64, u64),
) -> Span {
    span(
        tid,
        id,
        Some(parent),
        &format!("{operation} inventory"),
        SpanKind::Client,
        times,
        vec![
            kv_str("db.system.name", "postgresql"),
            kv_str("db.namespace", "shop"),
            kv_str("db.collection.name", "inventory"),
            kv_str("db.operation.name", operation),
            kv_str("db.query.text", query),
            kv_str("server.address", "postgres"),
            kv_int("server.port", 5432),
        ],
    )
}
