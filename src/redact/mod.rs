//! Redaction: sensitive attributes of forwarded spans removed, masked, hashed or scrubbed on
//! the way out, at field level. The rules decide on the original values; only what leaves is
//! redacted.
//!
//! Declared in `redaction.yaml` (or `.yml`) beside the rule files, loaded, validated and
//! hot-reloaded with them: one version, one swap, so a kept trace is never judged by new rules
//! and redacted by old ones, and a bad redaction file keeps the old rules *and* redaction.
//!
//! - `config`: the file walked by hand (every mistake reported with file:line, entry, key,
//!   did-you-mean and what is accepted), compiled into [`Redaction`]: matchers built once.
//! - `scrub`: the patterns scrubbed inside values (SQL literals, emails, card numbers).
//! - `rewrite`: the field-level rewrite of spans, their events and links, and resources.
//! - `read`: reading a message's fields and an attribute's key and value, with shortcuts.
//! - `memo`: the keyed hashes of `action: hash`, remembered per thread.
//! - [`cases`]: what `rules test` asserts of a forwarded span.

pub mod cases;
mod config;
mod memo;
#[cfg(test)]
mod prefilter_tests;
mod read;
mod rewrite;
mod scrub;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::Hmac;
use sha2::Sha256;

pub use config::{is_redaction_file, load, parse};
pub use rewrite::{Chunk, Tally, Unparsable};

use crate::telemetry as m;
use crate::telemetry::labels::RedactAction;

/// Which attributes an entry or allowlist names: exact keys, key prefixes, a regex.
#[derive(Debug, Clone, Default)]
struct Keys {
    exact: Vec<Box<[u8]>>,
    prefixes: Vec<Box<[u8]>>,
    regex: Option<regex::bytes::Regex>,
}

impl Keys {
    #[inline]
    fn matches(&self, key: &[u8]) -> bool {
        self.exact.iter().any(|k| **k == *key) || self.matches_pattern(key)
    }

    /// By prefix or regex only.
    #[inline]
    fn matches_pattern(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
            || self.regex.as_ref().is_some_and(|r| r.is_match(key))
    }
}

/// Entries allowed in one file: their set fits a `u64` bitmask.
pub const MAX_ENTRIES: usize = 64;

/// The entries' keys compiled for the hot path: most attributes of most spans match nothing,
/// so the common answer must be cheap. An attribute's key is looked up once in a hash map of
/// the exact keys (after a check on its length), and only the entries with prefixes or a
/// regex are tried one by one. Measured with five entries on the demo traffic: the per-entry
/// comparisons this replaces were the largest part of redaction's cost then.
#[derive(Debug, Clone, Default)]
struct Matcher {
    /// Bit `n` set: some exact key is `n` bytes long (keys of 64 bytes or more: bit 63).
    lengths: u64,
    /// Exact key -> the entries naming it.
    exact: std::collections::HashMap<Box<[u8]>, u64, foldhash::fast::FixedState>,
    /// The same, by length (keys of 64 bytes or more: the last), when no length has more than
    /// [`FEW_KEYS`]: then a key is compared with the one or two of its length, first and last
    /// byte before the rest, which cost a third of hashing it (BENCHMARKS.md, "Redaction").
    /// Empty: look keys up in `exact`.
    by_length: Vec<Vec<(Box<[u8]>, u64)>>,
    /// The entries with a prefix or a regex.
    patterns: u64,
    /// The entries with a regex: only a walk can tell whether a span holds a key they match.
    regexes: u64,
    /// The entries for every service (no `services:`): active without a look at the span's.
    unscoped: u64,
    /// Finds the bytes of any exact key or key prefix anywhere in a span (see
    /// [`Matcher::may_match`]); `None` when there are none, or too many for it.
    prefilter: Option<aho_corasick::packed::Searcher>,
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// Exact keys of one length compared one by one, at most; with more, they are hashed.
const FEW_KEYS: usize = 4;

impl Matcher {
    fn new(entries: &[Entry]) -> Self {
        let mut m = Matcher::default();
        let mut literals: Vec<&[u8]> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            for k in &e.keys.exact {
                m.lengths |= length_bit(k.len());
                *m.exact.entry(k.clone()).or_default() |= 1 << i;
                literals.push(k);
            }
            literals.extend(e.keys.prefixes.iter().map(|p| &**p));
            if !e.keys.prefixes.is_empty() || e.keys.regex.is_some() {
                m.patterns |= 1 << i;
            }
            if e.keys.regex.is_some() {
                m.regexes |= 1 << i;
            }
            if e.services.is_none() {
                m.unscoped |= 1 << i;
            }
        }
        let mut by_length: Vec<Vec<(Box<[u8]>, u64)>> = vec![Vec::new(); 65];
        for (k, entries) in &m.exact {
            by_length[k.len().min(64)].push((k.clone(), *entries));
        }
        if by_length.iter().all(|keys| keys.len() <= FEW_KEYS) {
            m.by_length = by_length;
        }
        // The packed searcher (Teddy: SIMD over 16 or 32 bytes at a time), not a full
        // Aho-Corasick automaton: on these keys the automaton's own prefilter (one "rare" byte
        // at a time) stopped at nearly every byte, and cost 13 000 instructions per span, seven
        // times the walk it saved; Teddy costs about 500 (BENCHMARKS.md). It is not built for
        // more than 128 literals, nor without SSSE3: every span is walked then.
        m.prefilter = aho_corasick::packed::Config::new()
            .builder()
            .extend(&literals)
            .build();
        m
    }

    /// Whether `span` (or a context's resource fields) may hold an attribute that one of
    /// `active` names; `false` proves that none can, and the span is not walked. Searching a span's bytes costs about a quarter
    /// of walking its fields, so this pays as soon as more than a quarter of the kept spans name
    /// no key of the file: over half do in the demo traffic, and nearly all do for a rarely
    /// set key (BENCHMARKS.md).
    ///
    /// Why this never misses: a protobuf string is one contiguous run of the message's
    /// bytes, so an attribute whose key is `user.id`, or starts with a prefix, has those
    /// bytes somewhere in the span, whatever its tag and length prefix look like (a length
    /// written in two bytes, or a padded varint, is as valid to every decoder downstream as
    /// the usual one byte). Searching the key alone, not the usual `0x0a, length, key`, is
    /// what makes that hold. A regex entry has no such literal: with one active, every span
    /// is walked. A span proved clean is not parsed either, so one whose attributes do not
    /// parse leaves as it arrived when it holds no named key (it holds nothing to redact),
    /// and is refused when it does.
    #[inline]
    fn may_match(&self, active: u64, span: &[u8]) -> bool {
        self.searcher(active)
            .is_none_or(|search| search.find(span).is_some())
    }

    /// The search that proves bytes clean for `active`; `None`: nothing can be proved so, every
    /// span is walked (a regex entry is active, or there is no prefilter).
    #[inline]
    fn searcher(&self, active: u64) -> Option<&aho_corasick::packed::Searcher> {
        self.prefilter
            .as_ref()
            .filter(|_| self.regexes & active == 0)
    }

    /// The entries naming `key` exactly.
    #[inline]
    fn exact_entries(&self, key: &[u8]) -> u64 {
        let Some(keys) = self.by_length.get(key.len().min(64)) else {
            return self.exact.get(key).copied().unwrap_or(0);
        };
        // Keys of the same length mostly differ in their first or last byte.
        let ends = |k: &[u8]| (k.first().copied(), k.last().copied());
        keys.iter()
            .find(|(k, _)| ends(k) == ends(key) && **k == *key)
            .map_or(0, |(_, entries)| *entries)
    }

    /// The entries among `active` that match `key`.
    #[inline]
    fn matching(&self, entries: &[Entry], active: u64, key: &[u8]) -> u64 {
        let mut hit = 0;
        if self.lengths & length_bit(key.len()) != 0 {
            hit |= self.exact_entries(key);
        }
        let mut patterns = self.patterns & active & !hit;
        while patterns != 0 {
            let i = patterns.trailing_zeros() as usize;
            patterns &= patterns - 1;
            if entries[i].keys.matches_pattern(key) {
                hit |= 1 << i;
            }
        }
        hit & active
    }
}

/// What an entry does to the value of a matching attribute.
#[derive(Debug, Clone)]
enum Action {
    /// The attribute is left out.
    Remove,
    /// The value becomes this string.
    Replace(Box<[u8]>),
    /// The value becomes the hex HMAC-SHA256 of its text under the hash key.
    Hash,
    /// Patterns inside a string value are replaced.
    Scrub(scrub::Scrub),
}

impl Action {
    fn label(&self) -> RedactAction {
        match self {
            Action::Remove => RedactAction::Remove,
            Action::Replace(_) => RedactAction::Replace,
            Action::Hash => RedactAction::Hash,
            Action::Scrub(_) => RedactAction::Scrub,
        }
    }
}

/// One entry of `attributes:`: which keys, optionally which services, and the action.
#[derive(Debug, Clone)]
struct Entry {
    name: Arc<str>,
    keys: Keys,
    /// `None`: every service.
    services: Option<Vec<Box<[u8]>>>,
    action: Action,
}

/// One entry of `allowlists:`: for these services, only these keys survive.
#[derive(Debug, Clone)]
struct Allowlist {
    name: Arc<str>,
    services: Vec<Box<[u8]>>,
    keys: Keys,
}

fn serves(services: &[Box<[u8]>], service: Option<&[u8]>) -> bool {
    service.is_some_and(|s| services.iter().any(|x| **x == *s))
}

/// The compiled redaction of a rules directory: immutable but for its counters; a reload
/// builds a new one and swaps it in with the rules.
#[derive(Debug)]
pub struct Redaction {
    /// The file it was read from, as errors name it.
    file: Arc<str>,
    /// Unique per compiled configuration (so per hash key): what is remembered per thread is
    /// remembered for one generation only.
    generation: u64,
    entries: Vec<Entry>,
    matcher: Matcher,
    allowlists: Vec<Allowlist>,
    /// The HMAC keyed once; cloned per hashed value (keying costs two compressions).
    hasher: Option<Hmac<Sha256>>,
    /// Attributes redacted since the last flush: one counter per entry, then per allowlist.
    counts: Vec<AtomicU64>,
    /// Spans (and resources) rewritten, and spans refused, since the last flush.
    rewritten: AtomicU64,
    refused: AtomicU64,
    /// Resources already redacted, by content (see `rewrite`).
    resources: std::sync::Mutex<
        std::collections::HashMap<Box<[u8]>, rewrite::Remembered, foldhash::fast::FixedState>,
    >,
}

impl Clone for Redaction {
    /// The same configuration with fresh counters.
    fn clone(&self) -> Self {
        Redaction::new(
            self.file.clone(),
            self.entries.clone(),
            self.allowlists.clone(),
            self.hasher.clone(),
        )
    }
}

impl Redaction {
    fn new(
        file: Arc<str>,
        entries: Vec<Entry>,
        allowlists: Vec<Allowlist>,
        hasher: Option<Hmac<Sha256>>,
    ) -> Self {
        let counts = (0..entries.len() + allowlists.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        Redaction {
            file,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            matcher: Matcher::new(&entries),
            entries,
            allowlists,
            hasher,
            counts,
            rewritten: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resources: Default::default(),
        }
    }

    /// Loads `redaction.yaml` from a rules directory, if it has one (see [`load`]).
    pub fn load_dir(dir: &Path) -> Result<Option<Self>, crate::rules::RulesError> {
        let files = crate::rules::read_dir(dir).map_err(crate::rules::RulesError)?;
        load(&files).map_err(crate::rules::RulesError)
    }

    /// The file it was read from (`rules check` names it).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// How many entries (`attributes:`) and allowlists it has.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.allowlists.len())
    }

    /// The names of the entries and allowlists, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|e| &*e.name)
            .chain(self.allowlists.iter().map(|a| &*a.name))
    }

    /// Adds one forward's tally to the counters (once per forward, not per attribute).
    pub fn record(&self, tally: &Tally) {
        for (c, n) in self.counts.iter().zip(&tally.attributes) {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Relaxed);
            }
        }
        if tally.rewritten > 0 {
            self.rewritten.fetch_add(tally.rewritten, Ordering::Relaxed);
        }
        if tally.refused > 0 {
            self.refused.fetch_add(tally.refused, Ordering::Relaxed);
        }
    }

    /// The labels of the attribute counters, in the order of `counts`: each entry's name and
    /// action, then each allowlist's.
    fn labels(&self) -> impl Iterator<Item = (&Arc<str>, RedactAction)> {
        self.entries
            .iter()
            .map(|e| (&e.name, e.action.label()))
            .chain(
                self.allowlists
                    .iter()
                    .map(|a| (&a.name, RedactAction::Allowlist)),
            )
    }

    /// Registers every entry's and allowlist's counter at zero (at start and on reload, as
    /// the rules' are), so that its series exists before the first redaction.
    pub fn register_metrics(&self) {
        for (name, action) in self.labels() {
            metrics::counter!(m::REDACTED_ATTRIBUTES, "action" => action, "redaction" => name.to_string())
                .increment(0);
        }
    }

    /// Adds the counts gathered since the last flush to the metrics, in bulk (per decider
    /// tick, with the rules' counts).
    pub fn flush_metrics(&self) {
        for (c, (name, action)) in self.counts.iter().zip(self.labels()) {
            let n = c.swap(0, Ordering::Relaxed);
            if n > 0 {
                metrics::counter!(m::REDACTED_ATTRIBUTES, "action" => action, "redaction" => name.to_string())
                    .increment(n);
            }
        }
        let n = self.rewritten.swap(0, Ordering::Relaxed);
        if n > 0 {
            metrics::counter!(m::REDACTION_REWRITTEN).increment(n);
        }
        let n = self.refused.swap(0, Ordering::Relaxed);
        if n > 0 {
            metrics::counter!(m::REDACTION_REFUSED).increment(n);
        }
    }
}
