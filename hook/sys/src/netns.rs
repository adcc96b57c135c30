//! A process's network namespace and the addresses in it.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use crate::error::{io_error, IoError};

/// The inode of a process's network namespace (equal for processes that
/// share one).
pub fn netns_inode(pid: u32) -> Result<u64, IoError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(io_error("read", &path))
}

/// The (device, inode) of the network namespace at `path` (a
/// `/proc/PID/ns/net` link, or a bind mount of one such as Docker's
/// sandbox keys). A path that is not a namespace has another device.
pub fn netns_at(path: &std::path::Path) -> Result<(u64, u64), IoError> {
    std::fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(io_error("stat", path))
}

/// The addresses in `pid`'s network namespace, IPv6 link-local ones
/// included (a container may send from them: they are its identity too),
/// loopback left out. Empty when the process shares our namespace (host
/// networking: peers see it as the host).
pub fn addresses_of_pid(pid: u32) -> Result<Vec<IpAddr>, IoError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    if netns_inode(pid)? == netns_inode(std::process::id())? {
        return Ok(Vec::new());
    }
    let ns = File::open(&path).map_err(io_error("open", &path))?;
    // setns() changes the calling thread only: do it on a thread of its own.
    let read = std::thread::spawn(move || -> std::io::Result<Vec<IpAddr>> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map_err(std::io::Error::from)?
            .filter_map(|a| a.address)
            .filter_map(|sa| {
                sa.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .filter(|a| !a.is_loopback())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("netns reader thread panicked")));
    read.map_err(io_error("list the addresses in", &path))
}
