//! The table of assigned partitions: each one's offsets bookkeeping (see [`crate::offsets`]),
//! its read-backs, and what to commit for it: the group's offset, the read mark and the head
//! mark.
//!
//! The table lives on the ingest thread (librdkafka runs the rebalance callbacks inside
//! `poll`), so its lock is never contended; it is a lock only because the consumer's context
//! must be shared.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::heads::Heads;
use crate::offsets::{DecidedRange, PartitionOffsets};
use crate::sampler::Sampler;

/// A read-back of the decision log running for newly assigned partitions.
#[derive(Default)]
pub(crate) struct Job {
    done: Mutex<bool>,
    finished: Condvar,
}

impl Job {
    /// The read-back is over.
    pub(crate) fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.finished.notify_all();
    }

    /// Whether the read-back has finished.
    pub(crate) fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the read-back (it is bounded by its own timeout).
    pub(crate) fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.finished.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One assigned partition.
pub(crate) struct Assigned {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offsets: PartitionOffsets,
    /// The head mark found on assignment: heads are read back from it up to the first offset
    /// replayed, before that offset is ingested.
    pub(crate) head_from: Option<i64>,
    /// Heads read back, until the replay is past them.
    pub(crate) heads: Option<Heads>,
    /// The read-back of its decisions from the decision log, until it is done: the partition
    /// is paused meanwhile, and not ingested before.
    pub(crate) read_back: Option<Arc<Job>>,
}

/// The assigned partitions, by ingest index and by name.
#[derive(Default)]
pub(crate) struct Partitions {
    /// Index -> state. An index is never reused, so a hold from an earlier assignment can
    /// never be mistaken for one of the current assignment.
    pub(crate) by_index: HashMap<u32, Assigned>,
    /// Topic -> partition -> index: looked up per message without allocating (and hashed
    /// with foldhash, not SipHash).
    by_name: HashMap<
        String,
        HashMap<i32, u32, foldhash::fast::RandomState>,
        foldhash::fast::RandomState,
    >,
    next_index: u32,
    /// The last commit failed: send every offset again, changed or not.
    pub(crate) recommit: bool,
    /// Scratch for the decided ranges taken from the sampler at each commit.
    ranges: Vec<DecidedRange>,
}

impl Partitions {
    /// The ingest index of an assigned partition.
    pub(crate) fn index(&self, topic: &str, partition: i32) -> Option<u32> {
        self.by_name.get(topic)?.get(&partition).copied()
    }

    /// Adds a newly assigned partition under a fresh index (replacing an entry of the same
    /// partition, if any) and returns the index.
    pub(crate) fn assign(
        &mut self,
        topic: &str,
        partition: i32,
        replay_until: i64,
        head_from: Option<i64>,
        read_back: Option<Arc<Job>>,
    ) -> u32 {
        let idx = self.next_index;
        self.next_index += 1;
        let old = self
            .by_name
            .entry(topic.to_string())
            .or_default()
            .insert(partition, idx);
        if let Some(old) = old {
            self.by_index.remove(&old);
        }
        let mut offsets = PartitionOffsets::default();
        offsets.replay_until = replay_until;
        self.by_index.insert(
            idx,
            Assigned {
                topic: topic.to_string(),
                partition,
                offsets,
                head_from,
                heads: None,
                read_back,
            },
        );
        idx
    }

    /// Removes a revoked partition.
    pub(crate) fn remove(&mut self, idx: u32) -> Option<Assigned> {
        let a = self.by_index.remove(&idx)?;
        if let Some(t) = self.by_name.get_mut(&a.topic) {
            t.remove(&a.partition);
        }
        Some(a)
    }

    /// Offsets to commit for the partitions chosen by `filter`, the read marks and the head
    /// marks; with `force`, unchanged ones too.
    pub(crate) fn commit_list(
        &mut self,
        filter: impl Fn(u32) -> bool,
        force: bool,
        sampler: &Sampler,
    ) -> Commits {
        let mut tpl = TopicPartitionList::new();
        let mut marks = TopicPartitionList::new();
        let mut heads = TopicPartitionList::new();
        let safe: Vec<(u32, i64)> = self
            .by_index
            .iter_mut()
            .filter(|(idx, _)| filter(**idx))
            .filter_map(|(idx, a)| Some((*idx, a.offsets.safe_offset()?)))
            .collect();
        // The ranges of traces whose holds were seen released above were recorded before the
        // release (see `Sampler::decide_counted`): take them only now.
        std::sync::atomic::fence(Ordering::Acquire);
        sampler.take_decided_ranges(&mut self.ranges);
        for r in self.ranges.drain(..) {
            if let Some(a) = self.by_index.get_mut(&r.partition) {
                a.offsets.decided(r.first, r.last);
            }
        }
        for (idx, safe) in safe {
            let Some(a) = self.by_index.get_mut(&idx) else {
                continue;
            };
            let head = a.offsets.head_mark(safe);
            if force || a.offsets.head_marked != Some(head) {
                let _ = heads.add_partition_offset(&a.topic, a.partition, Offset::Offset(head));
                a.offsets.head_marked = Some(head);
            }
            if force || a.offsets.committed != Some(safe) {
                let _ = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(safe));
                a.offsets.committed = Some(safe);
            }
            let read = a.offsets.next().unwrap_or(safe).max(a.offsets.replay_until);
            if force || a.offsets.marked != Some(read) {
                let _ = marks.add_partition_offset(&a.topic, a.partition, Offset::Offset(read));
                a.offsets.marked = Some(read);
            }
        }
        Commits { tpl, marks, heads }
    }

    /// The assigned partitions that may be fetched: all but those whose decisions are still
    /// being read back.
    pub(crate) fn resumable(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for a in self.by_index.values().filter(|a| a.read_back.is_none()) {
            tpl.add_partition(&a.topic, a.partition);
        }
        tpl
    }
}

/// What one commit sends: the group's offsets, and the two companion groups' marks.
pub(crate) struct Commits {
    /// The group's offsets.
    pub(crate) tpl: TopicPartitionList,
    /// Read marks (see [`super::commit::READ_MARK_GROUP_SUFFIX`]).
    pub(crate) marks: TopicPartitionList,
    /// Head marks (see [`crate::heads`]).
    pub(crate) heads: TopicPartitionList,
}
