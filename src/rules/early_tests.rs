//! Which rules can decide early (`early.rs`): what the form of a condition lets be known before
//! the trace completes, and what `rules check` says holds an early rule back.

use super::seen_tests::{set_of, EARLY};
use super::*;

#[test]
fn rules_check_says_what_holds_an_early_rule_back() {
    let set = set_of(EARLY);
    assert_eq!(
        early_notes(set.rules()),
        ["early: `errors` decides once its conditions hold and the rules before it are sure not \
          to match: `health` (until the root span arrives)"]
    );
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());

    let held = set_of(
        "rules:
  - name: slow
    conditions: trace.duration > 5s
    outcome: keep
  - name: tiny
    conditions: trace.span_count < 2
    outcome: drop
  - name: errors
    conditions: trace.error = true
    outcome: keep
    early: true
  - name: rest
    outcome: drop
",
    );
    let notes = early_notes(held.rules());
    assert!(
        notes[0].contains("`slow` (until the trace completes), `tiny` (until a span rules it out)"),
        "{notes:?}"
    );
    let w = held.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].field, "early");
    assert!(
        w[0].message.contains("decides no trace early: `slow`"),
        "{}",
        w[0].message
    );
    assert!(!w[0].message.contains("`tiny`"), "{}", w[0].message);
}

#[test]
fn what_the_form_of_a_condition_lets_be_known_early() {
    let c = |text: &str| {
        let set = set_of(&format!(
            "rules:\n  - name: a\n    conditions: {text}\n    outcome: drop\n  - name: rest\n    outcome: keep\n"
        ));
        knowable(set.rules()[0].condition.as_ref().unwrap())
    };
    use Known::*;
    assert_eq!(c("span.service = payment"), (Arrival, Completion));
    assert_eq!(c("{ not: span.service = payment }"), (Completion, Arrival));
    assert_eq!(c("{ every: span.kind = internal }"), (Completion, Arrival));
    assert_eq!(c("root.service = gateway"), (Root, Root));
    assert_eq!(c("trace.duration < 1s"), (Completion, Arrival));
    assert_eq!(c("trace.error = true"), (Arrival, Completion));
    assert_eq!(c("trace.error = false"), (Completion, Arrival));
    assert_eq!(c("count(span.kind = client) >= 3"), (Arrival, Completion));
    assert_eq!(
        c("[root.service = gateway, trace.span_count > 10]"),
        (Root, Root)
    );
    assert_eq!(
        c("{ any: [root.service = gateway, trace.span_count > 10] }"),
        (Arrival, Completion)
    );
}
