//! Signal names as ynetd takes them for `stop_signal` (`TERM`, `INT`, ...),
//! with or without the `SIG` prefix, or a number.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub libc::c_int);

const NAMES: &[(&str, libc::c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("STOP", libc::SIGSTOP),
    ("CONT", libc::SIGCONT),
    ("WINCH", libc::SIGWINCH),
];

impl Signal {
    pub const TERM: Self = Self(libc::SIGTERM);
    pub const KILL: Self = Self(libc::SIGKILL);
    pub const STOP: Self = Self(libc::SIGSTOP);
    pub const CONT: Self = Self(libc::SIGCONT);

    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Ok(n) = trimmed.parse::<libc::c_int>() {
            if (1..=64).contains(&n) {
                return Ok(Self(n));
            }
            return Err(format!("signal `{text}`: numbers go from 1 to 64"));
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| Self(*s))
            .ok_or_else(|| {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown signal `{text}` (known: {}, or a number)",
                    known.join(", ")
                )
            })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|(_, s)| *s == self.0) {
            Some((name, _)) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_prefixes_and_numbers() {
        assert_eq!(Signal::parse("TERM"), Ok(Signal(libc::SIGTERM)));
        assert_eq!(Signal::parse("int"), Ok(Signal(libc::SIGINT)));
        assert_eq!(Signal::parse("SIGHUP"), Ok(Signal(libc::SIGHUP)));
        assert_eq!(Signal::parse("9"), Ok(Signal(libc::SIGKILL)));
        assert!(Signal::parse("TERMINATE").is_err());
        assert!(Signal::parse("0").is_err());
        assert_eq!(Signal(libc::SIGINT).to_string(), "SIGINT");
    }
}
