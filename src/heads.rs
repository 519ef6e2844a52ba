//! Heads of traces that straddle a partition's commit offset, read back by whoever replays it.
//!
//! The commit offset is the first message an undecided trace still holds. With traces
//! interleaved in a partition, it can fall between the messages of a trace that was already
//! decided and forwarded. Whoever reads the partition next (after a crash, a rebalance or a
//! restart) replays from the commit offset and so sees only that trace's later messages; deciding
//! on that partial view could give it another outcome (the error was in the part before).
//!
//! So at each commit tailsift also records, as the committed offset of the companion group
//! `<group>.head-mark` ([`HEAD_MARK_GROUP_SUFFIX`]), the lowest first offset of the decided
//! traces that straddle the commit. The next owner reads the messages from that mark up to the
//! commit offset back into a [`Heads`] stash, without deciding or forwarding anything. When the
//! replay then meets a trace id the stash holds, the trace's head joins its tail in the buffer
//! before the tail's spans, and the trace is decided on its whole view, as it was the first time.
//! Spans of the head that were forwarded before are forwarded again, counted as replayed.

use std::collections::HashMap;

use crate::otlp::decode::{DecodeError, Decoder};
use crate::otlp::TraceId;

/// Suffix of the consumer group whose committed offsets are the head marks.
pub const HEAD_MARK_GROUP_SUFFIX: &str = ".head-mark";

/// Messages read back below a partition's commit offset, by trace id.
#[derive(Debug)]
pub struct Heads {
    /// Offset and OTLP protobuf payload of each message read back.
    messages: Vec<(i64, Vec<u8>)>,
    /// Trace id -> indexes in `messages` of the messages with its spans.
    by_trace: HashMap<TraceId, smallvec::SmallVec<[u32; 2]>, foldhash::fast::RandomState>,
    bytes: usize,
    /// The stash can go once the replay reaches this offset: the previous owner had read no
    /// further, so no straddling trace has spans beyond it.
    pub until: i64,
    /// Reads a stored message again when its trace's tail shows up.
    pub(crate) decoder: Decoder,
}

impl Heads {
    /// An empty stash, done with once the replay reaches `until` (see [`Heads::until`]).
    pub fn new(until: i64) -> Self {
        Heads {
            messages: Vec::new(),
            by_trace: HashMap::default(),
            bytes: 0,
            until,
            decoder: Decoder::new(),
        }
    }

    /// Stores a message read back (OTLP protobuf) under the trace ids it has spans of. A
    /// message that does not decode was skipped the first time too, and is skipped again.
    pub fn add(&mut self, offset: i64, payload: &[u8]) -> Result<(), DecodeError> {
        self.decoder.decode(payload)?;
        let i = self.messages.len() as u32;
        for group in self.decoder.groups(payload) {
            let ids = self.by_trace.entry(group.trace_id).or_default();
            if ids.last() != Some(&i) {
                ids.push(i);
            }
        }
        self.bytes += payload.len();
        self.messages.push((offset, payload.to_vec()));
        Ok(())
    }

    /// Bytes of the messages stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages stored.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Whether no trace's head is waiting any more.
    pub fn is_empty(&self) -> bool {
        self.by_trace.is_empty()
    }

    /// Removes and returns the indexes of the messages holding `id`'s head, if any.
    pub fn take(&mut self, id: &TraceId) -> Option<smallvec::SmallVec<[u32; 2]>> {
        if self.by_trace.is_empty() {
            return None;
        }
        self.by_trace.remove(id)
    }

    /// Offset and payload of a message stored, with the decoder to read it again (split
    /// borrows: the caller decodes the payload with the decoder).
    pub fn message(&mut self, i: u32) -> Option<(i64, &[u8], &mut Decoder)> {
        let (offset, payload) = self.messages.get(i as usize)?;
        Some((*offset, payload.as_slice(), &mut self.decoder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::build::{request, span, trace_id};

    fn message(spans: &[([u8; 16], u64)]) -> Vec<u8> {
        let spans = spans
            .iter()
            .map(|(t, id)| span(*t, *id, None, "op", 1, 2))
            .collect();
        request("svc", spans)
    }

    #[test]
    fn heads_are_found_by_trace_id_once_and_read_again_whole() {
        let (a, b) = (trace_id(1), trace_id(2));
        let mut h = Heads::new(10);
        h.add(3, &message(&[(a, 1), (b, 1)])).expect("decodes");
        assert!(h.add(4, b"\x0a\x05bad").is_err(), "bad input is refused");
        h.add(5, &message(&[(a, 2)])).expect("decodes");
        assert_eq!(h.messages(), 2);
        assert!(h.bytes() > 0);

        let at = h.take(&TraceId(a)).expect("a's head");
        assert_eq!(at.as_slice(), &[0, 1]);
        assert!(h.take(&TraceId(a)).is_none(), "taken once");
        let mut spans = 0;
        for i in at {
            let (offset, payload, decoder) = h.message(i).expect("stored");
            decoder.decode(payload).expect("decodes again");
            spans += decoder
                .groups(payload)
                .filter(|g| g.trace_id == TraceId(a))
                .map(|g| g.len())
                .sum::<usize>();
            assert!(offset == 3 || offset == 5);
        }
        assert_eq!(spans, 2, "both of a's head spans");
        assert!(!h.is_empty(), "b's head still waits");
        assert!(h.take(&TraceId(b)).is_some());
        assert!(h.is_empty());
        assert!(h.take(&TraceId(trace_id(3))).is_none());
    }
}
