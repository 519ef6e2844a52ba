"""Records trace traffic as the OpenTelemetry Python SDK exports it, in the order its batches
would reach Kafka.

Five services, each a process of its own with its own TracerProvider and the SDK's
BatchSpanProcessor (default batching unless told otherwise), call each other over real HTTP
on loopback with W3C `traceparent` propagation:

    gateway -> orders -> inventory
                      -> payment -> (an outside payment provider: a client span, no callee)
                      -> (a job queue) ~> worker

`gateway` drives the load (its server span is each trace's root); `orders` publishes a job
(a producer span) that `worker` consumes later, after a delay, from an in-memory queue (a
consumer span: the late asynchronous span of a queue consumer). Some payments fail (status
ERROR, HTTP 502). Each process's exporter encodes a batch with the SDK's own OTLP encoder
(`ExportTraceServiceRequest`, as the OTLP exporters send it) and appends it to a file with
the time it was exported; the batches of all five are then merged in export order into one
file: what a collector writing each export to Kafka would produce, and when. Each record is
the milliseconds since the first export (u32, little-endian), the message's length (u32,
little-endian) and the message.

The result is committed as `tests/data/sdk-traffic.bin` and read by tests and benchmarks;
run this to record it again (needs `opentelemetry-sdk` and
`opentelemetry-exporter-otlp-proto-common`):

    python3 scripts/sdk-traffic/record.py --traces 120 --rate 6 --out tests/data/sdk-traffic.bin
"""

import argparse
import http.server
import json
import multiprocessing as mp
import os
import queue
import random
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode


class FileExporter(SpanExporter):
    """Appends each exported batch, encoded as OTLP protobuf, with its export time
    (CLOCK_MONOTONIC, shared by the processes of one machine)."""

    def __init__(self, path):
        self.out = open(path, "ab")
        self.lock = threading.Lock()

    def export(self, spans):
        body = encode_spans(spans).SerializeToString()
        with self.lock:
            self.out.write(struct.pack("<QI", time.monotonic_ns(), len(body)) + body)
            self.out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.out.close()


def provider(name, args, path):
    resource = Resource.create(
        {
            "service.name": name,
            "service.namespace": "shop",
            "service.instance.id": f"{name}-{os.getpid()}",
            "deployment.environment.name": "recording",
        }
    )
    p = TracerProvider(resource=resource)
    p.add_span_processor(
        BatchSpanProcessor(
            FileExporter(path),
            schedule_delay_millis=args.delay_ms,
            max_export_batch_size=args.batch,
        )
    )
    return p


def call(method, url, body=None, headers=None):
    """An HTTP request; its status whatever it is."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def server_span(tracer, handler, name, route):
    """A server span for the request `handler` is answering, under the caller's context."""
    # HTTP header names are case-insensitive; the propagator looks for `traceparent`.
    ctx = propagate.extract({k.lower(): v for k, v in handler.headers.items()})
    span = tracer.start_span(
        name,
        context=ctx,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": handler.command,
            "http.route": route,
            "url.path": handler.path,
            "server.address": "127.0.0.1",
            "network.protocol.version": "1.1",
        },
    )
    return span


def client_call(tracer, method, url, route, body=None, attrs=None):
    """A client span around an HTTP call, its context injected into the request."""
    with tracer.start_as_current_span(
        f"{method} {route}",
        kind=SpanKind.CLIENT,
        attributes={"http.request.method": method, "url.full": url, **(attrs or {})},
    ) as span:
        headers = {}
        propagate.inject(headers)
        status, out = call(method, url, body if method == "POST" else None, headers)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return status, out


def serve(name, args, path, ports, routes, ready, stop, drain=None):
    """Runs one service: an HTTP server whose `routes` (path prefix -> function of tracer and
    handler, returning a status) answer under server spans."""
    p = provider(name, args, path)
    tracer = p.get_tracer(f"shop.{name}", "1.0.0")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            for prefix, (route, f) in routes.items():
                if self.path.startswith(prefix):
                    status = f(tracer, self, route)
                    break
            else:
                status = 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = answer
        do_POST = answer

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    extra = drain(tracer) if drain else None
    ready.put((name, srv.server_address[1]))
    stop.wait()
    if extra:
        extra()
    srv.shutdown()
    p.shutdown()


def handled(tracer, handler, route, work):
    span = server_span(tracer, handler, f"{handler.command} {route}", route)
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=True):
        status = work(span)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return status


def inventory(args, path, ports, ready, stop):
    def lookup(tracer, h, route):
        def work(span):
            with tracer.start_as_current_span("cache lookup", attributes={"cache.hit": random.random() < 0.8}):
                time.sleep(random.uniform(0.0005, 0.003))
            return 200

        return handled(tracer, h, route, work)

    serve("inventory", args, path, ports, {"/inventory/": ("/inventory/{sku}", lookup)}, ready, stop)


def payment(args, path, ports, ready, stop):
    def charge(tracer, h, route):
        def work(span):
            failed = random.random() < args.error_rate
            with tracer.start_as_current_span(
                "POST /v1/charges",
                kind=SpanKind.CLIENT,
                attributes={"http.request.method": "POST", "server.address": "psp.example", "url.full": "https://psp.example/v1/charges"},
            ) as c:
                time.sleep(random.uniform(0.002, 0.01))
                c.set_attribute("http.response.status_code", 502 if failed else 201)
                if failed:
                    c.set_status(Status(StatusCode.ERROR, "payment provider unavailable"))
            return 502 if failed else 200

        return handled(tracer, h, route, work)

    serve("payment", args, path, ports, {"/charge": ("/charge", charge)}, ready, stop)


def worker(args, path, ports, ready, stop):
    jobs = queue.Queue()

    def enqueue(tracer, h, route):
        # The queue itself is not traced: a message and its headers, as a broker keeps them.
        jobs.put((json.loads(h.body), time.monotonic() + random.uniform(0.05, 0.8)))
        return 202

    def drain(tracer):
        def consume():
            while True:
                item = jobs.get()
                if item is None:
                    return
                (msg, due) = item
                time.sleep(max(0.0, due - time.monotonic()))
                ctx = propagate.extract(msg["headers"])
                with tracer.start_as_current_span(
                    "jobs process",
                    context=ctx,
                    kind=SpanKind.CONSUMER,
                    attributes={"messaging.system": "kafka", "messaging.destination.name": "jobs", "messaging.operation.type": "process"},
                ):
                    with tracer.start_as_current_span("send confirmation email"):
                        time.sleep(random.uniform(0.001, 0.004))

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for t in threads:
            t.start()

        def finish():
            for _ in threads:
                jobs.put(None)
            for t in threads:
                t.join()

        return finish

    serve("worker", args, path, ports, {"/enqueue": ("/enqueue", enqueue)}, ready, stop, drain)


def orders(args, path, ports, ready, stop):
    def create(tracer, h, route):
        def work(span):
            sku = random.randint(1000, 9999)
            with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT"}):
                time.sleep(random.uniform(0.0005, 0.002))
            client_call(tracer, "GET", f"http://127.0.0.1:{ports['inventory']}/inventory/{sku}", "/inventory/{sku}")
            status, _ = client_call(tracer, "POST", f"http://127.0.0.1:{ports['payment']}/charge", "/charge")
            if status >= 500:
                return 502
            with tracer.start_as_current_span(
                "jobs publish",
                kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.destination.name": "jobs", "messaging.operation.type": "send"},
            ):
                headers = {}
                propagate.inject(headers)
                call("POST", f"http://127.0.0.1:{ports['worker']}/enqueue", json.dumps({"sku": sku, "headers": headers}).encode())
            return 201

        return handled(tracer, h, route, work)

    serve("orders", args, path, ports, {"/orders": ("/orders", create)}, ready, stop)


def gateway(args, path, ports):
    """Drives the load: each trace's root is the gateway's server span for a checkout."""
    p = provider("gateway", args, path)
    tracer = p.get_tracer("shop.gateway", "1.0.0")
    from opentelemetry import trace

    def checkout(i):
        with tracer.start_as_current_span(
            "POST /api/checkout",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": "/api/checkout",
                "url.path": "/api/checkout",
                "user_agent.original": "shop-web/3.2",
                "customer.tier": random.choice(["free", "free", "pro", "enterprise"]),
            },
        ) as root:
            status, _ = client_call(tracer, "POST", f"http://127.0.0.1:{ports['orders']}/orders", "/orders")
            root.set_attribute("http.response.status_code", status)
            if status >= 500:
                root.set_status(Status(StatusCode.ERROR))

    interval = 1.0 / args.rate
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i in range(args.traces):
            time.sleep(max(0.0, start + i * interval - time.monotonic()))
            pool.submit(checkout, i)
    p.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="checkouts a second")
    ap.add_argument("--delay-ms", type=int, default=5000, help="BatchSpanProcessor schedule delay")
    ap.add_argument("--batch", type=int, default=512, help="BatchSpanProcessor max export batch size")
    ap.add_argument("--error-rate", type=float, default=0.05)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: os.path.join(tmp, n) for n in ["gateway", "orders", "inventory", "payment", "worker"]}
        ready, stop = ctx.Queue(), ctx.Event()
        ports = {}
        procs = []
        # Callees first, so that each caller knows where they listen.
        for name, f in [("inventory", inventory), ("payment", payment), ("worker", worker)]:
            pr = ctx.Process(target=f, args=(args, paths[name], dict(ports), ready, stop))
            pr.start()
            procs.append(pr)
        for _ in range(3):
            n, port = ready.get(timeout=30)
            ports[n] = port
        pr = ctx.Process(target=orders, args=(args, paths["orders"], dict(ports), ready, stop))
        pr.start()
        procs.append(pr)
        n, port = ready.get(timeout=30)
        ports[n] = port
        gateway(args, paths["gateway"], ports)
        # The worker drains its queue, then each process flushes its last batch.
        time.sleep(1.0)
        stop.set()
        for pr in procs:
            pr.join(timeout=60)
        batches = []
        for name, path in paths.items():
            with open(path, "rb") as f:
                data = f.read()
            at = 0
            while at < len(data):
                t, n = struct.unpack_from("<QI", data, at)
                batches.append((t, name, data[at + 12 : at + 12 + n]))
                at += 12 + n
    batches.sort(key=lambda b: b[0])
    first = batches[0][0]
    with open(args.out, "wb") as out:
        for t, _, body in batches:
            out.write(struct.pack("<II", (t - first) // 1_000_000, len(body)) + body)
    print(
        f"{len(batches)} batches, {sum(len(b[2]) for b in batches)} bytes, export order: "
        + " ".join(b[1] for b in batches)
    )


if __name__ == "__main__":
    main()
