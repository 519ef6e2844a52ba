//! Rule tests: case files describing traces and the outcome each should get, run like a test
//! suite (`tailsift rules test DIR CASES...`) and explained (`tailsift rules explain`).
//!
//! A case's trace is built as OTLP protobuf, decoded and buffered by the same code the
//! pipeline runs, so a case sees exactly what a live trace would.
//!
//! - `format`: the case-file format, and reading a file.
//! - `build`: a case's trace as OTLP requests.
//! - `run`: running cases against a rule set (`rules test`) and explaining them.
//! - `report`: what a run found, and how outcomes are shown.

mod build;
mod format;
mod report;
mod run;

pub use format::{
    load, AttrValue, Case, CaseError, CaseEvent, CaseLink, CaseScope, CaseSpan, Expect, Expected,
    When,
};
pub use report::{show_when, Report};
pub use run::{early_at, explain_file, run, with_trace};
