//! One shared copy of each resource and scope.
//!
//! The same resource (a service instance's attributes) and scope arrive in message after
//! message: upstream collectors keyed by trace id send each trace's spans of one service in a
//! message of their own. Copying them per message would give every buffered trace its own
//! copies, several hundred bytes per service it passes through, often more than its spans.
//! The decoder (one per ingest thread, so no locking) looks contexts up here instead.
//!
//! Bounded: at most [`MAX_INTERNED_BYTES`] of contexts are kept; contexts no buffered trace
//! uses any more are pruned periodically and whenever the bound is reached. A context that
//! does not fit is not interned: it is then counted in full by each trace that holds it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::SpanContext;

/// Bytes of interned contexts kept at most.
pub const MAX_INTERNED_BYTES: usize = 4 << 20;

/// Messages between two prunings of unused contexts.
const PRUNE_EVERY: u32 = 10_000;

/// Sets of the recent-context memo (see [`Interner::recent`]; a power of two), and contexts
/// per set.
const SETS: usize = 16;
const _: () = assert!(SETS.is_power_of_two());
const WAYS: usize = 4;

/// The shared contexts of one decoder, bounded by [`MAX_INTERNED_BYTES`] (see the module doc).
#[derive(Debug)]
pub struct Interner {
    /// Hash of (resource, scope) -> the contexts with that hash (almost always one). The key
    /// is a hash already: foldhash mixes it in a few instructions, where std's SipHash took
    /// about a hundred per message.
    table: HashMap<u64, smallvec::SmallVec<[Arc<SpanContext>; 1]>, foldhash::fast::RandomState>,
    /// The contexts looked up last, in sets by the lengths of their resource and scope
    /// fields, most recent first: the same services' contexts come message after message, and
    /// comparing their bytes with the ones here costs the comparison the table needs anyway,
    /// without hashing a few hundred bytes first (xxh3 was 3.7 % of the core path's
    /// instructions).
    recent: [[Option<Arc<SpanContext>>; WAYS]; SETS],
    /// This process's seed for the table's hash, so that no one can prepare resources that
    /// all fall in one of its collision lists.
    seed: u64,
    bytes: usize,
    messages: u32,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            table: HashMap::default(),
            recent: Default::default(),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x7a11_5147u64),
            bytes: 0,
            messages: 0,
        }
    }
}

/// The memo set of a context, from its fields' lengths alone: a function of a few of its
/// bytes would not tell apart instances of one service, whose resources differ in a pod or
/// host name somewhere in the middle, and a function of all of them is the hash the memo saves.
/// Contexts of equal lengths share a set and are told apart by comparing bytes, which stops
/// at the first difference.
fn recent_set(resource: &[u8], scope: &[u8]) -> usize {
    let key = ((resource.len() as u64) << 32) ^ scope.len() as u64;
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SETS.trailing_zeros())) as usize
}

impl Interner {
    fn hash(&self, resource: &[u8], scope: &[u8]) -> u64 {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(resource, self.seed);
        xxhash_rust::xxh3::xxh3_64_with_seed(scope, h)
    }

    /// The shared context for these resource and scope fields.
    pub fn get(&mut self, resource: &[u8], scope: &[u8]) -> Arc<SpanContext> {
        let slot = recent_set(resource, scope);
        let set = &mut self.recent[slot];
        let same = |c: &Option<Arc<SpanContext>>| {
            c.as_ref()
                .is_some_and(|c| c.resource_fields() == resource && c.scope_fields() == scope)
        };
        if let Some(way) = set.iter().position(same) {
            set[..=way].rotate_right(1);
            if let Some(c) = &set[0] {
                return c.clone();
            }
        }
        let h = self.hash(resource, scope);
        if let Some(c) = self.table.get(&h).and_then(|v| {
            v.iter()
                .find(|c| c.resource_fields() == resource && c.scope_fields() == scope)
        }) {
            let c = c.clone();
            self.remember(slot, &c);
            return c;
        }
        let size = resource.len() + scope.len() + std::mem::size_of::<SpanContext>();
        if self.bytes + size > MAX_INTERNED_BYTES {
            self.prune();
        }
        if self.bytes + size > MAX_INTERNED_BYTES {
            return Arc::new(SpanContext::new(resource.to_vec(), scope.to_vec()));
        }
        let mut ctx = SpanContext::new(resource.to_vec(), scope.to_vec());
        ctx.interned = true;
        let ctx = Arc::new(ctx);
        self.bytes += size;
        self.table.entry(h).or_default().push(ctx.clone());
        self.remember(slot, &ctx);
        ctx
    }

    /// Puts `ctx` first in its memo set `slot`, forgetting the set's least recent context.
    fn remember(&mut self, slot: usize, ctx: &Arc<SpanContext>) {
        let set = &mut self.recent[slot];
        set.rotate_right(1);
        set[0] = Some(ctx.clone());
    }

    /// Called once per message: prunes unused contexts now and then.
    pub fn message(&mut self) {
        self.messages += 1;
        if self.messages >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Drops the contexts nothing but this table holds.
    fn prune(&mut self) {
        self.messages = 0;
        // The memo's clones would keep every recent context in use.
        self.recent = Default::default();
        let mut freed = 0;
        self.table.retain(|_, v| {
            v.retain(|c| {
                let keep = Arc::strong_count(c) > 1;
                if !keep {
                    freed += c.size();
                }
                keep
            });
            !v.is_empty()
        });
        self.bytes -= freed;
    }

    /// Interned contexts and their bytes.
    pub fn len(&self) -> (usize, usize) {
        (self.table.values().map(|v| v.len()).sum(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contexts_are_shared_until_unused_and_the_table_stays_bounded() {
        let mut i = Interner::default();
        let a = i.get(b"res-a", b"scope");
        let b = i.get(b"res-a", b"scope");
        assert!(Arc::ptr_eq(&a, &b), "one copy for equal contexts");
        assert!(a.interned);
        let c = i.get(b"res-a", b"other");
        assert!(
            !Arc::ptr_eq(&a, &c),
            "a different scope is a different context"
        );
        assert_eq!(i.len().0, 2);
        drop((a, b, c));
        i.prune();
        assert_eq!(i.len(), (0, 0), "unused contexts are pruned");

        // Contexts still in use are never pruned; past the bound, new ones are not interned.
        let big = vec![7u8; MAX_INTERNED_BYTES / 4];
        let held: Vec<_> = (0..4u8)
            .map(|n| i.get(&[&big[..], &[n]].concat(), b""))
            .collect();
        assert_eq!(held.iter().filter(|c| c.interned).count(), 3);
        assert!(i.len().1 <= MAX_INTERNED_BYTES);
        drop(held);
        assert!(
            i.get(b"fresh", b"").interned,
            "room again once unused ones go"
        );
    }

    #[test]
    fn contexts_of_equal_lengths_are_told_apart_and_the_memo_does_not_keep_them() {
        let mut i = Interner::default();
        // Same lengths, so the same memo set: each lookup must still compare bytes.
        let a = i.get(b"res-a", b"scope-1");
        let b = i.get(b"res-b", b"scope-1");
        let c = i.get(b"res-a", b"scope-2");
        assert!(!Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&b, &c));
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&i.get(b"res-a", b"scope-1"), &a));
            assert!(Arc::ptr_eq(&i.get(b"res-b", b"scope-1"), &b));
            assert!(Arc::ptr_eq(&i.get(b"res-a", b"scope-2"), &c));
        }
        assert_eq!(
            &*i.get(b"res-b", b"scope-2"),
            &SpanContext::new(b"res-b".to_vec(), b"scope-2".to_vec())
        );
        assert_eq!(i.len().0, 4);
        drop((a, b, c));
        i.prune();
        assert_eq!(i.len(), (0, 0), "what the memo held is pruned too");
    }
}
