//! `cargo xtask test-kernel`: the exactness checks (tests/src/bin/
//! kernel-check.rs) on this machine's kernel and on Debian 12's LTS kernel
//! (linux-image-cloud-amd64, 6.1), booted in QEMU.
//!
//! KVM hangs on these machines, so QEMU emulates (TCG). The VM has no disk
//! and no network: everything it needs is in the initramfs (busybox-static,
//! the static tracker, the static checker, the kernel's sock_diag modules,
//! which Debian builds as modules, and this machine's `ss` with the shared
//! libraries it loads: node mode's checks compare with it).
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    apt,
    build::{self, run_checked, target_dir},
    image,
};

const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// The modules sock_diag needs, in load order.
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const DONE: &str = "[vm] kernel-check exit ";

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("spawner-sidecar")
        .join("kernels")
}

fn stdout(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The versioned package the metapackage points at, e.g.
/// linux-image-6.1.0-57-cloud-amd64.
fn kernel_package() -> anyhow::Result<String> {
    if let Some(package) = versioned_package() {
        return Ok(package);
    }
    println!("[kernel] apt-get update (apt knows no {KERNEL_PACKAGE} yet)");
    run_checked(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    versioned_package().ok_or_else(|| anyhow!("apt knows no {KERNEL_PACKAGE}: is this Debian 12?"))
}

/// What `apt-cache depends` says the metapackage depends on, if apt knows it.
fn versioned_package() -> Option<String> {
    let text = stdout(
        Command::new("apt-cache").args(["depends", KERNEL_PACKAGE]),
        "apt-cache depends",
    )
    .ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Downloads and unpacks the kernel package once; returns its root.
fn kernel_root() -> anyhow::Result<PathBuf> {
    let package = kernel_package()?;
    let root = cache_dir().join(&package);
    if root.join("boot").is_dir() {
        println!("[kernel] {package}: cached in {}", root.display());
        return Ok(root);
    }
    let download = cache_dir().join("download");
    fs::create_dir_all(&download)?;
    println!("[kernel] downloading {package} (about 27 MB)");
    run_checked(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&download),
        "apt-get download",
    )?;
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| anyhow!("apt-get download left no {package}_*.deb"))?;
    let partial = cache_dir().join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    println!("[kernel] unpacking {}", deb.display());
    run_checked(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
        "dpkg-deb -x",
    )?;
    fs::rename(&partial, &root)?;
    let _ = fs::remove_file(&deb);
    Ok(root)
}

fn find_file(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, pred) {
                return Some(found);
            }
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
            return Some(path);
        }
    }
    None
}

/// The checker, static like the tracker.
fn kernel_check_binary() -> anyhow::Result<PathBuf> {
    println!(
        "[vm] cargo build --release --bin kernel-check --target {}",
        image::MUSL_TARGET
    );
    run_checked(
        build::cargo()
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
            .args(["build", "--release", "--package", "integration-tests"])
            .args(["--bin", "kernel-check", "--target", image::MUSL_TARGET]),
        "cargo build kernel-check (musl)",
    )?;
    Ok(target_dir()
        .join(image::MUSL_TARGET)
        .join("release")
        .join("kernel-check"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up
for m in MODULES; do insmod /modules/$m.ko && echo "[vm] module $m loaded"; done
echo "[vm] kernel $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"
/kernel-check --tracker /spawner-sidecar
echo "[vm] kernel-check exit $?"
poweroff -f
"#;

fn initramfs(kernel: &Path, tracker: &Path, checker: &Path) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("vm");
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("modules"))?;
    let copy = |from: &Path, to: &str| {
        fs::copy(from, root.join(to))
            .with_context(|| format!("cannot copy {} into the initramfs", from.display()))
    };
    copy(Path::new("/bin/busybox"), "bin/busybox")?;
    copy(tracker, "spawner-sidecar")?;
    copy(checker, "kernel-check")?;
    copy_with_libraries(&which("ss")?, &root)?;
    for module in MODULES {
        let ko = format!("{module}.ko");
        let found = find_file(&kernel.join("lib/modules"), &|n| n == ko)
            .ok_or_else(|| anyhow!("{} has no {ko}", kernel.display()))?;
        copy(&found, &format!("modules/{ko}"))?;
    }
    let init = root.join("init");
    fs::write(&init, INIT.replace("MODULES", &MODULES.join(" ")))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let image = dir.join("initramfs.cpio.gz");
    run_checked(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio --quiet -o -H newc | gzip -1 > \"$0\"")
            .arg(&image)
            .current_dir(&root),
        "cpio",
    )?;
    Ok(image)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = stdout(
        Command::new("sh")
            .arg("-c")
            .arg("command -v \"$0\"")
            .arg(program),
        &format!("command -v {program}"),
    )?;
    Ok(PathBuf::from(path.trim()))
}

/// Copies `binary` to `/bin` in `root`, and every shared library `ldd`
/// names (the loader included) to the same path there.
fn copy_with_libraries(binary: &Path, root: &Path) -> anyhow::Result<()> {
    let name = binary
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", binary.display()))?;
    fs::copy(binary, root.join("bin").join(name))
        .with_context(|| format!("cannot copy {} into the initramfs", binary.display()))?;
    let listed = stdout(Command::new("ldd").arg(binary), "ldd")?;
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the
    // loader alone: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
    for line in listed.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue; // linux-vdso.so.1: the kernel's
        };
        let to = root.join(path.trim_start_matches('/'));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(path, &to).with_context(|| format!("cannot copy {path} into the initramfs"))?;
    }
    Ok(())
}

/// Boots `vmlinuz` with `initrd`, streaming the console; Ok when the
/// checker inside exited 0.
fn boot(vmlinuz: &Path, initrd: &Path) -> anyhow::Result<()> {
    println!("[vm] booting {} in QEMU (TCG, no KVM)", vmlinuz.display());
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "512"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no QEMU stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exit = None;
    loop {
        let left = BOOT_TIMEOUT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = printable(&line);
                println!("  | {line}");
                if let Some(code) = line.strip_prefix(DONE) {
                    exit = Some(code.trim().to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the VM did not finish within {}s", BOOT_TIMEOUT.as_secs());
            }
        }
    }
    let _ = child.wait();
    println!("[vm] done in {:.0}s", started.elapsed().as_secs_f64());
    match exit.as_deref() {
        Some("0") => Ok(()),
        Some(code) => bail!("kernel-check failed in the VM (exit {code})"),
        None => bail!("the VM stopped before kernel-check finished"),
    }
}

/// The console line without terminal control sequences (SeaBIOS clears
/// the screen).
fn printable(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params letter, or ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    apt::ensure(
        &["qemu-system-x86", "busybox-static", "cpio", "iproute2"],
        "the VM test",
    )?;
    let kernel = kernel_root()?;
    let vmlinuz = find_file(&kernel.join("boot"), &|n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| anyhow!("{} has no boot/vmlinuz-*", kernel.display()))?;
    let tracker = image::static_binary()?;
    let checker = kernel_check_binary()?;

    println!("[vm] the same checks on this machine's kernel first (in a new network namespace)");
    run_checked(
        Command::new("unshare")
            .args(["--net", "--", "sh", "-c"])
            .arg("ip link set lo up && exec \"$0\" --tracker \"$1\"")
            .arg(&checker)
            .arg(&tracker),
        "kernel-check on this machine",
    )?;

    let initrd = initramfs(&kernel, &tracker, &checker)?;
    boot(&vmlinuz, &initrd)?;
    println!(
        "[vm] all kernels passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
