//! Span buffers of decided traces, handed back to the ingest thread to be freed there.
//!
//! The ingest thread allocates every span buffer; the deciders are done with most of them.
//! glibc's malloc gives each thread an arena of its own, and a chunk freed by another thread
//! goes back to its owner's arena under that arena's lock: the deciders' frees contended with
//! the ingest thread's every allocation (perf on the real broker: futex waits and wake-ups on
//! both sides), and the freed chunks bypassed the ingest thread's per-thread cache, so its
//! next allocations searched the arena's bins instead. Deciders now bury a batch's buffers
//! here (one lock per batch) and the ingest thread frees them between messages.
//!
//! Written by hand: the alternative is an allocator built for frees from other threads
//! (mimalloc was measured: it removes this cost and adds 6 % to the buffer's memory, past its
//! target), and no crate hands buffers back to their allocating thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::buffer::SpanGroup;

/// The span groups of one decided trace.
pub(crate) type Groups = smallvec::SmallVec<[SpanGroup; 1]>;

/// Buried span buffers waiting for the ingest thread.
pub(crate) struct Graveyard {
    batches: Mutex<Vec<Vec<Groups>>>,
    /// Bytes of span data buried and not yet freed; read without the lock.
    bytes: AtomicUsize,
    /// Above this many bytes waiting, a decider frees its batch itself: memory freed late is
    /// memory outside the budget, and without an ingest thread sweeping (a benchmark that only
    /// decides) nothing would free it.
    cap: usize,
}

impl Graveyard {
    /// A graveyard that holds at most `cap` bytes of span data waiting.
    pub fn new(cap: usize) -> Self {
        Graveyard {
            batches: Mutex::new(Vec::new()),
            bytes: AtomicUsize::new(0),
            cap,
        }
    }

    /// Hands a decider's batch over to the ingest thread, or frees it here when too much is
    /// waiting already.
    pub fn bury(&self, batch: Vec<Groups>) {
        if batch.is_empty() {
            return;
        }
        let bytes: usize = batch
            .iter()
            .flat_map(|g| g.iter())
            .map(|g| g.spans.capacity())
            .sum();
        if self.bytes.load(Ordering::Relaxed) + bytes > self.cap {
            return; // dropped here
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch);
    }

    /// Frees what was buried (on the ingest thread). One atomic load when nothing waits.
    pub fn sweep(&self) {
        if self.bytes.load(Ordering::Relaxed) == 0 {
            return;
        }
        let batches = std::mem::take(&mut *self.batches.lock().unwrap_or_else(|e| e.into_inner()));
        let bytes: usize = batches
            .iter()
            .flatten()
            .flat_map(|g| g.iter())
            .map(|g| g.spans.capacity())
            .sum();
        drop(batches);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes of span data waiting to be freed.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::otlp::SpanContext;

    fn groups(bytes: usize) -> Groups {
        smallvec::smallvec![SpanGroup {
            ctx: Arc::new(SpanContext::new(Vec::new(), Vec::new())),
            spans: vec![0u8; bytes],
        }]
    }

    #[test]
    fn buried_buffers_wait_for_the_sweep_within_the_cap() {
        let g = Graveyard::new(1000);
        g.bury(vec![groups(300), groups(200)]);
        assert_eq!(g.waiting(), 500);
        g.bury(vec![groups(400)]);
        assert_eq!(g.waiting(), 900);
        // Past the cap: freed by the burier, not kept waiting.
        g.bury(vec![groups(200)]);
        assert_eq!(g.waiting(), 900);
        g.bury(Vec::new());
        assert_eq!(g.waiting(), 900);
        g.sweep();
        assert_eq!(g.waiting(), 0);
        assert!(g.batches.lock().unwrap().is_empty());
        g.bury(vec![groups(200)]);
        assert_eq!(g.waiting(), 200);
    }
}
