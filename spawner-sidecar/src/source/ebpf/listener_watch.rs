//! With `--all-ports`, the program reports new listeners through the
//! `LISTENERS` ring buffer; a thread of ours waits on it, so a new port is
//! followed within moments, not a tick.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Weak, atomic::Ordering},
};

use tracing::warn;

use super::EbpfSource;
use crate::{
    lock::lock,
    source::{ConnectionSource as _, Detail},
};

/// Waits on the `LISTENERS` ring buffer and follows new listeners as soon
/// as the program reports them, then seeds them. Ends with the source.
pub fn spawn(source: Weak<EbpfSource>) {
    // A copy of the ring buffer's fd, ours for as long as the thread lives:
    // the source's own may close (and its number be reused) meanwhile.
    let fd = match source
        .upgrade()
        .map(|s| lock(&s.inner).listeners.as_fd().try_clone_to_owned())
    {
        Some(Ok(fd)) => fd,
        Some(Err(e)) => {
            warn!("cannot watch for new listeners ({e}); they are found once per tick");
            return;
        }
        None => return,
    };
    let spawned = std::thread::Builder::new()
        .name("listener-watch".into())
        .spawn(move || {
            loop {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on an fd this thread owns.
                let ready = unsafe { libc::poll(&mut poll, 1, 500) };
                let Some(strong) = source.upgrade() else {
                    return;
                };
                if strong.stopped.load(Ordering::Relaxed) {
                    return;
                }
                if ready <= 0 {
                    continue;
                }
                // Reading drains the ring buffer and seeds what is new.
                if let Err(e) = strong.read(Detail::default()) {
                    warn!("following new listeners: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the listener thread ({e}); new listeners are found once per tick");
    }
}
