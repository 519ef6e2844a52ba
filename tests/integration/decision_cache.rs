//! The decision cache allocates nothing once it is full: inserting a decision reuses the place
//! of the one it pushes out (or of the ones that expired). Counted with a global allocator that
//! counts per thread, so the test harness's own threads do not disturb the count. It is the
//! allocator of the whole test binary: the other tests, on their own threads, do not either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use tailsift::decision::{Decision, DecisionCache, CACHE_ENTRY_BYTES};
use tailsift::otlp::TraceId;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

fn id(n: u64) -> TraceId {
    // Spread like real trace ids, without allocating.
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let b = (n ^ 0x5555).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&a.to_le_bytes());
    id[8..].copy_from_slice(&b.to_le_bytes());
    TraceId(id)
}

#[test]
fn a_full_decision_cache_allocates_nothing_to_insert_or_look_up() {
    let keep = Decision::Keep {
        rule: "errors".into(),
        sample_rate: 1,
    };
    let drop = Decision::Drop {
        rule: "baseline".into(),
    };
    let by_bytes = 4_000 * CACHE_ENTRY_BYTES;
    for (cache, capacity) in [
        (DecisionCache::new(10_000, Duration::from_secs(300)), 10_000),
        (
            DecisionCache::with_max_bytes(by_bytes, Duration::from_secs(300)),
            DecisionCache::capacity_for_bytes(by_bytes),
        ),
    ] {
        // Fill it (each shard holds its share; twice the capacity fills every one). From
        // then on nothing is allocated: no growth is left for the first pushed-out decisions
        // to trigger.
        for n in 0..2 * capacity {
            cache.insert(id(n), drop.clone());
        }
        let before = allocations();
        let mut found = 0u64;
        for n in 2 * capacity..2 * capacity + 200_000 {
            let d = if n % 7 == 0 { &keep } else { &drop };
            cache.insert(id(n), d.clone());
            found += u64::from(cache.get(&id(n - 1000)).is_some());
            found += u64::from(cache.get(&id(n - 2 * capacity)).is_some());
        }
        let made = allocations() - before;
        assert_eq!(made, 0, "allocations for 200 000 inserts into a full cache");
        assert_eq!(
            found, 200_000,
            "each recent decision found, each old one gone"
        );
        let s = cache.stats();
        assert_eq!(s.entries + s.evicted_size, 2 * capacity + 200_000, "{s:?}");
        assert!(s.entries <= capacity, "{s:?}");
    }
}

#[test]
fn a_cache_bounded_by_its_ttl_stops_allocating_once_its_size_holds_steady() {
    // 5 000 decisions a second with a 1 s ttl: the ttl, not the size (10 000), bounds it, so
    // its shards never fill. Their tables still reach the size the steady state needs and
    // stay there: at most a growth or two per shard, never an allocation per decision.
    let cache = DecisionCache::new(10_000, Duration::from_secs(1));
    let drop = Decision::Drop {
        rule: "baseline".into(),
    };
    let t0 = Instant::now();
    let at = |n: u64| t0 + Duration::from_micros(n * 200);
    for n in 0..25_000 {
        cache.insert_at(id(n), drop.clone(), at(n));
    }
    let before = allocations();
    for n in 25_000..225_000 {
        cache.insert_at(id(n), drop.clone(), at(n));
    }
    let made = allocations() - before;
    assert!(made <= 32, "{made} allocations for 200 000 decisions");
    let s = cache.stats_at(at(225_000));
    assert_eq!(s.evicted_size, 0, "{s:?}");
    assert!(s.entries <= 5_000 && s.entries >= 4_990, "{s:?}");
    assert_eq!(s.entries + s.evicted_expired, 225_000);
}
