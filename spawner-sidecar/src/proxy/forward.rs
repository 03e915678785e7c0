//! Forwarding one client to one backend connection, both ways.
//!
//! tokio's `copy_bidirectional` preserves half-close: at EOF from one side
//! it shuts down writing to the other (a FIN in that direction only) and
//! keeps copying the other way until that ends too. A reset is not a FIN,
//! though: when either side fails (ECONNRESET, EPIPE, a timeout) both
//! sockets are closed with SO_LINGER 0, so the surviving peer gets a reset
//! too instead of a clean end it could mistake for a complete answer.
//!
//! Splice(2) through a pipe would avoid copying through user space but
//! costs two pipe descriptors per direction (four per connection): with
//! 10 000 proxied connections that is 40 000 more descriptors than the
//! fd limits these pods run with. Buffers won until a benchmark says
//! otherwise (see docs/proxy.md).
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

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

/// Copies until both directions ended; propagates a reset as a reset.
pub async fn forward(mut client: TcpStream, mut backend: TcpStream) -> Moved {
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
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
