//! Encode a kept trace as OTLP `ExportTraceServiceRequest` messages, from the spans' original
//! bytes, split so that no message passes the producer's size limit.

use super::wire::{len_field_size, put_len_prefix, Fields};
use super::SpanContext;

/// Bytes of a `ResourceSpans` field holding one `ScopeSpans` with `spans` bytes of span fields.
fn piece_size(ctx: &SpanContext, spans: usize) -> usize {
    let scope = ctx.scope_fields().len() + spans;
    let resource = ctx.resource_fields().len() + len_field_size(2, scope);
    len_field_size(1, resource)
}

fn put_piece(out: &mut Vec<u8>, ctx: &SpanContext, spans: &[u8]) {
    let scope = ctx.scope_fields().len() + spans.len();
    let resource = ctx.resource_fields().len() + len_field_size(2, scope);
    put_len_prefix(out, 1, resource);
    out.extend_from_slice(ctx.resource_fields());
    put_len_prefix(out, 2, scope);
    out.extend_from_slice(ctx.scope_fields());
    out.extend_from_slice(spans);
}

/// The encoded messages of one trace: almost always one, kept inline.
pub type Messages = smallvec::SmallVec<[Vec<u8>; 1]>;

/// How many of a trace's `spans` each of its `messages` carries: spread evenly, the first
/// ones taking the remainder, so that the counts add up to the trace's.
pub fn span_shares(spans: u32, messages: usize) -> impl Iterator<Item = u32> {
    let count = messages.max(1) as u32;
    (0..count).map(move |i| spans / count + u32::from(i < spans % count))
}

/// Encodes chunks of `(context, span fields)` — each span field being a `ScopeSpans.spans`
/// entry with its tag and length — into requests of at most `max_bytes` each. A single span
/// larger than the limit still gets a message of its own.
pub fn encode_trace<'a, I>(chunks: I, max_bytes: usize) -> Messages
where
    I: IntoIterator<Item = (&'a SpanContext, &'a [u8])>,
    I::IntoIter: Clone,
{
    let chunks = chunks.into_iter();
    // The common case, a trace that fits one message: one allocation, of the exact size.
    let total: usize = chunks
        .clone()
        .map(|(ctx, spans)| piece_size(ctx, spans.len()))
        .sum();
    if total > 0 && total <= max_bytes {
        let mut out = Vec::with_capacity(total);
        for (ctx, spans) in chunks {
            put_piece(&mut out, ctx, spans);
        }
        return smallvec::smallvec![out];
    }
    let mut messages = Messages::new();
    let mut current: Vec<(&SpanContext, &[u8])> = Vec::new();
    let mut size = 0usize;
    let flush = |current: &mut Vec<(&SpanContext, &[u8])>, messages: &mut Messages, size| {
        if current.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(size);
        for (ctx, spans) in current.drain(..) {
            put_piece(&mut out, ctx, spans);
        }
        messages.push(out);
    };
    for (ctx, spans) in chunks {
        let whole = piece_size(ctx, spans.len());
        if size + whole <= max_bytes {
            current.push((ctx, spans));
            size += whole;
            continue;
        }
        // Split this chunk at span boundaries; `size` counts the closed pieces only.
        let mut start = 0;
        let mut end = 0;
        for f in Fields::new(spans) {
            let Ok(f) = f else { break };
            let next = end + f.raw.len();
            let open_piece_nonempty = end > start;
            if size + piece_size(ctx, next - start) > max_bytes && (size > 0 || open_piece_nonempty)
            {
                if open_piece_nonempty {
                    current.push((ctx, &spans[start..end]));
                    size += piece_size(ctx, end - start);
                }
                flush(&mut current, &mut messages, size);
                size = 0;
                start = end;
            }
            end = next;
        }
        if end > start {
            current.push((ctx, &spans[start..end]));
            size += piece_size(ctx, end - start);
        }
    }
    flush(&mut current, &mut messages, size);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_counts_of_a_split_trace_add_up_to_its_spans() {
        // (spans, messages, shares)
        let cases: &[(u32, usize, &[u32])] = &[
            (5, 1, &[5]),
            (7, 3, &[3, 2, 2]),
            (2, 3, &[1, 1, 0]),
            (9, 3, &[3, 3, 3]),
            (4, 0, &[4]),
        ];
        for &(spans, messages, want) in cases {
            let got: Vec<u32> = span_shares(spans, messages).collect();
            assert_eq!(got, want, "{spans} spans over {messages} messages");
            assert_eq!(got.iter().sum::<u32>(), spans);
        }
    }
}
