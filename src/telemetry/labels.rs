//! Typed label values: the fixed words a label takes, one enum per label, so that a call site
//! cannot misspell one and the catalog lists exactly the values the code records.
//!
//! Each enum converts into a label value (`"outcome" => Outcome::Kept` in `metrics::counter!`)
//! and has [`as_str`](Outcome::as_str); its `NAMES` are the label's values in the catalog.

/// Defines a label-value enum: its variants with their strings, `ALL`, `NAMES`, `as_str`, and
/// the conversion into a `metrics` label value.
macro_rules! label_values {
    ($(
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $s:literal),+ $(,)? }
    )*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order of [`Self::NAMES`].
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The label's values, as exposed.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The label value, as exposed.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }
        }

        impl From<$name> for metrics::SharedString {
            fn from(v: $name) -> Self {
                metrics::SharedString::const_str(v.as_str())
            }
        }
    )*};
}

label_values! {
    /// `outcome` of a decision, a late span, a degraded-mode span or a logged decision.
    Outcome {
        /// Kept (forwarded).
        Kept = "kept",
        /// Dropped.
        Dropped = "dropped",
    }

    /// `kind` of `tailsift_rebalances_total`.
    RebalanceKind {
        /// Partitions assigned to this instance.
        Assign = "assign",
        /// Partitions taken away from this instance.
        Revoke = "revoke",
    }

    /// `result` of `tailsift_replay_head_reads_total`.
    HeadRead {
        /// Every head was read back.
        Complete = "complete",
        /// Cut short by time or memory.
        Incomplete = "incomplete",
    }

    /// `result` of `tailsift_decision_cache_lookups_total`.
    CacheLookup {
        /// The trace was decided before: a late span.
        Hit = "hit",
        /// Not in the cache: a new trace.
        Miss = "miss",
    }

    /// `cause` of `tailsift_decision_cache_evictions_total`.
    Eviction {
        /// Pushed out by `decision_cache.max_bytes`.
        Size = "size",
        /// Older than `decision_cache.ttl`.
        Expired = "expired",
    }

    /// `result` of `tailsift_decision_log_read_backs_total`: the label of
    /// [`crate::kafka::decision_log::read_back::Ended`] (a unit test holds the two together).
    ReadBack {
        /// Every decision of the last ttl was read.
        Complete = "complete",
        /// More decisions than the cache holds: the newest were read.
        CutShort = "cut_short",
        /// Timed out or failed.
        Incomplete = "incomplete",
    }

    /// `result` of the per-rule metrics.
    RuleResult {
        /// The rule's conditions held (a rate limit's fall-throughs too).
        Matched = "matched",
        /// The rule kept the trace.
        Kept = "kept",
        /// The rule dropped the trace.
        Dropped = "dropped",
    }

    /// `result` of `tailsift_rules_reloads_total`.
    Reload {
        /// The new rules are in use.
        Success = "success",
        /// Invalid rules; the old ones stay.
        Failure = "failure",
    }

    /// `kind` of the RED metrics: the span kinds that count as a request.
    RedKind {
        /// A SERVER span: a request handled.
        Server = "server",
        /// A CONSUMER span: a message processed.
        Consumer = "consumer",
    }

    /// `action` of `tailsift_redacted_attributes_total`: what was done to an attribute.
    RedactAction {
        /// Left out.
        Remove = "remove",
        /// Its value replaced by a fixed mask.
        Replace = "replace",
        /// Its value replaced by a keyed hash.
        Hash = "hash",
        /// Patterns inside its value replaced.
        Scrub = "scrub",
        /// Left out: not on its service's allowlist.
        Allowlist = "allowlist",
    }
}

impl Outcome {
    /// [`Outcome::Kept`] if `kept`, else [`Outcome::Dropped`].
    pub const fn kept(kept: bool) -> Self {
        if kept {
            Outcome::Kept
        } else {
            Outcome::Dropped
        }
    }
}

impl HeadRead {
    /// [`HeadRead::Complete`] if `complete`, else [`HeadRead::Incomplete`].
    pub const fn complete(complete: bool) -> Self {
        if complete {
            HeadRead::Complete
        } else {
            HeadRead::Incomplete
        }
    }
}
