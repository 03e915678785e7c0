//! The config file: flags > environment > file > defaults; bad files fail at
//! start naming the key, exit 2.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{path::PathBuf, process::Command};

use serde_json::Value;
use test_support::{Sidecar, binary, free_port};

/// A file in a directory of this test process, removed with it.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("spawner-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The followed ports, sorted: a JSON object's keys have no order.
fn followed(status: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = status["ports"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    ports.sort_unstable();
    ports
}

#[test]
fn precedence_is_flag_then_environment_then_file_then_default() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let (a, b) = (a.min(b), a.max(b));
    let file = TempFile::new(
        "layers.toml",
        &format!("monitor_port = [{a}, {b}]\nsource = \"proc\"\nmin_connection_age = 3\n"),
    );
    // File alone: its ports and source (and a plain integer as seconds).
    let sidecar = Sidecar::start(&["--config", file.path()]);
    let status = sidecar.status();
    assert_eq!(followed(&status), [a, b]);
    assert_eq!(status["source"], "proc");
    drop(sidecar);

    // The environment wins over the file; named through its variable too.
    let env = [
        ("SPAWNER_SIDECAR_CONFIG", file.path()),
        ("SPAWNER_SIDECAR_SOURCE", "sock-diag"),
    ];
    let sidecar = Sidecar::start_in(None, &[], &env);
    let status = sidecar.status();
    assert_eq!(
        (followed(&status), status["source"].clone()),
        (vec![a, b], "sock-diag".into())
    );
    drop(sidecar);

    // A flag wins over both.
    let c_text = c.to_string();
    let sidecar = Sidecar::start_in(None, &["--source", "proc", "--monitor-port", &c_text], &env);
    let status = sidecar.status();
    assert_eq!(
        (followed(&status), status["source"].clone()),
        (vec![c], "proc".into())
    );
}

fn run_with(file: &TempFile) -> (i32, String) {
    let out = Command::new(binary())
        .args([
            "--config",
            file.path(),
            "--serve-port",
            "0",
            "--source",
            "proc",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_file_fails_at_start_naming_the_key_with_exit_2() {
    for (name, text, expected) in [
        (
            "unknown.toml",
            "monitor_prot = 8080\n",
            "unknown key `monitor_prot`",
        ),
        (
            "range.toml",
            "monitor_port = [8080, 0]\n",
            "key `monitor_port`: invalid value `0`",
        ),
        (
            "enum.toml",
            "source = \"magic\"\n",
            "key `source`: invalid value `magic` (possible values: auto, ebpf, sock-diag, proc)",
        ),
        (
            "duration.toml",
            "hook_timeout = \"soon\"\n",
            "key `hook_timeout`: invalid value `soon`",
        ),
        (
            "cidr.toml",
            "ignore_peer = [\"10.0.0.0/40\"]\n",
            "key `ignore_peer`: invalid value",
        ),
        (
            "shape.toml",
            "refresh_rate_seconds = [1, 2]\n",
            "key `refresh_rate_seconds`: takes one value",
        ),
        (
            "table.toml",
            "[monitor]\nport = 1\n",
            "unknown key `monitor`",
        ),
        (
            "syntax.toml",
            "monitor_port = [\n",
            "TOML parse error at line 1",
        ),
        (
            "self.toml",
            "config = \"other.toml\"\n",
            "unknown key `config`",
        ),
    ] {
        let file = TempFile::new(name, text);
        let (code, stderr) = run_with(&file);
        assert_eq!(code, 2, "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line: {stderr}");
        assert!(
            lines[0].starts_with(&format!("error: config file {}: ", file.path()))
                && lines[0].contains(expected),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A rule between keys (on_idle needs idle_after) holds for the file too.
    let file = TempFile::new("hooks.toml", "on_idle = \"true\"\n");
    let (code, stderr) = run_with(&file);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr,
        "error: --on-idle and --on-active need --idle-after (config key idle_after)\n"
    );
    let missing = Command::new(binary())
        .args(["--config", "/nonexistent/spawner.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .starts_with("error: config file /nonexistent/spawner.toml: No such file"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
