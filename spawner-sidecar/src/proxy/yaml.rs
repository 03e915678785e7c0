//! ynetd's YAML configuration file, read unchanged:
//!
//! ```yaml
//! services:
//!   - proxy: {":5000": "localhost:5001"}
//!     command: [run, some, service]
//!     auto_start: true
//!     stop_after: 10m
//!     stop_signal: INT
//!     timeout: 10s
//!     wait_after_start: 2s
//! ```
//!
//! Unlike ynetd (Go's yaml.v2 drops what it does not know), an unknown key
//! is an error: a misspelt `stop_after` would otherwise leave a service
//! running forever. Keys of ours beside ynetd's: `name` (for the status
//! page and its URLs), `stop_timeout`, `min_online`, `allow`, `deny`,
//! `wake_on_data`, `idle_action`, `start`, `stop`, `check_url`. Parsing into values only; [`super::spec`] validates.
//!
//! The crate is `serde_norway`: `serde_yaml` is deprecated (archived in
//! 2024, RUSTSEC-2024-0320), `serde_yml` carries an unsoundness advisory
//! (RUSTSEC-2025-0068); `serde_norway` and `serde_yaml_ng` are the
//! maintained forks with the same API, and `serde_norway` also maintains
//! its libyaml port (`unsafe-libyaml-norway`). Errors name the key path and
//! line, which is what a one-line config error needs.
use std::{fmt, path::Path};

use serde::{Deserialize, Deserializer, de};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub services: Vec<Service>,
}

/// One entry of `services:`; strings are parsed by [`super::spec`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub auto_start: bool,
    /// Listen address -> target, in file order.
    #[serde(deserialize_with = "ordered_pairs")]
    pub proxy: Vec<(String, String)>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub stop_after: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub stop_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub wait_after_start: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub min_online: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub wake_on_data: bool,
    #[serde(default)]
    pub idle_action: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub stop: Option<String>,
    #[serde(default)]
    pub check_url: Option<String>,
}

/// Reads and parses `path`; the error is one line naming the file.
pub fn read(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<File, String> {
    serde_norway::from_str(text).map_err(|e| e.to_string().replace('\n', "; "))
}

/// A YAML mapping of strings, keeping its order (a `HashMap` would lose it
/// and a `BTreeMap` would sort it).
fn ordered_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of listen address to target address")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry::<String, String>()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    d.deserialize_map(Pairs)
}

/// A duration as text: Go's `10m` or a bare number of seconds. A visitor,
/// not an untagged enum: the error must come from inside the parser to
/// carry the key's path (`services[0].timeout`).
fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 10s, 5m or a number of seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in ynetd's README, verbatim.
    pub const README_EXAMPLE: &str = r#"---
services:
  -
    auto_start: true
    proxy:
      ":5000": "localhost:5001"
      "localhost:6543": "localhost:7654"
    command:
      - run
      - some
      - service
    stop_after: 10m
    stop_signal: INT
    timeout: 10s
    wait_after_start: 2s
"#;

    #[test]
    fn reads_the_readme_example() {
        let file = parse(README_EXAMPLE).expect("parses");
        let s = &file.services[0];
        assert!(s.auto_start);
        assert_eq!(
            s.proxy,
            [
                (":5000".to_string(), "localhost:5001".to_string()),
                ("localhost:6543".to_string(), "localhost:7654".to_string())
            ]
        );
        assert_eq!(s.command, ["run", "some", "service"]);
        assert_eq!(s.stop_after.as_deref(), Some("10m"));
        assert_eq!(s.stop_signal.as_deref(), Some("INT"));
        assert_eq!(s.wait_after_start.as_deref(), Some("2s"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_one_line_naming_them() {
        let e = parse("services:\n  - proxy: {':1': 'a:2'}\n    stop_afer: 1s\n").expect_err("key");
        assert!(e.contains("stop_afer") && !e.contains('\n'), "{e}");
        let e =
            parse("services:\n  - proxy: {':1': 'a:2'}\n    auto_start: [1]\n").expect_err("type");
        assert!(e.contains("auto_start"), "{e}");
        let e = parse("services:\n  - proxy: [':1']\n").expect_err("proxy list");
        assert!(e.contains("proxy"), "{e}");
        let e = parse("service:\n  - proxy: {':1': 'a:2'}\n").expect_err("top key");
        assert!(e.contains("service"), "{e}");
        let e = parse("services:\n  - command: [x]\n").expect_err("no proxy");
        assert!(e.contains("proxy"), "{e}");
        let e = parse("services:\n  - proxy: {':1': 'a:2'}\n    timeout: [1]\n").expect_err("dur");
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn a_bare_number_is_seconds() {
        let f = parse("services:\n  - proxy: {':1': 'a:2'}\n    timeout: 30\n").expect("ok");
        assert_eq!(f.services[0].timeout.as_deref(), Some("30"));
    }
}
