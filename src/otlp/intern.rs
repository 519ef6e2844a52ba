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
use std::sync::Arc;

use super::SpanContext;

/// Bytes of interned contexts kept at most.
pub const MAX_INTERNED_BYTES: usize = 4 << 20;

/// Messages between two prunings of unused contexts.
const PRUNE_EVERY: u32 = 10_000;

/// The shared contexts of one decoder, bounded by [`MAX_INTERNED_BYTES`] (see the module doc).
#[derive(Debug, Default)]
pub struct Interner {
    /// Hash of (resource, scope) -> the contexts with that hash (almost always one). The key
    /// is a hash already: foldhash mixes it in a few instructions, where std's SipHash took
    /// about a hundred per message.
    table: HashMap<u64, smallvec::SmallVec<[Arc<SpanContext>; 1]>, foldhash::fast::RandomState>,
    bytes: usize,
    messages: u32,
}

fn hash(resource: &[u8], scope: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(resource);
    xxhash_rust::xxh3::xxh3_64_with_seed(scope, h)
}

impl Interner {
    /// The shared context for these resource and scope fields.
    pub fn get(&mut self, resource: &[u8], scope: &[u8]) -> Arc<SpanContext> {
        let h = hash(resource, scope);
        if let Some(c) = self.table.get(&h).and_then(|v| {
            v.iter()
                .find(|c| c.resource_fields() == resource && c.scope_fields() == scope)
        }) {
            return c.clone();
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
        ctx
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
}
