//! The soak's traffic: connection lifecycles on the monitored port at a
//! paced rate, in a mix of endings, plus a set of long-lived connections
//! that changes between checkpoints. Runs on a thread in the bench
//! namespace, one segment at a time, so the soak can pause it.
use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use test_support::sockets::reset_on_close;

use super::MONITOR_PORT;

/// Long-lived connections opened / closed (oldest first) per segment, so
/// held connections cross checkpoints and the count moves between them.
const OPEN_PER_SEGMENT: usize = 10;
const CLOSE_PER_SEGMENT: usize = 5;
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How each lifecycle ends, by `i % 5`.
#[derive(Default, Clone, Copy)]
pub struct Mix {
    /// Client closes first: TIME_WAIT lands on the client's ephemeral port.
    pub client_first: u64,
    /// Server closes first: TIME_WAIT on the monitored port.
    pub server_first: u64,
    pub client_rst: u64,
    pub server_rst: u64,
    /// Connect or accept failed (e.g. no ephemeral port free).
    pub failed: u64,
}

impl Mix {
    pub fn total(&self) -> u64 {
        self.client_first + self.server_first + self.client_rst + self.server_rst
    }
}

pub struct Churn {
    listener: TcpListener,
    held: Vec<(TcpStream, TcpStream)>,
    next: u64,
    pub mix: Mix,
}

impl Churn {
    /// Binds the monitored port; call on a thread in the bench namespace.
    pub fn new() -> anyhow::Result<Churn> {
        Ok(Churn {
            listener: TcpListener::bind((Ipv4Addr::LOCALHOST, MONITOR_PORT))
                .context("listening on the monitored port")?,
            held: Vec::new(),
            next: 0,
            mix: Mix::default(),
        })
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Opens `n` long-lived connections.
    pub fn open_held(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, MONITOR_PORT))?;
            let (server, _) = self.listener.accept()?;
            self.held.push((client, server));
        }
        Ok(())
    }

    /// `duration` of lifecycles at `rate` per second; changes the held set
    /// half-way through. Returns the achieved rate.
    pub fn segment(&mut self, duration: Duration, rate: f64) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut done = 0u64;
        let mut changed_held = false;
        while start.elapsed() < duration {
            if !changed_held && start.elapsed() >= duration / 2 {
                let close = CLOSE_PER_SEGMENT.min(self.held.len());
                self.held.drain(..close);
                self.open_held(OPEN_PER_SEGMENT)?;
                changed_held = true;
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if done >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            self.lifecycle()?;
            done += 1;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    }

    fn lifecycle(&mut self) -> anyhow::Result<()> {
        let i = self.next;
        self.next += 1;
        let Ok(client) = TcpStream::connect((Ipv4Addr::LOCALHOST, MONITOR_PORT)) else {
            self.mix.failed += 1;
            return Ok(());
        };
        let Ok((server, _)) = self.listener.accept() else {
            self.mix.failed += 1;
            return Ok(());
        };
        client.set_read_timeout(Some(READ_TIMEOUT))?;
        server.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut buf = [0u8; 1];
        match i % 5 {
            0 => {
                // CLOSE_WAIT -> LAST_ACK on the monitored side.
                drop(client);
                let _ = (&server).read(&mut buf);
                self.mix.client_first += 1;
            }
            1 | 2 => {
                drop(server);
                let _ = (&client).read(&mut buf);
                self.mix.server_first += 1;
            }
            3 => {
                reset_on_close(&client)?;
                drop(client);
                self.mix.client_rst += 1;
            }
            _ => {
                reset_on_close(&server)?;
                drop(server);
                self.mix.server_rst += 1;
            }
        }
        Ok(())
    }
}
