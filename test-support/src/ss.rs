//! `ss`, the kernel's own view of its TCP sockets: the ground truth the
//! tests and the benchmarks compare the tracker's counts with.

use std::io;

use crate::netns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    /// IPv6 sockets, IPv4-mapped ones included.
    Ipv6,
}

impl Family {
    /// The family as the metrics label it: `ipv4` or `ipv6`.
    pub fn from_label(label: &str) -> Option<Family> {
        match label {
            "ipv4" => Some(Family::Ipv4),
            "ipv6" => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// One `ss -Htan` run: TCP sockets, numeric, no header.
#[derive(Clone, Debug, Default)]
pub struct Query<'a> {
    netns: Option<&'a str>,
    family: Option<Family>,
    state: Option<&'a str>,
    ports: Vec<u16>,
    extended: bool,
    processes: bool,
}

impl<'a> Query<'a> {
    /// Sockets in `state` (as `ss` names it: established, time-wait, listening...).
    pub fn state(state: &'a str) -> Query<'a> {
        Query {
            state: Some(state),
            ..Query::default()
        }
    }

    /// Sockets in every state.
    pub fn all() -> Query<'a> {
        Query::default()
    }

    /// In namespace `netns` instead of ours (`None`: ours).
    pub fn netns(mut self, netns: Option<&'a str>) -> Self {
        self.netns = netns;
        self
    }

    pub fn family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }

    /// With local port `port` (several calls: any of them).
    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    /// Inode, uid and cookie too (`-ie`), for failure messages.
    pub fn extended(mut self) -> Self {
        self.extended = true;
        self
    }

    /// The processes holding each socket too (`-p`: `users:(("name",pid=N,fd=M))`);
    /// a socket still in a listener's accept queue has none.
    pub fn processes(mut self) -> Self {
        self.processes = true;
        self
    }

    /// The sockets, one line each.
    pub fn lines(&self) -> io::Result<Vec<String>> {
        let mut cmd = netns::command(self.netns, "ss");
        let mut flags = String::from("-Htan");
        if self.extended {
            flags.push_str("ie");
        }
        if self.processes {
            flags.push('p');
        }
        cmd.arg(flags);
        match self.family {
            Some(Family::Ipv4) => cmd.arg("-4"),
            Some(Family::Ipv6) => cmd.arg("-6"),
            None => &mut cmd,
        };
        if let Some(state) = self.state {
            cmd.args(["state", state]);
        }
        if !self.ports.is_empty() {
            let filter: Vec<String> = self.ports.iter().map(|p| format!("sport = :{p}")).collect();
            cmd.arg(format!("( {} )", filter.join(" or ")));
        }
        let out = cmd
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("running ss: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ss failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    pub fn count(&self) -> io::Result<u64> {
        Ok(self.lines()?.len() as u64)
    }
}

/// Sockets `ss` shows in `state` with local port `port`, in our namespace
/// or in `netns`. Panics if `ss` cannot run: for tests.
pub fn count(netns: Option<&str>, state: &str, port: u16) -> u64 {
    Query::state(state)
        .netns(netns)
        .port(port)
        .count()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// As [`count`], in our namespace, for one address family.
pub fn count_family(state: &str, port: u16, family: Family) -> u64 {
    Query::state(state)
        .family(family)
        .port(port)
        .count()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Established sockets with local port `port` that a process holds: those
/// a server has accepted (one still in the accept queue has no owner in
/// `ss -p`). Panics if `ss` cannot run: for tests.
pub fn accepted(port: u16) -> usize {
    Query::state("established")
        .port(port)
        .processes()
        .lines()
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|l| l.contains("pid="))
        .count()
}

/// What `ss` shows of `state` on `ports`, with inodes and owners, as text
/// for a failure message (the error itself if `ss` fails).
pub fn listing(state: &str, ports: &[u16]) -> String {
    let query = ports
        .iter()
        .fold(Query::state(state).extended(), |q, &p| q.port(p));
    match query.lines() {
        Ok(lines) => lines.join("\n"),
        Err(e) => e.to_string(),
    }
}
