//! The Helm chart's values.schema.json accepts every key of `tailsift.yaml` that chart users may
//! set. The schema rejects unknown keys (a typo fails `helm install`, not the pods), so a key
//! added to the configuration (and, by the team's rule, to tailsift.example.yaml) must be added
//! there too, or listed here as set by the chart itself.

use std::path::Path;

use serde_json::Value as Json;

/// Keys the chart sets from its own values; the schema must not accept them under `config`.
const CHART_MANAGED: &[&str] = &[
    "kafka.group_instance_id",
    "rules.dir",
    "http",
    "buffer.max_bytes",
    "shutdown_timeout",
];

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Collects the key paths of the example config; a map whose schema node lists no properties
/// (librdkafka property maps) is a leaf.
fn walk(example: &Json, schema: Option<&Json>, prefix: &str, missing: &mut Vec<String>) {
    let Json::Object(map) = example else { return };
    for (key, value) in map {
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        if CHART_MANAGED.contains(&path.as_str()) {
            continue;
        }
        let node = schema
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(key));
        match node {
            None => missing.push(path),
            Some(node) if node.get("properties").is_some() => {
                walk(value, Some(node), &path, missing)
            }
            Some(_) => {}
        }
    }
}

#[test]
fn chart_schema_accepts_every_key_of_the_example_config_except_those_the_chart_sets() {
    let example: Json = tailsift::yaml::from_str(&read("tailsift.example.yaml")).unwrap();
    let schema: Json = serde_json::from_str(&read("helm/tailsift/values.schema.json")).unwrap();
    let config = &schema["properties"]["config"];
    assert!(
        config.get("properties").is_some(),
        "the schema describes `config`"
    );

    let mut missing = Vec::new();
    walk(&example, Some(config), "", &mut missing);
    assert!(
        missing.is_empty(),
        "tailsift.example.yaml has {missing:?}, which helm/tailsift/values.schema.json does not \
         accept under `config`: add each there (with its type), or to CHART_MANAGED in this test \
         if the chart sets it"
    );

    for managed in CHART_MANAGED {
        let mut node = config;
        let mut accepted = true;
        for part in managed.split('.') {
            match node.get("properties").and_then(|p| p.get(part)) {
                Some(next) => node = next,
                None => {
                    accepted = false;
                    break;
                }
            }
        }
        assert!(
            !accepted,
            "`{managed}` is set by the chart; the schema must reject it under `config`"
        );
    }
}
