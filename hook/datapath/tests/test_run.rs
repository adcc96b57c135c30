//! The real cgroup/skb programs under BPF_PROG_TEST_RUN, over the shared
//! decision table (labels_policy::testing::cases): for every row, compile
//! the row's policy, write it into the program's (private) maps, build the
//! packet, run the ingress or egress program and check the verdict and the
//! drop reason it counted. Then what the table cannot show: a change in
//! generations, conntrack cut in both directions by a revoked rule,
//! conntrack shares, IPv6 extension headers, host-network loopback.
//!
//! Needs root and BPF. The test runs in a network namespace of its own with
//! a dummy device of its own, because the kernel treats a test packet as
//! arriving on the device given by ifindex (loopback if none).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use bpfwall_datapath::test_run::{self, SKB_CTX_IFINDEX, SKB_CTX_SIZE};
use bpfwall_datapath::{CtShares, Datapath as _, KernelDatapath, MapContents};
use labels_policy::datapath_abi::{self as abi, CtKey, CtValue, DropReason, L7DropReason};
use labels_policy::decision::{CtState, Decision};
use labels_policy::testing::{case_setup, cases, CaseSetup};
use labels_policy::{
    compile, Attachment, CompileInput, ContainerInput, Direction, IdentityAllocator,
};

const REMOTE_OR_LOCAL_SPORT: u16 = 5555;

/// Puts this thread in a network namespace of its own; returns a device's ifindex.
fn own_netns_with_device() -> u32 {
    test_run::enter_own_netns()
        .expect("a netns with a veth of the test's own (needs root and iproute2)")
}

fn own_cgroup_id() -> u64 {
    test_run::own_cgroup_id().unwrap()
}

fn load() -> KernelDatapath {
    let mut dp = KernelDatapath::load(None).expect("load the datapath (needs root and BPF)");
    dp.set_test_shares().unwrap();
    dp
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr16(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let o = octets(addr);
    out[..o.len()].copy_from_slice(&o);
    out
}

/// Ethernet + IPv4 + L4 header bytes (TCP: a SYN or an ACK).
fn packet(src: IpAddr, dst: IpAddr, protocol: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    test_run::ipv4_packet(
        src,
        dst,
        protocol,
        sport,
        dport,
        if syn {
            test_run::TCP_SYN
        } else {
            test_run::TCP_ACK
        },
    )
}

fn ctx_on(ifindex: u32) -> [u8; SKB_CTX_SIZE] {
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// The datapath holding the policy of the decision table's row "L3+L4:
/// app2 may reach ...", that row's setup, and a context on the test's own
/// device.
fn app2_may_reach() -> (KernelDatapath, CaseSetup, [u8; SKB_CTX_SIZE]) {
    let ifindex = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let mut dp = load();
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with("L3+L4: app2 may reach"))
        .unwrap();
    let setup = case_setup(&case, cgroup_id).unwrap();
    dp.write_compiled(&setup.compiled).unwrap();
    (dp, setup, ctx_on(ifindex))
}

/// One packet through a program; its return value.
fn run_program(dp: &mut KernelDatapath, name: &'static str, ctx: &[u8], bytes: &[u8]) -> u32 {
    dp.program(name)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(bytes),
            ctx_in: Some(ctx),
            ..TestRunOptions::default()
        })
        .unwrap()
        .return_value
}

fn drops(dp: &mut KernelDatapath) -> std::collections::BTreeMap<DropReason, u64> {
    dp.maps().unwrap().drops().unwrap()
}

/// One packet through a program, and the drop reason it counted (None: passed).
fn verdict(dp: &mut KernelDatapath, name: &'static str, ctx: &[u8], bytes: &[u8]) -> Decision {
    let before = drops(dp);
    let l7_before = dp.l7_drops().unwrap();
    let rv = run_program(dp, name, ctx, bytes);
    let after = drops(dp);
    let l7_after = dp.l7_drops().unwrap();
    let counted: Vec<Decision> = DropReason::ALL
        .into_iter()
        .filter(|r| after[r] > before[r])
        .map(Decision::Drop)
        .chain(
            L7DropReason::ALL
                .into_iter()
                .filter(|r| l7_after[r] > l7_before[r])
                .map(Decision::DropL7),
        )
        .collect();
    match (rv, counted.as_slice()) {
        (1, []) => Decision::Pass,
        (0, [decision]) => *decision,
        (rv, counted) => panic!("returned {rv} with drop counters {counted:?}"),
    }
}

fn now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[test]
fn decision_table_holds_in_the_kernel() {
    let ifindex = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let mut dp = load();
    let mut failures = Vec::new();
    let table = cases();
    for case in &table {
        let setup = case_setup(case, cgroup_id).unwrap();
        // This row's maps, as a change from the previous row's.
        dp.write_compiled(&setup.compiled).unwrap();
        assert_eq!(
            dp.active(),
            &MapContents::of(&setup.compiled),
            "{}: the active generation",
            case.name
        );
        let revision = dp.maps().unwrap().policy_revision().unwrap();
        dp.forget_conntrack(&[setup.endpoint.endpoint_id].into())
            .unwrap();
        let (local_port, remote_port) = match case.direction {
            Direction::Ingress => (case.dport, REMOTE_OR_LOCAL_SPORT),
            Direction::Egress => (REMOTE_OR_LOCAL_SPORT, case.dport),
        };
        let origin = match (case.ct, case.direction) {
            (CtState::None, _) => None,
            (CtState::OpenedOtherWay, Direction::Ingress)
            | (CtState::OpenedThisWay, Direction::Egress) => Some(abi::DIR_EGRESS),
            _ => Some(abi::DIR_INGRESS),
        };
        if let Some(origin) = origin {
            let key = CtKey {
                local_addr: addr16(setup.local),
                remote_addr: addr16(setup.packet.remote),
                local_port_be: local_port.to_be(),
                remote_port_be: remote_port.to_be(),
                protocol: case.protocol,
                family: abi::FAMILY_IPV4,
                pad: 0,
                endpoint_id: setup.endpoint.endpoint_id,
            };
            // A reply's flow: allowed at the current revision. A flow in the
            // packet's own direction: tracked under older maps (revision 0),
            // so the packet is decided again, as the table says.
            let value = CtValue {
                last_seen_ns: now_ns(),
                origin_direction: origin,
                flags: abi::CT_SEEN_REPLY,
                policy_revision: if case.ct == CtState::OpenedOtherWay {
                    revision
                } else {
                    0
                },
                ..CtValue::default()
            };
            dp.maps().unwrap().insert_conntrack(key, value).unwrap();
        }
        let (src, dst) = match case.direction {
            Direction::Ingress => (setup.packet.remote, setup.local),
            Direction::Egress => (setup.local, setup.packet.remote),
        };
        let bytes = packet(
            src,
            dst,
            case.protocol,
            REMOTE_OR_LOCAL_SPORT,
            case.dport,
            case.tcp_syn,
        );
        let ctx = ctx_on(if case.loopback { 1 } else { ifindex });
        let name = match case.direction {
            Direction::Ingress => abi::PROG_INGRESS,
            Direction::Egress => abi::PROG_EGRESS,
        };
        let got = verdict(&mut dp, name, &ctx, &bytes);
        if got != case.expect {
            failures.push(format!(
                "{}: expected {:?}, the program said {:?}",
                case.name, case.expect, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn conntrack_records_allowed_flows_and_passes_their_replies() {
    // End to end inside the kernel: an allowed egress SYN creates the entry,
    // the reply on ingress (default deny) then passes.
    let (mut dp, setup, ctx) = app2_may_reach();
    let local = setup.local;
    let app3: IpAddr = "172.31.0.4".parse().unwrap();
    let mut run = |name: &'static str, bytes: Vec<u8>| run_program(&mut dp, name, &ctx, &bytes);
    // The reply before any request: ingress is enforced, app3 is not allowed.
    assert_eq!(
        run(
            abi::PROG_INGRESS,
            packet(app3, local, abi::IPPROTO_TCP, 80, 41000, false)
        ),
        0
    );
    // The container connects out (egress is open) ...
    assert_eq!(
        run(
            abi::PROG_EGRESS,
            packet(local, app3, abi::IPPROTO_TCP, 41000, 80, true)
        ),
        1
    );
    // ... and now the reply passes ...
    assert_eq!(
        run(
            abi::PROG_INGRESS,
            packet(app3, local, abi::IPPROTO_TCP, 80, 41000, false)
        ),
        1
    );
    // ... but app3 still cannot open a connection of its own on that tuple.
    assert_eq!(
        run(
            abi::PROG_INGRESS,
            packet(app3, local, abi::IPPROTO_TCP, 80, 41000, true)
        ),
        0
    );
}

#[test]
fn a_staged_change_decides_nothing_until_the_flip_and_then_cuts_both_directions() {
    // A flow app2 -> local:80 is allowed and tracked. The next policy (no
    // allow) is staged: nothing changes for any packet, new or
    // established. After the flip every packet of the flow is decided
    // again, in both directions, and dropped: the reply direction too.
    let (mut dp, setup, ctx) = app2_may_reach();
    let (local, app2) = (setup.local, setup.packet.remote);
    let inbound = |syn| packet(app2, local, abi::IPPROTO_TCP, 41000, 80, syn);
    let reply = packet(local, app2, abi::IPPROTO_TCP, 80, 41000, false);
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(true)),
        Decision::Pass
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_EGRESS, &ctx, &reply),
        Decision::Pass
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(false)),
        Decision::Pass
    );

    let mut next = MapContents::of(&setup.compiled);
    next.policy.clear();
    dp.stage(&next).unwrap();
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(false)),
        Decision::Pass,
        "staged only: established"
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_EGRESS, &ctx, &reply),
        Decision::Pass,
        "staged only: reply"
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(true)),
        Decision::Pass,
        "staged only: a new SYN"
    );

    dp.flip().unwrap();
    assert_eq!(
        verdict(&mut dp, abi::PROG_EGRESS, &ctx, &reply),
        Decision::Drop(DropReason::PolicyDefault),
        "the reply direction is decided again, as its flow"
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(false)),
        Decision::Drop(DropReason::FlowRevoked),
        "and the flow stays cut"
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(true)),
        Decision::Drop(DropReason::PolicyDefault)
    );
    dp.prune().unwrap();
    assert!(
        dp.maps().unwrap().read_policy().unwrap().is_empty(),
        "pruned"
    );

    // Policy back: the flow is decided again and allowed again.
    dp.write_compiled(&setup.compiled).unwrap();
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &inbound(false)),
        Decision::Pass
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_EGRESS, &ctx, &reply),
        Decision::Pass
    );
}

#[test]
fn an_endpoint_holds_only_its_share_of_conntrack() {
    // With a limit of 2 entries per endpoint, a third allowed flow passes
    // untracked (counted), and its reply is not let in by conntrack.
    let (mut dp, setup, ctx) = app2_may_reach();
    let shares = CtShares::for_endpoints(dp.conntrack_capacity(), 2, 1, 4);
    dp.set_conntrack_shares(&shares).unwrap();
    // The limit is written with the endpoint: a change writes it.
    let mut again = MapContents::of(&setup.compiled);
    again.policy.clear();
    dp.stage(&again).unwrap();
    dp.flip().unwrap();
    dp.prune().unwrap();
    dp.write_compiled(&setup.compiled).unwrap();
    let local = setup.local;
    let app3: IpAddr = "172.31.0.4".parse().unwrap();
    for sport in [41001, 41002, 41003] {
        let out = packet(local, app3, abi::IPPROTO_UDP, sport, 53, false);
        assert_eq!(
            verdict(&mut dp, abi::PROG_EGRESS, &ctx, &out),
            Decision::Pass
        );
    }
    let reader = dp.counter_reader().unwrap();
    let ep = setup.endpoint.endpoint_id;
    assert_eq!(reader.conntrack_used(ep).unwrap(), 2);
    assert_eq!(reader.counters(ep).unwrap().untracked_flows, 1);
    let reply = |sport| packet(app3, local, abi::IPPROTO_UDP, 53, sport, false);
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &reply(41001)),
        Decision::Pass
    );
    assert_eq!(
        verdict(&mut dp, abi::PROG_INGRESS, &ctx, &reply(41003)),
        Decision::Drop(DropReason::PolicyDefault),
        "the untracked flow's reply is decided as new"
    );
}

#[test]
fn ipv6_selectors_cidrs_and_extension_headers() {
    let ifindex = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let addr = |s: &str| -> IpAddr { s.parse().unwrap() };
    let containers = vec![
        ContainerInput {
            name: "local".into(),
            labels: labels(&[
                ("id", "local"),
                (
                    "bpfwall.ingress",
                    "allow from id=app2 port 80/tcp; allow from any; deny from any port 5353/udp",
                ),
                (
                    "bpfwall.egress",
                    "allow to cidr 2001:db8::/32 except 2001:db8:1::/48 port 443/tcp",
                ),
            ]),
            addresses: vec![addr("fd00::2")],
            attachment: Some(Attachment {
                cgroup_id,
                endpoint_id: 3,
            }),
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
        ContainerInput {
            name: "app2".into(),
            labels: labels(&[("id", "app2")]),
            addresses: vec![addr("fd00::3")],
            attachment: None,
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
    ];
    let compiled = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &[addr("fd00::1")],
            host_policies: &[],
        },
        &mut IdentityAllocator::new(),
    )
    .unwrap();
    let mut dp = load();
    dp.write_compiled(&compiled).unwrap();
    let ctx = ctx_on(ifindex);
    let local = addr("fd00::2");
    let (tcp, udp) = (abi::IPPROTO_TCP, abi::IPPROTO_UDP);
    let pass = Decision::Pass;
    let deny = Decision::Drop(DropReason::PolicyDeny);
    let default = Decision::Drop(DropReason::PolicyDefault);
    let ext = Decision::Drop(DropReason::ExtHeaders);
    // (what, program, src, dst, protocol, dport, extension headers, expected)
    type Row<'a> = (
        &'a str,
        &'static str,
        IpAddr,
        IpAddr,
        u8,
        u16,
        usize,
        Decision,
    );
    let rows: &[Row] = &[
        (
            "app2 -> 80",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            tcp,
            80,
            0,
            pass,
        ),
        (
            "app2 -> 80 behind one header",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            tcp,
            80,
            1,
            pass,
        ),
        (
            "anyone -> 5353/udp is denied",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            udp,
            5353,
            0,
            deny,
        ),
        // Past the old parser's bound of 4: the deny must still see UDP 5353.
        (
            "5353/udp behind 5 headers",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            udp,
            5353,
            5,
            deny,
        ),
        (
            "5353/udp behind 8 headers",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            udp,
            5353,
            8,
            deny,
        ),
        (
            "another port behind 8 headers",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            udp,
            5354,
            8,
            pass,
        ),
        (
            "9 headers: more than the bound",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            udp,
            5354,
            9,
            ext,
        ),
        (
            "-> 2001:db8::5 443",
            abi::PROG_EGRESS,
            local,
            addr("2001:db8::5"),
            tcp,
            443,
            0,
            pass,
        ),
        (
            "-> 2001:db8:1::5 443 (except)",
            abi::PROG_EGRESS,
            local,
            addr("2001:db8:1::5"),
            tcp,
            443,
            0,
            default,
        ),
        (
            "-> 2001:db9::5 443 (outside)",
            abi::PROG_EGRESS,
            local,
            addr("2001:db9::5"),
            tcp,
            443,
            0,
            default,
        ),
        (
            "-> app2 443 (a container, not cidr)",
            abi::PROG_EGRESS,
            local,
            addr("fd00::3"),
            tcp,
            443,
            0,
            default,
        ),
        (
            "a forged source",
            abi::PROG_EGRESS,
            addr("fd00::3"),
            addr("2001:db8::5"),
            tcp,
            443,
            0,
            Decision::Drop(DropReason::Spoofed),
        ),
    ];
    let mut failures = Vec::new();
    for (name, prog, src, dst, protocol, dport, headers, want) in rows {
        let bytes = test_run::ipv6_packet(
            *src,
            *dst,
            *protocol,
            REMOTE_OR_LOCAL_SPORT,
            *dport,
            test_run::TCP_SYN,
            *headers,
        );
        let got = verdict(&mut dp, prog, &ctx, &bytes);
        if got != *want {
            failures.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn loopback_is_policed_for_host_network_endpoints_only() {
    let _ = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let host: IpAddr = "127.0.0.1".parse().unwrap();
    let labels: labels_policy::LabelSet = [
        ("id".to_string(), "h".to_string()),
        (
            "bpfwall.egress".to_string(),
            "allow to host port 80/tcp".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let mut dp = load();
    let lo = ctx_on(1);
    for (network, want_8080) in [
        (labels_policy::compile::Network::Own, Decision::Pass),
        (
            labels_policy::compile::Network::Host,
            Decision::Drop(DropReason::PolicyDefault),
        ),
    ] {
        let containers = [ContainerInput {
            name: "h".into(),
            labels: labels.clone(),
            addresses: Vec::new(),
            network,
            default_deny: false,
            started: 0,
            attachment: Some(Attachment {
                cgroup_id,
                endpoint_id: 4,
            }),
        }];
        let compiled = compile(
            CompileInput {
                containers: &containers,
                host_addresses: &[host],
                host_policies: &[],
            },
            &mut IdentityAllocator::new(),
        )
        .unwrap();
        dp.write_compiled(&compiled).unwrap();
        let to = |port| packet(host, host, abi::IPPROTO_TCP, 41000, port, true);
        assert_eq!(
            verdict(&mut dp, abi::PROG_EGRESS, &lo, &to(8080)),
            want_8080,
            "{network:?}: loopback to a port its policy does not allow"
        );
        assert_eq!(
            verdict(&mut dp, abi::PROG_EGRESS, &lo, &to(80)),
            Decision::Pass,
            "{network:?}: loopback to a port its policy allows"
        );
    }
}
