//! What bpfwall reads of the host, with no policy and no eBPF in it:
//! a process's cgroup v2 directory and id ([`cgroup`]), a network
//! namespace's addresses ([`netns`]), a process's identity over time
//! ([`process`]), the host's own addresses ([`host`]), and [`IoError`],
//! the one error type for a failed file or socket operation.
//!
//! The agent reaches all of this through a small trait of its own, so its
//! logic is tested with a fake host; this crate is the real one.

pub mod cgroup;
mod error;
pub mod host;
pub mod netns;
pub mod process;

pub use error::{error_chain, io_error, IoError};
