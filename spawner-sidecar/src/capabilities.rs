//! Makes the capabilities the image grants through file capabilities
//! usable.
//!
//! The image runs as a non-root user. Kubernetes hands a non-root
//! container's `capabilities.add` only to the bounding set (no ambient
//! capabilities, kubernetes/kubernetes#56374), so the binary carries
//! `cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace+p` as file
//! capabilities: at exec the kernel puts those of them the bounding set
//! allows into the permitted set. The bounding set is what the container
//! was granted: a sidecar granted BPF and PERFMON gets those two only; node
//! mode's DaemonSet also grants SYS_ADMIN (setns into pods' namespaces) and
//! SYS_PTRACE (other processes' `ns/net` links). They are
//! deliberately not marked effective: with the effective bit the kernel
//! refuses to exec the binary at all when one is missing (a container
//! without CAP_BPF must still start and fall back to sock-diag). So we raise
//! them here, before any thread exists (capabilities are per thread and new
//! threads copy the creator's).
//! As root, or with ambient capabilities, they are already effective and
//! this changes nothing.
use caps::{CapSet, Capability};

/// What the eBPF source needs (loading programs and maps, reading kernel
/// memory from a tracing program), and what node mode needs on top:
/// entering other network namespaces and reading other processes' links.
const WANTED: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
];

/// Raises each wanted capability that is permitted but not effective.
/// Failures are left to the source that needs the capability: it reports
/// the refusal and the tracker falls back.
pub fn raise_permitted() {
    let (Ok(permitted), Ok(mut effective)) = (
        caps::read(None, CapSet::Permitted),
        caps::read(None, CapSet::Effective),
    ) else {
        return;
    };
    let missing: Vec<Capability> = WANTED
        .into_iter()
        .filter(|c| permitted.contains(c) && !effective.contains(c))
        .collect();
    if missing.is_empty() {
        return;
    }
    effective.extend(missing);
    // Logging is not set up yet: the eBPF source's own messages say
    // whether the capabilities were there in the end.
    let _ = caps::set(None, CapSet::Effective, &effective);
}
