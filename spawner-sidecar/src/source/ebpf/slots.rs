//! Which slot of `PORT_COUNTS` each followed port uses. Ports come and go
//! under `--all-ports`; a slot given up is zeroed and reused only a tick
//! later, once no program run that looked it up can still be writing to it
//! (runs last microseconds).
use std::collections::BTreeMap;

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use spawner_sidecar_common::{MAX_PORTS, PortCounts};

use crate::source::SourceError;

#[derive(Debug)]
pub struct Slots {
    by_port: BTreeMap<u16, u32>,
    /// Unused slots, zeroed.
    free: Vec<u32>,
    /// Given up since the last tick: zeroed and freed at the next.
    retiring: Vec<u32>,
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> SourceError {
    move |source| SourceError::Map { map, source }
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
            self.retiring.push(slot);
        }
        Ok(())
    }

    /// Zeroes the slots given up before this tick and makes them reusable.
    pub fn recycle(
        &mut self,
        counts: &mut PerCpuArray<MapData, PortCounts>,
    ) -> Result<(), SourceError> {
        if self.retiring.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| SourceError::Io {
            path: "/sys/devices/system/cpu/possible",
            source: e,
        })?;
        for slot in self.retiring.drain(..) {
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
