//! Empty library target: the daemon's build script build-depends on this crate
//! so that cargo rebuilds it when the kernel program changes. The program
//! itself is the `spawner-sidecar` binary target, built for bpfel only.
#![no_std]
