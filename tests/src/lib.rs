//! Fixtures only the black-box tests use: the `heartbeat` subcommand and
//! the servers it checks; the `pod-server` helper as a fake pod's process.
//! What the tests share with the benchmarks (the sidecar as a child
//! process, HTTP, `ss`, namespaces, pods, sockets, waits, skips) is in the
//! `test-support` crate.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures: a panic is a test failure"
)]

pub mod container;
pub mod heartbeat;
pub mod pod_server;
