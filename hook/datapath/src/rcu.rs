//! Waiting until no packet still runs with what the maps held before: the
//! programs run under RCU, and updating an array of maps from userspace
//! returns only after an RCU grace period (the kernel's
//! `maybe_wait_bpf_programs()`; its selftests use the same call for the
//! same purpose). After [`RcuBarrier::wait`], every program run that could
//! have read the old policy revision has finished.

use std::os::fd::{AsFd as _, OwnedFd};

use crate::syscall;

/// A private array of maps whose updates are the barrier.
#[derive(Debug)]
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// Creates the two small maps the barrier needs (they are never pinned
    /// and go with the daemon).
    pub fn new() -> std::io::Result<Self> {
        let inner = syscall::create_inner_array()?;
        let outer = syscall::create_array_of_maps(inner.as_fd())?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns once every BPF program that was running when it was called
    /// has finished.
    pub fn wait(&self) -> std::io::Result<()> {
        syscall::update_array_of_maps(self.outer.as_fd(), self.inner.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (creating maps).
    #[test]
    fn a_barrier_returns() {
        let barrier = RcuBarrier::new().expect("root and BPF");
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            barrier.wait().unwrap();
        }
        eprintln!("20 barriers: {:?}", t0.elapsed());
    }
}
