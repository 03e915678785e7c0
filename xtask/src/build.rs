//! Release build of the daemon with the kernel program embedded.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `cmd`, failing with its description if it does not succeed.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// A cargo command in the workspace that must embed the kernel program:
/// build.rs fails instead of quietly embedding an empty one.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("SPAWNER_SIDECAR_REQUIRE_EBPF", "1")
        .env("PATH", crate::setup::path_with_cargo_bin());
    cmd
}

pub fn release() -> anyhow::Result<PathBuf> {
    println!("[build] cargo build --release -p spawner-sidecar (kernel program embedded)");
    run_checked(
        cargo().args(["build", "--release", "--package", "spawner-sidecar"]),
        "cargo build",
    )?;
    let bin = target_dir().join("release").join("spawner-sidecar");
    if !bin.is_file() {
        bail!("build finished but {} is missing", bin.display());
    }
    println!("[build] {}", bin.display());
    Ok(bin)
}

pub fn run(bin: &Path, args: &[String]) -> anyhow::Result<()> {
    let status = Command::new(bin)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !status.success() {
        bail!("spawner-sidecar exited with {status}");
    }
    Ok(())
}
