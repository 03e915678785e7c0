//! What `--connect` names: `tcp://host:port`, `http://host[:port]/path` or
//! `https://host[:port]/path`, checked at start so a typo is a usage error
//! rather than a check that fails forever. No name resolution here: that
//! happens at every check, inside its timeout.
use std::{fmt, net::Ipv6Addr, str::FromStr};

/// How a target is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Tcp => None,
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
        }
    }
}

/// One dependency to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URI as given, for logs and JSON: what the user wrote is what
    /// they will search for.
    uri: String,
    pub scheme: Scheme,
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path and query sent in the request line (`/` when none was given);
    /// always `/` for TCP.
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URI at all.
    #[error("invalid URI `{uri}`: {reason}")]
    Syntax { uri: String, reason: String },
    /// A scheme we cannot check.
    #[error("unsupported scheme in `{uri}`: use tcp://, http:// or https://")]
    Scheme { uri: String },
    /// `tcp://` has no default port.
    #[error("`{uri}` has no port: tcp:// needs one, as in tcp://db:5432")]
    MissingPort { uri: String },
    /// The port is not 1-65535.
    #[error("invalid port in `{uri}`: expected 1-65535")]
    Port { uri: String },
    /// No host, or a malformed IPv6 literal.
    #[error("invalid host in `{uri}`")]
    Host { uri: String },
    /// Credentials in the URI: they would end up in logs and JSON.
    #[error("`{uri}` contains user information (user@): not supported")]
    UserInfo { uri: String },
    /// A path or query on a tcp:// target, which would be silently ignored.
    #[error("`{uri}`: a tcp:// target takes no path or query")]
    TcpPath { uri: String },
}

impl Target {
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.scheme.default_port() == Some(self.port) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri = text.trim().to_string();
        let parsed: http::Uri =
            uri.parse()
                .map_err(|e: http::uri::InvalidUri| TargetError::Syntax {
                    uri: uri.clone(),
                    reason: e.to_string(),
                })?;
        let scheme = match parsed.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("tcp") => Scheme::Tcp,
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(_) => return Err(TargetError::Scheme { uri }),
            None => {
                return Err(TargetError::Syntax {
                    uri,
                    reason: "missing scheme: tcp://, http:// or https://".into(),
                });
            }
        };
        // http::Uri silently drops a port it cannot parse (`h:99999`), so
        // the authority is split here.
        let Some(authority) = parsed.authority().map(|a| a.as_str()) else {
            return Err(TargetError::Host { uri });
        };
        if authority.contains('@') {
            return Err(TargetError::UserInfo { uri });
        }
        let (host, port) =
            split_authority(authority).ok_or(TargetError::Host { uri: uri.clone() })?;
        if host.is_empty() {
            return Err(TargetError::Host { uri });
        }
        let port = match port {
            // Digits only: `u16::from_str` would also take `+80`.
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(TargetError::Port { uri }),
            },
            None => match scheme.default_port() {
                Some(p) => p,
                None => return Err(TargetError::MissingPort { uri }),
            },
        };
        let path = parsed
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            // `http://h?x=1`: the path is empty and the query follows.
            format!("/{path}")
        };
        if scheme == Scheme::Tcp && path != "/" {
            return Err(TargetError::TcpPath { uri });
        }
        Ok(Target {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path,
            uri,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` -> host without brackets and
/// the port text, if any. None when the brackets are malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Target, TargetError> {
        text.parse()
    }

    #[test]
    fn parses_every_scheme_with_ports_and_paths() {
        let t = parse("tcp://db.internal:5432").expect("tcp");
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            (Scheme::Tcp, "db.internal", 5432, "/")
        );
        let t = parse("http://api:8080/healthz?full=1").expect("http");
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            (Scheme::Http, "api", 8080, "/healthz?full=1")
        );
        let t = parse("https://example.com").expect("https");
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            (Scheme::Https, "example.com", 443, "/")
        );
        assert_eq!(parse("http://h").expect("http default").port, 80);
        assert_eq!(parse("http://h?x=1").expect("query only").path, "/?x=1");
    }

    #[test]
    fn keeps_the_uri_as_given_and_normalises_scheme_and_host_case() {
        let t = parse(" HTTPS://Example.COM:8443/A ").expect("mixed case");
        assert_eq!(t.uri(), "HTTPS://Example.COM:8443/A");
        assert_eq!(t.to_string(), "HTTPS://Example.COM:8443/A");
        assert_eq!(
            (t.scheme, t.host.as_str(), t.path.as_str()),
            (Scheme::Https, "example.com", "/A")
        );
    }

    #[test]
    fn accepts_ipv6_literals_and_strips_their_brackets() {
        let t = parse("tcp://[::1]:5432").expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 5432));
        assert_eq!(t.host_header(), "[::1]:5432");
        let t = parse("https://[2001:db8::1]/x").expect("v6 default port");
        assert_eq!((t.host.as_str(), t.port), ("2001:db8::1", 443));
        assert_eq!(t.host_header(), "[2001:db8::1]");
    }

    #[test]
    fn host_header_carries_only_a_non_default_port() {
        assert_eq!(parse("http://a:80/").expect("a").host_header(), "a");
        assert_eq!(parse("http://a:81/").expect("a").host_header(), "a:81");
        assert_eq!(parse("https://a:443/").expect("a").host_header(), "a");
        assert_eq!(parse("https://a:80/").expect("a").host_header(), "a:80");
    }

    #[test]
    fn rejects_bad_targets_with_the_reason() {
        for (text, want) in [
            ("ftp://h:21", "unsupported scheme"),
            ("udp://h:53", "unsupported scheme"),
            ("h:80", "missing scheme"),
            ("localhost", "invalid URI"),
            ("", "invalid URI"),
            ("http:/x", "invalid URI"),
            ("http://h h/", "invalid URI"),
            ("tcp://h", "has no port"),
            ("tcp://h:0", "invalid port"),
            ("tcp://h:65536", "invalid port"),
            ("http://h:99999/", "invalid port"),
            ("http://h:/p", "invalid port"),
            ("tcp://h:-1", "invalid port"),
            ("tcp://h:+80", "invalid port"),
            ("tcp://h:80x", "invalid port"),
            ("http://:80/", "invalid host"),
            ("tcp://[::1:80", "invalid"),
            ("tcp://[zz]:80", "invalid host"),
            ("tcp://[::1]x:80", "invalid host"),
            ("http://user:pw@h/", "user information"),
            ("tcp://h:80/path", "no path or query"),
            ("tcp://h:80?q", "no path or query"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
    }
}
