//! The pipeline end to end on a real broker: spans in, traces decided, kept traces out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::fixture::kafka::TestProducer;
use crate::fixture::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tailsift::otlp::build::*;
use tailsift::otlp::TraceId;
use tailsift::rules::RuleSet;

const MS: u64 = 1_000_000;

/// A trace as the services export it: (service, spans) per message.
type Messages = Vec<(&'static str, Vec<Span>)>;

/// A checkout trace as three services would export it, in three messages.
fn checkout(t: [u8; 16], ms: u64, error: bool) -> Messages {
    let base = 1_700_000_000_000 * MS;
    let root = with_attrs(
        span(t, 1, None, "POST /api/checkout", base, base + ms * MS),
        vec![
            attr_str("http.route", "/api/checkout"),
            attr_str("customer.tier", "free"),
        ],
    );
    let orders = span(
        t,
        2,
        Some(1),
        "POST /orders",
        base + MS,
        base + (ms - 1) * MS,
    );
    let mut pay = span(
        t,
        3,
        Some(2),
        "POST /payments",
        base + 2 * MS,
        base + (ms - 2) * MS,
    );
    if error {
        pay = with_error(pay);
    }
    vec![
        ("payment", vec![pay]),
        ("orders", vec![orders]),
        ("gateway", vec![root]),
    ]
}

fn span_bytes(msgs: &[(&str, Vec<Span>)]) -> BTreeSet<Vec<u8>> {
    msgs.iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.encode_to_vec()))
        .collect()
}

fn send_trace(p: &TestProducer, topic: &str, t: [u8; 16], msgs: &[(&str, Vec<Span>)]) {
    let key = TraceId(t).to_hex();
    for (svc, spans) in msgs {
        send(p, topic, &key, &request(svc, spans.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_errors_whole_slow_traces_and_a_deterministic_baseline() {
    let pipe = example_pipeline().partitions(3).start().await;
    let (p, input) = (producer(), &pipe.input);
    // An error trace whose spans come from three services in three messages, sent with
    // other traffic in between and out of order (root last, the payment span first).
    let err_id = trace_id(1_000_001);
    let err = checkout(err_id, 120, true);
    let slow_id = trace_id(1_000_002);
    let slow = checkout(slow_id, 3_000, false);
    let ordinary: Vec<[u8; 16]> = (0..400).map(trace_id).collect();
    send_trace(&p, input, err_id, &err[..1]);
    for (i, t) in ordinary.iter().enumerate() {
        send_trace(&p, input, *t, &checkout(*t, 80, false));
        if i == 100 {
            send_trace(&p, input, err_id, &err[1..]);
            send_trace(&p, input, slow_id, &slow);
        }
    }
    flush(&p);

    let rules = RuleSet::load(Path::new("rules"), None).expect("rules");
    let expected_baseline: BTreeSet<String> = ordinary
        .iter()
        .map(|t| TraceId(*t))
        .filter(|id| rules.sampled(id, 10))
        .map(|id| id.to_hex())
        .collect();
    let want_keys = expected_baseline.len() + 2;
    let mut reader = pipe.reader();
    let done = reader.read_until(Duration::from_secs(30), |m| {
        m.iter().map(|m| &m.key).collect::<BTreeSet<_>>().len() >= want_keys
    });
    // Give stragglers (wrongly kept traces) a moment to show up before judging.
    reader.settle(secs(2));
    assert!(
        done,
        "only {} of {want_keys} kept traces arrived",
        reader.messages.len()
    );

    let by_key = output_spans(&reader.messages);
    let err_hex = TraceId(err_id).to_hex();
    let got: BTreeSet<_> = by_key[&err_hex].iter().cloned().collect();
    assert_eq!(
        got,
        span_bytes(&err),
        "the error trace is kept whole, byte for byte"
    );
    assert_eq!(by_key[&err_hex].len(), 3, "each span once");
    let err_msg = reader.first(&err_hex);
    assert_eq!(err_msg.headers["tailsift.rule"], "errors");
    assert_eq!(err_msg.headers["tailsift.sample_rate"], "1");

    let slow_hex = TraceId(slow_id).to_hex();
    let slow_msg = reader.first(&slow_hex); // the slow trace is kept
    assert_eq!(slow_msg.headers["tailsift.rule"], "slow-checkout");

    let kept_ordinary: BTreeSet<String> = by_key
        .keys()
        .filter(|k| **k != err_hex && **k != slow_hex)
        .cloned()
        .collect();
    assert_eq!(
        kept_ordinary, expected_baseline,
        "exactly the traces the trace-id sampler picks"
    );
    let ratio = kept_ordinary.len() as f64 / ordinary.len() as f64;
    assert!(
        (0.05..0.16).contains(&ratio),
        "baseline kept {ratio:.3}, about 1 in 10 expected"
    );
    for k in &kept_ordinary {
        assert_eq!(by_key[k].len(), 3, "ordinary trace {k} kept whole");
        let m = reader.first(k);
        assert_eq!(m.headers["tailsift.rule"], "baseline");
        assert_eq!(m.headers["tailsift.sample_rate"], "10");
    }
    assert_eq!(pipe.kept() as usize, want_keys);
    assert_eq!(pipe.decided() as usize, ordinary.len() + 2);
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_follow_their_traces_decision() {
    let pipe = pipeline(ERRORS_ELSE_DROP).partitions(2).start().await;
    let (p, input) = (producer(), &pipe.input);
    let (kept, dropped) = (trace_id(77), trace_id(78));
    send_trace(&p, input, kept, &checkout(kept, 50, true));
    send_trace(&p, input, dropped, &checkout(dropped, 50, false));
    flush(&p);
    let mut reader = pipe.reader();
    let kept_hex = TraceId(kept).to_hex();
    assert!(reader.read_key(secs(20), &kept_hex));
    wait_for(secs(10), "the ordinary trace is decided (dropped)", || {
        pipe.dropped() == 1
    })
    .await;

    // Late spans of both traces, after their decisions.
    let late_kept = span(kept, 40, Some(1), "late work", 10, 20);
    let late_dropped = span(dropped, 41, Some(1), "late work", 10, 20);
    send(
        &p,
        input,
        &TraceId(dropped).to_hex(),
        &request("worker", vec![late_dropped]),
    );
    send(
        &p,
        input,
        &kept_hex,
        &request("worker", vec![late_kept.clone()]),
    );
    flush(&p);
    let want = late_kept.encode_to_vec();
    assert!(
        reader.read_until(Duration::from_secs(20), |m| output_spans(m)
            .get(&kept_hex)
            .is_some_and(|s| s.contains(&want))),
        "the late span of the kept trace is forwarded"
    );
    let late_msg = reader.messages.last().unwrap();
    assert_eq!(
        late_msg.headers["tailsift.rule"], "errors",
        "with the trace's rule"
    );
    wait_for(
        secs(10),
        "the late span of the dropped trace is dropped",
        || pipe.late_dropped() == 1,
    )
    .await;
    reader.settle(secs(2));
    let by_key = output_spans(&reader.messages);
    assert!(
        !by_key.contains_key(&TraceId(dropped).to_hex()),
        "nothing of the dropped trace is forwarded"
    );
    assert_eq!(by_key[&kept_hex].len(), 4);
    assert_eq!(pipe.late_kept(), 1);
    pipe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_undecided_traces_are_released_to_the_new_owner_whole() {
    // Traces wait for their root (or 60 s): partial traces stay buffered across the rebalance.
    let a = pipeline(KEEP_ALL)
        .partitions(6)
        .config(|c| {
            c.completion.decision_wait = Duration::from_secs(60);
            c.completion.max_trace_age = Duration::from_secs(60);
        })
        .start()
        .await;
    a.wait_assigned(6, secs(20)).await;

    let (p, input) = (producer(), &a.input);
    let traces: Vec<([u8; 16], Messages)> = (0..120)
        .map(|i| (trace_id(500 + i), checkout(trace_id(500 + i), 40, false)))
        .collect();
    for (t, msgs) in &traces {
        send_trace(&p, input, *t, &msgs[..2]); // no root yet
    }
    flush(&p);
    wait_for(secs(20), "A buffers every partial trace", || {
        a.buffered() == traces.len()
    })
    .await;

    // B joins the group: some of A's partitions move to B.
    let b = a.start_member().await;
    wait_for(secs(30), "the partitions are shared", || {
        let (na, nb) = (a.assigned(), b.assigned());
        na > 0 && nb > 0 && na + nb == 6
    })
    .await;
    let released = a.released();
    assert!(
        released > 0,
        "A handed back the undecided traces of its revoked partitions"
    );
    assert_eq!(a.kept(), 0, "nothing was decided early");

    for (t, msgs) in &traces {
        send_trace(&p, input, *t, &msgs[2..]); // the roots
    }
    flush(&p);
    let mut reader = a.reader();
    let want: BTreeMap<String, BTreeSet<Vec<u8>>> = traces
        .iter()
        .map(|(t, m)| (TraceId(*t).to_hex(), span_bytes(m)))
        .collect();
    let whole = |m: &[OutMsg]| {
        let got = output_spans(m);
        want.iter().all(|(k, s)| {
            got.get(k)
                .is_some_and(|g| g.iter().cloned().collect::<BTreeSet<_>>() == *s)
        })
    };
    assert!(
        reader.read_until(Duration::from_secs(30), whole),
        "every trace arrives whole"
    );
    reader.settle(secs(1));
    let got = output_spans(&reader.messages);
    assert!(
        got.values().all(|s| s.len() == 3),
        "each span once: released traces were not forwarded by A"
    );
    assert!(b.kept() >= released, "B decided the released traces");
    assert_eq!(a.kept() + b.kept(), traces.len() as u64);
    b.shutdown().await;
    a.shutdown().await;
}
