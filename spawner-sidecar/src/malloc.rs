//! glibc allocator settings for a long-running daemon with a small heap.
//!
//! Under churn every tick allocates and frees a snapshot of the port's
//! sockets (thousands of TIME_WAIT entries, a few hundred kB). With glibc's
//! defaults two things kept that memory resident after it was freed:
//! a per-thread arena for each blocking-pool thread that ever ran a tick,
//! each holding its own high-water mark, and the dynamic mmap threshold,
//! which rises to the size of the first large block freed so that later
//! snapshots come from the heap instead of mmap and stay there. In the
//! benchmark's soak (1 000 connections/s, ~5 600 TIME_WAIT) the tracker's
//! RSS rose by 76 kB in the second segment with the defaults and by 4 kB
//! with one arena and a fixed 128 kB threshold.

/// glibc's default threshold, pinned so it no longer moves.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Applies the settings. Call before any other thread exists: the arena
/// limit only affects threads created afterwards.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; no thread is
    // allocating concurrently this early in main.
    unsafe {
        // A failure leaves glibc's defaults, which work, only less frugally.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives freed heap back to the system (glibc keeps it for reuse, so a
/// burst's buffers would stay resident): for after start-up and bursts.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
