//! Redaction tests: the config's errors as a table, the rewrite on built spans, and the
//! property that redacted output is valid OTLP and unmatched spans leave untouched.
