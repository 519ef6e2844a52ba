//! Early rules on a real broker: a failing trace is forwarded as soon as `errors` (`early:
//! true`) is sure of it, not `root_grace` after its root, and still reaches the output whole
//! and once: the spans that come after the decision follow it, from the decision cache, and
//! across a restart from the decision log.
//!
//! The rules put a root-only drop rule first, so `errors` is sure only once the root has come
//! and is not a health check: a failing health check must be dropped even though its error
//! span arrives first. Every trace's spans arrive over time in several messages, the last one
//! 2.5–3.5 s after the first (a queue consumer's span: longer than any sensible wait).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rand::{Rng, SeedableRng};
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

use crate::fixture::instance::{launch, RunConfig};
use crate::fixture::kafka::TestProducer;
use crate::fixture::traffic::{complete, verdict};
use crate::fixture::*;

const RULES: &str = "rules:
  - name: health
    conditions:
      root: span.attr.http.route = /healthz
    outcome: drop
  - name: errors
    conditions: trace.error = true
    outcome: keep
    early: true
  - name: rest
    outcome: keep
    sample_rate: 10
";

/// What a trace of the traffic is, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Fails; the error span comes first, the root after it: the root's message decides.
    ErrorFirst,
    /// Fails; the root comes first, the error span after it: the error span's message decides.
    RootFirst,
    /// A failing health check: its error span comes first, but `health` drops it.
    FailingProbe,
    /// Does not fail: `rest` keeps 1 in 10, `root_grace` after its root.
    Normal,
}

fn kind(i: u64) -> Kind {
    match i % 8 {
        0 | 4 => Kind::ErrorFirst,
        1 | 5 => Kind::RootFirst,
        2 => Kind::FailingProbe,
        _ => Kind::Normal,
    }
}

/// One message of a trace: sent `after` the trace's first, from `service`.
struct Piece {
    after: Duration,
    service: &'static str,
    span: Span,
    /// Sending it makes the trace decidable (`errors` sure, or for a normal trace its root).
    timed: bool,
}

/// Trace `i` of run `run`: a root (gateway), orders, payment (failing unless normal) and a
/// worker's consumer span, in four messages over 2.5–3.5 s; `rng` spreads the delays.
fn trace(run: u64, i: u64, rng: &mut impl Rng) -> ([u8; 16], Vec<Piece>) {
    let t = trace_id(run << 32 | i);
    let base = 1_700_000_000_000_000_000 + i * 1_000_000;
    let k = kind(i);
    let route = if k == Kind::FailingProbe {
        "/healthz"
    } else {
        "/api/checkout"
    };
    let root = with_attrs(
        span(t, 1, None, "GET", base, base + 50),
        vec![attr_str("http.route", route)],
    );
    let orders = span(t, 2, Some(1), "POST /orders", base + 1, base + 40);
    let mut pay = span(t, 3, Some(2), "POST /payments", base + 2, base + 30);
    if k != Kind::Normal {
        pay = with_error(pay);
    }
    let mut worker = span(
        t,
        4,
        Some(3),
        "process payment.settled",
        base + 60,
        base + 90,
    );
    worker.kind = SpanKind::Consumer as i32;
    let ms = Duration::from_millis;
    let second = ms(rng.random_range(50..300));
    let piece = |after, service, span, timed| Piece {
        after,
        service,
        span,
        timed,
    };
    let (first, then) = match k {
        Kind::RootFirst => (
            piece(ms(0), "gateway", root, false),
            piece(second, "payment", pay, true),
        ),
        _ => (
            piece(ms(0), "payment", pay, false),
            piece(second, "gateway", root, k != Kind::FailingProbe),
        ),
    };
    let pieces = vec![
        first,
        then,
        piece(
            second + ms(rng.random_range(100..600)),
            "orders",
            orders,
            false,
        ),
        piece(ms(rng.random_range(2500..3500)), "worker", worker, false),
    ];
    (t, pieces)
}

fn hex(t: [u8; 16]) -> String {
    TraceId(t).to_hex()
}

/// The traces (of [`traffic`]) whose kind and id `pick` accepts.
fn of_kind<'a>(
    traces: &'a [([u8; 16], Vec<Piece>)],
    pick: impl Fn(Kind, &[u8; 16]) -> bool + 'a,
) -> impl Iterator<Item = &'a ([u8; 16], Vec<Piece>)> + 'a {
    traces
        .iter()
        .enumerate()
        .filter(move |(i, (t, _))| pick(kind(*i as u64), t))
        .map(|(_, t)| t)
}

/// Trace id hex -> its encoded spans, for each of `traces`.
fn expected<'a>(
    traces: impl Iterator<Item = &'a ([u8; 16], Vec<Piece>)>,
) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    traces
        .map(|(t, pieces)| {
            let spans = pieces.iter().map(|p| p.span.encode_to_vec()).collect();
            (hex(*t), spans)
        })
        .collect()
}

/// Sends every piece of `traces` at its time, trace `i` starting `i * spacing` after the
/// first; returns when each trace's timed piece was handed to the producer.
fn send_over_time(
    p: &TestProducer,
    topic: &str,
    traces: &[([u8; 16], Vec<Piece>)],
    spacing: Duration,
) -> HashMap<String, Instant> {
    let mut events: Vec<(Duration, usize, usize)> = traces
        .iter()
        .enumerate()
        .flat_map(|(i, (_, pieces))| {
            pieces
                .iter()
                .enumerate()
                .map(move |(j, piece)| (spacing * i as u32 + piece.after, i, j))
        })
        .collect();
    events.sort();
    let start = Instant::now();
    let mut sent = HashMap::new();
    for (due, i, j) in events {
        std::thread::sleep((start + due).saturating_duration_since(Instant::now()));
        let (t, pieces) = &traces[i];
        let piece = &pieces[j];
        let payload = request(piece.service, vec![piece.span.clone()]);
        let at = Instant::now();
        send(p, topic, &hex(*t), &payload);
        if piece.timed {
            sent.insert(hex(*t), at);
        }
    }
    flush(p);
    sent
}

/// Sorted latencies in ms from each timed send to its trace's first output message.
fn latencies(
    sent: &HashMap<String, Instant>,
    out: &[OutMsg],
    of: impl Fn(&str) -> bool,
) -> Vec<f64> {
    let mut first: HashMap<&str, Instant> = HashMap::new();
    for m in out {
        first.entry(&m.key).or_insert(m.received);
    }
    let mut v: Vec<f64> = sent
        .iter()
        .filter(|(k, _)| of(k))
        .filter_map(|(k, at)| {
            let seen = first.get(k.as_str())?;
            Some(seen.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// A histogram's count at or below each bucket bound, from `/metrics` text: (le, count).
fn buckets(body: &str, name: &str, labels: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(labels))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// A histogram's buckets as `le:count` pairs, for the report.
fn show_buckets(body: &str, name: &str, labels: &str) -> String {
    buckets(body, name, labels)
        .iter()
        .map(|(le, n)| format!("{le}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The traffic of the latency test: traces (of run `run`) 0..`n`.
fn traffic(run: u64, n: u64) -> Vec<([u8; 16], Vec<Piece>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(run);
    (0..n).map(|i| trace(run, i, &mut rng)).collect()
}

/// `fetch.wait.max.ms` of tailsift's consumer and of the test's reader. The test broker
/// (nisshi 0.7.0) appears to answer a fetch that finds nothing only when its wait is over,
/// where Kafka answers as soon as a message arrives: with librdkafka's default (500 ms) on
/// both, a failing trace took 174 ms (p50) and 575 ms (p99) from the deciding message's send
/// to the reader, though tailsift's own part (`tailsift_decision_latency_seconds`, deciding
/// span's arrival to acknowledgement) was under 10 ms for 626 of 634 kept traces; with 10 ms
/// on one of the two, 138 ms p50; on both, 14 ms.
const FETCH_WAIT_MS: &str = "10";

/// Bound on the p99 from the deciding message's send to the trace's first output message: the
/// issue's goal. On the shared 2-core machine, in a debug build, eleven runs measured a p99
/// of 19–28 ms (max 30 ms), three of them beside a `cargo clippy` compiling librdkafka and two
/// beside the restart test's two instances: a margin of more than three.
const P99_BOUND_MS: f64 = 100.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_traces_are_forwarded_whole_as_soon_as_an_early_rule_is_sure() {
    let _turn = load_sensitive().await; // it measures latency
    own_process!(); // exact counts of the early trigger and its histograms
    tokio::time::timeout(Duration::from_secs(90), latency_and_completeness())
        .await
        .expect("finishes within 90 s");
}

async fn latency_and_completeness() {
    let pipe = pipeline(RULES)
        .partitions(2)
        .config(|c| {
            c.completion.root_grace = Duration::from_secs(2);
            c.completion.decision_wait = Duration::from_secs(5);
            c.kafka
                .consumer_properties
                .insert("fetch.wait.max.ms".into(), FETCH_WAIT_MS.into());
        })
        .start()
        .await;
    pipe.wait_assigned(2, secs(30)).await;
    wait_for(secs(30), "decisions read back", || pipe.reading_back() == 0).await;
    let (run, n) = (11, 400);
    let traces = traffic(run, n);
    let set = RuleSet::load(&pipe.rules, None).expect("rules");
    let failing = |k: Kind, _: &[u8; 16]| matches!(k, Kind::ErrorFirst | Kind::RootFirst);
    let failing_ids: BTreeSet<String> = of_kind(&traces, failing).map(|(t, _)| hex(*t)).collect();
    let mut want = expected(of_kind(&traces, |k, t| {
        failing(k, t) || k == Kind::Normal && set.sampled(&TraceId(*t), 10)
    }));

    // The reader and the producer are connected before the clock starts.
    let mut out = Reader::with(
        &brokers(),
        &pipe.output,
        &[("fetch.wait.max.ms", FETCH_WAIT_MS)],
    );
    assert!(out.wait_assigned(secs(30)), "the reader joined its group");
    // One failing trace through every hop first: the first messages of a run waited for
    // connections and offset look-ups (the traces sent in the first 0.45 s were all read
    // together, 0.53 s after the first was sent), which is not what is measured.
    let p = producer();
    let warm = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        trace(run + 1000, 0, &mut rng)
    };
    assert_eq!(kind(0), Kind::ErrorFirst);
    for piece in &warm.1 {
        let payload = request(piece.service, vec![piece.span.clone()]);
        send(&p, &pipe.input, &hex(warm.0), &payload);
    }
    flush(&p);
    let warmed = expected([&warm].into_iter());
    let ok = tokio::task::block_in_place(|| {
        out.read_until(Duration::from_secs(30), |m| complete(&warmed, m))
    });
    assert!(ok, "the warm-up trace is forwarded");
    want.extend(warmed);

    let sender = {
        let input = pipe.input.clone();
        std::thread::spawn(move || {
            let sent = send_over_time(&p, &input, &traces, Duration::from_millis(20));
            (sent, traces)
        })
    };
    // Read while sending, with nothing else in the loop: each message is timed as it comes.
    tokio::task::block_in_place(|| {
        while !sender.is_finished() {
            out.read_until(Duration::from_millis(200), |_| false);
        }
    });
    let (sent, traces) = sender.join().expect("sender");
    let whole = tokio::task::block_in_place(|| {
        out.read_until(Duration::from_secs(30), |m| complete(&want, m))
    });
    out.settle(secs(2)); // anything forwarded twice is on its way by now
    let v = verdict(&want, &out.messages);
    eprintln!(
        "early: {} traces sent, {} kept ({} failing), {} spans out, {} duplicate spans",
        traces.len(),
        v.kept_traces,
        failing_ids.len(),
        v.spans_out,
        v.duplicate_spans
    );
    assert!(whole, "every kept trace whole: missing {:?}", v.missing);
    v.assert_promise_kept();
    assert_eq!(v.duplicate_spans, 0, "no span forwarded twice");
    for m in out.messages.iter().filter(|m| failing_ids.contains(&m.key)) {
        assert_eq!(m.headers["tailsift.rule"], "errors", "{}", m.key);
    }

    // Every failing trace was decided by `errors` as its spans arrived; nothing else was.
    let body = pipe.scrape();
    let decided = |labels: &str| metric(&body, "tailsift_traces_decided_total", labels);
    let early = decided("trigger=\"early\"").unwrap_or(0.0);
    assert!(early > 0.0, "decisions counted with trigger `early`");
    assert_eq!(
        decided("rule=\"errors\",outcome=\"kept\",trigger=\"early\""),
        Some(failing_ids.len() as f64 + 1.0),
        "every failing trace (and the warm-up trace) kept early"
    );
    assert_eq!(
        early,
        failing_ids.len() as f64 + 1.0,
        "no other rule decides early"
    );
    assert_eq!(
        decided("rule=\"health\",outcome=\"dropped\""),
        Some((0..n).filter(|i| kind(*i) == Kind::FailingProbe).count() as f64),
        "every failing health check dropped by `health`, which comes first"
    );

    let lat = latencies(&sent, &out.messages, |k| failing_ids.contains(k));
    assert_eq!(
        lat.len(),
        failing_ids.len(),
        "a latency for each failing trace"
    );
    let normal = latencies(&sent, &out.messages, |k| {
        !failing_ids.contains(k) && want.contains_key(k)
    });
    let (p50, p99, max) = (
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
    );
    eprintln!(
        "early: deciding message sent -> first output message read, {} failing traces: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; {} normal kept traces (root sent -> first output, root_grace 2 s): p50 {:.0} ms",
        lat.len(),
        normal.len(),
        quantile(&normal, 0.5)
    );
    eprintln!(
        "early: tailsift_trace_visibility_seconds{{trigger=\"early\"}} (first span -> ack): {}",
        show_buckets(
            &body,
            "tailsift_trace_visibility_seconds",
            "trigger=\"early\""
        )
    );
    eprintln!(
        "early: tailsift_decision_latency_seconds (all kept traces, deciding span or due time -> ack): {}",
        show_buckets(&body, "tailsift_decision_latency_seconds", "")
    );
    assert!(
        p99 <= P99_BOUND_MS,
        "p99 {p99:.1} ms from the deciding message to the output, at most {P99_BOUND_MS} ms"
    );
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_of_an_early_kept_trace_follow_its_logged_decision_after_a_graceful_restart() {
    let _turn = several_processes().await;
    tokio::time::timeout(Duration::from_secs(90), across_a_restart())
        .await
        .expect("finishes within 90 s");
}

/// Instance `a` keeps failing traces early from their first two messages, with an undecided
/// trace holding the commit offset below them; it stops (SIGTERM); their later spans arrive
/// while no instance runs and after `b` took the partition. `b` replays the forwarded
/// messages and must skip them, and forward the later spans by the logged decision: alone,
/// they would be dropped by `rest` (the traces are chosen so).
async fn across_a_restart() {
    let (input, output, group) = (unique("in"), unique("out"), unique("early-group"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let set = RuleSet::load(rules.path(), None).expect("rules");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RunConfig::new(&input, &output, rules.path())
        .set("kafka.group_id", group.as_str())
        .set("kafka.commit_interval", "100ms")
        .set("completion.root_grace", "2s")
        .set("completion.decision_wait", "60s")
        .set("shutdown_timeout", "10s");

    let run = 12;
    let mut rng = rand::rngs::StdRng::seed_from_u64(run);
    let all: Vec<_> = (0..400).map(|i| (i, trace(run, i, &mut rng))).collect();
    // Failing traces that `rest` would not keep; a normal one it keeps, left undecided.
    let kept: Vec<&([u8; 16], Vec<Piece>)> = all
        .iter()
        .filter(|(i, (t, _))| kind(*i) == Kind::ErrorFirst && !set.sampled(&TraceId(*t), 10))
        .map(|(_, t)| t)
        .take(20)
        .collect();
    let (_, held) = all
        .iter()
        .find(|(i, (t, _))| kind(*i) == Kind::Normal && set.sampled(&TraceId(*t), 10))
        .expect("a normal trace `rest` keeps");
    assert_eq!(kept.len(), 20);
    let send_piece = |p: &TestProducer, (t, pieces): &([u8; 16], Vec<Piece>), j: usize| {
        let piece = &pieces[j];
        send(
            p,
            &input,
            &hex(*t),
            &request(piece.service, vec![piece.span.clone()]),
        );
    };

    let mut a = launch(dir.path(), "a", &config).start();
    a.wait_ready(Duration::from_secs(60)).await;
    let p = producer();
    send_piece(&p, held, 0); // offset 0: undecided until after the restart
    for t in &kept {
        send_piece(&p, t, 0); // the error span
        send_piece(&p, t, 1); // the root: `errors` is sure
    }
    flush(&p);
    let mut out = Reader::new(&output);
    let first: BTreeSet<String> = kept.iter().map(|(t, _)| hex(*t)).collect();
    let forwarded = tokio::task::block_in_place(|| {
        out.read_until(Duration::from_secs(30), |m| {
            first.iter().all(|k| m.iter().any(|m| &m.key == k))
        })
    });
    assert!(forwarded, "a forwards every failing trace at its root");
    wait_for(secs(30), "a logged its decisions", || {
        a.metric("tailsift_decision_log_records_total", "") >= kept.len() as f64
    })
    .await;
    // Decisions made on the ingest thread are counted at the decider's next tick, which can
    // come after their log records are acknowledged (up to 100 ms later while the buffer is
    // empty): wait for it, well under `root_grace`.
    wait_for(secs(1), "a counted its early decisions", || {
        a.metric("tailsift_traces_decided_total", "trigger=\"early\"") >= kept.len() as f64
    })
    .await;
    assert_eq!(
        a.metric("tailsift_traces_decided_total", "trigger=\"early\""),
        kept.len() as f64,
        "decided early, not by root_grace"
    );
    let (ok, took) = a.terminate(Duration::from_secs(15)).await;
    assert!(ok, "clean exit on SIGTERM");
    eprintln!(
        "early restart: a stopped by SIGTERM in {took:?}, committed {:?}",
        committed(&group, &input, 0)
    );

    // The later spans: half while no instance runs, half once `b` runs.
    let (before, after) = kept.split_at(kept.len() / 2);
    for t in before {
        send_piece(&p, t, 2);
        send_piece(&p, t, 3);
    }
    flush(&p);
    let b = launch(dir.path(), "b", &config).start();
    b.wait_ready(Duration::from_secs(60)).await;
    for t in after {
        send_piece(&p, t, 2);
        send_piece(&p, t, 3);
    }
    for j in 1..4 {
        send_piece(&p, held, j);
    }
    flush(&p);

    let want = expected(kept.iter().copied().chain([held]));
    let whole = tokio::task::block_in_place(|| {
        let whole = out.read_until(Duration::from_secs(30), |m| complete(&want, m));
        out.settle(secs(2));
        whole
    });
    let v = verdict(&want, &out.messages);
    let followed = b.metric("tailsift_logged_decision_spans_total", "outcome=\"kept\"");
    let skipped = b.metric("tailsift_spans_skipped_as_forwarded_total", "");
    eprintln!(
        "early restart: {} kept traces, {} spans out, {} duplicate spans; b followed logged decisions for {followed} spans and skipped {skipped} already forwarded",
        v.kept_traces, v.spans_out, v.duplicate_spans
    );
    assert!(whole, "every kept trace whole: missing {:?}", v.missing);
    v.assert_promise_kept();
    assert_eq!(v.duplicate_spans, 0, "no span forwarded twice");
    for m in out.messages.iter().filter(|m| first.contains(&m.key)) {
        assert_eq!(m.headers["tailsift.rule"], "errors", "{}", m.key);
    }
    assert!(
        followed >= (2 * kept.len()) as f64,
        "the later spans followed the logged decisions"
    );
    assert!(
        skipped >= (2 * kept.len()) as f64,
        "the replayed messages a forwarded were recognised and skipped"
    );
}
