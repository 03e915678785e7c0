//! The namespace every benchmark runs in (the extra ones of the kernel-path
//! section are made with `test_support::Netns` too).

/// Nothing else on the machine uses this name.
pub const NETNS: &str = "spawner-bench";

/// Runs `f` on a thread moved into the bench namespace (see
/// `test_support::netns::run_in` for what that does and does not move).
pub fn within<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    test_support::netns::run_in(NETNS, f)?
}
