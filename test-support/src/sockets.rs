//! Real TCP sockets on loopback: listeners holding their connections, a
//! client from a chosen local address, connections that end with RST, and
//! `hold-connections` processes for more sockets than one process may open.

use std::{
    io::{self, Read as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use socket2::{Domain, SockRef, Socket, Type};

use crate::netns;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on loopback: {e}"))
}

/// A TCP connection to `to` from `from` (any local address: all of
/// 127.0.0.0/8 is loopback), so tests can play a peer of their choosing.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None)
        .unwrap_or_else(|e| panic!("socket for {from}: {e}"));
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"));
    socket.into()
}

/// Makes the next close send RST instead of FIN (SO_LINGER with a zero
/// timeout), so the socket goes ESTABLISHED -> CLOSE and leaves no TIME_WAIT.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// Accepts every connection on `listener` in the background and keeps it.
pub fn accept_all(listener: TcpListener) -> Arc<Mutex<Vec<TcpStream>>> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sink = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => sink.lock().unwrap_or_else(|e| e.into_inner()).push(c),
                Err(_) => break,
            }
        }
    });
    accepted
}

/// A listener holding its accepted connections (and their clients) open.
pub struct Server {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    accepted: Vec<TcpStream>,
    clients: Vec<TcpStream>,
}

impl Server {
    pub fn v4(port: u16) -> Server {
        Self::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// A dual-stack listener on [::]; clients reach it on ::1.
    pub fn dual_stack(port: u16) -> Server {
        Self::bind(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        )
    }

    fn bind(listen: SocketAddr, connect: SocketAddr) -> Server {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        Server {
            listener: Some(listener),
            addr: connect,
            accepted: Vec::new(),
            clients: Vec::new(),
        }
    }

    pub fn listener(&self) -> &TcpListener {
        self.listener.as_ref().expect("still listening")
    }

    /// Closes the listener and keeps the connections: a service draining.
    pub fn stop_listening(&mut self) {
        self.listener = None;
    }

    /// Opens `n` connections and accepts them.
    pub fn connect(&mut self, n: usize) {
        self.connect_to(self.addr, n);
    }

    pub fn connect_to(&mut self, addr: SocketAddr, n: usize) {
        for _ in 0..n {
            self.clients
                .push(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}")));
            self.accept_one();
        }
    }

    /// Opens `n` connections from local address `from` and accepts them.
    pub fn connect_from(&mut self, from: IpAddr, n: usize) {
        for _ in 0..n {
            self.clients.push(connect_from(from, self.addr));
            self.accept_one();
        }
    }

    fn accept_one(&mut self) {
        let (conn, _) = self
            .listener()
            .accept()
            .unwrap_or_else(|e| panic!("accept on {}: {e}", self.addr));
        self.accepted.push(conn);
    }

    /// Closes every connection, the server side first: each leaves a
    /// TIME_WAIT socket on the server's port.
    pub fn close_server_first(&mut self) {
        for (server, mut client) in self.accepted.drain(..).zip(self.clients.drain(..)) {
            drop(server);
            // Wait for the server's FIN, so the client's close comes second.
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = client.read(&mut [0u8; 1]);
        }
    }

    /// Closes every connection, clients first (no TIME_WAIT on the server).
    pub fn close_all(&mut self) {
        self.clients.clear();
        self.accepted.clear();
    }

    /// Stops listening (and closes everything).
    pub fn shutdown(self) {}
}

/// A `hold-connections` process (`tests/src/bin`): it holds connections
/// open until its stdin closes, so the test or benchmark keeps only the
/// other ends (the open-file limit is per process).
pub struct Holder {
    child: Child,
}

impl Holder {
    /// `hold-connections ARGS` in `netns` (or ours); it says what it did on
    /// stdout, read with [`Holder::expect_line`].
    pub fn spawn(exe: &Path, netns: Option<&str>, args: &[String]) -> io::Result<Holder> {
        let child = netns::command(netns, exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawning {}: {e}", exe.display())))?;
        Ok(Holder { child })
    }

    /// `count` connections to 127.0.0.1:`port`, all open once this returns.
    pub fn connect(exe: &Path, netns: Option<&str>, port: u16, count: usize) -> io::Result<Holder> {
        let mut holder = Holder::spawn(exe, netns, &[port.to_string(), count.to_string()])?;
        holder.expect_line(&format!("ready {count}"))?;
        Ok(holder)
    }

    /// Reads the helper's next line (byte by byte: nothing beyond it is
    /// consumed) and checks it is `want`.
    pub fn expect_line(&mut self, want: &str) -> io::Result<()> {
        let stdout = self
            .child
            .stdout
            .as_mut()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line);
        if line.trim() != want {
            return Err(io::Error::other(format!(
                "hold-connections said {line:?}, expected {want:?}"
            )));
        }
        Ok(())
    }

    /// Closes every held connection (the helper's side first).
    pub fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `hold-connections` binary cargo builds beside the test binaries.
pub fn hold_connections_beside_tests() -> PathBuf {
    helper_beside_tests("hold-connections")
}

/// Helper binary `name` of the tests' crate, which cargo builds beside the
/// test binaries (`target/<profile>/`, the tests being in `target/<profile>/deps/`).
pub fn helper_beside_tests(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|t| Some(t.parent()?.parent()?.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} binary next to the tests: run with `cargo xtask test`"))
}

/// A connected TCP socket of another process, seen through a copy of its
/// descriptor.
#[derive(Debug)]
pub struct Connected {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub nodelay: bool,
}

/// Every connected TCP socket process `pid` holds, with its TCP_NODELAY:
/// what the process set, read from the kernel rather than from its logs.
/// Copies each descriptor with pidfd_getfd(2) (Linux 5.6; needs ptrace
/// rights over `pid`, which the root running the tests has).
pub fn connected_sockets_of(pid: u32) -> io::Result<Vec<Connected>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: pidfd_open(2) with a pid and no flags; the result is a new
    // descriptor we own, or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor pidfd_open just returned and nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let target_fd = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok());
        let Some(target_fd) = target_fd.filter(|_| is_socket) else {
            continue;
        };
        // SAFETY: pidfd_getfd(2) on a pidfd we own; the result is a new
        // descriptor we own, or -1 (the fd may have closed meanwhile).
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
        if copy < 0 {
            continue;
        }
        // SAFETY: as above, a fresh descriptor owned by nobody else.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(copy as i32) });
        // An inet stream socket: TCP (the proxy opens no other kind).
        let tcp = socket.r#type().is_ok_and(|t| t == Type::STREAM);
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        if tcp {
            found.push(Connected {
                local,
                peer,
                nodelay: socket.tcp_nodelay()?,
            });
        }
    }
    Ok(found)
}
