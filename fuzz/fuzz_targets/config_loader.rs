//! `tailsift.yaml` as `run` and `config check` parse and check it, then turned into the
//! runtime settings the pipeline takes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tailsift::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(Path::new("fuzz.yaml"), text) {
        let _ = c.validate();
        let _ = c.budget_from(Path::new("/nonexistent"));
        let _ = c.kafka.settings_line();
        let _ = c.stress.settings();
        for t in &c.kafka.input_topics {
            let _ = c.encoding_of(t);
        }
    }
});
