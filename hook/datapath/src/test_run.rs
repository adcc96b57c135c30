//! Running the datapath on made-up packets with `BPF_PROG_TEST_RUN`, for the
//! tests and the microbenchmark (feature `testing`, not in the product):
//! packet bytes, the `__sk_buff` context, and
//! a network namespace with a device of its own (the kernel treats a test
//! packet as arriving on the context's ifindex, loopback if none).

use std::net::IpAddr;
use std::process::Command;

use labels_policy::datapath_abi as abi;

use crate::{KernelDatapath, MapContents};

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

/// Ethernet + IPv6 + `ext_headers` destination-options headers (8 bytes
/// each) + an L4 header as [`ipv4_packet`] builds it (TCP with
/// `tcp_flags`, UDP, or ICMPv6 with type = `dport`).
pub fn ipv6_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    ext_headers: usize,
) -> Vec<u8> {
    // The L4 part of the IPv4 builder (its header starts after 14 + 20 bytes).
    let v4 = ipv4_packet(
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        protocol,
        sport,
        dport,
        tcp_flags,
    );
    let l4 = &v4[34..];
    const IPPROTO_DSTOPTS: u8 = 60;
    let mut ext = Vec::new();
    for i in 0..ext_headers {
        let next = if i + 1 == ext_headers {
            protocol
        } else {
            IPPROTO_DSTOPTS
        };
        // next header, length 0 (8 bytes), a PadN option filling the rest.
        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    let first = if ext_headers > 0 {
        IPPROTO_DSTOPTS
    } else {
        protocol
    };
    let payload = ext.len() + l4.len();
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x86, 0xdd]);
    p.extend_from_slice(&[
        0x60,
        0,
        0,
        0,
        (payload >> 8) as u8,
        payload as u8,
        first,
        64,
    ]);
    p.extend_from_slice(&octets(src));
    p.extend_from_slice(&octets(dst));
    p.extend_from_slice(&ext);
    p.extend_from_slice(l4);
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
    /// Conntrack shares for a test or benchmark with a few endpoints.
    pub fn set_test_shares(&mut self) -> Result<(), crate::DatapathError> {
        use crate::Datapath as _;
        let shares = crate::CtShares::for_endpoints(self.conntrack_capacity(), 65_536, 1024, 8);
        self.set_conntrack_shares(&shares)
    }

    /// Brings the maps to a compile's content through a whole change
    /// (stage, flip, prune), as a reconcile does.
    pub fn write_compiled(
        &mut self,
        compiled: &labels_policy::Compiled,
    ) -> Result<(), crate::StageError> {
        use crate::Datapath as _;
        self.stage(&MapContents::of(compiled))?;
        self.flip()?;
        self.prune()?;
        Ok(())
    }
}
