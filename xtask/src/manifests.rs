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
    crate::pip::ensure(
        "manifests",
        "kubernetes-validate",
        KUBERNETES_VALIDATE_VERSION,
        "kubernetes_validate, yaml",
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
