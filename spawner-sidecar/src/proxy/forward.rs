//! Forwarding one client to one backend connection, both ways.
//!
//! Each direction waits until its socket is readable, then reads into a
//! 64 KiB buffer owned by the worker thread and writes what it read; only
//! bytes the other side cannot take yet are copied to the heap until it
//! can. An idle connection therefore holds no buffer at all. Measured
//! (`cargo xtask bench --only proxy`, docs/proxy.md): tokio's
//! `copy_bidirectional` with its default 8 KiB buffers moved a single flow
//! at about half the rate of systemd-socket-proxyd (559 vs 1 072 MB/s);
//! with 64 KiB buffers it matched it (1 016 vs 1 037 MB/s) but allocates
//! both buffers per connection up front: 9 000 idle proxied connections
//! took 1.1 GB resident.
//!
//! A message costs each hop one epoll_wait, one read and one write: the
//! reads go through tokio's `poll_read`, which takes a short read as the
//! socket drained, so the read that used to follow each message only to
//! find EAGAIN is gone (strace over 5 000 64-byte round trips: 20 043
//! recvfrom, half of them EAGAIN, before; 10 023 after). That is the
//! minimum for a proxy on epoll; what a round trip still costs over a
//! direct one is docs/proxy.md's (data path).
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
    future::poll_fn,
    io::ErrorKind,
    net::Shutdown,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
    /// The connection ended with a reset (propagated to the other side).
    pub reset: bool,
}

/// Disables Nagle: the proxy must not add its own 40 ms batching delay to
/// small writes the endpoints chose to send at once.
pub fn no_delay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Closes `stream` with a reset instead of a FIN.
pub fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Read size: large enough that a bulk flow costs few system calls.
const CHUNK: usize = 64 * 1024;

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

/// Reads what `from` has and writes as much as `to` takes, without
/// waiting (the shared buffer is never held across an await): up to
/// [`STEPS`] reads while both sides keep up; `Pending` when there was
/// nothing to read.
///
/// Reads go through tokio's `poll_read`, which takes a short read as
/// proof that the socket is drained (epoll is edge-triggered): a small
/// message then costs one read(2), not a second one that fails with
/// EAGAIN.
fn step(
    cx: &mut Context<'_>,
    from: &mut ReadHalf<'_>,
    to: &WriteHalf<'_>,
) -> Poll<std::io::Result<Step>> {
    BUFFER.with_borrow_mut(|buf| {
        let mut moved = 0;
        for _ in 0..STEPS {
            let mut read = ReadBuf::new(buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending if moved == 0 => return Poll::Pending,
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(Step::Eof(moved)));
            }
            moved += n;
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if written < n {
                return Poll::Ready(Ok(Step::Moved(moved, buf[written..n].to_vec())));
            }
            if n < buf.len() {
                // Drained (tokio now waits for the next edge): another
                // read would only find EAGAIN.
                break;
            }
        }
        Poll::Ready(Ok(Step::Moved(moved, Vec::new())))
    })
}

/// One direction, until EOF (passed on as a FIN) or an error.
async fn pump(mut from: ReadHalf<'_>, to: WriteHalf<'_>) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut pending = match poll_fn(|cx| step(cx, &mut from, &to)).await? {
            Step::Eof(n) => {
                SockRef::from(to.as_ref()).shutdown(Shutdown::Write)?;
                return Ok(total + n as u64);
            }
            Step::Moved(n, pending) => {
                total += n as u64;
                pending
            }
        };
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(w) => {
                    pending.drain(..w);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies until both directions ended; propagates a reset as a reset.
pub async fn forward(mut client: TcpStream, mut backend: TcpStream) -> Moved {
    let result = {
        let (client_read, client_write) = client.split();
        let (backend_read, backend_write) = backend.split();
        tokio::try_join!(
            pump(client_read, backend_write),
            pump(backend_read, client_write)
        )
    };
    match result {
        Ok((to_backend, to_client)) => Moved {
            to_backend,
            to_client,
            reset: false,
        },
        Err(_) => {
            reset(&client);
            reset(&backend);
            Moved {
                reset: true,
                ..Moved::default()
            }
        }
    }
}
