//! Durations on the command line: humantime's `500ms`, `1s`, `5m`, `1h 30m`,
//! or a plain integer meaning seconds. Parsing only; bounds belong to the
//! flag that uses it.
use std::time::Duration;

/// `500ms`, `1s`, `2m 30s` (see [`humantime::parse_duration`]) or a plain
/// number of seconds (`5`). Errors are one line, fit for a clap value parser.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("invalid duration `{text}`: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration `{text}`: {e} (examples: 500ms, 1s, 5m, or 10 for seconds)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_and_plain_seconds() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("1s", Duration::from_secs(1)),
            ("5m", Duration::from_secs(300)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2m30s", Duration::from_secs(150)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("7", Duration::from_secs(7)),
            (" 10 ", Duration::from_secs(10)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration_with_one_line() {
        for text in [
            "",
            "  ",
            "abc",
            "1.5",
            "-1",
            "5 parsecs",
            "s",
            "1x",
            "99999999999999999999",
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.starts_with("invalid duration"), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
    }
}
