//! The `bpfwall` binary's parts:
//!
//! - [`cli`]: the command line;
//! - [`agent`]: the daemon (reconcile loop, local API, policy directory);
//! - [`runtime`]: where containers come from (Docker, the OCI hook and the
//!   `bpfwall-runc` wrapper) and the one place their reports merge;
//! - [`api`]: the daemon's local API, shared by both sides.
//!
//! The eBPF datapath is the `bpfwall-datapath` crate, what is read of the
//! host the `bpfwall-sys` crate, and the policy language and compiler the
//! pure `labels-policy` crate.

pub mod agent;
pub mod api;
pub mod cli;
pub mod runtime;
