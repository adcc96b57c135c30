//! The real cgroup/skb programs under BPF_PROG_TEST_RUN, over the shared
//! decision table (labels_policy::testing::cases): for every row, compile
//! the row's policy, write it into the program's (private) maps, build the
//! packet, run the ingress or egress program and check the verdict and the
//! drop reason it counted.
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
use bpfwall_datapath::maps::MapContents;
use bpfwall_datapath::test_run::{self, SKB_CTX_IFINDEX, SKB_CTX_SIZE};
use bpfwall_datapath::{pod, KernelDatapath as Datapath};
use labels_policy::datapath_abi::{self as abi, CtKey, CtValue, DropReason};
use labels_policy::decision::{CtState, Decision};
use labels_policy::testing::{case_setup, cases, CaseSetup};
use labels_policy::Direction;

const REMOTE_OR_LOCAL_SPORT: u16 = 5555;

/// Puts this thread in a network namespace of its own; returns a device's ifindex.
fn own_netns_with_device() -> u32 {
    test_run::enter_own_netns()
        .expect("a netns with a veth of the test's own (needs root and iproute2)")
}

fn write_compiled(dp: &mut Datapath, current: &MapContents, compiled: &labels_policy::Compiled) {
    dp.write_compiled(current, compiled).unwrap();
}

fn own_cgroup_id() -> u64 {
    test_run::own_cgroup_id().unwrap()
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

/// The datapath holding the policy of the decision table's row "L3+L4:
/// app2 may reach ...", that row's setup, and a context on the test's own
/// device.
fn app2_may_reach() -> (Datapath, CaseSetup, [u8; SKB_CTX_SIZE]) {
    let ifindex = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let mut dp = Datapath::load(None).unwrap();
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with("L3+L4: app2 may reach"))
        .unwrap();
    let setup = case_setup(&case, cgroup_id).unwrap();
    write_compiled(&mut dp, &MapContents::default(), &setup.compiled);
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    (dp, setup, ctx)
}

/// One packet through a program; its return value.
fn run_program(dp: &mut Datapath, name: &'static str, ctx: &[u8], bytes: &[u8]) -> u32 {
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

#[test]
fn decision_table_holds_in_the_kernel() {
    let ifindex = own_netns_with_device();
    let cgroup_id = own_cgroup_id();
    let mut dp = Datapath::load(None).expect("load the datapath (needs root and BPF)");
    let mut current = MapContents::default();
    let mut failures = Vec::new();
    let table = cases();
    for case in &table {
        let setup = case_setup(case, cgroup_id).unwrap();
        // Write this row's maps: diff from the previous row's.
        {
            write_compiled(&mut dp, &current, &setup.compiled);
            let mut maps = dp.maps().unwrap();
            assert_eq!(
                maps.read().unwrap().policy,
                setup.compiled.policy,
                "{}: policy map content",
                case.name
            );
            maps.forget_conntrack(&[setup.endpoint.endpoint_id].into())
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
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
                let value = CtValue {
                    last_seen_ns: now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64,
                    origin_direction: origin,
                    ..CtValue::default()
                };
                maps.insert_conntrack(key, value).unwrap();
            }
        }
        current = MapContents {
            endpoints: setup.compiled.endpoints.clone(),
            ipcache: setup.compiled.ipcache.clone(),
            policy: setup.compiled.policy.clone(),
        };
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
        let mut ctx = [0u8; SKB_CTX_SIZE];
        let dev = if case.loopback { 1 } else { ifindex };
        ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&dev.to_ne_bytes());

        let drops_before = dp.maps().unwrap().drops().unwrap();
        let name = match case.direction {
            Direction::Ingress => abi::PROG_INGRESS,
            Direction::Egress => abi::PROG_EGRESS,
        };
        let result = dp
            .program(name)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&bytes),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", case.name));
        let drops_after = dp.maps().unwrap().drops().unwrap();
        let counted: Vec<DropReason> = DropReason::ALL
            .into_iter()
            .filter(|r| drops_after[r] > drops_before[r])
            .collect();
        let got = match (result.return_value, counted.as_slice()) {
            (1, []) => Decision::Pass,
            (0, [reason]) => Decision::Drop(*reason),
            (rv, counted) => {
                failures.push(format!(
                    "{}: returned {rv} with drop counters {counted:?}",
                    case.name
                ));
                continue;
            }
        };
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

/// Ethernet + IPv6 (optionally with a hop-by-hop header) + TCP SYN.
fn packet6(src: IpAddr, dst: IpAddr, dport: u16, hop_by_hop: bool) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&REMOTE_OR_LOCAL_SPORT.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let mut ext = Vec::new();
    let mut next = abi::IPPROTO_TCP;
    if hop_by_hop {
        // next header TCP, length 0 (8 bytes), PadN option filling the rest.
        ext.extend_from_slice(&[abi::IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        next = 0; // IPPROTO_HOPOPTS
    }
    let payload = ext.len() + l4.len();
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x86, 0xdd]);
    p.extend_from_slice(&[0x60, 0, 0, 0, (payload >> 8) as u8, payload as u8, next, 64]);
    p.extend_from_slice(&octets(src));
    p.extend_from_slice(&octets(dst));
    p.extend_from_slice(&ext);
    p.extend_from_slice(&l4);
    p
}

#[test]
fn ipv6_selectors_cidrs_and_extension_headers() {
    use labels_policy::{compile, Attachment, CompileInput, ContainerInput, IdentityAllocator};
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
                ("bpfwall.ingress", "allow from id=app2 port 80/tcp"),
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
        },
        ContainerInput {
            name: "app2".into(),
            labels: labels(&[("id", "app2")]),
            addresses: vec![addr("fd00::3")],
            attachment: None,
        },
        ContainerInput {
            name: "app3".into(),
            labels: labels(&[("id", "app3")]),
            addresses: vec![addr("fd00::4")],
            attachment: None,
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
    let mut dp = Datapath::load(None).unwrap();
    write_compiled(&mut dp, &MapContents::default(), &compiled);
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_CTX_IFINDEX..SKB_CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let local = addr("fd00::2");
    let rows: &[(&str, &'static str, IpAddr, IpAddr, u16, bool, u32)] = &[
        (
            "app2 -> 80",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            80,
            false,
            1,
        ),
        (
            "app2 -> 80 behind a hop-by-hop header",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            80,
            true,
            1,
        ),
        (
            "app2 -> 81",
            abi::PROG_INGRESS,
            addr("fd00::3"),
            local,
            81,
            false,
            0,
        ),
        (
            "app3 -> 80",
            abi::PROG_INGRESS,
            addr("fd00::4"),
            local,
            80,
            false,
            0,
        ),
        (
            "-> 2001:db8::5 443",
            abi::PROG_EGRESS,
            local,
            addr("2001:db8::5"),
            443,
            false,
            1,
        ),
        (
            "-> 2001:db8:1::5 443 (except)",
            abi::PROG_EGRESS,
            local,
            addr("2001:db8:1::5"),
            443,
            false,
            0,
        ),
        (
            "-> 2001:db9::5 443 (outside)",
            abi::PROG_EGRESS,
            local,
            addr("2001:db9::5"),
            443,
            false,
            0,
        ),
        (
            "-> app2 443 (a container, not cidr)",
            abi::PROG_EGRESS,
            local,
            addr("fd00::3"),
            443,
            false,
            0,
        ),
    ];
    let mut failures = Vec::new();
    for (name, prog, src, dst, dport, hbh, want) in rows {
        let bytes = packet6(*src, *dst, *dport, *hbh);
        let got = dp
            .program(prog)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&bytes),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .unwrap()
            .return_value;
        if got != *want {
            failures.push(format!("{name}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn established_flows_skip_policy_only_until_the_maps_change() {
    // A packet of an established flow in its origin direction is passed on
    // its conntrack entry while the policy revision is the one policy
    // allowed it at; every change (the daemon bumps the revision after its
    // writes) makes the next packet be decided again.
    let (mut dp, setup, ctx) = app2_may_reach();
    let (local, app2) = (setup.local, setup.packet.remote);
    let run = |dp: &mut Datapath, syn: bool| {
        let bytes = packet(app2, local, abi::IPPROTO_TCP, 41000, 80, syn);
        run_program(dp, abi::PROG_INGRESS, &ctx, &bytes)
    };
    assert_eq!(run(&mut dp, true), 1, "the SYN is allowed by policy");
    assert_eq!(run(&mut dp, false), 1, "so is the next packet");

    // Take the allow out of the map without telling the datapath (no
    // revision bump): the established flow still passes, which shows its
    // packets do not look policy up; a SYN on the same tuple always does.
    let policy_keys: Vec<_> = setup.compiled.policy.keys().copied().collect();
    dp.maps().unwrap().remove_policy(&policy_keys).unwrap();
    assert_eq!(run(&mut dp, false), 1, "established, same revision: cached");
    assert_eq!(run(&mut dp, true), 0, "a SYN is decided by policy");

    // The daemon's last step of a change: bump. Now the flow is cut.
    let before = dp.maps().unwrap().policy_revision().unwrap();
    let after = dp.maps().unwrap().bump_policy_revision().unwrap();
    assert_eq!(after, before.wrapping_add(1));
    assert_eq!(run(&mut dp, false), 0, "decided again under the new maps");

    // Policy back: the same flow is allowed again (and cached again).
    let empty = MapContents {
        endpoints: setup.compiled.endpoints.clone(),
        ipcache: setup.compiled.ipcache.clone(),
        policy: Default::default(),
    };
    write_compiled(&mut dp, &empty, &setup.compiled);
    assert_eq!(run(&mut dp, false), 1, "allowed again after the change");
}

#[test]
fn exact_entries_an_older_daemon_left_in_the_tries_move_to_the_hashes() {
    // Older daemons wrote every entry into the tries. The migration moves
    // host addresses and single-port entries to the hashes (hash first, then
    // out of the trie) and leaves ranges and prefixes where they are.
    let cgroup_id = own_cgroup_id();
    let mut dp = Datapath::load(None).unwrap();
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with("port range: past the end"))
        .unwrap();
    let setup = case_setup(&case, cgroup_id).unwrap();
    {
        let mut maps = dp.maps().unwrap();
        for (k, v) in &setup.compiled.policy {
            maps.policy
                .insert(&pod::policy_trie_key(k), pod::P(*v), 0)
                .unwrap();
        }
        for (k, v) in &setup.compiled.ipcache {
            maps.ipcache
                .insert(&pod::ipcache_trie_key(k), pod::P(*v), 0)
                .unwrap();
        }
    }
    let exact = setup
        .compiled
        .policy
        .keys()
        .filter(|k| abi::policy_is_exact(k))
        .count()
        + setup
            .compiled
            .ipcache
            .keys()
            .filter(|k| abi::ipcache_is_exact(k))
            .count();
    assert!(exact > 0, "the row has exact entries to move");
    let mut maps = dp.maps().unwrap();
    assert_eq!(maps.migrate_exact_entries().unwrap(), exact);
    assert_eq!(
        maps.migrate_exact_entries().unwrap(),
        0,
        "nothing left to move"
    );
    let read = maps.read().unwrap();
    assert_eq!(
        read.policy, setup.compiled.policy,
        "every policy entry, once"
    );
    assert_eq!(
        read.ipcache, setup.compiled.ipcache,
        "every ipcache entry, once"
    );
    for item in maps.policy.iter() {
        let (k, _) = item.unwrap();
        assert!(!abi::policy_is_exact(&pod::policy_key_from_trie(&k)));
    }
    for item in maps.ipcache.iter() {
        let (k, _) = item.unwrap();
        assert!(!abi::ipcache_is_exact(&pod::ipcache_key_from_trie(&k)));
    }
}
