//! Socket options the benchmarks need that std does not offer.
use std::{net::TcpStream, os::fd::AsRawFd as _};

/// Makes the next close send RST instead of FIN (SO_LINGER with a zero
/// timeout), so the socket goes ESTABLISHED -> CLOSE and leaves no TIME_WAIT.
pub fn reset_on_close(stream: &TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket fd we own, with a pointer to a linger
    // struct that outlives the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        anyhow::bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
