//! `cargo xtask setup`: the eBPF toolchain, installed idempotently.
//!
//! The kernel crate is compiled by the preinstalled nightly (rust-src for
//! `-Z build-std=core`) and linked by bpf-linker, which must use the very
//! LLVM that nightly uses: the nightly ships it as a shared library, so we
//! point a prefix directory at it and build bpf-linker against that prefix.
//! A stamp file records what the installed bpf-linker was built against, so
//! a second run costs a few process spawns.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use crate::build::run_checked;

const NIGHTLY: &str = "nightly";
/// The bpf-linker release verified with nightly 1.97's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let nightly = nightly_info()?;
    println!(
        "[setup] {NIGHTLY} toolchain: {} (LLVM {})",
        nightly.release, nightly.llvm_major
    );

    let core = nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        println!("[setup] rust-src for {NIGHTLY}: present");
    } else {
        println!("[setup] rust-src for {NIGHTLY}: installing");
        run_checked(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            "rustup component add rust-src",
        )
        .context("cannot install rust-src; the kernel program needs it for -Z build-std=core")?;
    }

    ensure_bpf_linker(&nightly)?;
    println!("[setup] ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Nightly {
    release: String,
    llvm_major: u32,
    sysroot: PathBuf,
    /// `rustc -vV` verbatim: identifies the exact compiler and LLVM.
    version_text: String,
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nightly_info() -> anyhow::Result<Nightly> {
    let version_text = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]), "rustc +nightly -vV")
        .context("the nightly toolchain is required to compile the kernel program; install it with `rustup toolchain install nightly`")?;
    let field = |name: &str| {
        version_text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` has no {name} line"))
    };
    let release = field("release:")?.to_string();
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the LLVM major version from {llvm:?}"))?;
    let sysroot = PathBuf::from(output(
        Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
        "rustc +nightly --print sysroot",
    )?);
    Ok(Nightly {
        release,
        llvm_major,
        sysroot,
        version_text,
    })
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with cargo's bin directory first, where `cargo install` puts
/// bpf-linker and where build.rs looks for it.
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn llvm_prefix() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("spawner-sidecar")
        .join("llvm-prefix")
}

/// The nightly's LLVM shared library, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_libllvm(nightly: &Nightly) -> anyhow::Result<PathBuf> {
    let lib = nightly.sysroot.join("lib");
    let wanted = format!("libLLVM.so.{}", nightly.llvm_major);
    let entries = fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted))
        })
        .ok_or_else(|| {
            anyhow!(
                "{} has no {wanted}*: this nightly does not ship its LLVM as a shared library",
                lib.display()
            )
        })
}

fn ensure_bpf_linker(nightly: &Nightly) -> anyhow::Result<()> {
    let prefix = llvm_prefix();
    let stamp = prefix.join("stamp");
    let want_stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION}\n{}\n",
        nightly.version_text
    );
    let linker = cargo_home().join("bin").join("bpf-linker");
    let runs = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs && fs::read_to_string(&stamp).is_ok_and(|s| s == want_stamp) {
        println!(
            "[setup] bpf-linker {BPF_LINKER_VERSION} on {NIGHTLY}'s LLVM {}: present",
            nightly.llvm_major
        );
        return Ok(());
    }

    // The prefix's lib/ holds libLLVM.so for bpf-linker's build script and
    // the versioned soname for its runtime loader (its RUNPATH is this lib/).
    let libllvm = nightly_libllvm(nightly)?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("bad library path"))?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), libllvm.display()))?;
    }

    println!(
        "[setup] bpf-linker {BPF_LINKER_VERSION}: building against {NIGHTLY}'s LLVM {} (about a minute)",
        nightly.llvm_major
    );
    let feature = format!("llvm-{}", nightly.llvm_major);
    run_checked(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker",
    )
    .context("cannot build bpf-linker; it needs crates.io and the nightly's libLLVM")?;
    let check = Command::new(&linker).arg("--version").output();
    if !check.is_ok_and(|o| o.status.success()) {
        bail!(
            "bpf-linker was installed at {} but does not run",
            linker.display()
        );
    }
    fs::write(&stamp, want_stamp).with_context(|| format!("cannot write {}", stamp.display()))?;
    println!("[setup] bpf-linker {BPF_LINKER_VERSION}: installed");
    Ok(())
}
