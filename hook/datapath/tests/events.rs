//! Flow events and audit mode in the real programs, under
//! BPF_PROG_TEST_RUN: which decisions send an event (new flows and drops,
//! never a packet of an established flow), what an event says, the rate
//! limit per key with its suppressed count, the ring running full (lost
//! events counted, the exact counters untouched), and audit mode letting
//! policy drops through, and only those.
//!
//! Needs root and BPF; runs in a network namespace of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use bpfwall_datapath::test_run::{self, skb_ctx, SKB_CTX_SIZE};
use bpfwall_datapath::{EventReader, EventSettings, KernelDatapath};
use labels_policy::datapath_abi::{self as abi, DropReason, FlowEvent, L7DropReason};
use labels_policy::{compile, Attachment, CompileInput, ContainerInput, IdentityAllocator};

const LOCAL: &str = "172.31.0.2";
const APP2: &str = "172.31.0.3";
const APP3: &str = "172.31.0.4";

struct World {
    dp: KernelDatapath,
    events: EventReader,
    ctx: [u8; SKB_CTX_SIZE],
    compiled: labels_policy::Compiled,
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The local container (`id=local`, ingress: app2 on 80/tcp; with `mode`
/// as its bpfwall.mode label) and its peers app2 and app3, in the maps.
fn world(mode: Option<&str>, settings: EventSettings) -> World {
    world_with(
        "allow from id=app2 port 80/tcp; deny from id=app3 port 81/tcp",
        mode,
        settings,
    )
}

/// The same with `ingress` as the local container's bpfwall.ingress label.
fn world_with(ingress: &str, mode: Option<&str>, settings: EventSettings) -> World {
    let ifindex = test_run::enter_own_netns().expect("a netns of the test's own");
    let cgroup_id = test_run::own_cgroup_id().unwrap();
    let mut labels: labels_policy::LabelSet = [
        ("id".to_string(), "local".to_string()),
        ("bpfwall.ingress".to_string(), ingress.to_string()),
    ]
    .into_iter()
    .collect();
    if let Some(m) = mode {
        labels.insert("bpfwall.mode".into(), m.into());
    }
    let peer = |name: &str, a: &str| ContainerInput {
        name: name.into(),
        labels: [("id".to_string(), name.to_string())].into_iter().collect(),
        addresses: vec![addr(a)],
        attachment: None,
        network: Default::default(),
        started: 0,
        default_deny: false,
    };
    let containers = vec![
        ContainerInput {
            name: "local".into(),
            labels,
            addresses: vec![addr(LOCAL)],
            attachment: Some(Attachment {
                cgroup_id,
                endpoint_id: 5,
            }),
            network: Default::default(),
            started: 0,
            default_deny: false,
        },
        peer("app2", APP2),
        peer("app3", APP3),
    ];
    let compiled = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &[],
            host_policies: &[],
        },
        &mut IdentityAllocator::new(),
    )
    .unwrap();
    let mut dp = KernelDatapath::load(None).expect("load the datapath (needs root and BPF)");
    dp.set_test_shares().unwrap();
    dp.write_compiled(&compiled).unwrap();
    dp.set_event_settings(settings).unwrap();
    let events = dp.open_events().unwrap();
    World {
        dp,
        events,
        ctx: skb_ctx(ifindex),
        compiled,
    }
}

impl World {
    fn run(&mut self, prog: &'static str, bytes: &[u8], repeat: u32) -> u32 {
        self.dp
            .program(prog)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(bytes),
                ctx_in: Some(&self.ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap()
            .return_value
    }

    fn events(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        self.events.drain(|e| out.push(e));
        out
    }

    fn identity(&self, name: &str) -> u32 {
        self.compiled
            .containers
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .identity
    }

    fn metrics(&mut self) -> abi::MetricsCounters {
        self.dp.open_metrics().unwrap().read().unwrap()
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    test_run::ipv4_packet(addr(src), addr(dst), abi::IPPROTO_TCP, sport, dport, flags)
}

const SYN: u8 = test_run::TCP_SYN;
const ACK: u8 = test_run::TCP_ACK;

#[test]
fn new_flows_and_drops_send_events_established_packets_do_not() {
    let mut w = world(None, EventSettings::default());
    // app2 opens 80: allowed, one event; its next packets and the reply: none.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP2, LOCAL, 40000, 80, SYN), 1),
        1
    );
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(LOCAL, APP2, 80, 40000, SYN | ACK), 1),
        1
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP2, LOCAL, 40000, 80, ACK), 5),
        1
    );
    let events = w.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(e.kind, abi::EVENT_ALLOWED);
    assert_eq!(e.direction, abi::DIR_INGRESS);
    assert_eq!(e.endpoint_id, 5);
    assert_eq!(e.local_identity, w.identity("local"));
    assert_eq!(e.peer_identity, w.identity("app2"));
    assert_eq!(u16::from_be(e.dport_be), 80);
    assert_eq!(e.protocol, abi::IPPROTO_TCP);
    assert_eq!(e.local(), Some(addr(LOCAL)));
    assert_eq!(e.remote(), Some(addr(APP2)));
    assert_eq!(e.suppressed, 0);
    let revision = w.dp.maps().unwrap().policy_revision().unwrap();
    assert_eq!(e.policy_revision, revision);

    // app3 on 81: an explicit deny; on 82: default deny. One event each.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40001, 81, SYN), 1),
        0
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40002, 82, SYN), 1),
        0
    );
    let events = w.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].kind, abi::EVENT_DENIED);
    assert_eq!(events[0].reason, DropReason::PolicyDeny as u8);
    assert_eq!(events[0].peer_identity, w.identity("app3"));
    assert_eq!(events[1].reason, DropReason::PolicyDefault as u8);
    assert_eq!(u16::from_be(events[1].dport_be), 82);

    // Egress is open: a new flow out is reported (its peer looked up), once.
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(LOCAL, APP3, 40003, 443, SYN), 1),
        1
    );
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(LOCAL, APP3, 40003, 443, ACK), 3),
        1
    );
    let events = w.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, abi::EVENT_ALLOWED);
    assert_eq!(events[0].direction, abi::DIR_EGRESS);
    assert_eq!(events[0].peer_identity, w.identity("app3"));

    // A forged source: a drop before policy, reported too.
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(APP2, APP3, 40004, 443, SYN), 1),
        0
    );
    let events = w.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, DropReason::Spoofed as u8);

    let m = w.metrics();
    assert_eq!(m.drops[DropReason::PolicyDeny as usize][0], 1);
    assert_eq!(m.drops[DropReason::PolicyDefault as usize][0], 1);
    assert_eq!(m.drops[DropReason::Spoofed as usize][1], 1);
    assert_eq!(m.verdicts[abi::EVENT_ALLOWED as usize], [1, 1]);
    assert_eq!(m.verdicts[abi::EVENT_DENIED as usize], [2, 0]);
    // Passed: SYN + 5 ACKs in, SYN-ACK + SYN + 3 ACKs out.
    assert_eq!(m.forwarded, [6, 5]);
    assert_eq!(m.events_sent, 5);
    assert_eq!(m.events_lost, 0);
}

#[test]
fn a_flood_sends_one_event_per_key_and_interval_and_the_rest_ride_on_the_next() {
    let mut w = world(
        None,
        EventSettings {
            enabled: true,
            interval_ns: 300_000_000,
        },
    );
    let denied = tcp(APP3, LOCAL, 40000, 82, SYN);
    assert_eq!(w.run(abi::PROG_INGRESS, &denied, 1000), 0);
    let events = w.events();
    assert_eq!(events.len(), 1, "one event for 1000 drops of one key");
    assert_eq!(events[0].suppressed, 0);
    // Another key (another port) is not held back by the first.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40000, 83, SYN), 1),
        0
    );
    assert_eq!(w.events().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(w.run(abi::PROG_INGRESS, &denied, 1), 0);
    let events = w.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].suppressed, 999,
        "the next event carries the others"
    );
    let m = w.metrics();
    assert_eq!(
        m.drops[DropReason::PolicyDefault as usize][0],
        1002,
        "exact counts"
    );
    assert_eq!(m.events_sent, 3);
}

#[test]
fn a_full_ring_counts_lost_events_and_keeps_the_counters_exact() {
    let mut w = world(
        None,
        EventSettings {
            enabled: true,
            interval_ns: 0,
        },
    );
    // 72-byte records (+8 of header) in 1 MiB: about 13,000 fit.
    let n = 20_000;
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40000, 82, SYN), n),
        0
    );
    let m = w.metrics();
    assert!(m.events_lost > 0, "{m:?}");
    assert_eq!(m.events_sent + m.events_lost, u64::from(n));
    assert_eq!(m.drops[DropReason::PolicyDefault as usize][0], u64::from(n));
    assert_eq!(w.events().len() as u64, m.events_sent);
    // Drained: there is room again.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40000, 82, SYN), 1),
        0
    );
    assert_eq!(w.events().len(), 1);
}

#[test]
fn events_off_sends_nothing_and_counts_everything() {
    let mut w = world(
        None,
        EventSettings {
            enabled: false,
            interval_ns: 0,
        },
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40000, 82, SYN), 10),
        0
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP2, LOCAL, 40000, 80, SYN), 1),
        1
    );
    assert!(w.events().is_empty());
    let m = w.metrics();
    assert_eq!(m.drops[DropReason::PolicyDefault as usize][0], 10);
    assert_eq!(m.verdicts[abi::EVENT_ALLOWED as usize][0], 1);
    assert_eq!(m.events_sent, 0);
}

#[test]
fn audit_passes_policy_drops_reports_them_and_nothing_else() {
    let mut w = world(Some("audit"), EventSettings::default());
    // Default deny and an explicit deny: both pass, as audit events with
    // the reason they would have been dropped for.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40001, 82, SYN), 1),
        1
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40002, 81, SYN), 1),
        1
    );
    // The audited flow is tracked: its reply and next packets pass quietly.
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(LOCAL, APP3, 82, 40001, SYN | ACK), 1),
        1
    );
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40001, 82, ACK), 3),
        1
    );
    let events = w.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.kind == abi::EVENT_AUDIT));
    assert_eq!(events[0].reason, DropReason::PolicyDefault as u8);
    assert_eq!(events[1].reason, DropReason::PolicyDeny as u8);
    // Allowed traffic is still reported as allowed.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP2, LOCAL, 40003, 80, SYN), 1),
        1
    );
    assert_eq!(w.events()[0].kind, abi::EVENT_ALLOWED);
    // A forged source is not policy: audit does not let it through.
    assert_eq!(
        w.run(abi::PROG_EGRESS, &tcp(APP2, APP3, 40004, 443, SYN), 1),
        0
    );
    let events = w.events();
    assert_eq!(events[0].kind, abi::EVENT_DENIED);
    assert_eq!(events[0].reason, DropReason::Spoofed as u8);
    let m = w.metrics();
    assert_eq!(m.verdicts[abi::EVENT_AUDIT as usize][0], 2);
    assert_eq!(m.drops[DropReason::PolicyDefault as usize], [0, 0]);
    assert_eq!(m.drops[DropReason::Spoofed as usize][1], 1);
}

#[test]
fn audit_never_opens_a_port_steered_to_the_proxy() {
    let mut w = world_with(
        "allow from id=app2 port 80/tcp http GET /public; deny from id=app3 port 81/tcp",
        Some("audit"),
        EventSettings::default(),
    );
    // A new flow to the steered port that meets the container's own
    // program went around the proxy: dropped, from a peer policy admits
    // and from one audit would let through alike, and reported as a drop.
    for (peer, sport) in [(APP2, 40011), (APP3, 40012)] {
        assert_eq!(
            w.run(abi::PROG_INGRESS, &tcp(peer, LOCAL, sport, 80, SYN), 1),
            0,
            "a SYN from {peer} to the steered port"
        );
        let events = w.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, abi::EVENT_DENIED);
        assert_eq!(events[0].reason, L7DropReason::Bypass as u8);
    }
    // Another port: audit as before.
    assert_eq!(
        w.run(abi::PROG_INGRESS, &tcp(APP3, LOCAL, 40013, 81, SYN), 1),
        1
    );
    assert_eq!(w.events()[0].kind, abi::EVENT_AUDIT);
    let m = w.metrics();
    assert_eq!(m.verdicts[abi::EVENT_DENIED as usize][0], 2);
    assert_eq!(m.verdicts[abi::EVENT_AUDIT as usize][0], 1);
}
