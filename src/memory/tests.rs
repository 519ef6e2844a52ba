use super::*;

fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

#[test]
fn budget_comes_from_config_then_cgroup_v2_then_v1_then_the_fallback() {
    let gib = 1u64 << 30;
    let v1_unlimited = "9223372036854771712\n";
    // (configured, cgroup files, budget, source)
    type Case<'a> = (Option<u64>, &'a [(&'a str, &'a str)], u64, BudgetSource);
    let cases: &[Case] = &[
        (
            Some(100 << 20),
            &[("memory.max", "1073741824\n")],
            100 << 20,
            BudgetSource::Configured,
        ),
        (
            None,
            &[("memory.max", "1073741824\n")],
            gib / 2,
            BudgetSource::CgroupV2 { limit: gib },
        ),
        (
            None,
            &[("memory/memory.limit_in_bytes", "2147483648\n")],
            gib,
            BudgetSource::CgroupV1 { limit: 2 * gib },
        ),
        // v2 without a limit: the fallback, even if v1 files linger.
        (
            None,
            &[
                ("memory.max", "max\n"),
                ("memory/memory.limit_in_bytes", "2147483648\n"),
            ],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (
            None,
            &[("memory/memory.limit_in_bytes", v1_unlimited)],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (
            None,
            &[("memory.max", "garbage")],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (None, &[], FALLBACK_BUDGET, BudgetSource::Fallback),
    ];
    for (configured, files, want, source) in cases {
        let dir = fake(files);
        assert_eq!(
            resolve_budget(*configured, dir.path()),
            (*want, *source),
            "{files:?}"
        );
    }
}

#[test]
fn watermarks_are_fractions_of_the_budget() {
    let b = Budget::new(1000, 0.9, 0.75);
    assert_eq!(
        (b.max_bytes, b.pause_above, b.resume_below),
        (1000, 900, 750)
    );
}

/// Kept traces as the sampler hands them on: (trace id, rule, spans).
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<(crate::otlp::TraceId, String, u32)>>);

impl crate::sampler::Output for Collect {
    fn send(
        &self,
        id: &crate::otlp::TraceId,
        d: &crate::decision::Decision,
        messages: Vec<(Vec<u8>, crate::sampler::Ticket)>,
    ) {
        let spans = messages.iter().map(|(_, t)| t.spans).sum();
        self.0
            .lock()
            .unwrap()
            .push((*id, d.rule().to_string(), spans));
    }
}

const KEEP_ALL: &str = "rules:\n  - name: all\n    outcome: keep\n";

fn sampler(
    completion: crate::buffer::Completion,
    budget: Budget,
) -> (crate::sampler::Sampler, std::sync::Arc<Collect>) {
    let rules =
        crate::rules::RuleSet::new(crate::rules::parse_file("t.yaml", KEEP_ALL).unwrap(), None)
            .unwrap();
    let out = std::sync::Arc::new(Collect::default());
    let s = crate::sampler::Sampler::new(
        completion,
        rules,
        crate::decision::DecisionCache::new(10_000, std::time::Duration::from_secs(60)),
        out.clone(),
        1_000_000,
    )
    .with_budget(budget);
    (s, out)
}

/// A message with `spans` child spans of trace `n`, each with a 200-byte name.
fn message(n: u64, first_span: u64, spans: u64) -> Vec<u8> {
    use crate::otlp::build::*;
    let t = trace_id(n);
    let name = "x".repeat(200);
    request(
        "svc",
        (first_span..first_span + spans)
            .map(|i| span(t, i + 2, Some(1), &name, 1, 2))
            .collect(),
    )
}

fn ingest(s: &crate::sampler::Sampler, payload: &[u8]) {
    let mut d = crate::otlp::decode::Decoder::new();
    let hold = std::sync::Arc::new(crate::offsets::OffsetHold {
        partition: 0,
        offset: 0,
    });
    s.ingest(&mut d, payload, &hold, false, tokio::time::Instant::now())
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn at_the_budget_the_oldest_traces_are_decided_early_and_none_is_dropped() {
    // Each trace: 5 spans of ~220 bytes plus the per-trace overhead: about 1.4 KB.
    let (s, out) = sampler(
        crate::buffer::Completion::default(),
        Budget::new(20_000, 0.5, 0.25),
    );
    for n in 0..14 {
        ingest(&s, &message(n, 0, 5));
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
    }
    let before = s.buffer.bytes();
    assert!(before >= 20_000, "the burst reached the budget: {before}");
    assert!(s.decide_due(tokio::time::Instant::now()) > 0);
    let after = s.buffer.bytes();
    assert!(after <= 10_000, "back under the high watermark: {after}");
    let kept = out.0.lock().unwrap().clone();
    let decided = kept.len() as u64;
    assert_eq!(
        decided + s.buffer.len() as u64,
        14,
        "every trace is decided or still buffered"
    );
    // Oldest first, each whole, through the rules.
    for (i, (id, rule, spans)) in kept.iter().enumerate() {
        assert_eq!(
            *id,
            crate::otlp::TraceId(crate::otlp::build::trace_id(i as u64))
        );
        assert_eq!((rule.as_str(), *spans), ("all", 5));
    }
    assert_eq!(
        s.decide_due(tokio::time::Instant::now()),
        0,
        "under budget: nothing more"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_pause_makes_room_by_the_oldest_traces_not_by_the_timers() {
    let completion = crate::buffer::Completion {
        root_grace: std::time::Duration::from_secs(1),
        decision_wait: std::time::Duration::from_secs(1),
        ..crate::buffer::Completion::default()
    };
    let (s, out) = sampler(completion, Budget::new(20_000, 0.5, 0.25));
    // About 8 KB: between the low (5 000) and high (10 000) watermarks.
    for n in 0..4 {
        ingest(&s, &message(n, 0, 5));
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
    }
    let before = s.buffer.bytes();
    assert!(
        (5_000..10_000).contains(&before),
        "between the watermarks: {before}"
    );
    let now = tokio::time::Instant::now();
    assert_eq!(s.decide_due(now), 0, "reading goes on: nothing to do yet");

    // Reading pauses: the timers stop. Once the pause has lasted decision_wait, the oldest
    // traces are decided until the buffer is below the low watermark (where reading resumes).
    s.buffer.stop_clock(now);
    tokio::time::advance(std::time::Duration::from_millis(900)).await;
    assert_eq!(
        s.decide_due(tokio::time::Instant::now()),
        0,
        "a short pause decides nothing"
    );
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    let decided = s.decide_due(tokio::time::Instant::now());
    assert!(decided > 0);
    assert!(
        s.buffer.bytes() < 5_000,
        "below the low watermark: {}",
        s.buffer.bytes()
    );
    let kept = out.0.lock().unwrap().clone();
    for (i, (id, _, spans)) in kept.iter().enumerate() {
        assert_eq!(
            *id,
            crate::otlp::TraceId(crate::otlp::build::trace_id(i as u64)),
            "oldest first"
        );
        assert_eq!(*spans, 5, "whole");
    }
    assert!(
        !s.buffer.is_empty(),
        "the newest wait: their grace has not run while paused"
    );
    assert_eq!(s.decide_due(tokio::time::Instant::now()), 0);

    // Reading resumes: the rest complete by their timers.
    let waiting = s.buffer.len();
    assert_eq!(decided + waiting, 4, "none dropped undecided");
    s.buffer.start_clock(tokio::time::Instant::now());
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert_eq!(s.decide_due(tokio::time::Instant::now()), waiting);
    assert!(s.buffer.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_trace_reaching_max_trace_bytes_is_decided_and_its_later_spans_follow() {
    let completion = crate::buffer::Completion {
        max_trace_bytes: 4_000,
        ..crate::buffer::Completion::default()
    };
    let (s, out) = sampler(completion, Budget::default());
    ingest(&s, &message(1, 0, 10)); // ~2.4 KB
    ingest(&s, &message(2, 0, 2)); // an ordinary trace
    assert_eq!(s.buffer.len(), 2);
    ingest(&s, &message(1, 10, 10)); // crosses 4 KB: decided now
    assert_eq!(
        s.buffer.len(),
        1,
        "only the ordinary trace is still buffered"
    );
    ingest(&s, &message(1, 20, 10)); // late spans follow the decision
    let got = out.0.lock().unwrap().clone();
    let giant = crate::otlp::TraceId(crate::otlp::build::trace_id(1));
    assert_eq!(
        got,
        vec![(giant, "all".into(), 20), (giant, "all".into(), 10)]
    );
    assert_eq!(
        s.stats.late_kept.load(std::sync::atomic::Ordering::Relaxed),
        10
    );
}
