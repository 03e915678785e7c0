//! What a source reports: per followed port, counts by state and family,
//! and what the activity logic needs (kernel timestamps, connection ages).
use std::collections::BTreeMap;

/// Address family of a socket, as the kernel says: an IPv4 client of a
/// dual-stack `[::]` listener is an IPv6 socket (IPv4-mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The label value Prometheus users see.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// What a source knows about one port at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortReading {
    /// ESTABLISHED sockets by family (`Family::index`), ignored peers left out.
    pub established: [u64; 2],
    /// TIME_WAIT sockets by family, ignored peers left out.
    pub time_wait: [u64; 2],
    /// ESTABLISHED sockets whose peer is ignored (`--ignore-peer`).
    pub ignored_established: u64,
    /// TIME_WAIT sockets whose peer is ignored.
    pub ignored_time_wait: u64,
    /// LISTEN sockets on the port (several with SO_REUSEPORT).
    pub listeners: u64,
    /// Of `time_wait`, those left by connections that closed younger than
    /// `--activity-min-age`: counted, but not activity.
    pub young_time_wait: u64,
    /// CLOCK_BOOTTIME nanoseconds of the last change the kernel reported as
    /// activity; only event-fed sources know it.
    pub last_active_ns: Option<u64>,
    /// Connections that entered ESTABLISHED since start (monotonic). Exact
    /// on the eBPF source; pollers count what they saw appear.
    pub opened: u64,
    /// Connections that left ESTABLISHED since start (monotonic).
    pub closed: u64,
    /// CLOCK_BOOTTIME start of each counted ESTABLISHED connection (its
    /// first sighting where the source cannot know better), ascending.
    /// `None` where the reading was not asked for them.
    pub starts: Option<Vec<u64>>,
}

impl PortReading {
    pub fn established_total(&self) -> u64 {
        self.established.iter().sum()
    }

    pub fn time_wait_total(&self) -> u64 {
        self.time_wait.iter().sum()
    }

    pub fn ignored(&self) -> u64 {
        self.ignored_established + self.ignored_time_wait
    }

    /// Connections established for at least `min_age_ns` at `now_ns`, at
    /// most all of them. A connection whose start is unknown (more counted
    /// than ages known: the eBPF source's map was full, or had no snapshot
    /// cookies to seed it) counts as old: unknown must not mean idle.
    pub fn established_at_least(&self, min_age_ns: u64, now_ns: u64) -> u64 {
        let total = self.established_total();
        match &self.starts {
            Some(starts) if min_age_ns > 0 => {
                let cutoff = now_ns.saturating_sub(min_age_ns);
                let unknown = total.saturating_sub(starts.len() as u64);
                // Ascending: the old enough ones are a prefix.
                let old = starts.partition_point(|&s| s <= cutoff) as u64;
                (unknown + old).min(total)
            }
            _ => total,
        }
    }
}

/// One reading of every followed port.
pub type Reading = BTreeMap<u16, PortReading>;

/// What a caller needs beyond the counts. Ages cost the eBPF source a read
/// of its per-connection map, so it is asked for only where used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detail {
    pub starts: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_old_enough_connections_from_sorted_starts() {
        let r = PortReading {
            established: [2, 2],
            starts: Some(vec![10, 20, 30, 40]),
            ..Default::default()
        };
        assert_eq!(r.established_at_least(15, 40), 2, "started at 10 and 20");
        assert_eq!(r.established_at_least(15, 35), 2, "20 is exactly 15 old");
        assert_eq!(r.established_at_least(100, 40), 0);
        assert_eq!(r.established_at_least(0, 40), 4);
        let no_ages = PortReading {
            established: [3, 0],
            ..Default::default()
        };
        assert_eq!(no_ages.established_at_least(15, 40), 3);
        let one_untracked = PortReading {
            established: [3, 0],
            starts: Some(vec![30, 40]),
            ..Default::default()
        };
        assert_eq!(
            one_untracked.established_at_least(15, 40),
            1,
            "the one without a start counts as old"
        );
    }
}
