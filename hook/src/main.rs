//! bpfwall: label-selected L3/L4 policy for Docker containers, enforced by eBPF.
fn main() {}
