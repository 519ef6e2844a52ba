//! Which offsets are safe to commit: the at-least-once bookkeeping.
//!
//! Every consumed message that something still needs gets an [`OffsetHold`], shared (`Arc`)
//! by whoever needs it: each undecided trace holds the first message it has spans in (per
//! partition), each produce in flight holds the messages of the trace it carries. A hold is
//! released by dropping it, wherever that happens (a decider thread, the producer's delivery
//! callback). The partition's safe commit offset is the lowest offset still held, or the next
//! offset to read when nothing is held. No locks on the release path; the ingest thread, which
//! owns the [`PartitionOffsets`], looks at the counts when it commits.

use std::collections::VecDeque;
use std::sync::Arc;

/// One consumed message that is still needed. Held while other clones of the `Arc` live.
#[derive(Debug)]
pub struct OffsetHold {
    /// Index of the partition in the ingest thread's table, so that a trace knows whether it
    /// already holds this partition.
    pub partition: u32,
    /// The message's offset in that partition.
    pub offset: i64,
}

/// A trace's holds: one per partition it has spans from (almost always exactly one).
pub type Holds = smallvec::SmallVec<[Arc<OffsetHold>; 1]>;

/// What the buffer needs of a consumed message: which partition it came from, and a hold on
/// it if a trace must keep it.
pub trait Hold {
    /// The partition's index in the ingest thread's table.
    fn partition(&self) -> u32;
    /// The message's offset.
    fn offset(&self) -> i64;
    /// A hold on the message (a new clone of the shared one).
    fn hold(&self) -> Arc<OffsetHold>;
}

impl Hold for Arc<OffsetHold> {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn hold(&self) -> Arc<OffsetHold> {
        self.clone()
    }
}

/// A consumed message whose [`OffsetHold`] is made only when something takes one: most
/// messages carry spans of traces that already hold an earlier message, and need none.
#[derive(Debug)]
pub struct MessageHold {
    partition: u32,
    offset: i64,
    hold: std::cell::OnceCell<Arc<OffsetHold>>,
}

impl MessageHold {
    /// The message at `offset` of the partition with index `partition` in the ingest thread's
    /// table, not yet held by anything.
    pub fn new(partition: u32, offset: i64) -> Self {
        MessageHold {
            partition,
            offset,
            hold: std::cell::OnceCell::new(),
        }
    }
}

impl Hold for MessageHold {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn hold(&self) -> Arc<OffsetHold> {
        self.hold
            .get_or_init(|| {
                Arc::new(OffsetHold {
                    partition: self.partition,
                    offset: self.offset,
                })
            })
            .clone()
    }
}

/// Where a decided trace has spans in one partition, when that is more than one message. Until
/// the commit offset passes `last`, a replay from the commit would see only the trace's later
/// messages: [`PartitionOffsets::head_mark`] tells the next owner where to read its head from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecidedRange {
    /// The partition's index in the ingest thread's table.
    pub partition: u32,
    /// The lowest offset the trace has spans at in the partition.
    pub first: i64,
    /// The highest offset the trace has spans at in the partition, above `first`.
    pub last: i64,
}

/// Offsets of one assigned partition.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// Messages that were still held when processed, in offset order.
    held: VecDeque<Arc<OffsetHold>>,
    /// The offset after the last processed message; `None` until one was processed.
    next: Option<i64>,
    /// Last offset committed, to skip commits that would not move.
    pub committed: Option<i64>,
    /// Last read mark committed (see `kafka::commit::READ_MARK_GROUP_SUFFIX`).
    pub marked: Option<i64>,
    /// Offsets below this were read before, by this group (restart or rebalance): traces kept
    /// from them may be duplicates in the output.
    pub replay_until: i64,
    /// (first, last) of decided traces spread over several messages, until the commit offset
    /// passes their last.
    decided: Vec<(i64, i64)>,
    /// The head mark computed at the previous commit.
    last_head_mark: Option<i64>,
    /// (head mark, offset) inherited from the previous owner: the head mark stays at or below
    /// it until the commit offset reaches the offset (see [`Self::inherit_heads`]).
    inherited: Option<(i64, i64)>,
    /// Last head mark committed.
    pub head_marked: Option<i64>,
}

impl PartitionOffsets {
    /// Records a processed message; `hold` is kept if anything still needs it.
    pub fn processed(&mut self, hold: Arc<OffsetHold>) {
        self.next = Some(hold.offset + 1);
        if Arc::strong_count(&hold) > 1 {
            self.held.push_back(hold);
        }
    }

    /// Records a processed message whose hold was made only if something took one.
    pub fn processed_message(&mut self, message: MessageHold) {
        match message.hold.into_inner() {
            Some(hold) => self.processed(hold),
            None => self.skipped(message.offset),
        }
    }

    /// Records a message that nothing needs (undecodable, or all late spans of dropped traces).
    pub fn skipped(&mut self, offset: i64) {
        self.next = Some(offset + 1);
    }

    /// The offset that is safe to commit: every message below it is fully handled.
    pub fn safe_offset(&mut self) -> Option<i64> {
        while self.held.front().is_some_and(|h| Arc::strong_count(h) == 1) {
            self.held.pop_front();
        }
        match self.held.front() {
            Some(h) => Some(h.offset),
            None => self.next,
        }
    }

    /// Records a decided trace's range in this partition (see [`DecidedRange`]).
    pub fn decided(&mut self, first: i64, last: i64) {
        if first < last {
            self.decided.push((first, last));
        }
    }

    /// This partition was taken over with heads read back from `head_mark` (see
    /// [`crate::heads`]), and the previous owner had read up to `until`. Until the commit
    /// offset reaches `until`, traces whose head is below the commit may still be undecided
    /// (joined to their head, or not yet met again): the head mark stays at `head_mark`.
    pub fn inherit_heads(&mut self, head_mark: i64, until: i64) {
        self.inherited = Some((head_mark, until));
    }

    /// Where a replay from `commit` must start reading to see whole every decided trace it
    /// would otherwise see only the end of: the lowest first offset of the decided traces that
    /// straddle `commit`, or `commit` when none does. Undecided traces do not straddle it: each
    /// holds its first offset, so the commit offset is at or below it; the exception, traces
    /// whose head an earlier owner read, is covered by [`Self::inherit_heads`].
    ///
    /// The mark returned is the lower of this commit's and the previous one's, so that it
    /// still covers the previous commit offset if the broker ends up keeping that one (commits
    /// are asynchronous, and the two groups' commits are not atomic).
    pub fn head_mark(&mut self, commit: i64) -> i64 {
        self.decided.retain(|&(_, last)| last >= commit);
        let now = self
            .decided
            .iter()
            .filter(|&&(first, _)| first < commit)
            .map(|&(first, _)| first)
            .min()
            .unwrap_or(commit);
        let now = match self.inherited {
            Some((_, until)) if commit >= until => {
                // Every trace met again is decided (its hold is below the commit), and its
                // range is in `decided`.
                self.inherited = None;
                now
            }
            Some((head_mark, _)) => now.min(head_mark),
            None => now,
        };
        let mark = self.last_head_mark.map_or(now, |prev| prev.min(now));
        self.last_head_mark = Some(now);
        mark
    }

    /// Decided ranges not yet passed by the commit offset.
    pub fn decided_pending(&self) -> usize {
        self.decided.len()
    }

    /// The offset after the last message read.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    /// Distance between what was read and what is safe to commit, in offsets.
    pub fn held_back(&mut self) -> i64 {
        match (self.safe_offset(), self.next) {
            (Some(safe), Some(next)) => next - safe,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(offset: i64) -> Arc<OffsetHold> {
        Arc::new(OffsetHold {
            partition: 0,
            offset,
        })
    }

    #[test]
    fn commits_only_below_the_lowest_held_offset() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.safe_offset(), None, "nothing read, nothing to commit");

        let h10 = hold(10);
        let trace_a = h10.clone(); // an undecided trace holds message 10
        p.processed(h10);
        p.skipped(11);
        let h12 = hold(12);
        let trace_b = h12.clone();
        p.processed(h12);
        p.processed(hold(13)); // nothing held it
        assert_eq!(p.safe_offset(), Some(10));
        assert_eq!(p.held_back(), 4);

        drop(trace_a); // trace A decided and its produce acknowledged
        assert_eq!(p.safe_offset(), Some(12));
        drop(trace_b);
        assert_eq!(p.safe_offset(), Some(14));
        assert_eq!(p.held_back(), 0);
    }

    #[test]
    fn a_message_hold_is_made_only_when_taken_and_then_holds() {
        let mut p = PartitionOffsets::default();
        let untaken = MessageHold::new(0, 5);
        p.processed_message(untaken);
        assert_eq!(p.safe_offset(), Some(6), "a message nobody held is passed");

        let taken = MessageHold::new(0, 6);
        let trace = taken.hold();
        assert!(Arc::ptr_eq(&trace, &taken.hold()), "one shared hold");
        assert_eq!((trace.partition, trace.offset), (0, 6));
        p.processed_message(taken);
        p.processed_message(MessageHold::new(0, 7));
        assert_eq!(p.safe_offset(), Some(6), "held by the trace");
        drop(trace);
        assert_eq!(p.safe_offset(), Some(8));
    }

    #[test]
    fn the_head_mark_is_the_first_offset_of_the_decided_traces_straddling_the_commit() {
        let mut p = PartitionOffsets::default();
        p.decided(3, 3); // one message: can never straddle
        p.decided(4, 9);
        p.decided(2, 6);
        p.decided(7, 12);
        assert_eq!(p.decided_pending(), 3);
        assert_eq!(
            p.head_mark(5),
            2,
            "(2,6) and (4,9) straddle 5; (7,12) starts after"
        );
        // Next commit at 8: (2,6) is passed and forgotten; (4,9) and (7,12) straddle. The mark
        // still covers the previous commit offset (5) in case that one is what the broker keeps.
        assert_eq!(p.head_mark(8), 2);
        assert_eq!(p.decided_pending(), 2);
        assert_eq!(
            p.head_mark(8),
            4,
            "once both commits agree, only (4,9) and (7,12)"
        );
        assert_eq!(
            p.head_mark(13),
            4,
            "the previous mark, for the previous commit"
        );
        assert_eq!(p.head_mark(13), 13, "nothing straddles: the commit itself");
        assert_eq!(p.decided_pending(), 0);
    }

    #[test]
    fn inherited_heads_keep_the_head_mark_until_the_commit_passes_what_was_read_before() {
        let mut p = PartitionOffsets::default();
        p.inherit_heads(40, 60); // took over at 50 with heads from 40; 60 had been read
        p.decided(52, 58);
        assert_eq!(
            p.head_mark(55),
            40,
            "a trace met again may be undecided still"
        );
        assert_eq!(p.head_mark(59), 40);
        p.decided(45, 61); // the last trace joined to its head, decided
        assert_eq!(p.head_mark(60), 40, "its own range now says so");
        assert_eq!(p.head_mark(62), 45, "the previous commit's mark");
        assert_eq!(p.head_mark(62), 62);
    }

    #[test]
    fn a_later_release_does_not_unblock_an_earlier_hold() {
        let mut p = PartitionOffsets::default();
        let (h1, h2) = (hold(1), hold(2));
        let (a, b) = (h1.clone(), h2.clone());
        p.processed(h1);
        p.processed(h2);
        drop(b);
        assert_eq!(p.safe_offset(), Some(1));
        drop(a);
        assert_eq!(p.safe_offset(), Some(3));
    }
}
