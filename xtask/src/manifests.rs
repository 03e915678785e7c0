//! Offline validation of deploy/*.yaml (xtask/scripts/check_manifests.py):
//! kubernetes-validate in strict mode for built-in kinds, the documented
//! fields for KEDA's and the Prometheus operator's custom resources, and the
//! image name `cargo xtask image` builds.
use std::process::Command;

use anyhow::Context as _;

use crate::build::{run_checked, workspace_root};

/// Pinned: its schemas decide which Kubernetes versions are checked.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

fn ensure_kubernetes_validate() -> anyhow::Result<()> {
    let installed = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m, kubernetes_validate, yaml; print(m.version('kubernetes-validate'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        println!("[manifests] kubernetes-validate {KUBERNETES_VALIDATE_VERSION} present");
        return Ok(());
    }
    let wanted = format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}");
    println!("[manifests] installing {wanted} (PyPI)");
    run_checked(
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            &wanted,
        ]),
        "pip install kubernetes-validate",
    )
    .context("validating the manifests needs python3 with pip and PyPI")
}

pub fn check(image: &str) -> anyhow::Result<()> {
    ensure_kubernetes_validate()?;
    let root = workspace_root();
    run_checked(
        Command::new("python3")
            .arg(root.join("xtask/scripts/check_manifests.py"))
            .arg(root.join("deploy"))
            .arg(image),
        "manifest checks",
    )
}
