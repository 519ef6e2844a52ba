//! Cluster-wide budgets on a real broker: a rate limit is the fleet's, not each instance's.
//! One consumer group of the real binary grows from one instance to three and shrinks back to
//! one while traffic far over the budget flows; each instance's share (its partitions over
//! the topic's) is recomputed on every rebalance, and the output stays near the budget
//! whatever the fleet's size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fixture::instance::{launch, log_of, Instance, RunConfig};
use crate::fixture::*;
use tailsift::otlp::build::{request, span, trace_id};
use tailsift::otlp::TraceId;

/// The fleet's budget, traces per second.
const BUDGET: f64 = 20.0;
/// Offered traces per second: ten times the budget, so that the limit always binds.
const OFFERED: u64 = 200;
/// How long each fleet size is measured.
const WINDOW: Duration = Duration::from_secs(12);

const RULES: &str = "rules:
  - name: budget
    outcome: rate_limit
    traces_per_second: 20
  - name: rest
    outcome: drop
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends one-span traces (each its own root) at [`OFFERED`] per second until stopped; counts
/// them.
fn sender(
    input: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p = producer();
        let start = std::time::Instant::now();
        let pace = Duration::from_micros(1_000_000 / OFFERED);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = trace_id(7 << 40 | i);
            let ns = 1_700_000_000_000_000_000 + i * 1_000;
            let msg = request(
                "gateway",
                vec![span(t, 1, None, "GET /api/cart", ns, ns + 500)],
            );
            send(&p, &input, &TraceId(t).to_hex(), &msg);
            sent.fetch_add(1, Ordering::Relaxed);
            i += 1;
            // Paced by a deadline, so that a slow send does not lower the rate.
            if let Some(wait) =
                (start + pace * i as u32).checked_duration_since(std::time::Instant::now())
            {
                std::thread::sleep(wait);
            }
        }
        flush(&p);
    })
}

/// Each instance's `tailsift_budget_share`.
fn shares(fleet: &[&Instance]) -> Vec<f64> {
    fleet
        .iter()
        .map(|i| i.metric("tailsift_budget_share", ""))
        .collect()
}

/// Waits until every instance is ready and the shares are `want` (in any order).
async fn settle(fleet: &[&Instance], want: &[f64], what: &str) {
    for i in fleet {
        i.wait_ready(Duration::from_secs(60)).await;
    }
    let mut want = want.to_vec();
    want.sort_by(f64::total_cmp);
    wait_for(
        Duration::from_secs(60),
        &format!("{what}: shares {want:?}"),
        || {
            let mut got = shares(fleet);
            got.sort_by(f64::total_cmp);
            got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-6)
        },
    )
    .await;
    // Let a bucket filled under the old share drain (a burst is one second's worth).
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// A measured stretch: [from, until) in ms since the epoch, and the traces offered in it.
struct Stretch {
    what: &'static str,
    from: i64,
    until: i64,
    offered: u64,
}

async fn measure(what: &'static str, sent: &AtomicU64) -> Stretch {
    let (from, before) = (now_ms(), sent.load(Ordering::Relaxed));
    tokio::time::sleep(WINDOW).await;
    let (until, after) = (now_ms(), sent.load(Ordering::Relaxed));
    Stretch {
        what,
        from,
        until,
        offered: after - before,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_keeps_its_budget_as_instances_join_and_leave() {
    let _turn = load_sensitive().await;
    tokio::time::timeout(Duration::from_secs(300), join_and_leave())
        .await
        .expect("the budget test finishes within 5 minutes");
}

async fn join_and_leave() {
    let (input, output) = (unique("budget-in"), unique("budget-out"));
    create_topic(&input, 6).await;
    create_topic(&output, 3).await;
    let rules = rules_dir(&[("rules.yaml", RULES)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RunConfig::quick(&input, &output, rules.path())
        .consumer_property("heartbeat.interval.ms", "500");
    let start = |name: &str| launch(dir.path(), name, &config).start();

    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let a = start("a");
    let traffic = sender(input.clone(), stop.clone(), sent.clone());
    settle(&[&a], &[1.0], "alone").await;
    let alone = measure("1 instance", &sent).await;

    let mut b = start("b");
    let mut c = start("c");
    // Six partitions over three members: 2 each (cooperative-sticky spreads them evenly).
    settle(&[&a, &b, &c], &[1.0 / 3.0; 3], "three").await;
    let three = measure("3 instances", &sent).await;

    let (ok_b, _) = b.terminate(Duration::from_secs(30)).await;
    let (ok_c, _) = c.terminate(Duration::from_secs(30)).await;
    assert!(ok_b && ok_c, "b and c leave gracefully");
    settle(&[&a], &[1.0], "one again").await;
    let again = measure("1 instance again", &sent).await;
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("sender");

    // Every kept trace, with the instant it was produced, from the output topic.
    let mut reader = Reader::new(&output);
    let last = again.until;
    reader.read_until(Duration::from_secs(60), |m| {
        m.iter()
            .any(|m| m.timestamp_ms.is_some_and(|t| t >= last + 1000))
    });
    reader.settle(Duration::from_secs(2));
    let mut kept: BTreeMap<String, i64> = BTreeMap::new();
    for m in &reader.messages {
        assert_eq!(
            m.headers.get("tailsift.rule").map(String::as_str),
            Some("budget")
        );
        let t = m.timestamp_ms.expect("output messages carry a timestamp");
        kept.entry(m.key.clone()).or_insert(t);
    }
    for s in [&alone, &three, &again] {
        let secs = (s.until - s.from) as f64 / 1000.0;
        let n = kept
            .values()
            .filter(|t| (s.from..s.until).contains(t))
            .count();
        let rate = n as f64 / secs;
        let offered = s.offered as f64 / secs;
        eprintln!(
            "budget: {}: {n} kept in {secs:.1} s = {rate:.2}/s of {offered:.0}/s offered (budget {BUDGET}/s)",
            s.what
        );
        // The limit binds: the traffic is far over it.
        assert!(
            offered >= 5.0 * BUDGET,
            "{}: offered only {offered:.0}/s",
            s.what
        );
        // Within 10% of the budget: three instances each taking the whole budget would keep
        // three times it, and an instance with a share of none would keep nothing.
        assert!(
            (rate - BUDGET).abs() <= 0.1 * BUDGET,
            "{}: kept {rate:.2}/s, want {BUDGET}/s ± 10%",
            s.what
        );
    }
    for name in ["a", "b", "c"] {
        let log = log_of(dir.path(), name);
        assert!(
            log.contains("budget share recomputed"),
            "{name} logs its share:\n{log}"
        );
    }
}
