//! Python packages the checks use as judges, pinned and installed from
//! PyPI only when the pinned version is not already importable.
use std::process::Command;

use crate::build::run_checked;

/// Installs `package==version` unless `python3` can already import
/// `modules` (comma-separated) with that version installed. `tag` prefixes
/// the progress lines.
pub fn ensure(tag: &str, package: &str, version: &str, modules: &str) -> anyhow::Result<()> {
    let probe = format!("import importlib.metadata as m, {modules}; print(m.version('{package}'))");
    let installed = Command::new("python3")
        .args(["-c", &probe])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(version) {
        println!("[{tag}] {package} {version} present");
        return Ok(());
    }
    let wanted = format!("{package}=={version}");
    println!("[{tag}] installing {wanted} (PyPI)");
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
        &format!("pip install {wanted}"),
    )
}
