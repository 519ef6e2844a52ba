//! Time-boxed rules, decaying rates, factor rules and reservoir minimums: what Sentry's
//! dynamic sampling calls boosts and minimums. Time is tokio's paused clock: no test waits.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::tests::{checkout, set, with_trace};
use super::*;
use crate::otlp::build::*;

/// The verdict on the checkout trace numbered `i` (`tier` in its root's `customer.tier`).
fn verdict_of(set: &RuleSet, i: u64, tier: &str, now: Instant) -> Verdict {
    with_trace(checkout(trace_id(i), 10, false, tier), |v| {
        set.verdict(v, now)
    })
}

fn name(set: &RuleSet, v: &Verdict) -> String {
    set.rules()[v.rule].name.to_string()
}

#[tokio::test(start_paused = true)]
async fn a_time_boxed_rule_matches_only_in_its_window_and_retires_by_itself() {
    // The wall clock is injected: 2030-01-01T00:00:00Z at the paused tokio clock's start.
    let now = window::instant("2030-01-01T00:00:00Z").expect("instant");
    let show = |t: SystemTime| window::show(t);
    let from = now + Duration::from_secs(60);
    let until = from + Duration::from_secs(3600);
    let text = format!(
        "rules:\n  - name: debug\n    outcome: keep\n    sample_rate: 1\n    decay_to_sample_rate: 100\n    active_from: {}\n    active_until: {}\n  - name: rest\n    outcome: drop\n",
        show(from),
        show(until)
    );
    let mut set = set(&text, RuleOptions::default());
    set.clock = Clock::at(now);
    let rule_at = |set: &RuleSet| {
        with_trace(checkout(trace_id(1), 10, false, "free"), |v| {
            let verdict = set.verdict(v, Instant::now());
            (
                set.rules()[verdict.rule].name.to_string(),
                verdict.sample_rate,
            )
        })
    };
    assert_eq!(rule_at(&set).0, "rest", "not active yet");
    assert_eq!(
        set.phase(&set.rules()[0], Instant::now()),
        Some(Phase::Pending)
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        rule_at(&set),
        ("debug".into(), 1),
        "active, decaying from 1"
    );
    tokio::time::advance(Duration::from_secs(1800)).await;
    assert_eq!(rule_at(&set), ("debug".into(), 10), "half way: 1 in 10");
    tokio::time::advance(Duration::from_secs(1800)).await;
    assert_eq!(rule_at(&set).0, "rest", "retired by itself");
    assert_eq!(
        set.phase(&set.rules()[0], Instant::now()),
        Some(Phase::Retired)
    );
    // rules check warns about it once retired, not before.
    assert!(lint::lint_at(set.rules(), now).is_empty());
    let w = lint::lint_at(set.rules(), until);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].to_string().contains(&format!(
            "t.yaml:2: rule `debug`: active_until: this rule retired at {}: it matches no trace any more; remove it",
            show(until)
        )),
        "{w:?}"
    );
}

#[test]
fn time_boxed_rules_shadow_nothing_and_their_errors_say_what_is_accepted() {
    let rules = parse_file(
        "t.yaml",
        "rules:\n  - name: a\n    outcome: keep\n    active_until: 2099-01-01T00:00:00Z\n  - name: b\n    outcome: drop\n",
    )
    .expect("parses");
    assert!(lint::lint_at(&rules, std::time::SystemTime::UNIX_EPOCH).is_empty());
    let errs = check_set(&rules[..1], std::path::Path::new("t"));
    assert!(
        errs[0]
            .to_string()
            .contains("the default rule cannot be time-boxed"),
        "{errs:?}"
    );
    let cases: &[(&str, &str, usize)] = &[
        (
            "  - name: a\n    outcome: keep\n    active_from: tomorrow\n",
            "active_from: expected an RFC 3339 instant in UTC, e.g. 2026-11-28T22:00:00Z, got `tomorrow`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    active_from: 2099-01-01T10:00:00Z\n    active_until: 2099-01-01T09:00:00Z\n",
            "active_until: `active_until` (2099-01-01T09:00:00Z) must come after `active_from` (2099-01-01T10:00:00Z)",
            5,
        ),
        (
            "  - name: a\n    outcome: keep\n    decay_to_sample_rate: 10\n    active_until: 2099-01-01T09:00:00Z\n",
            "decay_to_sample_rate: a rate decays over the rule's window: give both `active_from` and `active_until`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    decay_to_sample_rate: 0\n",
            "expected a whole number >= 1 (keep 1 in N at active_until), got `0`",
            4,
        ),
        (
            "  - name: a\n    outcome: drop\n    decay_to_sample_rate: 10\n",
            "`decay_to_sample_rate` applies to `outcome: keep` only",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    active_untill: 2099-01-01T09:00:00Z\n",
            "unknown key `active_untill`, did you mean `active_until`?",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    active_until: 1700000000\n",
            "active_until: expected an RFC 3339 instant in UTC, e.g. 2026-11-28T22:00:00Z, got `1700000000`",
            4,
        ),
        (
            "  - name: a\n    outcome: factor\n",
            "factor: `outcome: factor` needs `factor: F` (the rule that decides next keeps F times as many: its 1 in N becomes 1 in N/F)",
            2,
        ),
        (
            "  - name: a\n    outcome: factor\n    factor: 0\n",
            "factor: expected a factor (keep F times as many) greater than 0, got `0`",
            4,
        ),
        (
            "  - name: a\n    outcome: factor\n    factor: .inf\n",
            "factor: `.inf` is not a finite number",
            4,
        ),
        (
            "  - name: a\n    outcome: factor\n    factor: 2\n    sample_rate: 10\n",
            "sample_rate: `sample_rate` applies to `outcome: keep` only; this rule's outcome is `factor`, which takes factor",
            5,
        ),
        (
            "  - name: a\n    outcome: factr\n",
            "unknown outcome `factr`, did you mean `factor`?",
            3,
        ),
        (
            "  - name: a\n    outcome: keep\n    min_traces: -1\n",
            "min_traces: expected a whole number >= 1 (traces kept at least per window), got `-1`",
            4,
        ),
        (
            "  - name: a\n    outcome: keep\n    min_traces: 5\n    min_traces_window: 10ms\n",
            "min_traces_window: expected a duration of at least 1s, e.g. 1m, got `10ms`",
            5,
        ),
        (
            "  - name: a\n    outcome: keep\n    min_traces_window: 1m\n",
            "`min_traces_window` is the window of `min_traces`: give `min_traces: N`",
            4,
        ),
        (
            "  - name: a\n    outcome: rate_limit\n    traces_per_second: 5\n    min_traces: 5\n",
            "`min_traces` applies to `outcome: keep` or `outcome: drop` or `outcome: throughput` or `outcome: dynamic` only",
            5,
        ),
        (
            "  - name: a\n    outcome: keep\n    min_trace: 5\n",
            "unknown key `min_trace`, did you mean `min_traces`?",
            4,
        ),
    ];
    super::tests::assert_refused(cases);
}

const FACTORS: &str = "
rules:
  - name: boost-enterprise
    conditions: root.attr.customer.tier = enterprise
    outcome: factor
    factor: 5
  - name: double-enterprise
    conditions: root.attr.customer.tier = enterprise
    outcome: factor
    factor: 2
  - name: thin-free
    conditions: root.attr.customer.tier = free
    outcome: factor
    factor: 0.5
  - name: checkout
    conditions: root.attr.http.route = /api/checkout
    outcome: keep
    sample_rate: 20
  - name: rest
    outcome: drop
";

#[test]
fn factor_rules_multiply_the_rate_of_the_rule_that_decides_next() {
    let set = set(FACTORS, RuleOptions::default());
    let now = Instant::now();
    let mut kept = std::collections::BTreeMap::new();
    for tier in ["enterprise", "free", "team"] {
        for i in 0..20_000u64 {
            let v = verdict_of(&set, i + 1, tier, now);
            assert_eq!(name(&set, &v), "checkout", "a factor decides nothing");
            *kept.entry(tier).or_insert(0u64) += u64::from(v.keep);
            let (rate, own) = match tier {
                // ×5 ×2: 1 in 20 becomes 1 in 2.
                "enterprise" => (2, Some(20)),
                // ×0.5: 1 in 40.
                "free" => (40, Some(20)),
                _ => (20, None),
            };
            assert_eq!((v.sample_rate, v.unboosted), (rate, own), "{tier}");
        }
    }
    // Each tier kept near 1 in its boosted rate (5 sigma), on the same trace ids.
    for (tier, rate) in [("enterprise", 2.0), ("free", 40.0), ("team", 20.0)] {
        let expected = 20_000.0 / rate;
        let got = kept[tier] as f64;
        assert!(
            (got - expected).abs() < 5.0 * expected.sqrt(),
            "{tier}: kept {got}, expected {expected}"
        );
    }
}

#[test]
fn a_factor_leaves_drops_and_rate_limits_as_they_are_and_cannot_close_the_set() {
    let set = set(
        "rules:\n  - name: boost\n    outcome: factor\n    factor: 100\n    conditions: trace.span_count > 0\n  - name: limited\n    conditions: root.attr.customer.tier = enterprise\n    outcome: rate_limit\n    traces_per_second: 1\n  - name: rest\n    outcome: drop\n",
        RuleOptions::default(),
    );
    let now = Instant::now();
    let first = verdict_of(&set, 1, "enterprise", now);
    assert_eq!(
        (name(&set, &first), first.keep, first.sample_rate),
        ("limited".into(), true, 1)
    );
    // Over the limit: the drop rule decides, boosted or not.
    let second = verdict_of(&set, 2, "enterprise", now);
    assert_eq!((name(&set, &second), second.keep), ("rest".into(), false));
    // A factor rule as the default is refused; it shadows nothing, but a rule above it can
    // shadow it.
    let rules = parse_file(
        "t.yaml",
        "rules:\n  - name: all\n    outcome: keep\n  - name: late-boost\n    outcome: factor\n    factor: 2\n    conditions: trace.error = true\n  - name: f\n    outcome: factor\n    factor: 2\n",
    )
    .expect("parses");
    let errs = check_set(&rules, std::path::Path::new("t"));
    assert!(
        errs[0].to_string().contains(
            "t.yaml:8: rule `f`: outcome: the default rule cannot be a factor: a factor decides no trace"
        ),
        "{errs:?}"
    );
    let warnings = lint::lint_at(&rules[..2], SystemTime::UNIX_EPOCH);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0]
        .to_string()
        .contains("rule `late-boost`: conditions: this rule never decides a trace: rule `all`"));
    let boost_first = parse_file(
        "t.yaml",
        "rules:\n  - name: f\n    outcome: factor\n    factor: 2\n  - name: rest\n    outcome: keep\n    sample_rate: 4\n",
    )
    .expect("parses");
    assert!(lint::lint_at(&boost_first, SystemTime::UNIX_EPOCH).is_empty());
}

const MINIMUM: &str = "
rules:
  - name: rare
    conditions: root.attr.customer.tier = enterprise
    outcome: keep
    sample_rate: 1000
    min_traces: 6
    min_traces_window: 1m
  - name: probes
    conditions: root.attr.customer.tier = probe
    outcome: drop
    min_traces: 2
  - name: rest
    outcome: drop
";

#[tokio::test(start_paused = true)]
async fn a_minimum_keeps_the_first_n_of_each_window_whole_and_the_rest_at_the_rules_rate() {
    let set = set(MINIMUM, RuleOptions::default());
    let t0 = Instant::now();
    // 10 traces/s for 3 minutes, then 5 quiet minutes, then one more minute.
    let mut by_minute = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    let mut i = 0u64;
    for s in (0..1800u64).chain(4800..5400) {
        i += 1;
        let at = t0 + Duration::from_millis(100 * s);
        let v = verdict_of(&set, i, "enterprise", at);
        assert_eq!(name(&set, &v), "rare");
        let e = by_minute.entry(s / 600).or_default();
        if v.minimum {
            assert_eq!((v.keep, v.sample_rate), (true, 1), "kept whole");
            e.0 += 1;
        } else {
            assert_eq!(v.sample_rate, 1000);
            e.1 += u64::from(v.keep);
        }
    }
    // Exactly 6 per window, the window's first six; the quiet minutes skipped whole.
    let minimums: Vec<(u64, u64)> = by_minute.iter().map(|(m, (n, _))| (*m, *n)).collect();
    assert_eq!(minimums, [(0, 6), (1, 6), (2, 6), (8, 6)]);
    let sampled: u64 = by_minute.values().map(|(_, k)| k).sum();
    assert!(sampled <= 10, "1 in 1000 of 2400 traces: {sampled}");

    // A drop rule with a minimum keeps its first two per minute, then drops.
    let probes: Vec<(bool, bool)> = (0..5)
        .map(|k| {
            let v = verdict_of(&set, 10_000 + k, "probe", t0);
            (v.keep, v.minimum)
        })
        .collect();
    assert_eq!(
        probes,
        [
            (true, true),
            (true, true),
            (false, false),
            (false, false),
            (false, false)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_minimum_is_the_fleets_each_instance_keeps_its_share_rounded_up() {
    let options: Vec<RuleOptions> = (0..3).map(|_| RuleOptions::default()).collect();
    let fleet: Vec<RuleSet> = options.iter().map(|o| set(MINIMUM, o.clone())).collect();
    let t0 = Instant::now();
    let minimums = |fleet: &[RuleSet], start: u64| -> Vec<u64> {
        fleet
            .iter()
            .enumerate()
            .map(|(n, set)| {
                (0..100u64)
                    .filter(|k| {
                        let at = t0 + Duration::from_secs(60 * start) + Duration::from_millis(*k);
                        verdict_of(set, 1 + k + 1000 * n as u64, "enterprise", at).minimum
                    })
                    .count() as u64
            })
            .collect()
    };
    // Alone (every partition): the whole 6.
    fleet[0].set_share(6, 6);
    fleet[1].set_share(0, 6);
    fleet[2].set_share(0, 6);
    assert_eq!(minimums(&fleet, 0), [6, 0, 0]);
    // Three instances of two partitions each: 2 each, 6 in all.
    for f in &fleet {
        f.set_share(2, 6);
    }
    assert_eq!(minimums(&fleet, 1), [2, 2, 2]);
    // Four partitions of five: 6 × 4/5 = 4.8 -> 5 and 6 × 1/5 = 1.2 -> 2: at least 6 in all.
    fleet[0].set_share(4, 5);
    fleet[1].set_share(1, 5);
    fleet[2].set_share(0, 5);
    assert_eq!(minimums(&fleet, 2), [5, 2, 0]);
}

#[tokio::test(start_paused = true)]
async fn explain_and_cases_show_the_decay_the_factors_and_the_minimum() {
    let text = "rules:
  - name: boost
    conditions: root.attr.customer.tier = enterprise
    outcome: factor
    factor: 4
  - name: cool-down
    conditions: root.attr.customer.tier = enterprise
    outcome: keep
    sample_rate: 1
    decay_to_sample_rate: 100
    active_from: 2030-01-01T00:00:00Z
    active_until: 2030-01-01T02:00:00Z
  - name: rare
    conditions: root.attr.customer.tier = team
    outcome: keep
    sample_rate: 1000
    min_traces: 1
  - name: rest
    outcome: keep
    sample_rate: 8
";
    let set = set(text, RuleOptions::default());
    let at = window::instant("2030-01-01T01:00:00Z").ok();
    let out = with_trace(checkout(trace_id(7), 10, false, "enterprise"), |v| {
        explain::explain_at(&set, v, 0, at)
    });
    for want in [
        "rule `boost` (t.yaml:2) -> factor ×4 on the rule that decides",
        "  => conditions held: the rule that decides keeps ×4 as many; next rule",
        "rule `cool-down` (t.yaml:6) -> keep decaying to 1 in 100, active from 2030-01-01T00:00:00Z, until 2030-01-01T02:00:00Z",
        "  rate at 2030-01-01T01:00:00Z: 1 in 10 (1 in 1 at 2030-01-01T00:00:00Z decaying to 1 in 100 at 2030-01-01T02:00:00Z)",
        // 1 in 10 by the decay, ×4: 1 in 3 (rounded from 2.5).
        "its own 1 in 10, times the factors of the factor rules above",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let retired = with_trace(checkout(trace_id(7), 10, false, "enterprise"), |v| {
        explain::explain_at(&set, v, 0, window::instant("2030-01-01T02:00:00Z").ok())
    });
    assert!(
        retired.contains("  => retired at 2030-01-01T02:00:00Z: next rule"),
        "{retired}"
    );
    assert!(
        retired.contains("its own 1 in 8, times the factors"),
        "{retired}"
    );
    let rare = |after| {
        with_trace(checkout(trace_id(9), 10, false, "team"), |v| {
            explain::explain_at(&set, v, after, at)
        })
    };
    assert!(
        rare(0).contains(
            "KEEP (sample rate 1: one of the first traces of its window, within `min_traces: 1`)"
        ),
        "{}",
        rare(0)
    );
    assert!(rare(1).contains("1 in 1000"), "{}", rare(1));
    // rules check says where each time-boxed rule stands.
    let lines = schedule(
        set.rules(),
        window::instant("2030-01-01T01:00:00Z").expect("at"),
    );
    assert_eq!(
        lines,
        ["time-boxed: rule `cool-down` (t.yaml:6) is active now: from 2030-01-01T00:00:00Z until 2030-01-01T02:00:00Z; 1 in 1 decaying to 1 in 100, keeping 1 in 10 now"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retired_rule_shows_as_inactive_in_the_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let mut set = set(
        "rules:\n  - name: debug\n    outcome: keep\n    active_until: 2030-01-01T01:00:00Z\n  - name: rest\n    outcome: drop\n",
        RuleOptions::default(),
    );
    set.clock = Clock::at(window::instant("2030-01-01T00:59:00Z").expect("at"));
    let scrape = || {
        metrics::with_local_recorder(&recorder, || set.flush_metrics());
        handle.render()
    };
    let active = scrape();
    assert!(
        active.contains("tailsift_rule_active{rule=\"debug\"} 1"),
        "{active}"
    );
    assert!(
        active.contains("tailsift_rule_active{rule=\"rest\"} 1"),
        "{active}"
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let retired = scrape();
    assert!(
        retired.contains("tailsift_rule_active{rule=\"debug\"} 0"),
        "{retired}"
    );
    assert!(
        retired.contains("tailsift_rule_active{rule=\"rest\"} 1"),
        "{retired}"
    );
}
