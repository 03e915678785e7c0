//! Builds the kernel program and leaves it in `OUT_DIR/spawner-sidecar`,
//! where `source/ebpf.rs` embeds it.
//!
//! A plain `cargo build` must work on a host without the eBPF toolchain
//! (nightly rust-src plus bpf-linker, installed by `cargo xtask setup`): there
//! we embed an empty object and the eBPF source reports itself unavailable at
//! run time. `cargo xtask build` sets SPAWNER_SIDECAR_REQUIRE_EBPF=1 so that a
//! missing toolchain is an error there instead of a silent downgrade.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "spawner-sidecar-ebpf";
const TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SPAWNER_SIDECAR_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let required = env::var("SPAWNER_SIDECAR_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("spawner-sidecar");

    if let Err(missing) = toolchain_present() {
        if required {
            return Err(anyhow!("{missing}; run `cargo xtask setup`"));
        }
        println!(
            "cargo:warning=eBPF program not built ({missing}); the eBPF source will be \
             unavailable. Run `cargo xtask build` for a complete binary."
        );
        fs::write(&object, b"").context("writing empty eBPF object")?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let root_dir = manifest_dir
        .parent()
        .context("crate has no parent directory")?
        .join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
}

/// Says what is missing for building the kernel program, if anything.
fn toolchain_present() -> Result<(), String> {
    if which("bpf-linker").is_none() {
        return Err("bpf-linker not found in PATH".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !sysroot.status.success() {
        return Err(format!("no {TOOLCHAIN} toolchain"));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.exists() {
        return Err(format!("rust-src missing for the {TOOLCHAIN} toolchain"));
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}
