//! What the black-box tests (`tests/`) and the benchmarks (`xtask bench`)
//! share: the real binary as a child process, raw HTTP to it, `ss` as the
//! ground truth, network namespaces, pods made as a kubelet makes them,
//! real sockets, what /proc and the kernel's BPF objects say about the
//! process, and waits with a bound.
//! Functions that return `Result` serve both; the others panic with a
//! message, as a test wants.
#![allow(
    clippy::unwrap_used,
    reason = "test support: a panic is a test failure"
)]

pub mod bpf;
pub mod expect;
pub mod http;
pub mod netns;
pub mod pods;
pub mod process;
pub mod procinfo;
pub mod prometheus;
pub mod sidecar;
pub mod skip;
pub mod sockets;
pub mod ss;
pub mod wait;

pub use netns::Netns;
pub use pods::{FakePod, PodSpec};
pub use sidecar::{Sidecar, binary, field};
pub use sockets::{Server, free_port};
pub use wait::{eventually, wait_until};
