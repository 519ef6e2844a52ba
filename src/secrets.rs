//! Secrets in the librdkafka property maps: references resolved at load, values redacted in
//! anything that is printed.
//!
//! A property value written exactly `${env:NAME}` is replaced by the environment variable
//! `NAME`; `${file:/path}` by the file's content (one trailing newline removed). A literal value
//! that starts with `${` is written `$${...}`. Whatever came from a reference, and every
//! property whose name marks it as secret (passwords, secrets, private keys, JAAS and OAuth
//! configs), is printed as `<redacted>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a redacted value is printed as.
pub const REDACTED: &str = "<redacted>";

/// Resolves one property value. `Ok(None)`: a plain value, kept as is.
pub fn resolve(
    value: &str,
    env: &impl Fn(&str) -> Option<String>,
    read: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Option<String>, String> {
    if let Some(literal) = value.strip_prefix("$${") {
        return Ok(Some(format!("${{{literal}")));
    }
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(None);
    };
    let (kind, arg) = inner.split_once(':').ok_or_else(|| {
        format!("`{value}` is not a reference: write ${{env:NAME}} or ${{file:/path}}")
    })?;
    match kind {
        "env" if !arg.is_empty() => match env(arg) {
            Some(v) => Ok(Some(v)),
            None => Err(format!("environment variable `{arg}` is not set")),
        },
        "file" if !arg.is_empty() => match read(Path::new(arg)) {
            Ok(mut v) => {
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                Ok(Some(v))
            }
            Err(e) => Err(format!("cannot read secret file `{arg}`: {e}")),
        },
        "env" | "file" => Err(format!("`{value}` names no {kind}")),
        other => Err(format!(
            "unknown reference `{other}` in `{value}` (supported: env, file)"
        )),
    }
}

/// Whether a librdkafka property holds a secret by its name.
pub fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "ssl_key",
        "token",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A copy of `props` fit for logs: secret values replaced by [`REDACTED`].
pub fn redact(
    props: &BTreeMap<String, String>,
    resolved: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| {
            let v = if is_sensitive(k) || resolved.contains(k) {
                REDACTED.to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KAFKA_PASSWORD").then(|| "s3cret".to_string())
    }

    fn read(p: &Path) -> std::io::Result<String> {
        match p.to_str() {
            Some("/run/secrets/pw") => Ok("from-file\n".into()),
            Some("/run/secrets/crlf") => Ok("crlf\r\n".into()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            )),
        }
    }

    #[test]
    fn resolves_env_and_file_references_and_leaves_plain_values() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            ("${env:KAFKA_PASSWORD}", Ok(Some("s3cret"))),
            ("${file:/run/secrets/pw}", Ok(Some("from-file"))),
            ("${file:/run/secrets/crlf}", Ok(Some("crlf"))),
            ("SASL_SSL", Ok(None)),
            ("pre${env:KAFKA_PASSWORD}", Ok(None)),
            ("$${env:LITERAL}", Ok(Some("${env:LITERAL}"))),
            (
                "${env:MISSING}",
                Err("environment variable `MISSING` is not set"),
            ),
            ("${file:/nope}", Err("cannot read secret file `/nope`")),
            ("${vault:x}", Err("unknown reference `vault`")),
            ("${env:}", Err("names no env")),
            (
                "${KAFKA_PASSWORD}",
                Err("write ${env:NAME} or ${file:/path}"),
            ),
        ];
        for (value, want) in cases {
            let got = resolve(value, &env, &read);
            match want {
                Ok(w) => assert_eq!(got.as_ref().map(|o| o.as_deref()), Ok(*w), "{value}"),
                Err(w) => {
                    let e = got.expect_err(value);
                    assert!(e.contains(w), "{value}: {e:?} should mention {w:?}");
                    assert!(!e.contains("s3cret"));
                }
            }
        }
    }

    #[test]
    fn redacts_resolved_values_and_secret_names_only() {
        let props: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "tailsift"),
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "k"),
            ("sasl.oauthbearer.client.secret", "c"),
            ("sasl.jaas.config", "j"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("client.id", "from-a-reference"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let resolved = BTreeSet::from(["client.id".to_string()]);
        let r = redact(&props, &resolved);
        for k in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "client.id",
        ] {
            assert_eq!(r[k], REDACTED, "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "ssl.ca.location",
        ] {
            assert_eq!(r[k], props[k], "{k}");
        }
    }
}
