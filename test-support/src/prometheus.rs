//! `/metrics` as Prometheus reads it: parsed by the `prometheus_client`
//! Python package, the Prometheus project's own client (`cargo xtask test`
//! installs it), in the classic or the OpenMetrics format.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

/// One sample of `/metrics`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub family: String,
    /// The family's type: gauge, counter, ...
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses metrics text; panics on a parse error, with the parser's message.
pub fn parse(text: &str, openmetrics: bool) -> Vec<Sample> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(if openmetrics {
            "openmetrics"
        } else {
            "classic"
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (install prometheus-client with `cargo xtask test`)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("writing to the parser");
    let out = child.wait_with_output().expect("the parser's output");
    assert!(
        out.status.success(),
        "Prometheus parser refused the text:\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("the parser prints JSON");
            let text = |key: &str| v[key].as_str().expect("a string field").to_string();
            Sample {
                family: text("family"),
                kind: text("type"),
                name: text("name"),
                labels: v["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
                value: v["value"].as_f64().expect("a number"),
            }
        })
        .collect()
}

/// The value of sample `name` whose labels include all of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}
