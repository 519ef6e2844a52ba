//! The sampler's side of the decision log: which decision is recorded, and when.
//!
//! Every decision is recorded once its consequences are safe, and holds the offsets of the
//! trace it decides until the log has it, so that a committed input offset never passes an
//! unlogged decision:
//! - a dropped trace is recorded at once (nothing to forward);
//! - a kept trace is recorded once every message it was forwarded in is acknowledged, with how
//!   far its spans reach in each input partition (`through`). A later forward of the same trace
//!   (late spans) records it again with a higher `through`.
//!
//! `through` claims that every span of the trace in messages at or below it is in the output:
//! a replay after a crash skips them. So a record is written only when every forward of the
//! trace so far is acknowledged ([`Forwards`] counts them per trace): acknowledgements can come
//! out of order (the producer retries a failed batch while a later one succeeds), and a record
//! claiming the later offset before the earlier one is in would make a replay skip a span that
//! never reached the output.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use smallvec::SmallVec;

use crate::decision::Decision;
use crate::offsets::Holds;
use crate::otlp::TraceId;

/// Per input partition the trace has spans in (its ingest index): the highest offset whose
/// spans were forwarded and acknowledged under the decision, if any.
pub type Through = SmallVec<[(u32, Option<i64>); 1]>;

/// One decision to record.
#[derive(Debug)]
pub struct JournalEntry {
    /// The trace decided: the record's key.
    pub trace_id: TraceId,
    /// What was decided, by which rule.
    pub decision: Decision,
    /// When the trace was decided, Unix milliseconds.
    pub decided_at: u64,
    /// One record per partition listed.
    pub partitions: Through,
    /// Released once every record of the entry is acknowledged.
    pub holds: Holds,
    /// For a kept trace, when the last of its output messages was acknowledged: from then
    /// until its record is, a crash forwards it again
    /// (`tailsift_decision_log_lag_seconds`). `None` for a decision that forwards nothing.
    pub acked_at: Option<std::time::Instant>,
}

/// Where decisions are recorded: the decision log on Kafka in production, a collector in
/// tests.
pub trait Journal: Send + Sync {
    /// Takes one entry to record, from a decider thread (a drop) or a producer's delivery
    /// callback (a kept trace's last acknowledgement), so it should return quickly. The
    /// entry's holds are to be dropped only once every record of it is stored.
    fn record(&self, entry: JournalEntry);
}

/// A trace's forwards not yet acknowledged, and what they will record together.
struct Pending {
    outstanding: u32,
    decision: Decision,
    decided_at: u64,
    through: SmallVec<[(u32, i64); 1]>,
    holds: Holds,
}

/// The forwards in flight of every kept trace, so that a trace's record is written only when
/// all of them are acknowledged (see the module's documentation).
pub struct Forwards {
    journal: Arc<dyn Journal>,
    pending: DashMap<TraceId, Pending, foldhash::fast::RandomState>,
}

impl Forwards {
    /// No forward in flight yet; records go to `journal`. Shared: every [`Delivery`] holds it.
    pub fn new(journal: Arc<dyn Journal>) -> Arc<Self> {
        Arc::new(Forwards {
            journal,
            pending: DashMap::default(),
        })
    }

    /// Records a decision that forwards nothing (a drop), holding `holds` until logged.
    pub fn record_now(&self, entry: JournalEntry) {
        self.journal.record(entry);
    }

    /// A forward of trace `id` begins: `messages` output messages carrying spans up to
    /// `through` (per partition), holding `holds`. Each message's ticket carries the returned
    /// [`Delivery`] and reports its acknowledgement to it.
    pub fn begin(
        self: &Arc<Self>,
        id: TraceId,
        decision: &Decision,
        decided_at: u64,
        through: SmallVec<[(u32, i64); 1]>,
        holds: Holds,
        messages: u32,
    ) -> Arc<Delivery> {
        self.pending
            .entry(id)
            .and_modify(|p| p.outstanding += 1)
            .or_insert_with(|| Pending {
                outstanding: 1,
                decision: decision.clone(),
                decided_at,
                through: SmallVec::new(),
                holds: Holds::new(),
            });
        Arc::new(Delivery {
            forwards: self.clone(),
            id,
            through,
            holds,
            left: AtomicU32::new(messages.max(1)),
        })
    }

    /// Every message of `d` is acknowledged: fold it into its trace's pending record, and
    /// write the record if no other forward of the trace is in flight.
    fn done(&self, d: &Delivery) {
        let ready = self.pending.remove_if_mut(&d.id, |_, p| {
            p.outstanding -= 1;
            for &(partition, offset) in &d.through {
                match p.through.iter_mut().find(|(q, _)| *q == partition) {
                    Some((_, t)) => *t = (*t).max(offset),
                    None => p.through.push((partition, offset)),
                }
            }
            p.holds.extend(d.holds.iter().cloned());
            p.outstanding == 0
        });
        if let Some((id, p)) = ready {
            self.journal.record(JournalEntry {
                trace_id: id,
                decision: p.decision,
                decided_at: p.decided_at,
                partitions: p.through.iter().map(|&(q, t)| (q, Some(t))).collect(),
                holds: p.holds,
                acked_at: Some(std::time::Instant::now()),
            });
        }
    }

    /// Traces with forwards in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// One forward of a kept trace: the output messages it went out in report their
/// acknowledgement here ([`Delivery::delivered`]).
pub struct Delivery {
    forwards: Arc<Forwards>,
    id: TraceId,
    through: SmallVec<[(u32, i64); 1]>,
    holds: Holds,
    /// Messages not yet acknowledged.
    left: AtomicU32,
}

impl Delivery {
    /// One message of this forward is acknowledged (or given up for good: a span no broker
    /// takes, counted as a produce error).
    pub fn delivered(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.forwards.done(self);
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("through", &self.through)
            .field("left", &self.left.load(Ordering::Relaxed))
            .finish()
    }
}

/// A journal that keeps what it is given, for tests: entries in order, each holding its
/// offsets until the test drops it (after [`Collected::take`]).
#[derive(Default)]
pub struct Collected {
    /// Every entry recorded and not yet taken, in order.
    pub entries: std::sync::Mutex<Vec<JournalEntry>>,
}

impl Collected {
    /// Moves the entries so far out; their holds are released when the caller drops them.
    pub fn take(&self) -> Vec<JournalEntry> {
        std::mem::take(&mut *self.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Journal for Collected {
    fn record(&self, entry: JournalEntry) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::OffsetHold;

    fn hold(offset: i64) -> Arc<OffsetHold> {
        Arc::new(OffsetHold {
            partition: 0,
            offset,
        })
    }

    fn keep() -> Decision {
        Decision::Keep {
            rule: "errors".into(),
            sample_rate: 1,
        }
    }

    #[test]
    fn a_kept_trace_is_recorded_once_every_message_is_acknowledged_holding_its_offsets() {
        let log = Arc::new(Collected::default());
        let f = Forwards::new(log.clone());
        let id = TraceId([1; 16]);
        let h = hold(10);
        let d = f.begin(
            id,
            &keep(),
            5,
            [(0, 12)].into_iter().collect(),
            [h.clone()].into_iter().collect(),
            2,
        );
        d.delivered();
        assert!(log.take().is_empty(), "one of two messages acknowledged");
        d.delivered();
        drop(d);
        let e = log.take();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].partitions.as_slice(), &[(0, Some(12))]);
        assert_eq!(e[0].decided_at, 5);
        assert_eq!(
            Arc::strong_count(&h),
            2,
            "the record holds the offset until logged"
        );
        drop(e);
        assert_eq!(Arc::strong_count(&h), 1);
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn a_later_forward_acknowledged_first_waits_for_the_earlier_one() {
        let log = Arc::new(Collected::default());
        let f = Forwards::new(log.clone());
        let id = TraceId([2; 16]);
        let first = f.begin(
            id,
            &keep(),
            1,
            [(0, 100)].into_iter().collect(),
            Holds::new(),
            1,
        );
        let late = f.begin(
            id,
            &keep(),
            1,
            [(0, 105), (1, 7)].into_iter().collect(),
            Holds::new(),
            1,
        );
        late.delivered();
        assert!(
            log.take().is_empty(),
            "105 is not claimed while 100 may still be lost"
        );
        first.delivered();
        let e = log.take();
        assert_eq!(e.len(), 1, "one record for both");
        assert_eq!(e[0].partitions.as_slice(), &[(0, Some(105)), (1, Some(7))]);
        // A forward after that starts a new record.
        let again = f.begin(
            id,
            &keep(),
            1,
            [(0, 130)].into_iter().collect(),
            Holds::new(),
            1,
        );
        again.delivered();
        assert_eq!(log.take()[0].partitions.as_slice(), &[(0, Some(130))]);
    }
}
