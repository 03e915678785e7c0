//! The async runtime and the stop signal, set up the same way for the
//! daemon and every subcommand.
use std::{future::Future, process::ExitCode};

use tokio::runtime::Runtime;
use tracing::{info, warn};

/// How many worker threads a command needs.
#[derive(Clone, Copy, Debug)]
pub enum Threads {
    /// A few checks or one wait: one thread (blocking work still goes to
    /// tokio's blocking pool).
    One,
    /// The daemon: one worker per core.
    PerCore,
}

/// Blocking-pool threads at most. Reads and refreshes of the source are
/// shared by concurrent callers (`coalesce`), so a few run at once; tokio's
/// default of 512 let a crowd of callers start hundreds of threads, whose
/// stacks stayed resident until they timed out.
const MAX_BLOCKING_THREADS: usize = 8;

/// A runtime, or the one-line error already printed and the exit code.
pub fn build(threads: Threads) -> Result<Runtime, ExitCode> {
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.max_blocking_threads(MAX_BLOCKING_THREADS);
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `run` (given the stop signal) on a runtime of `threads`, then
/// exits: 0, or its error on one line and 1. Work still on the blocking
/// pool when it returns (reads cut at the shutdown deadline) ends by
/// itself; the process does not wait for it.
pub fn run_to_exit<F, Fut>(threads: Threads, run: F) -> ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match build(threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let shutdown = Box::pin(shutdown_signal(&runtime));
    let result = runtime.block_on(run(shutdown));
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call,
/// before anything is served: a signal that arrives while a source loads
/// then stops the process cleanly instead of killing it. Installing them
/// needs the runtime's signal driver, hence `runtime`.
pub fn shutdown_signal(runtime: &Runtime) -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let _context = runtime.enter();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            },
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot listen for SIGTERM/SIGINT ({e}); stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
