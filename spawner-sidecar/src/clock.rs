//! The one clock every layer shares: CLOCK_BOOTTIME in nanoseconds, which is
//! what the kernel program stamps with (`bpf_ktime_get_boot_ns()`), so kernel
//! and daemon timestamps compare directly. Depends on nothing in the crate.
use std::time::Duration;

/// CLOCK_BOOTTIME now, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every kernel this program can load on (2.6.39+), so this cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A duration in nanoseconds, saturating: settings up to hours fit easily,
/// and a larger one must mean "never", not wrap to a small number.
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_is_monotonic() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn nanos_saturates() {
        assert_eq!(nanos(Duration::from_millis(1500)), 1_500_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
