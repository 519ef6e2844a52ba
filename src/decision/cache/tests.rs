//! The decision cache's bounds (entries, bytes, ttl), its counters, and concurrent use.

use super::*;

fn id(n: u64) -> TraceId {
    TraceId(crate::otlp::build::trace_id(n))
}

fn drop(rule: &str) -> Decision {
    Decision::Drop { rule: rule.into() }
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn the_cache_stays_within_its_bytes_and_counts_hits_misses_and_evictions() {
    let cache = DecisionCache::with_max_bytes(100 * CACHE_ENTRY_BYTES, MINUTE);
    let d = drop("r");
    for n in 0..1000 {
        cache.insert(id(n), d.clone());
    }
    let s = cache.stats();
    assert!(s.bytes <= 100 * CACHE_ENTRY_BYTES, "{s:?}");
    assert!(s.entries <= 100 && s.entries >= 50, "{s:?}");
    assert_eq!(
        s.entries,
        DecisionCache::capacity_for_bytes(100 * CACHE_ENTRY_BYTES)
    );
    assert_eq!(s.evicted_size, 1000 - s.entries, "{s:?}");
    let found = (0..1000).filter(|n| cache.get(&id(*n)).is_some()).count() as u64;
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (found, 1000 - found));
    assert_eq!(found, s.entries);
}

#[test]
fn the_oldest_decisions_are_pushed_out_first() {
    let cache = DecisionCache::new(50, MINUTE);
    for n in 0..120 {
        cache.insert(id(n), drop(&n.to_string()));
    }
    for n in 0..70 {
        assert_eq!(cache.get(&id(n)), None, "{n} should have been pushed out");
    }
    for n in 70..120 {
        assert_eq!(cache.get(&id(n)), Some(drop(&n.to_string())), "{n}");
    }
    let s = cache.stats();
    assert_eq!((s.entries, s.evicted_size, s.evicted_expired), (50, 70, 0));
}

#[test]
fn a_decision_older_than_the_ttl_is_forgotten_and_counted_as_expired() {
    let cache = DecisionCache::new(100, Duration::from_secs(10));
    let t0 = Instant::now();
    for n in 0..10 {
        cache.insert_at(id(n), drop("a"), t0 + Duration::from_secs(n));
    }
    let later = t0 + Duration::from_millis(14_500);
    // Decided at 0..=4 s: 10 s or more before 14.5 s.
    for n in 0..5 {
        assert_eq!(cache.get_at(&id(n), later), None, "{n}");
    }
    for n in 5..10 {
        assert_eq!(cache.get_at(&id(n), later), Some(drop("a")), "{n}");
    }
    let s = cache.stats_at(later);
    assert_eq!((s.entries, s.evicted_expired, s.evicted_size), (5, 5, 0));
    assert_eq!(s.bytes, 5 * CACHE_ENTRY_BYTES);
    let s = cache.stats_at(t0 + Duration::from_secs(60));
    assert_eq!((s.entries, s.evicted_expired), (0, 10));
}

#[test]
fn an_expired_decision_is_not_returned_before_it_is_cleaned_up() {
    let cache = DecisionCache::new(100, Duration::from_secs(1));
    let t0 = Instant::now();
    cache.insert_at(id(1), drop("a"), t0);
    assert_eq!(
        cache.get_at(&id(1), t0 + Duration::from_millis(999)),
        Some(drop("a"))
    );
    assert_eq!(cache.get_at(&id(1), t0 + Duration::from_secs(1)), None);
}

#[test]
fn deciding_a_trace_again_replaces_its_decision_and_restarts_its_ttl() {
    let cache = DecisionCache::new(3, Duration::from_secs(10));
    let t0 = Instant::now();
    cache.insert_at(id(1), drop("first"), t0);
    cache.insert_at(id(1), drop("second"), t0 + Duration::from_secs(8));
    let at = t0 + Duration::from_secs(12);
    assert_eq!(cache.get_at(&id(1), at), Some(drop("second")));
    let s = cache.stats_at(at);
    // The first decision's place in the ring went stale: not an eviction.
    assert_eq!((s.entries, s.evicted_expired, s.evicted_size), (1, 0, 0));
    // A stale place still counts towards the bound, so the map can never outgrow the ring.
    cache.insert_at(id(2), drop("b"), at);
    cache.insert_at(id(3), drop("c"), at);
    cache.insert_at(id(4), drop("d"), at);
    assert_eq!(cache.get_at(&id(1), at), None);
    let s = cache.stats_at(at);
    assert_eq!((s.entries, s.evicted_size), (3, 1));
}

#[test]
fn a_cache_sized_in_bytes_uses_all_but_a_sixteenth_of_its_bound() {
    for max in [
        64u64 << 20,
        27_200_000,
        10 << 20,
        1 << 20,
        100_000,
        16 << 10,
    ] {
        let n = DecisionCache::capacity_for_bytes(max);
        assert!(n * CACHE_ENTRY_BYTES <= max, "{max}: {n}");
        assert!(n * CACHE_ENTRY_BYTES * 16 >= max * 15, "{max}: only {n}");
    }
    // Below that, still at least one decision, and never more than the bound.
    for max in [0, 1, 136, 1000, 4096] {
        let n = DecisionCache::capacity_for_bytes(max);
        assert!(n >= 1, "{max}");
        assert!(
            n * CACHE_ENTRY_BYTES <= max.max(CACHE_ENTRY_BYTES),
            "{max}: {n}"
        );
    }
}

#[test]
fn the_bound_holds_across_many_shards() {
    let cache = DecisionCache::new(20_000, MINUTE);
    for n in 0..100_000 {
        cache.insert(id(n), drop("r"));
    }
    let s = cache.stats();
    assert!(s.entries <= 20_000 + 16, "{s:?}");
    assert!(s.entries >= 19_000, "{s:?}");
    assert_eq!(s.entries + s.evicted_size, 100_000);
    // What is still there is among the most recent.
    let kept = (80_000..100_000)
        .filter(|n| cache.get(&id(*n)).is_some())
        .count() as u64;
    assert!(kept >= s.entries * 9 / 10, "{kept} of {s:?}");
}

#[test]
fn threads_inserting_and_reading_at_once_see_their_own_decisions() {
    let cache = DecisionCache::new(40_000, MINUTE);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let rule = format!("t{t}");
                let mut wrong = 0;
                for n in 0..20_000u64 {
                    let key = id(t * 1_000_000 + n);
                    cache.insert(key, drop(&rule));
                    // Another thread's entry never answers for ours.
                    if let Some(d) = cache.get(&key) {
                        wrong += u64::from(d.rule() != rule);
                    }
                    if n >= 1000 {
                        let old = id(t * 1_000_000 + n - 1000);
                        if let Some(d) = cache.get(&old) {
                            wrong += u64::from(d.rule() != rule);
                        }
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(wrong, 0);
    let s = cache.stats();
    assert!(s.entries <= 40_000 + 16, "{s:?}");
    assert_eq!(s.entries + s.evicted_size, 80_000, "{s:?}");
    assert_eq!(s.hits + s.misses, 4 * (20_000 + 19_000));
}
