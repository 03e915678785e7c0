//! ynetd's address forms, parsed into values; nothing here opens a socket.
//!
//! Listen side: `host:port`, `:port` (every address), `[v6]:port`,
//! `interface:NAME:port` (every address of a named interface).
//! Target side: `host:port`, `[v6]:port`, or `exec:/full/path` (a program
//! that prints the `host:port` to use for one connection).
use std::{fmt, path::PathBuf};

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `:port`: every local address, IPv4 and IPv6.
    Any { port: u16 },
    /// `host:port` or `[v6]:port`; a name is resolved when binding.
    Host { host: String, port: u16 },
    /// `interface:NAME:port`: every address the interface has at start-up.
    Interface { name: String, port: u16 },
}

/// Where a connection is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`; a name is resolved at each dial, as the backend may move.
    Host { host: String, port: u16 },
    /// `exec:/full/path`: run per connection with the local and remote
    /// addresses as arguments; its stdout is the `host:port` to dial.
    Exec { program: PathBuf },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any { port } => write!(f, ":{port}"),
            Self::Host { host, port } => write!(f, "{}", join(host, *port)),
            Self::Interface { name, port } => write!(f, "interface:{name}:{port}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { host, port } => write!(f, "{}", join(host, *port)),
            Self::Exec { program } => write!(f, "exec:{}", program.display()),
        }
    }
}

/// `host:port`, with brackets around an IPv6 literal.
pub fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn port(text: &str, whole: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("address `{whole}`: `{text}` is not a port number (0-65535)"))
}

/// Splits `host:port` / `[v6]:port` / `:port`; the host may be empty.
fn host_port(text: &str) -> Result<(String, u16), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("address `{text}`: `[` without `]`"))?;
        let tail = tail
            .strip_prefix(':')
            .ok_or_else(|| format!("address `{text}`: expected `[v6]:port`"))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("address `{text}`: `{host}` is not an IPv6 address"))?;
        return Ok((host.to_string(), port(tail, text)?));
    }
    let (host, p) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("address `{text}`: expected host:port"))?;
    if host.contains(':') {
        return Err(format!(
            "address `{text}`: an IPv6 address needs brackets, as in [::1]:8080"
        ));
    }
    Ok((host.to_string(), port(p, text)?))
}

impl Listen {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("interface:") {
            let (name, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("address `{text}`: expected interface:NAME:port"))?;
            if name.is_empty() {
                return Err(format!("address `{text}`: empty interface name"));
            }
            return Ok(Self::Interface {
                name: name.to_string(),
                port: port(p, text)?,
            });
        }
        let (host, port) = host_port(text)?;
        Ok(if host.is_empty() {
            Self::Any { port }
        } else {
            Self::Host { host, port }
        })
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::Any { port } | Self::Host { port, .. } | Self::Interface { port, .. } => *port,
        }
    }
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("exec:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "address `{text}`: exec: needs a full path (starting with /)"
                ));
            }
            return Ok(Self::Exec {
                program: PathBuf::from(path),
            });
        }
        let (host, port) = host_port(text)?;
        if host.is_empty() {
            return Err(format!("address `{text}`: a target needs a host"));
        }
        if port == 0 {
            return Err(format!(
                "address `{text}`: a target needs a port other than 0"
            ));
        }
        Ok(Self::Host { host, port })
    }
}

/// One `LISTEN TARGET` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub listen: Listen,
    pub target: Target,
}

/// ynetd's `-proxy` value: `LISTEN TARGET [LISTEN TARGET ...]` split by
/// `sep` (a space unless `-proxy-sep` says otherwise). Runs of the
/// separator count as one, so aligned columns work.
pub fn parse_pairs(spec: &str, sep: &str) -> Result<Vec<Route>, String> {
    if sep.is_empty() {
        return Err("-proxy-sep: the separator is empty".into());
    }
    let words: Vec<&str> = spec
        .split(sep)
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!(
            "-proxy `{spec}`: expected pairs of addresses, \"LISTEN TARGET [LISTEN TARGET ...]\""
        ));
    }
    words
        .chunks(2)
        .map(|pair| {
            Ok(Route {
                listen: Listen::parse(pair[0])?,
                target: Target::parse(pair[1])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str, port: u16) -> Listen {
        Listen::Host {
            host: h.into(),
            port,
        }
    }

    #[test]
    fn parses_every_listen_form() {
        assert_eq!(Listen::parse(":5000"), Ok(Listen::Any { port: 5000 }));
        assert_eq!(Listen::parse("localhost:6543"), Ok(host("localhost", 6543)));
        assert_eq!(Listen::parse("127.0.0.1:1"), Ok(host("127.0.0.1", 1)));
        assert_eq!(Listen::parse("[::1]:8080"), Ok(host("::1", 8080)));
        assert_eq!(
            Listen::parse("interface:eth0:5001"),
            Ok(Listen::Interface {
                name: "eth0".into(),
                port: 5001
            })
        );
        assert_eq!(
            Listen::parse("[::1]:8080").map(|l| l.to_string()),
            Ok("[::1]:8080".into())
        );
    }

    #[test]
    fn rejects_bad_addresses_naming_them() {
        for bad in [
            "",
            "5000",
            "host:",
            "host:port",
            "host:70000",
            "::1:80",
            "[::1]80",
            "[zz]:80",
            "interface::80",
            "interface:eth0",
        ] {
            let e = Listen::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        for bad in [":80", "exec:bin/x", "localhost:0", "x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("exec:/usr/bin/addr"),
            Ok(Target::Exec {
                program: "/usr/bin/addr".into()
            })
        );
        let t = Target::parse("[::1]:7").expect("v6");
        assert_eq!(t.to_string(), "[::1]:7");
    }

    #[test]
    fn splits_pairs_on_the_separator() {
        let routes = parse_pairs(":8080  localhost:8081 :9090 [::1]:9091", " ").expect("pairs");
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].listen, Listen::Any { port: 9090 });
        let routes = parse_pairs(":8080,localhost:8081", ",").expect("comma");
        assert_eq!(routes[0].target.to_string(), "localhost:8081");
        assert!(parse_pairs(":8080", " ").is_err());
        assert!(parse_pairs("", " ").is_err());
        assert!(parse_pairs(":1 a:2", "").is_err());
    }
}
