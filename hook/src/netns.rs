//! A process's addresses, read inside its network namespace.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;

/// The addresses in `pid`'s network namespace, loopback and IPv6
/// link-local left out. Empty when the process shares our namespace (host
/// networking: peers see it as the host).
pub fn addresses_of_pid(pid: u32) -> std::io::Result<Vec<IpAddr>> {
    let path = format!("/proc/{pid}/ns/net");
    let theirs = std::fs::metadata(&path)?.ino();
    let ours = std::fs::metadata("/proc/self/ns/net")?.ino();
    if theirs == ours {
        return Ok(Vec::new());
    }
    let ns = File::open(&path)?;
    // setns() changes the calling thread only: do it on a thread of its own.
    std::thread::spawn(move || -> std::io::Result<Vec<IpAddr>> {
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
            .filter(|a| {
                !a.is_loopback()
                    && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("netns reader thread panicked")))
}
