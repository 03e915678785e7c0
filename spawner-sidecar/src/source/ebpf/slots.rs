//! Which slot of `PORT_COUNTS` each followed port uses. Ports come and go
//! under `--all-ports`; a slot given up is zeroed and reused only after a
//! grace period, once no program run that looked it up before the port was
//! unfollowed can still be writing to it (runs last microseconds).
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use spawner_sidecar_common::{MAX_PORTS, PortCounts};

use super::map_error;
use crate::source::SourceError;

/// Far longer than any program run; short enough not to matter.
const GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Slots {
    by_port: BTreeMap<u16, u32>,
    /// Unused slots, zeroed.
    free: Vec<u32>,
    /// Given up, and when: zeroed and freed once the grace period is over.
    retiring: Vec<(u32, Instant)>,
}

impl Slots {
    pub fn new() -> Self {
        Slots {
            by_port: BTreeMap::new(),
            free: (0..MAX_PORTS).rev().collect(),
            retiring: Vec::new(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.by_port.iter().map(|(&p, &s)| (p, s))
    }

    /// Starts counting `port`. `Ok(false)` when every slot is taken.
    pub fn follow(
        &mut self,
        port: u16,
        map: &mut Array<MapData, u32>,
    ) -> Result<bool, SourceError> {
        if self.by_port.contains_key(&port) {
            return Ok(true);
        }
        let Some(slot) = self.free.pop() else {
            return Ok(false);
        };
        map.set(u32::from(port), slot + 1, 0)
            .map_err(map_error("PORT_SLOTS"))?;
        self.by_port.insert(port, slot);
        Ok(true)
    }

    /// Stops counting `port`.
    pub fn unfollow(
        &mut self,
        port: u16,
        map: &mut Array<MapData, u32>,
    ) -> Result<(), SourceError> {
        if let Some(slot) = self.by_port.remove(&port) {
            map.set(u32::from(port), 0, 0)
                .map_err(map_error("PORT_SLOTS"))?;
            self.retiring.push((slot, Instant::now()));
        }
        Ok(())
    }

    /// Zeroes the slots whose grace period is over and makes them reusable.
    pub fn recycle(
        &mut self,
        counts: &mut PerCpuArray<MapData, PortCounts>,
    ) -> Result<(), SourceError> {
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .retiring
            .drain(..)
            .partition(|(_, at)| at.elapsed() >= GRACE);
        self.retiring = waiting;
        if ready.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| SourceError::Io {
            path: "/sys/devices/system/cpu/possible",
            source: e,
        })?;
        for (slot, _) in ready {
            let zeroes =
                PerCpuValues::try_from(vec![PortCounts::default(); cpus]).map_err(|e| {
                    SourceError::Unavailable {
                        reason: format!("per-CPU values: {e}"),
                    }
                })?;
            counts
                .set(slot, zeroes, 0)
                .map_err(map_error("PORT_COUNTS"))?;
            self.free.push(slot);
        }
        Ok(())
    }
}
