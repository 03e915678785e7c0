//! The kernel program's own log lines (aya-log), which it writes only on
//! its rare paths (a failed socket read, the per-connection map full, a lost
//! listener report) and for the load-time self-test, never per event.
//! Drained into the daemon's tracing after the self-test and on every
//! refresh, so a line shows up within one tick: a kernel error or warning
//! becomes a `warn!`, anything quieter a `debug!`.
use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya_log::EbpfLogger;
use tracing::{debug, warn};

/// Hands aya-log's `log` records to `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            warn!("kernel program: {}", record.args());
        } else {
            debug!("kernel program: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// The program's log ring (`AYA_LOGS`, 128 KiB) and the bridge above.
pub struct KernelLog(EbpfLogger<ToTracing>);

impl KernelLog {
    /// Opens the log ring of the loaded program. Our loader is not aya's
    /// `Ebpf`, so aya-log finds the ring through the program's id, which
    /// takes CAP_SYS_ADMIN (`BPF_PROG_GET_NEXT_ID`, `BPF_MAP_GET_FD_BY_ID`):
    /// without it the caller goes on without the kernel's log lines.
    pub fn open(program: BorrowedFd<'_>) -> Result<KernelLog, String> {
        let id = program_id(program)?;
        EbpfLogger::init_from_id_with_logger(id, ToTracing)
            .map(KernelLog)
            .map_err(|e| e.to_string())
    }

    /// Logs every line the program wrote since the last drain. The lines
    /// come from our own program, built against the same aya-log-common as
    /// this reader, so they always decode.
    pub fn drain(&mut self) {
        self.0.flush();
    }
}

/// The kernel's id of the program behind `program`, from its fdinfo.
fn program_id(program: BorrowedFd<'_>) -> Result<u32, String> {
    let path = format!("/proc/self/fdinfo/{}", program.as_raw_fd());
    let info = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no prog_id in {path}"))
}
