//! The kernel program's rare paths reach the daemon's log (aya-log bridged
//! into tracing), and what they report stays exact: with a per-connection
//! map of one entry, the program warns that it could not record the others,
//! and the snapshots still give every connection its age. (The daemon
//! reads the log ring by the program's id, which takes CAP_SYS_ADMIN: the
//! tests run as root.)
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::Duration;

use test_support::{Server, Sidecar, eventually, free_port, http, prometheus, require_ebpf};

fn metric(sidecar: &Sidecar, name: &str, port: u16) -> Result<f64, String> {
    let response = http::get_with(sidecar.port, "/metrics", &[]);
    let body = &response.body;
    if response.code != 200 {
        return Err(format!("/metrics answered {}: {body}", response.code));
    }
    let port = port.to_string();
    prometheus::sample(&prometheus::parse(body, false), name, &[("port", &port)])
        .ok_or_else(|| format!("no {name} for port {port} in:\n{body}"))
}

#[test]
fn full_connection_map_is_logged_by_the_kernel_program_and_repaired_ebpf() {
    require_ebpf!();
    let port = free_port();
    let mut server = Server::v4(port);
    let sidecar = Sidecar::start(&[
        "--source",
        "ebpf",
        "--monitor-port",
        &port.to_string(),
        "--max-tracked-connections",
        "1",
        "--min-connection-age",
        "1s",
        "--refresh-rate-seconds",
        "1",
    ]);
    server.connect(3);
    // The first fits; the next two do not, and the program says so on its
    // first and second miss (1 and 2 are powers of two) on whichever CPU.
    eventually(Duration::from_secs(5), || {
        let log = sidecar.log();
        let warned = log
            .lines()
            .filter(|l| {
                l.contains(" WARN ") && l.contains("kernel program: per-connection map full")
            })
            .count();
        if warned >= 1 && log.contains(&format!("port {port}")) {
            Ok(())
        } else {
            Err(format!(
                "no warning from the kernel program yet; log:\n{log}"
            ))
        }
    });
    // The two it could not record come from the snapshots: all three grow
    // old enough.
    eventually(Duration::from_secs(6), || {
        let v = metric(&sidecar, "spawner_sidecar_long_lived_connections", port)?;
        if v == 3.0 {
            Ok(())
        } else {
            Err(format!("long-lived {v}, want 3; log:\n{}", sidecar.log()))
        }
    });
    server.close_all();
    eventually(Duration::from_secs(5), || {
        let v = metric(&sidecar, "spawner_sidecar_long_lived_connections", port)?;
        if v == 0.0 {
            Ok(())
        } else {
            Err(format!("long-lived {v} after closing all, want 0"))
        }
    });
}
