//! The network plugin's gate (bpf-src/network_gate.h) under
//! BPF_PROG_TEST_RUN, row by row of the table beside the code: closed
//! until bound, its own addresses only, internal networks, and the ARP and
//! neighbour-discovery answers it writes itself (checked byte for byte,
//! the ICMPv6 checksum recomputed here).
//!
//! Needs root and BPF; runs in a network namespace of its own (the kernel
//! takes a test packet's device from the context's ifindex).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use bpfwall_datapath::test_run::{self, skb_ctx};
use bpfwall_datapath::NetworkGate;
use labels_policy::datapath_abi::{self as abi, NetgateDrop, NetgateEndpoint};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const HOST_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0x00, 0x00, 0x01];
const CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0x00, 0x05];

fn own4() -> Ipv4Addr {
    "10.77.0.5".parse().unwrap()
}
fn peer4() -> Ipv4Addr {
    "10.77.0.6".parse().unwrap()
}
fn own6() -> Ipv6Addr {
    "fd00:77::5".parse().unwrap()
}
fn peer6() -> Ipv6Addr {
    "fd00:77::6".parse().unwrap()
}

fn endpoint(flags: u32) -> NetgateEndpoint {
    NetgateEndpoint {
        flags: flags | abi::NETGATE_IPV4 | abi::NETGATE_IPV6,
        host_mac: HOST_MAC,
        subnet4_len: 24,
        subnet6_len: 64,
        addr4: own4().octets(),
        subnet4: "10.77.0.0".parse::<Ipv4Addr>().unwrap().octets(),
        addr6: own6().octets(),
        subnet6: "fd00:77::".parse::<Ipv6Addr>().unwrap().octets(),
    }
}

struct Gate {
    gate: NetworkGate,
    ifindex: u32,
}

impl Gate {
    fn new() -> Gate {
        let ifindex = test_run::enter_own_netns()
            .expect("a netns with a veth of the test's own (needs root and iproute2)");
        let gate = NetworkGate::load(None).expect("load the gate (needs root and BPF)");
        Gate { gate, ifindex }
    }

    fn set(&mut self, ep: &NetgateEndpoint) {
        self.gate.set(self.ifindex, ep).unwrap();
    }

    /// Runs a frame through a program: its return value, the frame after
    /// it, and the drop reasons it counted.
    fn run(&mut self, prog: &'static str, frame: &[u8]) -> (u32, Vec<u8>, Vec<NetgateDrop>) {
        let before = self.gate.drops().unwrap();
        let ctx = skb_ctx(self.ifindex);
        let mut out = vec![0u8; frame.len() + 64];
        let result = self
            .gate
            .program(prog)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .unwrap();
        out.truncate(result.data_size_out as usize);
        let after = self.gate.drops().unwrap();
        let counted = NetgateDrop::ALL
            .into_iter()
            .filter(|r| after[r] > before[r])
            .collect();
        (result.return_value, out, counted)
    }

    /// From the container: passed, or dropped for one reason.
    fn sent(&mut self, frame: &[u8]) -> Result<(), NetgateDrop> {
        verdict(self.run(abi::PROG_NETGATE_IN, frame))
    }

    /// To the container.
    fn received(&mut self, frame: &[u8]) -> Result<(), NetgateDrop> {
        verdict(self.run(abi::PROG_NETGATE_OUT, frame))
    }
}

fn verdict((rv, _, counted): (u32, Vec<u8>, Vec<NetgateDrop>)) -> Result<(), NetgateDrop> {
    match (rv, counted.as_slice()) {
        (TC_ACT_OK, []) => Ok(()),
        (TC_ACT_SHOT, [reason]) => Err(*reason),
        (rv, counted) => panic!("returned {rv} with drop counters {counted:?}"),
    }
}

fn tcp_syn(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut f = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            test_run::ipv4_packet(src, dst, abi::IPPROTO_TCP, 40000, 80, test_run::TCP_SYN)
        }
        _ => test_run::ipv6_packet(src, dst, abi::IPPROTO_TCP, 40000, 80, test_run::TCP_SYN, 0),
    };
    f[0..6].copy_from_slice(&HOST_MAC);
    f[6..12].copy_from_slice(&CONTAINER_MAC);
    f
}

fn arp(op: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CONTAINER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&CONTAINER_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The ones' complement sum of the ICMPv6 pseudo-header and message.
fn icmp6_checksum(src: &[u8], dst: &[u8], icmp: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(src);
    data.extend_from_slice(dst);
    data.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, abi::IPPROTO_ICMPV6]);
    data.extend_from_slice(icmp);
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMPv6 neighbour message (type 135 or 136) from `src` to `dst` for
/// `target`, with a link-layer option of `option` type (0: none).
fn nd(kind: u8, src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, option: u8) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    if option != 0 {
        icmp.extend_from_slice(&[option, 1]);
        icmp.extend_from_slice(&CONTAINER_MAC);
    }
    let sum = icmp6_checksum(&src.octets(), &dst.octets(), &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, 0, 0, 6];
    f.extend_from_slice(&CONTAINER_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[abi::IPPROTO_ICMPV6, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

#[test]
fn closed_until_bound_then_open_to_what_the_cgroup_programs_decide() {
    let mut g = Gate::new();
    let syn4 = tcp_syn(ip(own4()), ip(peer4()));
    let syn6 = tcp_syn(ip(own6()), ip(peer6()));
    let in4 = tcp_syn(ip(peer4()), ip(own4()));
    let in6 = tcp_syn(ip(peer6()), ip(own6()));

    // No entry: nothing passes, either way.
    assert_eq!(g.sent(&syn4), Err(NetgateDrop::Unknown));
    assert_eq!(g.received(&in4), Err(NetgateDrop::Unknown));

    g.set(&endpoint(0));
    for f in [&syn4, &syn6] {
        assert_eq!(g.sent(f), Err(NetgateDrop::Closed));
    }
    for f in [&in4, &in6] {
        assert_eq!(g.received(f), Err(NetgateDrop::Closed));
    }

    g.set(&endpoint(abi::NETGATE_OPEN));
    for f in [&syn4, &syn6] {
        assert_eq!(g.sent(f), Ok(()));
    }
    for f in [&in4, &in6] {
        assert_eq!(g.received(f), Ok(()));
    }
    // Outside the network too (the world, through the host).
    assert_eq!(
        g.sent(&tcp_syn(ip(own4()), ip(Ipv4Addr::new(198, 51, 100, 7)))),
        Ok(())
    );
}

#[test]
fn a_container_sends_only_from_its_own_addresses_open_or_not() {
    let mut g = Gate::new();
    for flags in [0, abi::NETGATE_OPEN] {
        g.set(&endpoint(flags));
        assert_eq!(
            g.sent(&tcp_syn(ip(peer4()), ip(own4()))),
            Err(NetgateDrop::Spoofed)
        );
        assert_eq!(
            g.sent(&tcp_syn(ip(peer6()), ip(own6()))),
            Err(NetgateDrop::Spoofed)
        );
        assert_eq!(
            g.sent(&arp(1, peer4(), "10.77.0.1".parse().unwrap())),
            Err(NetgateDrop::Spoofed),
            "an ARP request claiming a peer's address"
        );
        assert_eq!(
            g.sent(&nd(136, own6(), "ff02::1".parse().unwrap(), peer6(), 2)),
            Err(NetgateDrop::Spoofed),
            "an advertisement for a peer's address"
        );
        let ra = {
            let mut f = nd(
                135,
                "fe80::5".parse().unwrap(),
                "ff02::1".parse().unwrap(),
                own6(),
                0,
            );
            f[54] = 134;
            f
        };
        assert_eq!(g.sent(&ra), Err(NetgateDrop::Neighbour));
    }
    // A family the network lacks.
    let mut v4_only = endpoint(abi::NETGATE_OPEN);
    v4_only.flags &= !abi::NETGATE_IPV6;
    g.set(&v4_only);
    assert_eq!(
        g.sent(&tcp_syn(ip(own6()), ip(peer6()))),
        Err(NetgateDrop::Protocol)
    );
    let mut other = tcp_syn(ip(own4()), ip(peer4()));
    other[12..14].copy_from_slice(&[0x88, 0xcc]); // LLDP
    assert_eq!(g.sent(&other), Err(NetgateDrop::Protocol));
}

#[test]
fn an_internal_network_reaches_only_its_own_prefixes() {
    let mut g = Gate::new();
    g.set(&endpoint(abi::NETGATE_OPEN | abi::NETGATE_INTERNAL));
    assert_eq!(g.sent(&tcp_syn(ip(own4()), ip(peer4()))), Ok(()));
    assert_eq!(g.sent(&tcp_syn(ip(own6()), ip(peer6()))), Ok(()));
    let world4 = ip(Ipv4Addr::new(198, 51, 100, 7));
    let world6: IpAddr = "2001:db8::7".parse().unwrap();
    assert_eq!(
        g.sent(&tcp_syn(ip(own4()), world4)),
        Err(NetgateDrop::Internal)
    );
    assert_eq!(
        g.sent(&tcp_syn(ip(own6()), world6)),
        Err(NetgateDrop::Internal)
    );
    assert_eq!(
        g.received(&tcp_syn(world4, ip(own4()))),
        Err(NetgateDrop::Internal)
    );
    assert_eq!(
        g.received(&tcp_syn(world6, ip(own6()))),
        Err(NetgateDrop::Internal)
    );
    assert_eq!(g.received(&tcp_syn(ip(peer4()), ip(own4()))), Ok(()));
}

#[test]
fn arp_inside_the_network_is_answered_with_the_host_ends_mac_even_while_closed() {
    let mut g = Gate::new();
    g.set(&endpoint(0));
    let gateway: Ipv4Addr = "10.77.0.1".parse().unwrap();
    for target in [gateway, peer4()] {
        let (rv, out, counted) = g.run(abi::PROG_NETGATE_IN, &arp(1, own4(), target));
        assert_eq!((rv, counted), (TC_ACT_REDIRECT, vec![]), "ARP for {target}");
        // Ethernet: back to the container, from the host end.
        assert_eq!(&out[0..6], &CONTAINER_MAC);
        assert_eq!(&out[6..12], &HOST_MAC);
        assert_eq!(&out[12..14], &[0x08, 0x06]);
        // ARP reply: the target's address is at the host end's MAC.
        assert_eq!(&out[20..22], &[0, 2], "op: reply");
        assert_eq!(&out[22..28], &HOST_MAC, "sender MAC");
        assert_eq!(&out[28..32], &target.octets(), "sender address");
        assert_eq!(&out[32..38], &CONTAINER_MAC, "target MAC");
        assert_eq!(&out[38..42], &own4().octets(), "target address");
    }
    // Its own address (a gratuitous ARP) and replies go to the host.
    assert_eq!(g.sent(&arp(1, own4(), own4())), Ok(()));
    assert_eq!(g.sent(&arp(2, own4(), gateway)), Ok(()));
    // Outside the network: not answered.
    assert_eq!(
        g.sent(&arp(1, own4(), Ipv4Addr::new(198, 51, 100, 7))),
        Err(NetgateDrop::Neighbour)
    );
    // A probe (sender 0.0.0.0) is not answered either (it would fail the
    // container's duplicate address detection).
    assert_eq!(
        g.sent(&arp(1, Ipv4Addr::UNSPECIFIED, peer4())),
        Err(NetgateDrop::Neighbour)
    );
    // The host's own ARP to the container passes, closed or not.
    assert_eq!(g.received(&arp(1, gateway, own4())), Ok(()));
}

#[test]
fn neighbour_solicitations_inside_the_network_are_answered_with_a_valid_advertisement() {
    let mut g = Gate::new();
    g.set(&endpoint(0));
    let gateway: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let link_local: Ipv6Addr = "fe80::42:aff:fe4d:5".parse().unwrap();
    for (src, target, option) in [
        (own6(), gateway, 1),
        (link_local, peer6(), 1),
        (own6(), peer6(), 0), // a unicast probe, without the option
    ] {
        let (rv, out, counted) = g.run(
            abi::PROG_NETGATE_IN,
            &nd(135, src, "ff02::1:ff00:6".parse().unwrap(), target, option),
        );
        assert_eq!((rv, counted), (TC_ACT_REDIRECT, vec![]), "NS for {target}");
        assert_eq!(&out[0..6], &CONTAINER_MAC);
        assert_eq!(&out[6..12], &HOST_MAC);
        let icmp_len = if option == 0 { 24 } else { 32 };
        assert_eq!(out.len(), 14 + 40 + icmp_len);
        assert_eq!(u16::from_be_bytes([out[18], out[19]]) as usize, icmp_len);
        assert_eq!(out[20], abi::IPPROTO_ICMPV6);
        assert_eq!(out[21], 255, "hop limit");
        assert_eq!(&out[22..38], &target.octets(), "from the target");
        assert_eq!(&out[38..54], &src.octets(), "to the solicitor");
        let icmp = &out[54..];
        assert_eq!(icmp[0], 136, "an advertisement");
        assert_eq!(&icmp[4..8], &[0x60, 0, 0, 0], "solicited, override");
        assert_eq!(&icmp[8..24], &target.octets());
        if option != 0 {
            assert_eq!(&icmp[24..26], &[2, 1], "target link-layer option");
            assert_eq!(&icmp[26..32], &HOST_MAC);
        }
        let mut zeroed = icmp.to_vec();
        zeroed[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            u16::from_be_bytes([icmp[2], icmp[3]]),
            icmp6_checksum(&target.octets(), &src.octets(), &zeroed),
            "ICMPv6 checksum"
        );
    }
    // Its own address (duplicate address detection, from ::) and link-local
    // targets go to the host; nothing outside the network is answered.
    assert_eq!(
        g.sent(&nd(
            135,
            Ipv6Addr::UNSPECIFIED,
            "ff02::1:ff00:5".parse().unwrap(),
            own6(),
            0
        )),
        Ok(())
    );
    assert_eq!(
        g.sent(&nd(
            135,
            own6(),
            "ff02::1".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            1
        )),
        Ok(())
    );
    assert_eq!(
        g.sent(&nd(
            135,
            own6(),
            "ff02::1".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            1
        )),
        Err(NetgateDrop::Neighbour)
    );
    // Its answers to the host pass; the host's questions reach it.
    assert_eq!(
        g.sent(&nd(136, own6(), "fe80::1".parse().unwrap(), own6(), 2)),
        Ok(())
    );
    assert_eq!(
        g.received(&nd(
            135,
            "fe80::1".parse().unwrap(),
            "ff02::1:ff00:5".parse().unwrap(),
            own6(),
            1
        )),
        Ok(())
    );
}

#[test]
fn link_local_chatter_is_not_passed_nor_counted_as_spoofing() {
    let mut g = Gate::new();
    g.set(&endpoint(abi::NETGATE_OPEN));
    // An MLDv2 report: from a link-local address, behind a hop-by-hop header.
    let mut f = tcp_syn(
        ip("fe80::5".parse::<Ipv6Addr>().unwrap()),
        ip("ff02::16".parse::<Ipv6Addr>().unwrap()),
    );
    f[20] = 0; // next header: hop-by-hop
    assert_eq!(g.sent(&f), Err(NetgateDrop::Neighbour));
    let mut f = tcp_syn(
        ip(Ipv6Addr::UNSPECIFIED),
        ip("ff02::16".parse::<Ipv6Addr>().unwrap()),
    );
    f[20] = 0;
    assert_eq!(g.sent(&f), Err(NetgateDrop::Neighbour));
}
