//! What the reconciler reads of the host, behind a trait: [`SystemHost`]
//! reads /proc and the cgroup2 mount; the unit tests use a fake.

use std::net::IpAddr;
use std::path::PathBuf;

use bpfwall_sys::cgroup::{self, CgroupError};
use bpfwall_sys::IoError;

/// A container's cgroup v2: its directory and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlace {
    /// The directory under the cgroup2 mount.
    pub dir: PathBuf,
    /// Its id (the directory's inode), what `bpf_skb_cgroup_id()` returns.
    pub id: u64,
}

/// What the reconciler asks of the host.
pub trait Host {
    /// The cgroup v2 of a process.
    fn cgroup_of(&mut self, pid: u32) -> Result<CgroupPlace, CgroupError>;
    /// Where the daemon must never attach: the cgroup2 root and the
    /// daemon's own cgroup.
    fn forbidden_cgroups(&mut self) -> Result<Vec<PathBuf>, CgroupError>;
    /// Does a process with this pid exist?
    fn alive(&self, pid: u32) -> bool;
    /// When the process with this pid started (None: no such process).
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// The network namespace (its inode) of a process.
    fn netns(&self, pid: u32) -> Result<u64, IoError>;
    /// The daemon's own network namespace: the host's.
    fn own_netns(&self) -> Result<u64, IoError>;
    /// The addresses in a process's network namespace, link-local ones
    /// included (empty when it is the host's).
    fn netns_addresses(&self, pid: u32) -> Result<Vec<IpAddr>, IoError>;
    /// The host's own addresses.
    fn addresses(&self) -> Vec<IpAddr>;
    /// The (device, inode) of the network namespace at a path (a process's
    /// `/proc/PID/ns/net`, or a bind mount of one).
    fn netns_at(&self, path: &std::path::Path) -> Result<(u64, u64), IoError>;
}

/// The real host.
#[derive(Debug, Default)]
pub struct SystemHost {
    mount: Option<PathBuf>,
}

impl SystemHost {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn mount(&mut self) -> Result<PathBuf, CgroupError> {
        if let Some(m) = &self.mount {
            return Ok(m.clone());
        }
        let m = cgroup::cgroup2_mount()?;
        self.mount = Some(m.clone());
        Ok(m)
    }
}

impl Host for SystemHost {
    fn cgroup_of(&mut self, pid: u32) -> Result<CgroupPlace, CgroupError> {
        let mount = self.mount()?;
        let dir = cgroup::cgroup_dir_of_pid(&mount, pid)?;
        let id = cgroup::cgroup_id(&dir)?;
        Ok(CgroupPlace { dir, id })
    }

    fn forbidden_cgroups(&mut self) -> Result<Vec<PathBuf>, CgroupError> {
        let mount = self.mount()?;
        let own = cgroup::cgroup_dir_of_pid(&mount, std::process::id())?;
        Ok(vec![mount, own])
    }

    fn alive(&self, pid: u32) -> bool {
        bpfwall_sys::process::alive(pid)
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        bpfwall_sys::process::start_time(pid).ok()
    }

    fn netns(&self, pid: u32) -> Result<u64, IoError> {
        bpfwall_sys::netns::netns_inode(pid)
    }

    fn own_netns(&self) -> Result<u64, IoError> {
        bpfwall_sys::netns::netns_inode(std::process::id())
    }

    fn netns_addresses(&self, pid: u32) -> Result<Vec<IpAddr>, IoError> {
        bpfwall_sys::netns::addresses_of_pid(pid)
    }

    fn addresses(&self) -> Vec<IpAddr> {
        bpfwall_sys::host::addresses()
    }

    fn netns_at(&self, path: &std::path::Path) -> Result<(u64, u64), IoError> {
        bpfwall_sys::netns::netns_at(path)
    }
}
