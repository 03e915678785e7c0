//! The daemon under test: the real binary started as a child process,
//! serving on loopback (in our namespace or another), stopped with SIGTERM.

use std::{
    io,
    path::PathBuf,
    process::{Command, ExitStatus},
    time::Duration,
};

use serde_json::Value;

use crate::{bpf, http, netns, process::Process, procinfo};

/// How long start-up (loading the kernel program included) may take on a
/// loaded machine before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long SIGTERM may take to end it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: `cargo xtask test` sets SPAWNER_SIDECAR_BIN to the
/// release build with the kernel program embedded.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPAWNER_SIDECAR_BIN") {
        let bin = PathBuf::from(bin);
        // Tests run from their own crate's directory: anchor relative paths.
        return std::fs::canonicalize(&bin).unwrap_or(bin);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let candidate = root.join("target").join(profile).join("spawner-sidecar");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("no spawner-sidecar binary: run the tests with `cargo xtask test`");
}

/// How to start a sidecar.
pub struct Launch<'a> {
    pub bin: PathBuf,
    /// The namespace it runs in (`None`: ours).
    pub netns: Option<&'a str>,
    /// Its HTTP port on 127.0.0.1; 0 lets it pick one (read from its log).
    pub serve_port: u16,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, &'a str)>,
    /// Prefix for echoing its non-INFO log lines to our stderr.
    pub echo: Option<&'static str>,
}

impl<'a> Launch<'a> {
    /// [`binary`] with `args`, in our namespace, on a port of its choosing.
    pub fn new(args: &[&str]) -> Launch<'a> {
        Launch {
            bin: binary(),
            netns: None,
            serve_port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            echo: None,
        }
    }
}

/// A running sidecar, stopped with SIGTERM when dropped.
pub struct Sidecar {
    process: Process,
    /// Its HTTP port on 127.0.0.1 of its namespace.
    pub port: u16,
}

impl Sidecar {
    /// Starts it without waiting, so several can load their programs at
    /// once; [`Sidecar::wait_serving`] waits.
    pub fn spawn(launch: &Launch) -> io::Result<Sidecar> {
        let mut cmd: Command = netns::command(launch.netns, &launch.bin);
        cmd.args(["--serve-address", "127.0.0.1"])
            .args(["--serve-port", &launch.serve_port.to_string()])
            .args(&launch.args)
            .envs(launch.env.iter().copied())
            .env("RUST_LOG", "info");
        let process = Process::spawn(&mut cmd, launch.echo).map_err(|e| {
            io::Error::new(e.kind(), format!("starting {}: {e}", launch.bin.display()))
        })?;
        Ok(Sidecar {
            process,
            port: launch.serve_port,
        })
    }

    /// Waits until it serves (its log says where); if it does not, the
    /// error carries its log.
    pub fn wait_serving(&mut self) -> io::Result<()> {
        self.port = self.process.wait_serving(START_TIMEOUT)?;
        Ok(())
    }

    /// Starts the binary with `args` and waits until it serves; panics
    /// (with its log) if it does not.
    pub fn start(args: &[&str]) -> Sidecar {
        Self::start_in(None, args, &[])
    }

    /// As [`Sidecar::start`], optionally inside network namespace `netns`,
    /// with extra environment variables.
    pub fn start_in(netns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let mut launch = Launch::new(args);
        launch.netns = netns;
        launch.env = env.to_vec();
        let mut sidecar = Sidecar::spawn(&launch).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = sidecar.wait_serving() {
            panic!("sidecar did not start: {e}");
        }
        sidecar
    }

    /// Starts `spawner-sidecar node ARGS` (one tracker for every namespace
    /// of the host) in our namespace, serving on 127.0.0.1 on a port of its
    /// choosing, and waits until it serves; panics (with its log) if it does not.
    pub fn start_node(args: &[&str]) -> Sidecar {
        let mut cmd = Command::new(binary());
        cmd.arg("node")
            .args(["--serve-address", "127.0.0.1", "--serve-port", "0"])
            .args(args);
        Self::start_command(&mut cmd, Some("node:"))
    }

    /// Starts `cmd`, the binary with every argument (`--serve-port` among
    /// them) wrapped as the caller needs (in a pod's cgroup, say), and waits
    /// until it serves; panics (with its log) if it does not. With `echo`,
    /// its lines other than INFO ones are printed to our stderr with that prefix.
    pub fn start_command(cmd: &mut Command, echo: Option<&'static str>) -> Sidecar {
        cmd.env("RUST_LOG", "info");
        let process = Process::spawn(cmd, echo).unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let mut sidecar = Sidecar { process, port: 0 };
        if let Err(e) = sidecar.wait_serving() {
            panic!("{cmd:?} did not start: {e}");
        }
        sidecar
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// How many log lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.process.count(needle)
    }

    /// When the first log line containing `needle` arrived.
    pub fn line_time(&self, needle: &str) -> Option<std::time::Instant> {
        self.process.line_time(needle)
    }

    /// Ids of the BPF programs this sidecar holds.
    pub fn program_ids(&self) -> Vec<u32> {
        let held = procinfo::held_programs(self.pid())
            .unwrap_or_else(|e| panic!("fdinfo of sidecar {}: {e}", self.pid()));
        let mut ids: Vec<u32> = held.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Counter `index` (`bpf::STAT_*`) of the one program this sidecar
    /// holds: what its kernel program has seen so far.
    pub fn program_stat(&self, index: u32) -> u64 {
        let ids = self.program_ids();
        let [id] = ids[..] else {
            panic!("the sidecar holds programs {ids:?}, expected one");
        };
        bpf::program_stat(id, index).unwrap_or_else(|e| panic!("program {id} counters: {e}"))
    }

    /// `GET path` on its port (from our namespace: for a sidecar in another
    /// one, call this on a thread in that namespace).
    pub fn get(&self, path: &str) -> (u16, Value) {
        http::get(self.port, path)
    }

    /// `GET /`, which must answer 200.
    pub fn status(&self) -> Value {
        let (code, body) = self.get("/");
        assert_eq!(
            code,
            200,
            "GET / answered {code}: {body}\nlog:\n{}",
            self.log()
        );
        body
    }

    /// `/metrics` in the classic format, as Prometheus's parser reads it.
    pub fn metrics(&self) -> Vec<crate::prometheus::Sample> {
        let response = http::get_with(self.port, "/metrics", &[]);
        assert_eq!(response.code, 200, "{}", response.body);
        crate::prometheus::parse(&response.body, false)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
            .unwrap_or_else(|e| panic!("sidecar did not stop on SIGTERM: {e}"))
    }

    pub fn terminate(&mut self) -> io::Result<ExitStatus> {
        self.process.terminate(STOP_TIMEOUT)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Err(e) = self.terminate()
            && !std::thread::panicking()
        {
            panic!("sidecar did not stop on SIGTERM: {e}");
        }
    }
}

/// `field` of the sidecar's status as a number.
pub fn field(sidecar: &Sidecar, name: &str) -> u64 {
    let status = sidecar.status();
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing in {status}"))
}
