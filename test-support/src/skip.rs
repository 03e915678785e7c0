//! Skipped tests that never look like passes. libtest shows a passing
//! test's output only when it fails, so a test that prints `skipping` and
//! returns reads `ok`. Here a skip is written straight to stderr (not
//! through `print!`, which libtest captures) and, under `cargo xtask test`,
//! appended to the file named by [`SKIPS_ENV`], from which xtask prints the
//! skips by reason at the end of the run.
//!
//! A test may skip only where the kernel lacks a feature. Under
//! `cargo xtask test` the eBPF source is not such a feature: a kernel that
//! cannot run it fails every eBPF test (see [`ebpf_missing`]).

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Write as _},
    path::Path,
};

/// Set by `cargo xtask test` to the file skips are recorded in; its
/// presence also makes a missing eBPF source a failure.
pub const SKIPS_ENV: &str = "SPAWNER_SIDECAR_TEST_SKIPS";

/// Records that the running test skips for `reason` (say it as "kernel
/// lacks X"), and says so on stderr. The caller returns right after.
pub fn skip(reason: &str) {
    let current = std::thread::current();
    // libtest runs each test on a thread named after it.
    let test = current.name().unwrap_or("unnamed test");
    let reason = reason.replace(['\t', '\n'], " ");
    let _ = writeln!(io::stderr(), "skipped: {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        let recorded = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            // One write per line: appends of a few bytes do not interleave.
            .and_then(|mut file| file.write_all(format!("{test}\t{reason}\n").as_bytes()));
        if let Err(e) = recorded {
            panic!(
                "cannot record the skip in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// [`skip`] because the kernel lacks `feature`.
pub fn kernel_lacks(feature: &str) {
    skip(&format!("kernel lacks {feature}"));
}

/// Whether `socket(2)` failed because the kernel has no such protocol
/// (not built, module absent, or disabled by sysctl as MPTCP can be),
/// rather than for a reason a test should fail on.
pub fn protocol_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT | libc::ENOPROTOOPT
        )
    )
}

/// For the eBPF source's tests: `false` where the kernel can run it. Where
/// it cannot, the test fails under `cargo xtask test`; run otherwise, the
/// skip is recorded and `true` tells the caller to return. Use it through
/// [`require_ebpf!`](crate::require_ebpf).
pub fn ebpf_missing() -> bool {
    let strict = std::env::var_os(SKIPS_ENV).is_some();
    match ebpf_verdict(crate::bpf::ebpf_supported(), strict) {
        EbpfVerdict::Run => false,
        EbpfVerdict::Fail(why) => panic!("{why}"),
        EbpfVerdict::Skip(reason) => {
            skip(&reason);
            true
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum EbpfVerdict {
    Run,
    Skip(String),
    Fail(String),
}

/// What an eBPF test does, given whether the kernel can run the source
/// and whether this is a `cargo xtask test` run.
fn ebpf_verdict(supported: Result<(), String>, strict: bool) -> EbpfVerdict {
    match supported {
        Ok(()) => EbpfVerdict::Run,
        Err(reason) if strict => EbpfVerdict::Fail(format!(
            "the eBPF source cannot run here ({reason}); `cargo xtask test` runs every eBPF test"
        )),
        Err(reason) => EbpfVerdict::Skip(reason),
    }
}

/// Returns from the calling test where the eBPF source cannot run (a
/// failure under `cargo xtask test`, see [`skip::ebpf_missing`](crate::skip::ebpf_missing)).
#[macro_export]
macro_rules! require_ebpf {
    () => {
        if $crate::skip::ebpf_missing() {
            return;
        }
    };
}

/// The skips of one run, as recorded in the [`SKIPS_ENV`] file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// (test, reason), in the order they happened.
    pub skips: Vec<(String, String)>,
}

impl Summary {
    /// The file's skips; no file means none.
    pub fn read(path: &Path) -> io::Result<Summary> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Summary::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Summary::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Summary {
        Summary {
            skips: text
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(test, reason)| (test.to_string(), reason.to_string()))
                .collect(),
        }
    }
}

/// `skipped: 2 (kernel lacks MPTCP: 1, kernel lacks SCTP: 1)`; `skipped: 0`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, reason) in &self.skips {
            *by_reason.entry(reason).or_default() += 1;
        }
        write!(f, "skipped: {}", self.skips.len())?;
        if !by_reason.is_empty() {
            let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_by_reason() {
        let s =
            Summary::parse("a\tkernel lacks SCTP\nb\tkernel lacks MPTCP\nc\tkernel lacks SCTP\n");
        assert_eq!(s.skips.len(), 3);
        assert_eq!(
            s.to_string(),
            "skipped: 3 (kernel lacks MPTCP: 1, kernel lacks SCTP: 2)"
        );
        assert_eq!(Summary::default().to_string(), "skipped: 0");
    }

    #[test]
    fn no_file_is_no_skip() {
        let s = Summary::read(Path::new("/nonexistent/skips")).unwrap();
        assert_eq!(s, Summary::default());
    }

    #[test]
    fn a_kernel_without_ebpf_fails_under_xtask_and_skips_elsewhere() {
        let no = || Err("kernel lacks BTF".to_string());
        assert_eq!(ebpf_verdict(Ok(()), true), EbpfVerdict::Run);
        assert_eq!(ebpf_verdict(Ok(()), false), EbpfVerdict::Run);
        assert!(
            matches!(ebpf_verdict(no(), true), EbpfVerdict::Fail(why) if why.contains("kernel lacks BTF"))
        );
        assert_eq!(
            ebpf_verdict(no(), false),
            EbpfVerdict::Skip("kernel lacks BTF".into())
        );
    }

    #[test]
    fn a_missing_protocol_is_told_from_other_errors() {
        assert!(protocol_missing(&io::Error::from_raw_os_error(
            libc::EPROTONOSUPPORT
        )));
        assert!(protocol_missing(&io::Error::from_raw_os_error(
            libc::ENOPROTOOPT
        )));
        assert!(!protocol_missing(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!protocol_missing(&io::Error::other("no errno")));
    }
}
