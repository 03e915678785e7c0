//! The namespace every benchmark runs in (the extra ones of the kernel-path
//! section are made with `test_support::Netns` too).

/// `spawner-bench-<pid>`: apart from the tests' namespaces and from another
/// bench running at the same time (`Netns::create` deletes a namespace of
/// the same name first, which would take a fixed name from under a run).
pub fn bench_ns() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("spawner-bench-{}", std::process::id()))
}

/// Runs `f` on a thread moved into the bench namespace (see
/// `test_support::netns::run_in` for what that does and does not move).
pub fn within<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    test_support::netns::run_in(bench_ns(), f)?
}
