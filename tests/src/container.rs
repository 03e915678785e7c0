//! The tracker's image run by podman, the way these machines can run it:
//! runc (crun refuses their hybrid cgroups), cgroupfs, and ulimits within
//! the machine's hard limit. Each container gets its own network namespace
//! with only loopback (`--network none`); tests reach into it with setns.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The image `cargo xtask test` built (`cargo xtask image`).
pub fn image() -> String {
    std::env::var("SPAWNER_SIDECAR_IMAGE")
        .expect("SPAWNER_SIDECAR_IMAGE unset: run the container tests with `cargo xtask test`")
}

/// The seccomp profile the project ships (deploy/seccomp/).
pub fn seccomp_profile() -> String {
    std::env::var("SPAWNER_SIDECAR_SECCOMP")
        .expect("SPAWNER_SIDECAR_SECCOMP unset: run the container tests with `cargo xtask test`")
}

/// A running container, removed when dropped.
pub struct Container {
    pub name: String,
    pub pid: u32,
}

impl Container {
    /// `podman run` of the image with `podman_args` before the image name
    /// and `args` for the tracker; waits until it serves.
    pub fn start(tag: &str, podman_args: &[&str], args: &[&str]) -> Container {
        let name = format!("spawner-sidecar-test-{tag}-{}", std::process::id());
        let _ = podman(&["rm", "--force", &name]);
        let out = Command::new("podman")
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "run"])
            .args(["--detach", "--name", &name, "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:20000",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--env", "RUST_LOG=info"])
            .args(podman_args)
            .arg(image())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &name])
            .trim()
            .parse()
            .unwrap();
        let container = Container { name, pid };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !container.logs().contains(" serving ") {
            assert!(
                Instant::now() < deadline,
                "the tracker did not serve within 20 s; log:\n{}",
                container.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        container
    }

    /// What the tracker printed (stderr) so far.
    pub fn logs(&self) -> String {
        let out = Command::new("podman")
            .args(["logs", &self.name])
            .output()
            .expect("run podman logs");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `podman exec` of the image's binary with `args` in the running
    /// container (same user, capabilities and seccomp profile): its exit
    /// code and stderr.
    pub fn exec(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new("podman")
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "exec"])
            .arg(&self.name)
            .arg("/spawner-sidecar")
            .args(args)
            .output()
            .expect("run podman exec");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// A line of the tracker's /proc/PID/status, e.g. `Uid` or `CapEff`.
    pub fn proc_status(&self, key: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid))
            .trim()
            .to_string()
    }

    /// Runs `f` on a thread inside the container's network namespace:
    /// sockets it creates live there.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.pid);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a valid namespace fd; only this thread moves.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// `GET path` on the tracker's port 7070, inside its namespace.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let path = path.to_string();
        self.run_in(move || test_support::http::get(7070, &path))
    }

    /// `ss`'s count of `state` sockets on local port `port` in the
    /// container's namespace.
    pub fn ss_count(&self, state: &str, port: u16) -> u64 {
        let out = Command::new("nsenter")
            .args(["--target", &self.pid.to_string(), "--net", "ss", "-Htan"])
            .args(["state", state, &format!("( sport = :{port} )")])
            .output()
            .expect("run nsenter ss");
        assert!(out.status.success(), "ss failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "2", &self.name]);
    }
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("run podman");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A pod's cgroup as the kubelet's cgroupfs driver names it
/// (`/kubepods/besteffort/pod<uid>`), given to podman as the container's
/// `--cgroup-parent`: runc then creates the container's own cgroup below
/// it in every hierarchy, as containerd or CRI-O do under a kubelet.
/// Dropping it removes the pod's directories the runtime left (the
/// kubelet's job); drop it after the containers in it.
pub struct BestEffortPod {
    pub uid: String,
}

impl BestEffortPod {
    pub fn create() -> BestEffortPod {
        BestEffortPod {
            uid: test_support::pods::uuid_v4().unwrap(),
        }
    }

    /// `--cgroup-parent=...` for `podman run`.
    pub fn cgroup_parent_arg(&self) -> String {
        format!("--cgroup-parent=/kubepods/besteffort/pod{}", self.uid)
    }
}

impl Drop for BestEffortPod {
    fn drop(&mut self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in hierarchies.flatten() {
            let dir = hierarchy
                .path()
                .join(format!("kubepods/besteffort/pod{}", self.uid));
            // podman's cgroupfs manager puts each container's conmon in
            // `<parent>/conmon`, beside the container.
            let _ = std::fs::remove_dir(dir.join("conmon"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}
