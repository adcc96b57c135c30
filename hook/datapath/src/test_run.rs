//! Running the datapath on made-up packets with `BPF_PROG_TEST_RUN`, for the
//! tests and the microbenchmark (feature `testing`, not in the product):
//! packet bytes, the `__sk_buff` context, and
//! a network namespace with a device of its own (the kernel treats a test
//! packet as arriving on the context's ifindex, loopback if none).

use std::net::IpAddr;
use std::process::Command;

use labels_policy::datapath_abi as abi;

use crate::maps::{diff, MapContents};
use crate::{DatapathError, KernelDatapath};

/// `sizeof(struct __sk_buff)`.
pub const SKB_CTX_SIZE: usize = 192;
/// `offsetof(struct __sk_buff, ifindex)`.
pub const SKB_CTX_IFINDEX: usize = 40;

/// TCP flags for [`ipv4_packet`].
pub const TCP_SYN: u8 = 0x02;
/// See [`TCP_SYN`].
pub const TCP_ACK: u8 = 0x10;

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Ethernet + IPv4 + an L4 header: TCP (with `tcp_flags`), UDP, or ICMP
/// (type = `dport`, echo id 0x1234).
pub fn ipv4_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let mut l4 = Vec::new();
    match protocol {
        abi::IPPROTO_TCP => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                5 << 4,
                tcp_flags,
                0xff,
                0xff,
                0,
                0,
                0,
                0,
            ]);
        }
        abi::IPPROTO_UDP => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0, 8, 0, 0]);
        }
        _ => l4.extend_from_slice(&[dport as u8, 0, 0, 0, 0x12, 0x34, 0, 1]),
    }
    let total = 20 + l4.len();
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        protocol,
        0,
        0,
    ]);
    p.extend_from_slice(&octets(src));
    p.extend_from_slice(&octets(dst));
    p.extend_from_slice(&l4);
    p
}

/// A `__sk_buff` context whose packet arrives on `ifindex`.
pub fn skb_ctx(ifindex: u32) -> [u8; SKB_CTX_SIZE] {
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Moves the calling thread into a new network namespace with a veth pair
/// of its own, and returns one end's ifindex. Needs root and iproute2.
pub fn enter_own_netns() -> std::io::Result<u32> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    for args in [
        &[
            "link", "add", "bpfwt0", "type", "veth", "peer", "name", "bpfwt1",
        ][..],
        &["link", "set", "bpfwt0", "up"],
    ] {
        let status = Command::new("ip").args(args).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("ip {args:?} failed")));
        }
    }
    nix::net::if_::if_nametoindex("bpfwt0").map_err(std::io::Error::from)
}

/// The cgroup v2 id of this process (a test packet's socket is in it).
pub fn own_cgroup_id() -> Result<u64, bpfwall_sys::cgroup::CgroupError> {
    use bpfwall_sys::cgroup;
    let mount = cgroup::cgroup2_mount()?;
    let dir = cgroup::cgroup_dir_of_pid(&mount, std::process::id())?;
    cgroup::cgroup_id(&dir)
}

impl KernelDatapath {
    /// Brings the maps from `current` to a compile's content, as a reconcile does.
    pub fn write_compiled(
        &mut self,
        current: &MapContents,
        compiled: &labels_policy::Compiled,
    ) -> Result<(), DatapathError> {
        let mut maps = self.maps()?;
        let e = diff(&current.endpoints, &compiled.endpoints);
        let i = diff(&current.ipcache, &compiled.ipcache);
        let p = diff(&current.policy, &compiled.policy);
        maps.upsert_policy(&p.upsert)?;
        maps.upsert_ipcache(&i.upsert)?;
        maps.upsert_endpoints(&e.upsert)?;
        maps.remove_endpoints(&e.remove)?;
        maps.remove_ipcache(&i.remove)?;
        maps.remove_policy(&p.remove)?;
        maps.bump_policy_revision().map(|_| ())
    }
}
