//! Idle established connections that fill the bench namespace, so every
//! source is measured against a crowded socket table. They are held by
//! `hold-connections` processes, 9 000 per process, because the open-file
//! limit is 20 000 per process and cannot be raised here.
use std::{
    io::Read,
    path::Path,
    process::{Child, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

use super::netns::{NETNS, in_netns};

const PER_PROCESS: usize = 9_000;
/// Well away from the monitored port and from the ephemeral range.
const FIRST_PORT: u16 = 20_000;

/// Helper processes holding `size` sockets (size / 2 connections).
pub struct Population {
    children: Vec<Child>,
}

impl Population {
    pub fn create(holder: &Path, size: usize) -> anyhow::Result<Population> {
        let mut population = Population {
            children: Vec::new(),
        };
        let mut remaining = size / 2;
        let mut port = FIRST_PORT;
        while remaining > 0 {
            let count = remaining.min(PER_PROCESS);
            let server = spawn_holder(holder, &["--serve", &port.to_string(), &count.to_string()])?;
            // Held before anything can fail, so Drop reaps it on error too.
            let server_index = population.children.len();
            population.children.push(server);
            expect_line(&mut population.children[server_index], "listening")?;
            let client = spawn_holder(holder, &[&port.to_string(), &count.to_string()])?;
            population.children.push(client);
            let ready = format!("ready {count}");
            expect_line(&mut population.children[server_index + 1], &ready)?;
            expect_line(&mut population.children[server_index], &ready)?;
            remaining -= count;
            port += 1;
        }
        Ok(population)
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_holder(holder: &Path, args: &[&str]) -> anyhow::Result<Child> {
    in_netns(NETNS, holder)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning hold-connections")
}

fn expect_line(child: &mut Child, want: &str) -> anyhow::Result<()> {
    let stdout = child.stdout.as_mut().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    if line.trim() != want {
        bail!("hold-connections said {line:?}, expected {want:?}");
    }
    Ok(())
}
