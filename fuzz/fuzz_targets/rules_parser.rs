//! A rules directory of one file holding the input's bytes (UTF-8 or not): loaded, checked,
//! and, when it loads, every rule's outcome described. An error is fine; a panic, an abort,
//! a hang or unbounded memory is a finding.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tailsift::rules::{parse_files, RuleSet};

fuzz_target!(|data: &[u8]| {
    let files = [(PathBuf::from("fuzz.yaml"), Ok(data.to_vec()))];
    if let Ok(rules) = parse_files(Path::new("fuzz"), &files) {
        for r in &rules {
            let _ = r.outcome.describe();
        }
        let _ = RuleSet::new(rules, Some("salt"));
    }
});
