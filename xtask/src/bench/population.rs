//! Idle established connections that fill the bench namespace, so every
//! source is measured against a crowded socket table. They are held by
//! `hold-connections` processes, 9 000 per process, because the open-file
//! limit is 20 000 per process and cannot be raised here.
use std::path::Path;

use test_support::sockets::Holder;

use super::netns::bench_ns;

const PER_PROCESS: usize = 9_000;
/// Well away from the monitored port and from the ephemeral range.
const FIRST_PORT: u16 = 20_000;

/// Helper processes holding `size` sockets (size / 2 connections); each
/// is killed when this drops.
pub struct Population {
    _holders: Vec<Holder>,
}

impl Population {
    pub fn create(holder: &Path, size: usize) -> anyhow::Result<Population> {
        // Held as soon as spawned, so an error drops (kills) the earlier ones.
        let mut holders = Vec::new();
        let mut remaining = size / 2;
        let mut port = FIRST_PORT;
        while remaining > 0 {
            let count = remaining.min(PER_PROCESS);
            let (port_text, count_text) = (port.to_string(), count.to_string());
            let mut server = Holder::spawn(
                holder,
                Some(bench_ns()),
                &["--serve".into(), port_text, count_text],
            )?;
            server.expect_line("listening")?;
            holders.push(Holder::connect(holder, Some(bench_ns()), port, count)?);
            server.expect_line(&format!("ready {count}"))?;
            holders.push(server);
            remaining -= count;
            port += 1;
        }
        Ok(Population { _holders: holders })
    }
}
