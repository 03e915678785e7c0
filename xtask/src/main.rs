//! `cargo xtask`: the project's own entry points, which install what they
//! need (idempotently) before they build, run or test.
mod apt;
mod bench;
mod build;
mod image;
mod manifests;
mod pip;
mod seccomp;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run and test spawner-sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain: rust-src for nightly, bpf-linker on nightly's LLVM
    Setup,
    /// Release build with the kernel program embedded: target/release/spawner-sidecar
    Build,
    /// Static (musl) build in an OCI image FROM scratch: localhost/spawner-sidecar:VERSION
    Image,
    /// Rewrite deploy/seccomp/spawner-sidecar.json from the runtime's default profile
    Seccomp,
    /// Build, then run the daemon with ARGS
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure every source side by side and write BENCHMARKS.md
    Bench {
        /// A reduced run (under 2 minutes) for development; writes
        /// target/bench/BENCHMARKS-quick.md, not BENCHMARKS.md
        #[arg(long)]
        quick: bool,
        /// Run only these sections (repeat or comma-separate); the report then
        /// goes to target/bench/BENCHMARKS-partial.md, not BENCHMARKS.md
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
        /// Minutes of churn in the soak [default: 30, or 0.75 with --quick]
        #[arg(long, value_parser = parse_minutes)]
        soak_minutes: Option<f64>,
        /// Kernel path and proxy: also run this other build of the tracker
        /// in every round, side by side with this one (NAME=PATH,
        /// repeatable; e.g. the previous program built from main)
        #[arg(long, value_name = "NAME=PATH", value_parser = parse_variant)]
        compare: Vec<(String, std::path::PathBuf)>,
    },
    /// Internal to `bench`: one timing of the procfs crate, in the namespace it runs in
    #[command(name = "procfs-count", hide = true)]
    ProcfsCount,
    /// Internal to `bench`: makes fake pods, holds them until stdin closes, removes them
    #[command(name = "bench-pods", hide = true)]
    BenchPods {
        /// Namespace names: PREFIX-0, PREFIX-1, ...
        #[arg(long)]
        prefix: String,
        /// The bench's loop namespace: deleted at the end if still there
        #[arg(long)]
        loop_netns: String,
        #[arg(long)]
        count: usize,
        /// The port each pod's process listens on
        #[arg(long)]
        port: u16,
        #[arg(long)]
        pod_server: std::path::PathBuf,
    },
    /// The exactness checks on this kernel and on Linux 6.1 (Debian's cloud kernel) in QEMU
    TestKernel,
    /// Build, then run every test: unit, HTTP and black-box tests on the real kernel
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => setup::run().and_then(|()| build::release()).map(|_| ()),
        Command::Image => setup::run().and_then(|()| image::run()).map(|_| ()),
        Command::Seccomp => seccomp::write(),
        Command::Run { args } => setup::run()
            .and_then(|()| build::release())
            .and_then(|bin| build::run(&bin, &args)),
        Command::Bench {
            quick,
            only,
            soak_minutes,
            compare,
        } => setup::run().and_then(|()| {
            bench::run(bench::Options {
                quick,
                only,
                soak_minutes,
                compare,
            })
        }),
        Command::TestKernel => setup::run().and_then(|()| vm::run()),
        Command::ProcfsCount => bench::procfs_count(),
        Command::BenchPods {
            prefix,
            loop_netns,
            count,
            port,
            pod_server,
        } => bench::pods_keeper(&prefix, &loop_netns, count, port, &pod_server),
        Command::Test { args } => setup::run().and_then(|()| test::run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_minutes(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 24.0 * 60.0 => Ok(m),
        _ => Err(format!("{value:?} is not a number of minutes in (0, 1440]")),
    }
}

/// `NAME=PATH` of `bench --compare`: a label for the report and an existing
/// tracker binary.
fn parse_variant(value: &str) -> Result<(String, std::path::PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        .ok_or_else(|| format!("{value:?} is not NAME=PATH"))?;
    let path = std::path::PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    Ok((name.to_string(), path))
}
