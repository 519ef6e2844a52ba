//! Committing: the group's offsets (only below what is still held: the at-least-once
//! promise), and the marks of the two companion groups, the read mark and the head mark.
//!
//! What to commit comes from the partition table ([`super::partitions`]); commits are sent
//! on the ingest thread's tick (asynchronously), when partitions are revoked and at the end
//! (synchronously). A failed commit is sent again whole at the next tick.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

use super::partitions::Commits;

/// Suffix of the consumer group under which tailsift records how far it has read (used only
/// to recognise replayed offsets after a crash or rebalance). Commit metadata would be the
/// natural place, but not every Kafka-protocol broker keeps it; every broker keeps offsets.
pub const READ_MARK_GROUP_SUFFIX: &str = ".read-mark";

/// The group-less clients that commit the marks: read marks under `<group>.read-mark`, head
/// marks under `<group>.head-mark` (see [`crate::heads`]).
pub(crate) struct MarkClients {
    /// Commits read marks.
    pub(crate) read: BaseConsumer,
    /// Commits head marks, and reads heads back.
    pub(crate) heads: BaseConsumer,
}

impl Commits {
    /// Commits the marks (best effort: a lost read mark makes the replay count an
    /// underestimate, a lost head mark leaves the previous, lower one in place).
    fn commit_marks(&self, clients: &MarkClients, mode: CommitMode) {
        // Head marks first: the group's offset must never be ahead of them for long.
        if self.heads.count() > 0 {
            let _ = clients.heads.commit(&self.heads, mode);
            let _ = clients.heads.poll(Duration::ZERO);
        }
        if self.marks.count() > 0 {
            let _ = clients.read.commit(&self.marks, mode);
            let _ = clients.read.poll(Duration::ZERO);
        }
    }

    /// Commits the marks, then the group's offsets: `None` when there were no offsets to
    /// commit, else how their commit went (with [`CommitMode::Async`]: how it was sent).
    pub(crate) fn send<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        clients: &MarkClients,
        mode: CommitMode,
    ) -> Option<KafkaResult<()>> {
        self.commit_marks(clients, mode);
        (self.tpl.count() > 0).then(|| consumer.commit(&self.tpl, mode))
    }
}
