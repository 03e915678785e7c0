//! Debian packages the tasks need, installed idempotently with apt-get.
use std::process::Command;

use anyhow::Context as _;

use crate::build::run_checked;

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed")
        })
}

/// Installs whichever of `packages` is missing; `why` names what needs them.
pub fn ensure(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("[apt] {} present", packages.join(" "));
        return Ok(());
    }
    println!("[apt] installing {} ({why})", missing.join(" "));
    run_checked(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )
    .with_context(|| format!("{why} needs the Debian packages {}", missing.join(" ")))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
    .with_context(|| format!("{why} needs the Debian packages {}", missing.join(" ")))?;
    if let Some(still) = missing.iter().find(|p| !installed(p)) {
        anyhow::bail!("{still} is still not installed after apt-get install");
    }
    println!("[apt] installed {}", missing.join(" "));
    Ok(())
}
