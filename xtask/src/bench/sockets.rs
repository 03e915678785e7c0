//! Socket options the benchmarks need that std does not offer.
use std::{net::TcpStream, time::Duration};

/// Makes the next close send RST instead of FIN (SO_LINGER with a zero
/// timeout), so the socket goes ESTABLISHED -> CLOSE and leaves no TIME_WAIT.
pub fn reset_on_close(stream: &TcpStream) -> anyhow::Result<()> {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| anyhow::anyhow!("SO_LINGER: {e}"))
}
