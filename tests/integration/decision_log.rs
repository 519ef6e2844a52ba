//! The decision log on a real broker: decisions outlive the instance that made them.
//!
//! Traffic: the failure tests' checkout traces, where one trace in four also has a queue
//! consumer's span reaching Kafka 3–5 s after its root (longer than `root_grace`), so that it
//! arrives after its trace was decided. Alone, such a span would be decided by `half`: a trace
//! kept by `errors` that loses it, or gets a second decision, shows a late span decided without
//! its trace's decision. The instances are the real binary, stopped by SIGTERM or SIGKILL,
//! and scaled 1 → 3 → 1 under load.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::fixture::instance::launch;
use crate::fixture::traffic::{self, Group};
use crate::fixture::*;
use prost::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tailsift::otlp::build::spans_of;
use tailsift::otlp::TraceId;

/// How long before a SIGKILL the first copy of a duplicated span may have been produced. What
/// a SIGKILL may duplicate is output acknowledged whose decision record was not yet: a round
/// trip to the log (~20 ms), stretched by a stall of the loaded machine. A duplicate produced
/// earlier was acknowledged and not logged for longer than any such stall: a record written
/// late, or lost.
const MAX_DUPLICATE_AGE_MS: i64 = 1000;

fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

/// What a restart left in the output and the log.
struct Restart {
    verdict: traffic::Verdict,
    /// Spans the new instance forwarded under a logged decision.
    followed: f64,
    /// Replayed spans it skipped, the log saying they were in the output.
    skipped: f64,
    /// When `a` was stopped, in Unix milliseconds.
    stopped_at_ms: i64,
}

/// One instance stopped by `stop` while traffic with late spans flows, then a fresh one.
async fn restart(stop: &str) -> (Restart, Group) {
    // A duplicate is a kept trace whose output was acknowledged and whose decision record was
    // not yet when the process died: that window widens with the load other tests' processes
    // put on the machine, which is not what is measured here.
    let _turn = load_sensitive().await;
    let s = Group::new(4, true).await;
    let mut a = match stop {
        // What a crash replays is what lies past the last commit. With commits every 200 ms,
        // a kill landing just after one (with no kept trace forwarded and logged since)
        // replayed nothing `a` had forwarded, and there was nothing to recognise: CI saw
        // that once. So `a` does not commit before it is killed; the new instance replays
        // all of `a`'s input, and every span `a` forwarded and logged must be recognised.
        "SIGKILL" => {
            let config = s.config.clone().set("kafka.commit_interval", "1h");
            launch(s.dir.path(), "a", &config).start()
        }
        _ => s.start("a", None),
    };
    a.wait_ready(Duration::from_secs(60)).await;
    let n = 1200;
    let sender = s.sender(3, n, Duration::from_millis(4));
    // Mid-stream, with decided traces whose late spans are still to come: once `a` has
    // forwarded kept traces and logged decisions (on a loaded machine that takes longer than
    // the 2 s root grace; a fixed sleep then stopped `a` before it had forwarded anything,
    // leaving nothing for the new instance to recognise), and a little more.
    wait_for(
        secs(60),
        "a forwarded kept traces and logged decisions",
        || {
            a.metric("tailsift_spans_forwarded_total", "") > 0.0
                && a.metric("tailsift_decision_log_records_total", "") > 0.0
        },
    )
    .await;
    sleep(500).await;
    // The window a crash duplicates, as `a` measured it: its output acknowledged, its record not.
    let lag = (
        a.metric("tailsift_decision_log_lag_seconds_count", ""),
        a.metric("tailsift_decision_log_lag_seconds_sum", ""),
    );
    eprintln!(
        "restart: before the {stop}, the decision log lagged the output by {:.1} ms on average over {} kept traces",
        lag.1 / lag.0.max(1.0) * 1e3,
        lag.0
    );
    assert!(lag.0 > 0.0, "the lag of kept traces' records is measured");
    assert!(
        lag.1 / lag.0 < MAX_DUPLICATE_AGE_MS as f64 / 1e3,
        "records follow their output within a round trip"
    );
    let stopped_at_ms = tailsift::decision::unix_ms() as i64;
    match stop {
        "SIGKILL" => a.kill9(),
        _ => {
            let (ok, took) = a.terminate(Duration::from_secs(15)).await;
            eprintln!("restart: a stopped by SIGTERM in {took:?}");
            assert!(ok, "clean exit on SIGTERM");
        }
    }
    let b = s.start("b", None);
    b.wait_ready(Duration::from_secs(60)).await;
    sender.join().expect("sender");
    let v = s.check(3, n, &format!("restart after {stop}"));
    let followed = b.metric("tailsift_logged_decision_spans_total", "");
    let skipped = b.metric("tailsift_spans_skipped_as_forwarded_total", "");
    eprintln!(
        "restart after {stop}: the new instance followed logged decisions for {followed} spans and skipped {skipped} spans already forwarded"
    );
    let r = Restart {
        verdict: v,
        followed,
        skipped,
        stopped_at_ms,
    };
    (r, s)
}

/// Reads `topic` from the beginning until nothing new came for two seconds.
fn read_all(topic: &str) -> Vec<OutMsg> {
    let mut r = Reader::new(topic);
    let last = std::cell::Cell::new((0, std::time::Instant::now()));
    r.read_until(Duration::from_secs(60), |m| {
        if m.len() != last.get().0 {
            last.set((m.len(), std::time::Instant::now()));
        }
        !m.is_empty() && last.get().1.elapsed() > Duration::from_secs(2)
    });
    r.messages
}

/// A span of the output that came out twice, traced back to where it came from.
#[derive(Debug)]
struct Duplicate {
    trace: String,
    /// The input partition and offset of the message that brought it.
    from: (i32, i64),
    /// When its first copy was produced, in Unix milliseconds.
    first_copy_ms: i64,
}

/// Every duplicated span of the group's output, with the input message it came in and when
/// its first copy was produced; and the highest `through` per trace and input partition that
/// the decision log holds from records produced before `before_ms` (the stopped instance's);
/// and how many input spans lie at or below their trace's `through`.
fn trace_duplicates(
    s: &Group,
    before_ms: i64,
) -> (Vec<Duplicate>, BTreeMap<(String, i32), i64>, usize) {
    let mut from = HashMap::new();
    for m in read_all(&s.input) {
        for (_, span) in spans_of(&m.payload).expect("input decodes as OTLP") {
            let id = <[u8; 16]>::try_from(span.trace_id.as_slice()).expect("16-byte trace ids");
            let key = (TraceId(id).to_hex(), span.encode_to_vec());
            from.entry(key).or_insert((m.partition, m.offset));
        }
    }
    let mut first = HashMap::new();
    let mut dups = Vec::new();
    for m in read_all(&s.output) {
        let at = m.timestamp_ms.expect("output messages carry a timestamp");
        for (_, span) in spans_of(&m.payload).expect("output decodes as OTLP") {
            let key = (m.key.clone(), span.encode_to_vec());
            match first.get(&key) {
                None => {
                    first.insert(key, at);
                }
                Some(&first_copy_ms) => dups.push(Duplicate {
                    trace: m.key.clone(),
                    from: *from.get(&key).expect("every output span was in the input"),
                    first_copy_ms,
                }),
            }
        }
    }
    let mut through: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let log = format!("{}.decisions.{}", s.config.group(), s.input);
    for m in read_all(&log) {
        if m.key.len() != 32 || m.timestamp_ms.is_none_or(|t| t >= before_ms) {
            continue; // drop lists, fences, and the new instance's records
        }
        let value: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
        if let Some(t) = value["through"].as_i64() {
            let e = through.entry((m.key.clone(), m.partition)).or_insert(t);
            *e = (*e).max(t);
        }
    }
    // What the new instance, replaying all of the input, must recognise: the spans of every
    // message at or below its trace's logged `through` in that partition.
    let logged_forwarded = from
        .iter()
        .filter(|((trace, _), (partition, offset))| {
            through
                .get(&(trace.clone(), *partition))
                .is_some_and(|&t| *offset <= t)
        })
        .count();
    (dups, through, logged_forwarded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_follow_their_decision_across_a_sigterm_and_restart() {
    let (r, _) = tokio::time::timeout(Duration::from_secs(240), restart("SIGTERM"))
        .await
        .expect("finishes within 4 minutes");
    assert!(
        r.followed > 0.0,
        "late spans reached the new instance and followed logged decisions"
    );
}

/// A SIGKILL duplicates only what the log could not know: each duplicated span is traced back
/// to its input message, which must lie past the `through` the killed instance logged for its
/// trace (a span at or below it was replayed although the log said it was in the output), and
/// to its first copy, which must have been produced at most [`MAX_DUPLICATE_AGE_MS`] before the
/// kill (the record of an older forward was written late, or lost). And since the killed
/// instance committed nothing, the new one replays all it had read: it must skip exactly the
/// spans the log said were forwarded.
///
/// How many spans that is depends on the moment: a loaded machine stalls the instance, which
/// then forwards what piled up at once, and a kill landing just after such a burst duplicates
/// all of it. So the share is printed, not asserted. Runs alone, after the rest of the suite
/// (`scripts/test.sh` runs the ignored tests one at a time), where it measures the quiet case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures duplicates after a SIGKILL: scripts/test.sh runs it alone after the suite"]
async fn late_spans_follow_their_decision_across_a_sigkill_with_few_duplicates() {
    let (r, s) = tokio::time::timeout(Duration::from_secs(240), restart("SIGKILL"))
        .await
        .expect("finishes within 4 minutes");
    assert!(
        r.followed > 0.0,
        "the new instance followed logged decisions"
    );
    assert!(
        r.skipped > 0.0,
        "replayed spans already in the output were recognised and skipped"
    );
    let (dups, through, logged_forwarded) = trace_duplicates(&s, r.stopped_at_ms);
    assert_eq!(
        r.skipped as usize, logged_forwarded,
        "the new instance skipped exactly the replayed spans the log said were forwarded"
    );
    assert_eq!(
        dups.len() as u64,
        r.verdict.duplicate_spans,
        "every duplicate traced back"
    );
    let oldest = dups
        .iter()
        .map(|d| r.stopped_at_ms - d.first_copy_ms)
        .max()
        .unwrap_or(0);
    let traces: BTreeSet<&str> = dups.iter().map(|d| d.trace.as_str()).collect();
    eprintln!(
        "SIGKILL: {} duplicate spans of {} traces ({:.5} of kept spans), first copies produced at most {oldest} ms before the kill; the log held a forwarded offset for {} traces",
        dups.len(),
        traces.len(),
        r.verdict.duplicate_rate(),
        through.len()
    );
    let logged: Vec<_> = dups
        .iter()
        .filter(|d| {
            through
                .get(&(d.trace.clone(), d.from.0))
                .is_some_and(|&t| d.from.1 <= t)
        })
        .collect();
    assert!(
        logged.is_empty(),
        "{} duplicated spans were logged as forwarded before the kill, e.g. {:?}",
        logged.len(),
        logged.first()
    );
    assert!(
        oldest <= MAX_DUPLICATE_AGE_MS,
        "a duplicated span was first produced {oldest} ms before the kill: its record came late or not at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_under_load_keeps_late_spans_with_their_traces() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let _turn = load_sensitive().await;
        let s = Group::new(6, true).await;
        let mut a = s.start("a", None);
        a.wait_ready(Duration::from_secs(60)).await;
        let n = 2400;
        let sender = s.sender(4, n, Duration::from_millis(4));
        sleep(2000).await;
        let mut b = s.start("b", None);
        let mut c = s.start("c", None);
        eprintln!("scale: 1 -> 3");
        sleep(4000).await;
        let (ok_b, _) = b.terminate(Duration::from_secs(15)).await;
        let (ok_c, _) = c.terminate(Duration::from_secs(15)).await;
        assert!(ok_b && ok_c, "clean exits on SIGTERM");
        eprintln!("scale: 3 -> 1");
        sender.join().expect("sender");
        s.check(4, n, "scale 1 -> 3 -> 1");
        let followed = a.metric("tailsift_logged_decision_spans_total", "");
        eprintln!("scale: a followed logged decisions for {followed} spans after getting its partitions back");
        let (ok, _) = a.terminate(Duration::from_secs(15)).await;
        assert!(ok);
    })
    .await
    .expect("finishes within 5 minutes");
}

/// The log read with a plain consumer, as a log pipeline would: every trace's decision is there
/// under its hex trace id, as the README documents it, and agrees with the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_a_public_interface_a_plain_consumer_joins_on_trace_id() {
    let setup = pipeline(traffic::RULES).partitions(2).create().await;
    let input = &setup.input;
    let log_topic = setup.log_topic(); // on by default
    assert_eq!(log_topic, format!("{}.decisions.{input}", setup.group()));
    let pipe = setup.start().await;
    wait_for(secs(30), "assigned, decisions read back", || {
        pipe.assigned() == 2 && pipe.reading_back() == 0
    })
    .await;
    let p = producer();
    let n = 60;
    traffic::send_interleaved(&p, input, 5, 0..n, Duration::from_millis(2));
    let expected = traffic::expected(&pipe.rules, 5, 0..n);
    let mut out = pipe.reader();
    assert!(out.read_until(Duration::from_secs(30), |m| traffic::complete(&expected, m)));

    // The log: one decision per trace, keep or drop, keyed by trace id.
    let log: rdkafka::consumer::BaseConsumer = client_config(&brokers(), &[])
        .set("group.id", unique("log-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    log.subscribe(&[&log_topic]).expect("subscribe");
    let mut decisions: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut partitions = std::collections::BTreeSet::new();
    let mut drop_lists = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while decisions.len() < n as usize && std::time::Instant::now() < deadline {
        let Some(Ok(m)) = log.poll(Duration::from_millis(100)) else {
            continue;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
        if key.len() == 32 {
            // A single decision (a kept trace), keyed by its trace id.
            partitions.insert(m.partition());
            decisions.insert(key, value);
        } else if key.starts_with("tailsift.drops.") {
            // A drop list: each trace with the index of its rule and when it was decided.
            drop_lists += 1;
            partitions.insert(m.partition());
            let rules = value["rules"].as_array().expect("rules").clone();
            for t in value["traces"].as_array().expect("traces") {
                let id = t[0].as_str().expect("trace id").to_string();
                let rule = &rules[t[1].as_u64().expect("rule index") as usize];
                decisions.insert(
                    id,
                    serde_json::json!({"v": value["v"], "decision": "drop", "rule": rule, "decided_at": t[2]}),
                );
            }
        } else {
            assert_eq!(key, "tailsift.fence", "the only other records are fences");
        }
    }
    eprintln!(
        "public log: {} decisions, {drop_lists} drop lists",
        decisions.len()
    );
    assert!(
        drop_lists > 0 && drop_lists < n,
        "dropped traces come in lists"
    );
    assert_eq!(
        decisions.len(),
        n as usize,
        "every trace's decision is logged"
    );
    assert_eq!(
        partitions.len(),
        2,
        "in the partitions numbered like the input's"
    );
    for i in 0..n {
        let id = tailsift::otlp::TraceId(traffic::trace(5, i).0).to_hex();
        let d = &decisions[&id];
        assert_eq!(d["v"], 1);
        assert!(d["decided_at"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000_000));
        if let Some(spans) = expected.get(&id) {
            assert_eq!(d["decision"], "keep", "{id}: {d}");
            let rule = if i % 7 == 0 { "errors" } else { "half" };
            assert_eq!(d["rule"], rule);
            let rate = if rule == "errors" { 1 } else { 2 };
            assert_eq!(d["sample_rate"], rate);
            assert!(d["through"].as_i64().is_some(), "how far it was forwarded");
            // The output agrees.
            let msg = out.first(&id); // in the output
            assert_eq!(msg.headers["tailsift.rule"], rule);
            assert!(!spans.is_empty());
        } else {
            assert_eq!(d["decision"], "drop", "{id}: {d}");
            assert_eq!(d["rule"], "half");
            assert!(d.get("through").is_none() && d.get("sample_rate").is_none());
        }
    }
    pipe.shutdown().await;
}

/// A log topic with fewer partitions than its input stops the start, saying what to do; `""`
/// runs without a log and writes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_too_few_partitions_stops_the_start_and_an_empty_name_turns_it_off() {
    own_process!(); // tailsift_decision_log_records_total counts every pipeline's
    let mut setup = pipeline(traffic::RULES).partitions(3).create().await;
    let log_topic = unique("small-log");
    create_topic(&log_topic, 2).await;
    setup.config.kafka.decision_topic = Some(log_topic.clone());
    let err = match setup.try_start().await {
        Ok(_) => panic!("a log with 2 partitions for an input with 3 must not start"),
        Err(e) => format!("{e:#}"),
    };
    for part in [
        log_topic.as_str(),
        "has 2 partitions",
        "fewer than the 3",
        "--partitions 3",
    ] {
        assert!(err.contains(part), "`{part}` in: {err}");
    }

    setup.config.kafka.decision_topic = Some(String::new());
    assert!(setup
        .config
        .validate()
        .expect("valid")
        .decision_log
        .is_none());
    let pipe = setup.try_start().await.expect("starts without a log");
    let p = producer();
    traffic::send_interleaved(&p, &pipe.input, 6, 0..20, Duration::from_millis(1));
    let expected = traffic::expected(&pipe.rules, 6, 0..20);
    let mut out = pipe.reader();
    assert!(out.read_until(Duration::from_secs(30), |m| traffic::complete(&expected, m)));
    assert_eq!(
        metric(&pipe.scrape(), "tailsift_decision_log_records_total", ""),
        Some(0.0),
        "nothing logged"
    );
    pipe.shutdown().await;
}

/// Records that do not decode are counted and skipped; the good ones around them are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_log_records_are_counted_and_skipped_on_read_back() {
    own_process!(); // exact process-wide counts
    let setup = pipeline(traffic::RULES).create().await;
    let log_topic = setup.log_topic();
    create_topic(&log_topic, 1).await;
    // A decision made "before": trace 0 of run 8 kept by `errors`, whose spans were never
    // forwarded; then garbage of every kind.
    let (t, msgs, _) = traffic::trace(8, 0);
    let id = tailsift::otlp::TraceId(t).to_hex();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let p = producer();
    send(&p, &log_topic, "not-a-trace-id", b"{}");
    send(&p, &log_topic, &id, b"not json");
    send(&p, &log_topic, &id, br#"{"v":7}"#);
    let good = format!(
        r#"{{"v":1,"decision":"keep","rule":"errors","sample_rate":1,"decided_at":{now}}}"#
    );
    send(&p, &log_topic, &id, good.as_bytes());
    flush(&p);

    let pipe = setup.start().await;
    // Only the last message of the trace: alone it would be decided by `half` (or dropped).
    send(&p, &pipe.input, &id, &msgs[2]);
    flush(&p);
    let mut out = pipe.reader();
    assert!(
        out.read_key(Duration::from_secs(30), &id),
        "the span follows the logged decision"
    );
    assert_eq!(out.messages[0].headers["tailsift.rule"], "errors");
    let body = pipe.scrape();
    for kind in ["key", "value", "version"] {
        assert_eq!(
            metric(
                &body,
                "tailsift_decision_log_bad_records_total",
                &format!("kind=\"{kind}\"")
            ),
            Some(1.0),
            "{kind}"
        );
    }
    assert_eq!(
        metric(
            &body,
            "tailsift_logged_decision_spans_total",
            "outcome=\"kept\""
        ),
        Some(1.0)
    );
    pipe.shutdown().await;
}

/// The log becoming unwritable (its topic deleted) holds commits back and makes the instance
/// unready, saying why; once it is back, everything is logged, committed and forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_log_holds_commits_back_and_is_reported_then_recovers_losing_nothing() {
    let setup = pipeline(traffic::RULES)
        .config(|c| {
            c.monitoring.lag_interval = Duration::from_millis(200);
            c.monitoring.stall_timeout = Duration::from_secs(3);
        })
        .create()
        .await;
    let log_topic = setup.log_topic();
    let pipe = setup.start().await;
    let (input, group) = (&pipe.input, pipe.group());
    pipe.wait_ready(secs(30)).await;
    kafka::delete_topic(&log_topic).await;
    let p = producer();
    traffic::send_interleaved(&p, input, 9, 0..40, Duration::from_millis(2));
    let unready = eventually(Duration::from_secs(90), || {
        let (s, b) = pipe.readyz();
        s == 503 && b.contains("decision log")
    })
    .await;
    let (_, why) = pipe.readyz();
    assert!(unready, "unready because of the decision log: {why}");
    assert!(why.contains("records waiting"), "{why}");
    eprintln!("unwritable log: /readyz said: {}", why.trim());
    assert!(
        committed(group, input, 0).unwrap_or(0) < 40,
        "no commit past an unlogged decision"
    );

    create_topic(&log_topic, 1).await;
    let expected = traffic::expected(&pipe.rules, 9, 0..40);
    let mut out = pipe.reader();
    assert!(out.read_until(Duration::from_secs(90), |m| traffic::complete(&expected, m)));
    let messages = 40 * 3;
    assert!(
        eventually(Duration::from_secs(90), || committed(group, input, 0)
            == Some(messages))
        .await,
        "everything committed once logged (committed: {:?})",
        committed(group, input, 0)
    );
    pipe.wait_ready(secs(30)).await; // ready again
    pipe.shutdown().await;
}
