//! One check of one target: TCP connect, or an HTTP(S) GET whose status
//! line decides. Each check opens its own connection and drops it; nothing
//! is pooled, kept alive or resumed, so every check proves that a new
//! client could get through right now.
//!
//! HTTP is hyper 1's bare client connection (already in the tree through
//! axum) over a tokio `TcpStream`, with tokio-rustls (ring) for TLS. The
//! whole check, name resolution included, runs inside one
//! `tokio::time::timeout`: the bound is end to end by construction, with
//! no per-phase timeouts to add up or forget (a server trickling header
//! bytes cannot stretch it), and dropping the future at the deadline closes
//! the socket. hyper's low-level API also never follows redirects and has
//! no pool to disable.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use http_body_util::Empty;
use hyper::{
    StatusCode,
    body::Bytes,
    header::{CONNECTION, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::target::{Scheme, Target};

/// Where a check was when it ran out of time, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Resolving = 0,
    Connecting = 1,
    TlsHandshake = 2,
    AwaitingResponse = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Resolving,
            1 => Phase::Connecting,
            2 => Phase::TlsHandshake,
            _ => Phase::AwaitingResponse,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Resolving => "resolving the host name",
            Phase::Connecting => "connecting",
            Phase::TlsHandshake => "in the TLS handshake",
            Phase::AwaitingResponse => "waiting for the response headers",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The whole check did not fit in the timeout.
    #[error("timed out after {} {}", humantime::format_duration(*after), phase.as_str())]
    TimedOut { after: Duration, phase: Phase },
    /// Name resolution failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// Name resolution returned no address.
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    /// Every resolved address refused or failed; the last error is kept.
    #[error("connecting to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The host is not a name a certificate can be checked against.
    #[error("{host} is not a valid TLS server name")]
    ServerName { host: String },
    /// Untrusted or mismatched certificate, protocol failure, reset.
    #[error("TLS handshake with {address}: {source}")]
    Tls {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// https:// target without a TLS configuration (a wiring bug).
    #[error("no TLS configuration for an https:// target")]
    NoTls,
    /// The request could not be built from the target.
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    /// The server broke HTTP or closed before the response head.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// A response outside 200-399.
    #[error("HTTP status {}", status_text(*status))]
    Status { status: StatusCode },
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// 2xx and 3xx: a redirect is an answer from a live server, and following
/// it would check something else.
pub fn healthy_status(status: StatusCode) -> bool {
    (200..400).contains(&status.as_u16())
}

/// Runs checks with one timeout and one TLS configuration.
pub struct Checker {
    timeout: Duration,
    tls: Option<TlsConnector>,
}

impl Checker {
    /// `tls` is needed only when some target is https://.
    pub fn new(timeout: Duration, tls: Option<TlsConnector>) -> Checker {
        Checker { timeout, tls }
    }

    pub async fn check(&self, target: &Target) -> Result<(), CheckError> {
        let phase = AtomicU8::new(Phase::Resolving as u8);
        match tokio::time::timeout(self.timeout, self.run(target, &phase)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(CheckError::TimedOut {
                after: self.timeout,
                phase: Phase::from_u8(phase.load(Ordering::Relaxed)),
            }),
        }
    }

    async fn run(&self, target: &Target, phase: &AtomicU8) -> Result<(), CheckError> {
        let (stream, address) = connect(target, phase).await?;
        match target.scheme {
            Scheme::Tcp => Ok(()),
            Scheme::Http => get(TokioIo::new(stream), target, phase).await,
            Scheme::Https => {
                let tls = self.tls.as_ref().ok_or(CheckError::NoTls)?;
                let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                    CheckError::ServerName {
                        host: target.host.clone(),
                    }
                })?;
                phase.store(Phase::TlsHandshake as u8, Ordering::Relaxed);
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|source| CheckError::Tls { address, source })?;
                get(TokioIo::new(stream), target, phase).await
            }
        }
    }
}

/// Resolves (a literal address resolves without a lookup) and connects to
/// the addresses in the resolver's order until one answers.
async fn connect(target: &Target, phase: &AtomicU8) -> Result<(TcpStream, SocketAddr), CheckError> {
    // getaddrinfo runs on tokio's blocking pool; at the deadline the check
    // stops waiting for it, and the thread finishes on its own later.
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| CheckError::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect();
    phase.store(Phase::Connecting as u8, Ordering::Relaxed);
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok((stream, address)),
            Err(source) => last = Some(CheckError::Connect { address, source }),
        }
    }
    Err(last.unwrap_or_else(|| CheckError::NoAddress {
        host: target.host.clone(),
    }))
}

/// `GET path` with `Connection: close` on a connection of its own; the
/// status line decides, the body is not read.
async fn get<T>(io: T, target: &Target, phase: &AtomicU8) -> Result<(), CheckError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    phase.store(Phase::AwaitingResponse as u8, Ordering::Relaxed);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let request = http::Request::get(target.path.as_str())
        .header(HOST, target.host_header())
        .header(CONNECTION, "close")
        .header(
            USER_AGENT,
            concat!("spawner-sidecar-heartbeat/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    // The connection is driven here rather than spawned, so that it lives
    // exactly as long as this check.
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    let response = tokio::select! {
        biased;
        response = &mut response => response?,
        ended = &mut connection => {
            ended?;
            // Closed cleanly: the response, if any, is already queued.
            response.await?
        }
    };
    let status = response.status();
    if healthy_status(status) {
        Ok(())
    } else {
        Err(CheckError::Status { status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn two_and_three_hundreds_are_healthy() {
        for (code, want) in [
            (199, false),
            (200, true),
            (204, true),
            (301, true),
            (302, true),
            (304, true),
            (399, true),
            (400, false),
            (404, false),
            (500, false),
            (503, false),
        ] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(healthy_status(status), want, "{code}");
        }
    }

    /// A local server answering every connection with `response` (or
    /// nothing when None), after reading the request head.
    async fn serve(response: Option<&'static str>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let _ = socket.read(&mut buf).await;
                    match response {
                        Some(r) => {
                            let _ = socket.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        port
    }

    fn target(text: &str) -> Target {
        text.parse().expect("target")
    }

    #[tokio::test]
    async fn status_decides_and_redirects_are_not_followed() {
        let checker = Checker::new(Duration::from_secs(2), None);
        let ok = serve(Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
        let moved = serve(Some(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let broken = serve(Some("HTTP/1.1 500 Internal Server Error\r\n\r\n")).await;
        checker
            .check(&target(&format!("http://127.0.0.1:{ok}/")))
            .await
            .expect("200");
        checker
            .check(&target(&format!("http://127.0.0.1:{moved}/")))
            .await
            .expect("302 is healthy and not followed to the closed port");
        let err = checker
            .check(&target(&format!("http://127.0.0.1:{broken}/")))
            .await
            .expect_err("500");
        assert_eq!(err.to_string(), "HTTP status 500 Internal Server Error");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_the_phase() {
        let silent = serve(None).await;
        let checker = Checker::new(Duration::from_millis(200), None);
        let started = std::time::Instant::now();
        let err = checker
            .check(&target(&format!("http://127.0.0.1:{silent}/")))
            .await
            .expect_err("silent");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            err.to_string(),
            "timed out after 200ms waiting for the response headers"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_https_without_tls_config_fails() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let checker = Checker::new(Duration::from_secs(1), None);
        let err = checker
            .check(&target(&format!("tcp://127.0.0.1:{port}")))
            .await
            .expect_err("closed");
        assert!(
            err.to_string()
                .starts_with(&format!("connecting to 127.0.0.1:{port}: ")),
            "{err}"
        );
        let open = serve(None).await;
        checker
            .check(&target(&format!("tcp://localhost:{open}")))
            .await
            .expect("tcp to a listener, by name");
        let err = checker
            .check(&target(&format!("https://127.0.0.1:{open}/")))
            .await
            .expect_err("no TLS config");
        assert!(matches!(err, CheckError::NoTls), "{err}");
    }
}
