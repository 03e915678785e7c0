//! `cargo xtask image`: a static (musl) build of the daemon, kernel program
//! embedded, in an OCI image `FROM scratch` built with podman.
//!
//! No registry is needed: the image holds the binary, the CA bundle for
//! `heartbeat`'s HTTPS checks, and nothing else. The binary runs as an
//! unprivileged user and carries `cap_bpf,cap_perfmon,cap_sys_admin,
//! cap_sys_ptrace+p` as file capabilities (see spawner-sidecar/src/
//! capabilities.rs for why `+p`: only those the container's bounding set
//! holds become permitted, so a sidecar granted BPF and PERFMON gets no more).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    apt,
    build::{self, run_checked, target_dir, workspace_root},
};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The repository part of the image name the manifests in deploy/ use.
pub const REPOSITORY: &str = "localhost/spawner-sidecar";
/// The unprivileged user the image runs as (the "nonroot" id distroless uses).
pub const USER: &str = "65532:65532";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The binary's file capabilities: the eBPF source's two, and node mode's
/// setns (SYS_ADMIN) and `/proc/<pid>/ns/net` reads (SYS_PTRACE).
const FILE_CAPS: &str = "cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace+p";

/// `localhost/spawner-sidecar:<workspace version>`.
pub fn name() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Podman and what it runs containers with on these machines (runc: crun
/// refuses their hybrid cgroups).
pub fn ensure_podman() -> anyhow::Result<()> {
    apt::ensure(
        &["podman", "buildah", "runc"],
        "building and running the image",
    )
}

fn ensure_musl_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|t| t.trim() == MUSL_TARGET)
    {
        println!("[image] rust target {MUSL_TARGET}: present");
        return Ok(());
    }
    println!("[image] rust target {MUSL_TARGET}: installing");
    run_checked(
        Command::new("rustup").args(["target", "add", MUSL_TARGET]),
        "rustup target add",
    )
}

/// The static release binary, stripped (symbols are a quarter of its size
/// and nothing in a container reads them): target/image/spawner-sidecar.
pub fn static_binary() -> anyhow::Result<PathBuf> {
    ensure_musl_target()?;
    // ring compiles C for the target; musl-gcc (musl-tools) is that compiler,
    // binutils' strip makes the copy we ship.
    apt::ensure(&["musl-tools", "binutils"], "the static build")?;
    println!("[image] cargo build --release --target {MUSL_TARGET} (kernel program embedded)");
    run_checked(
        build::cargo()
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
            .args(["build", "--release", "--package", "spawner-sidecar"])
            .args(["--target", MUSL_TARGET]),
        "cargo build (musl)",
    )?;
    let built = target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("spawner-sidecar");
    let dir = target_dir().join("image");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stripped = dir.join("spawner-sidecar");
    run_checked(
        Command::new("strip").arg("-o").arg(&stripped).arg(&built),
        "strip",
    )?;
    println!(
        "[image] {} ({:.1} MB, {:.1} MB before strip)",
        stripped.display(),
        mb(file_size(&stripped)?),
        mb(file_size(&built)?)
    );
    Ok(stripped)
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn containerfile() -> String {
    format!(
        "FROM scratch\n\
         COPY ca-certificates.crt {CA_BUNDLE}\n\
         COPY spawner-sidecar /spawner-sidecar\n\
         USER {USER}\n\
         ENTRYPOINT [\"/spawner-sidecar\"]\n"
    )
}

/// OCI annotations: version, licences, revision, and the source URL when
/// the checkout has a remote to name.
fn labels() -> Vec<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut labels = vec![
        format!("org.opencontainers.image.title=spawner-sidecar"),
        format!(
            "org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "org.opencontainers.image.licenses={}",
            env!("CARGO_PKG_LICENSE")
        ),
        format!(
            "org.opencontainers.image.description={}",
            "Exact TCP connection tracker (eBPF): can this pod be stopped now?"
        ),
    ];
    if let Some(rev) = git(&["rev-parse", "HEAD"]) {
        labels.push(format!("org.opencontainers.image.revision={rev}"));
    }
    match git(&["remote", "get-url", "origin"]) {
        Some(url) => labels.push(format!("org.opencontainers.image.source={url}")),
        None => {
            println!("[image] no git remote `origin`: org.opencontainers.image.source left out")
        }
    }
    labels
}

pub fn run() -> anyhow::Result<String> {
    let started = Instant::now();
    ensure_podman()?;
    apt::ensure(&["libcap2-bin", "ca-certificates"], "the image's contents")?;
    let binary = static_binary()?;
    let context = binary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir().join("image"));
    run_checked(Command::new("setcap").arg(FILE_CAPS).arg(&binary), "setcap")?;
    fs::copy(CA_BUNDLE, context.join("ca-certificates.crt"))
        .with_context(|| format!("cannot copy {CA_BUNDLE}"))?;
    fs::write(context.join("Containerfile"), containerfile())
        .context("cannot write the Containerfile")?;

    let image = name();
    println!("[image] podman build -t {image}");
    let mut cmd = Command::new("podman");
    cmd.args([
        "build",
        "--quiet",
        "--file",
        "Containerfile",
        "--tag",
        &image,
    ]);
    for label in labels() {
        cmd.arg("--label").arg(label);
    }
    run_checked(cmd.arg(".").current_dir(&context), "podman build")?;

    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .context("cannot run podman image inspect")?;
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .context("podman image inspect printed no size")?;
    println!(
        "[image] {image}: {:.1} MB ({:.0}s)",
        mb(size),
        started.elapsed().as_secs_f64()
    );
    // The budget; a larger image is a regression worth stopping for.
    if size > 15_000_000 {
        bail!("{image} is {:.1} MB, over the 15 MB budget", mb(size));
    }
    Ok(image)
}
