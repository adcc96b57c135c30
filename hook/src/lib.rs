//! The bpfwall daemon's parts: cgroup discovery, the eBPF datapath, the
//! Docker listener, the reconciler and the local API. The `bpfwall` binary
//! (src/main.rs) wires them together.

pub mod api;
pub mod bench_support;
pub mod cgroup;
pub mod daemon;
pub mod datapath;
pub mod docker_events;
pub mod netns;
pub mod oci_hook;
pub mod policy_dir;
pub mod reconcile;
pub mod runtime_install;
pub mod runtime_wrapper;
pub mod status;
