//! Grouping a message's spans by trace, in linear time: the decoder's last step.
//!
//! A message of one trace (a collector keyed by trace id sends those) is grouped already; an
//! SDK's batch holds spans of many traces, interleaved. Sorting the decoder's span records by
//! trace id cost about 260 instructions a span on the SDK's batches, and sorting (id, index)
//! pairs instead about as much (BENCHMARKS.md, issue 19's twelfth session): each span's group
//! is looked up in a map instead, the groups' places counted out, and each record moved once.

use std::collections::HashMap;

use super::TraceId;

/// Reusable scratch for [`ByTrace::group`]: each trace's group, each item's group, where each
/// group starts (then its next place), the items' indices in their new order, and the items in
/// it. Items are far fewer than `u32::MAX`: a Kafka message holds them.
#[derive(Debug)]
pub(super) struct ByTrace<T> {
    index: HashMap<TraceId, u32, foldhash::fast::RandomState>,
    group_of: Vec<u32>,
    starts: Vec<u32>,
    order: Vec<u32>,
    grouped: Vec<T>,
}

impl<T> Default for ByTrace<T> {
    fn default() -> Self {
        ByTrace {
            index: HashMap::default(),
            group_of: Vec::new(),
            starts: Vec::new(),
            order: Vec::new(),
            grouped: Vec::new(),
        }
    }
}

impl<T: Clone> ByTrace<T> {
    /// Puts the items of each trace side by side, in the order they came, the traces in the
    /// order they first appear. Items already so are left alone.
    pub(super) fn group(&mut self, items: &mut Vec<T>, trace: impl Fn(&T) -> TraceId) {
        if items.is_sorted_by_key(&trace) {
            return;
        }
        self.index.clear();
        self.group_of.clear();
        self.starts.clear();
        // An item's trace is often the one before it (a service's spans of one request end
        // together): that one is not looked up again.
        let mut last: Option<(TraceId, u32)> = None;
        for item in items.iter() {
            let id = trace(item);
            let g = match last {
                Some((prev, g)) if prev == id => g,
                _ => {
                    let next = self.starts.len() as u32;
                    let g = *self.index.entry(id).or_insert(next);
                    if g == next {
                        self.starts.push(0);
                    }
                    g
                }
            };
            last = Some((id, g));
            self.starts[g as usize] += 1;
            self.group_of.push(g);
        }
        // Each group's count becomes where it starts.
        let mut at = 0;
        for start in &mut self.starts {
            (*start, at) = (at, at + *start);
        }
        self.order.clear();
        self.order.resize(items.len(), 0);
        for (i, &g) in self.group_of.iter().enumerate() {
            let start = &mut self.starts[g as usize];
            self.order[*start as usize] = i as u32;
            *start += 1;
        }
        self.grouped.clear();
        (self.grouped).extend(self.order.iter().map(|&i| items[i as usize].clone()));
        std::mem::swap(items, &mut self.grouped);
    }
}
