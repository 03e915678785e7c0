//! The floor under the tracker's per-event cost: the kernel object's no-op
//! program (`tcp_state_floor`), attached by the bench itself to the same
//! tracepoint. What it costs is what any program costs there (the call from
//! the tracepoint and, with `kernel.bpf_stats_enabled`, the two clock reads
//! around the run), so the tracker's own work is its figure minus this one.
use std::{fs, path::PathBuf, time::SystemTime};

use anyhow::{Context as _, bail};
use aya::{Btf, Ebpf, programs::BtfTracePoint};

use super::kernel_path::ProgCost;
use crate::build::target_dir;

const PROGRAM: &str = "tcp_state_floor";

/// The attached no-op program; detached when dropped.
pub struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    pub fn attach() -> anyhow::Result<Floor> {
        let object = kernel_object()?;
        let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let mut ebpf = Ebpf::load(&bytes).context("loading the kernel object")?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("no {PROGRAM} in {}", object.display()))?
            .try_into()?;
        program.load("inet_sock_set_state", &btf)?;
        program.attach()?;
        Ok(Floor { ebpf })
    }

    /// run_time_ns and run_cnt so far.
    pub fn stats(&self) -> anyhow::Result<ProgCost> {
        let info = self
            .ebpf
            .program(PROGRAM)
            .context("floor program gone")?
            .info()?;
        Ok(ProgCost {
            run_ns: u64::try_from(info.run_time().as_nanos())?,
            runs: info.run_count(),
        })
    }
}

/// The kernel object of the last release build of the daemon (its build
/// script leaves it in its `OUT_DIR`).
fn kernel_object() -> anyhow::Result<PathBuf> {
    let build = target_dir().join("release/build");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(&build).with_context(|| format!("reading {}", build.display()))? {
        let path = entry?.path().join("out/spawner-sidecar");
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let modified = meta.modified()?;
        if meta.len() > 0 && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, path));
        }
    }
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no kernel object under {}/*/out/ (run cargo xtask build)",
            build.display()
        ),
    }
}
