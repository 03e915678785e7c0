//! Forwarding one client to one backend connection, both ways.
//!
//! Each direction waits until its socket is readable, then reads into a
//! 256 KiB buffer owned by the worker thread and writes what it read; only
//! bytes the other side cannot take yet are copied to the heap until it
//! can. An idle connection therefore holds no buffer at all. Measured
//! (`cargo xtask bench --only proxy`, docs/proxy.md): tokio's
//! `copy_bidirectional` with its default 8 KiB buffers moved a single flow
//! at about half the rate of systemd-socket-proxyd (559 vs 1 072 MB/s);
//! with 64 KiB buffers it matched it (1 016 vs 1 037 MB/s) but allocates
//! both buffers per connection up front: 9 000 idle proxied connections
//! took 1.1 GB resident.
//!
//! A message costs each hop one epoll_wait, one read and one write: a
//! short read is taken as the socket drained (see [`step`]), so the read
//! that used to follow each message only to find EAGAIN is gone (strace
//! over 5 000 64-byte round trips: 20 043 recvfrom, half of them EAGAIN,
//! before; 10 023 after). That is the minimum for a proxy on epoll; what a
//! round trip still costs over a direct one is in docs/proxy.md (data
//! path).
//!
//! A FIN from one side is passed on as a FIN (shutdown of writing on the
//! other) and the other direction goes on: half-close is preserved. A
//! reset is not a FIN: when either side fails (ECONNRESET, EPIPE, a
//! timeout) both sockets are closed with SO_LINGER 0, so the surviving
//! peer gets a reset too instead of a clean end it could mistake for a
//! complete answer.
//!
//! Splice(2) through a pipe would avoid the copy through user space but
//! costs two pipe descriptors per direction (four per connection): with
//! 10 000 proxied connections that is 40 000 more descriptors than the fd
//! limits these pods run with.
use std::{
    cell::RefCell,
    io::{ErrorKind, Read as _},
    net::Shutdown,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
};

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

/// Disables Nagle: the proxy must not add its own 40 ms batching delay to
/// small writes the endpoints chose to send at once.
pub fn no_delay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Closes `stream` with a reset instead of a FIN.
pub fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Read size: large enough that a bulk flow costs few system calls. One
/// per worker thread, so the size costs nothing per connection: 256 KiB
/// moved a single flow at 1 882 MB/s against 1 337 with 64 KiB in the same
/// run (systemd-socket-proxyd, which splices: 1 671), docs/proxy.md.
const CHUNK: usize = 256 * 1024;

thread_local! {
    /// One read buffer per worker thread, borrowed only between two awaits.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// Reads and writes per wake-up before yielding to other connections.
const STEPS: usize = 16;

/// What one wake-up moved.
enum Step {
    /// Bytes moved before the EOF.
    Eof(usize),
    /// Bytes read, and those the other side did not take yet.
    Moved(usize, Vec<u8>),
}

/// A read this short is taken for a whole message: the socket is drained.
/// Longer reads are taken for part of a flow, where reading on in the same
/// wake-up finds more more often than not.
const MESSAGE: usize = 16 * 1024;

/// Reads what `from` has and writes as much as `to` takes, without
/// waiting (the shared buffer is never held across an await): up to
/// [`STEPS`] reads while both sides keep up.
///
/// A read shorter than [`MESSAGE`] ends the wake-up and tells tokio the
/// socket is drained (the read's `try_io` closure answers WouldBlock), so
/// tokio waits for epoll's next edge instead of letting the next wake-up
/// start with a read that finds EAGAIN: a 64-byte message costs each hop
/// one read, not two. Safe for the same reason tokio's own `poll_read`
/// does it on every short read (<https://github.com/tokio-rs/tokio/issues/5866>):
/// epoll is edge-triggered, and `try_io` clears only the readiness it saw
/// before the read, never an edge that came after it.
fn step(from: &TcpStream, to: &TcpStream) -> std::io::Result<Step> {
    BUFFER.with_borrow_mut(|buf| {
        let mut moved = 0;
        for _ in 0..STEPS {
            let mut n = 0;
            let read = from.try_io(Interest::READABLE, || {
                n = (&*SockRef::from(from)).read(buf)?;
                if n > 0 && n < MESSAGE {
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            let drained = match read {
                Ok(()) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock && n > 0 => true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Step::Eof(moved));
            }
            moved += n;
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if written < n {
                return Ok(Step::Moved(moved, buf[written..n].to_vec()));
            }
            if drained {
                break;
            }
        }
        Ok(Step::Moved(moved, Vec::new()))
    })
}

/// What a connection's two directions share.
pub struct Connection<'a> {
    pub to_backend: &'a Counter,
    pub to_client: &'a Counter,
    /// Called once, when the first byte in either direction has been
    /// written (the end of a cold start).
    pub on_first_byte: &'a (dyn Fn() + Sync),
    first_written: AtomicBool,
    one_ended: AtomicBool,
}

impl<'a> Connection<'a> {
    pub fn new(
        to_backend: &'a Counter,
        to_client: &'a Counter,
        on_first_byte: &'a (dyn Fn() + Sync),
    ) -> Self {
        Self {
            to_backend,
            to_client,
            on_first_byte,
            first_written: AtomicBool::new(false),
            one_ended: AtomicBool::new(false),
        }
    }

    /// `n` bytes written towards the peer counted by `moved`.
    fn wrote(&self, moved: &Counter, n: usize) {
        if n == 0 {
            return;
        }
        moved.inc_by(n as u64);
        if !self.first_written.load(Relaxed) && !self.first_written.swap(true, Relaxed) {
            (self.on_first_byte)();
        }
    }
}

/// One direction, until EOF (passed on as a FIN) or an error. Bytes are
/// counted in `moved` as they are written: a long-lived connection shows in
/// the metrics while it lasts, and one that ends in a reset keeps what it
/// forwarded before.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    moved: &Counter,
    shared: &Connection<'_>,
) -> std::io::Result<()> {
    loop {
        from.readable().await?;
        let mut pending = match step(from, to)? {
            Step::Eof(n) => {
                shared.wrote(moved, n);
                // The second direction to end needs no shutdown: both
                // sockets are closed next, and the close sends the FIN (its
                // receive queue was read to the end, so not a reset).
                if !shared.one_ended.swap(true, Relaxed) {
                    SockRef::from(to).shutdown(Shutdown::Write)?;
                }
                return Ok(());
            }
            Step::Moved(n, pending) => {
                // Read, and counted once written below.
                shared.wrote(moved, n - pending.len());
                pending
            }
        };
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(w) => {
                    shared.wrote(moved, w);
                    pending.drain(..w);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies until both directions ended, counting the bytes each way as they
/// go; propagates a reset as a reset. True when the connection ended with
/// one.
pub async fn forward(client: TcpStream, backend: TcpStream, shared: &Connection<'_>) -> bool {
    let ended = tokio::try_join!(
        pump(&client, &backend, shared.to_backend, shared),
        pump(&backend, &client, shared.to_client, shared)
    );
    if ended.is_err() {
        reset(&client);
        reset(&backend);
    }
    ended.is_err()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        let (dialed, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (dialed.expect("connect"), accepted.expect("accept").0)
    }

    /// Bytes whose value depends on their offset, so a lost, repeated or
    /// reordered chunk shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A connection that ends in a reset still reports the bytes it moved
    /// before (the metrics add them up), and the reset reaches the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_moved_before_a_reset_are_counted() {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let (to_backend, to_client) = (Counter::default(), Counter::default());
        let counted = (to_backend.clone(), to_client.clone());
        let proxy = tokio::spawn(async move {
            let first = || {};
            let shared = Connection::new(&counted.0, &counted.1, &first);
            forward(client_side, backend_side, &shared).await
        });
        let run = async {
            client.write_all(&pattern(5000)).await.expect("write");
            let mut got = vec![0; 5000];
            backend.read_exact(&mut got).await.expect("read");
            backend.write_all(&pattern(300)).await.expect("write");
            let mut back = vec![0; 300];
            client.read_exact(&mut back).await.expect("read");
            reset(&backend);
            drop(backend);
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await
        };
        let ended = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the reset was not passed on");
        let reset = proxy.await.expect("forward");
        assert_eq!(ended.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
        assert!(reset);
        assert_eq!((to_backend.get(), to_client.get()), (5000, 300));
    }

    /// Messages of every size around the short-read rule and the buffer,
    /// written while the other side reads: nothing may be lost, reordered
    /// or left waiting for an edge that already came (the test would hang).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_size_goes_through_both_ways_in_order() {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let (to_backend, to_client) = (Counter::default(), Counter::default());
        let counted = (to_backend.clone(), to_client.clone());
        let firsts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let called = firsts.clone();
        let proxy = tokio::spawn(async move {
            let first = move || {
                called.fetch_add(1, Relaxed);
            };
            let shared = Connection::new(&counted.0, &counted.1, &first);
            forward(client_side, backend_side, &shared).await
        });
        let sizes = [
            1,
            64,
            1500,
            MESSAGE - 1,
            MESSAGE,
            MESSAGE + 1,
            CHUNK,
            3 * CHUNK + 7,
        ];
        let total: usize = sizes.iter().sum::<usize>() * 20;
        let data = pattern(total);
        let run = async {
            // One direction as one stream of writes of those sizes...
            let sent = data.clone();
            let writer = async {
                let mut at = 0;
                for size in sizes.iter().cycle().take(sizes.len() * 20) {
                    client.write_all(&sent[at..at + size]).await.expect("write");
                    at += size;
                }
                client
            };
            let reader = async {
                let mut got = vec![0; total];
                backend.read_exact(&mut got).await.expect("read");
                got
            };
            let (mut client, got) = tokio::join!(writer, reader);
            assert!(got == data, "client -> backend stream differs");
            // ...and ping-pong the other way: each small answer must come
            // through on its own, not wait for the next one.
            for size in sizes {
                let message = pattern(size);
                backend.write_all(&message).await.expect("write");
                let mut back = vec![0; size];
                client.read_exact(&mut back).await.expect("read");
                assert!(back == message, "backend -> client message of {size}");
            }
            drop(client);
            let mut rest = Vec::new();
            backend.read_to_end(&mut rest).await.expect("eof");
            assert!(rest.is_empty());
            drop(backend);
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("a message was left waiting");
        let reset = proxy.await.expect("forward");
        assert!(!reset);
        assert_eq!(to_backend.get(), total as u64);
        // The ping-pong: each size once.
        assert_eq!(to_client.get(), sizes.iter().sum::<usize>() as u64);
        assert_eq!(firsts.load(Relaxed), 1, "the first byte is told once");
    }
}
