//! Helpers for the `heartbeat` black-box tests: the subcommand as a child
//! process, and the servers it checks (plain HTTP with a chosen behaviour,
//! HTTPS with a test CA made at run time, a port whose connects hang).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, ExitStatus},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use test_support::{binary, process::Process};

/// `spawner-sidecar heartbeat ...` running, its stderr collected.
pub struct Heartbeat {
    process: Process,
}

impl Heartbeat {
    /// Starts `heartbeat args` with `env` on top of a clean TLS environment
    /// (no SSL_CERT_FILE/SSL_CERT_DIR from the caller).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Heartbeat {
        let process = Process::spawn(
            Command::new(binary())
                .arg("heartbeat")
                .args(args)
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_CERT_DIR")
                .envs(env.iter().copied())
                .env("RUST_LOG", "info"),
            None,
        )
        .expect("spawn spawner-sidecar heartbeat");
        Heartbeat { process }
    }

    /// Starts `heartbeat --server` on a free loopback port and waits for it
    /// to serve; returns the process and the port.
    pub fn serve(args: &[&str], env: &[(&str, &str)]) -> (Heartbeat, u16) {
        let mut all = vec!["--server", "--address", "127.0.0.1", "--port", "0"];
        all.extend_from_slice(args);
        let mut hb = Heartbeat::spawn(&all, env);
        let port = hb.wait_serving();
        (hb, port)
    }

    pub fn wait_serving(&mut self) -> u16 {
        self.process
            .wait_serving(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("heartbeat did not start serving: {e}"))
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.process.started
    }

    /// When the process was seen to have exited ([`Heartbeat::wait_exit`] first).
    pub fn exited(&self) -> Instant {
        self.process.exited.expect("wait_exit first")
    }

    /// Time from the arrival of the first line containing `needle` to the
    /// exit: unlike the time since spawn, free of start-up delays (a cold
    /// binary on a loaded machine can take a second to start).
    pub fn exit_after_line(&self, needle: &str) -> Duration {
        let at = self
            .process
            .line_time(needle)
            .unwrap_or_else(|| panic!("no line with {needle:?}"));
        self.exited().saturating_duration_since(at)
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.process.count(needle)
    }

    /// The exit status, once the process ended within `timeout`; panics
    /// (after killing it) otherwise. Waits for the log to be complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.process
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("heartbeat: {e}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGTERM, then the exit status (within 5 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.process
            .terminate(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("heartbeat: {e}"))
    }
}

/// What [`HttpServer`] does with each connection.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Reads the request head, answers with the current status, closes.
    Answer,
    /// Accepts and reads, never writes.
    Silent,
    /// Sends a header line one byte every 100 ms, never finishing.
    Trickle,
}

/// A plain HTTP/1.1 server on 127.0.0.1 in threads, counting connections
/// and keeping each request head.
pub struct HttpServer {
    pub port: u16,
    status: Arc<AtomicU16>,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    pub fn start(behaviour: Behaviour, status: u16) -> HttpServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer {
            port,
            status: Arc::new(AtomicU16::new(status)),
            connections: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let (status, connections, requests) = (
            server.status.clone(),
            server.connections.clone(),
            server.requests.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                // A failed accept (a client gone before it, no descriptor
                // left) must not close the listener: the next client would
                // be refused and fail at once instead of at its timeout.
                let Ok(mut stream) = stream else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (status, requests) = (status.clone(), requests.clone());
                std::thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    if matches!(behaviour, Behaviour::Trickle) {
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: "
                            .iter()
                            .chain([b'a'; 200].iter())
                        {
                            if stream.write_all(&[*byte]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        return;
                    }
                    let Some(head) = read_head(&mut stream) else {
                        return;
                    };
                    requests.lock().unwrap().push(head);
                    match behaviour {
                        Behaviour::Answer => {
                            let code = status.load(Ordering::SeqCst);
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {code} Test\r\nLocation: http://127.0.0.1:1/elsewhere\r\n\
                                 Content-Length: 2\r\nConnection: close\r\n\r\nok"
                            );
                        }
                        _ => std::thread::sleep(Duration::from_secs(10)),
                    }
                });
            }
        });
        server
    }

    /// The status later requests get.
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Reads up to the blank line ending a request head.
fn read_head(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A port on 127.0.0.1 whose connects hang: a listener with a backlog of
/// zero that never accepts, its queue already full. Linux drops the SYNs
/// of a listener whose accept queue is full, so the client keeps waiting.
pub struct HangingPort {
    pub port: u16,
    _listener: socket2::Socket,
    _queued: TcpStream,
}

impl HangingPort {
    pub fn new() -> HangingPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let queued = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
        // Prove the premise: the next connect hangs.
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        assert!(
            probe.is_err(),
            "a connect to the full listener succeeded: the hanging port does not hang"
        );
        HangingPort {
            port: addr.port(),
            _listener: socket,
            _queued: queued,
        }
    }
}

impl Default for HangingPort {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTPS server on 127.0.0.1 answering 200, with a certificate for
/// `localhost` only, signed by a CA made for this run. The CA's PEM is
/// written to a file for `--ca-file` / `SSL_CERT_FILE`; no key is stored.
pub struct TlsServer {
    pub port: u16,
    pub ca_file: PathBuf,
    connections: Arc<AtomicUsize>,
    /// Requests served, and how many of them came over a resumed session.
    served: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
}

impl TlsServer {
    pub fn start() -> TlsServer {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "spawner-sidecar heartbeat test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();

        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let ca_file = std::env::temp_dir().join(format!(
            "spawner-sidecar-heartbeat-ca-{}-{}.pem",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let (counter, served_counter, resumed_counter) =
            (connections.clone(), served.clone(), resumed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                counter.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                let (served, resumed) = (served_counter.clone(), resumed_counter.clone());
                std::thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    // A client that rejects the certificate ends here.
                    if read_head(&mut tls).is_none() {
                        return;
                    }
                    if tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        TlsServer {
            port,
            ca_file,
            connections,
            served,
            resumed,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// (requests served, of which over a resumed TLS session).
    pub fn served(&self) -> (usize, usize) {
        (
            self.served.load(Ordering::SeqCst),
            self.resumed.load(Ordering::SeqCst),
        )
    }

    pub fn ca_file(&self) -> &str {
        self.ca_file.to_str().unwrap()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
