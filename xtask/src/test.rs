//! `cargo xtask test`: unit tests, then the black-box tests against the
//! release binary on the real kernel, one at a time (they share the
//! kernel's sockets and ports); last, the tests that skipped, counted by
//! reason, so a skip never passes for a pass.
use std::{fs, io, process::Command};

use anyhow::{Context as _, bail};
use test_support::skip::{SKIPS_ENV, Summary};

use crate::{
    build::{self, run_checked, target_dir},
    image, manifests, seccomp, vm,
};

/// Tools the black-box tests use as ground truth or to build namespaces.
const TEST_TOOLS: &[(&str, &[&str], &str)] =
    &[("ss", &["-V"], "iproute2"), ("ip", &["-V"], "iproute2")];

/// The Prometheus project's Python client, whose parsers the metrics tests
/// use as the judge of `/metrics` (pinned: a parser is part of the test).
const PROMETHEUS_CLIENT_VERSION: &str = "0.21.1";

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    ensure_test_tools()?;
    ensure_prometheus_parser()?;
    let bin = build::release()?;
    lint()?;
    let image = image::run()?;
    seccomp::check()?;
    manifests::check(&image)?;

    println!("[test] unit and HTTP tests");
    run_checked(
        build::cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "integration-tests",
                "--",
            ])
            .args(extra),
        "unit tests",
    )?;

    println!(
        "[test] black-box tests on the real kernel with {}",
        bin.display()
    );
    // The tests append their skips here; its presence also makes a
    // kernel that cannot run the eBPF source fail the eBPF tests.
    let skips = target_dir().join("test-skips.tsv");
    match fs::remove_file(&skips) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", skips.display()));
        }
        _ => {}
    }
    let result = run_checked(
        build::cargo()
            .env("SPAWNER_SIDECAR_BIN", &bin)
            .env(SKIPS_ENV, &skips)
            .env("SPAWNER_SIDECAR_IMAGE", &image)
            .env("SPAWNER_SIDECAR_SECCOMP", seccomp::path())
            .args([
                "test",
                "--release",
                "--package",
                "integration-tests",
                // Every test file runs, so one run shows every failure.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(extra),
        "black-box tests",
    );
    let summary = Summary::read(&skips).with_context(|| format!("reading {}", skips.display()))?;
    for (test, reason) in &summary.skips {
        println!("[test] skipped {test}: {reason}");
    }
    println!("[test] {summary}");
    result?;

    // 4-20 s of VM on top of builds the image already needs (measured:
    // 6 min for a cold `test-kernel`, most of it the two musl builds).
    println!("[test] the exactness checks on Linux 6.1 in QEMU");
    vm::run()
}

/// Clippy with warnings as errors, the workspace's lints included (every
/// unsafe block documented): on the host crates, then on the kernel program
/// for its own target with the nightly that builds it.
fn lint() -> anyhow::Result<()> {
    println!("[test] clippy -D warnings");
    run_checked(
        build::cargo().args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy",
    )?;
    run_checked(
        Command::new("cargo")
            .current_dir(build::workspace_root().join("spawner-sidecar-ebpf"))
            .env("PATH", crate::setup::path_with_cargo_bin())
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]),
        "clippy on the kernel program",
    )
}

fn ensure_test_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(tool, args, _)| {
            Command::new(tool)
                .args(*args)
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|(_, _, package)| *package)
        .collect();
    if missing.is_empty() {
        println!("[test] ss and ip present");
        return Ok(());
    }
    println!(
        "[test] installing {} for the black-box tests",
        missing.join(" ")
    );
    run_checked(
        Command::new("apt-get").arg("update").arg("-q"),
        "apt-get update",
    )
    .context("the tests need ss and ip (package iproute2)")?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing),
        "apt-get install",
    )?;
    if Command::new("ss").arg("-V").output().is_err() {
        bail!("ss still missing after installing iproute2");
    }
    Ok(())
}

fn ensure_prometheus_parser() -> anyhow::Result<()> {
    crate::pip::ensure(
        "test",
        "prometheus-client",
        PROMETHEUS_CLIENT_VERSION,
        "prometheus_client.openmetrics.parser",
    )
    .context("the metrics tests need python3 with pip and PyPI")
}
