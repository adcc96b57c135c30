//! bpfwall-bench: the datapath microbenchmark (BPF_PROG_TEST_RUN of the real
//! programs) and the compile-time measurement, for scripts/bench.
//!
//! For each N in --rules, the policy of a local container allows N distinct
//! peers on 80/tcp (N rules, N peer identities); the benchmark then times,
//! per packet: the empty baseline program, a reply (conntrack), a new flow
//! allowed by policy (a SYN: the policy lookup), a packet of an established
//! flow in its own direction (conntrack at the current policy revision) and
//! a new flow denied (default deny); the last three again with flow events
//! on (the default rate limit, one event per key and second: the steady
//! state of many flows of one kind), where every other case runs with
//! them off (`--no-flow-events`). The
//! configurations alternate within every run; each point is --runs runs of
//! --repeat packets. Prints a markdown table; --csv writes every raw run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::Context as _;
use aya::programs::{CgroupSkb, TestRun, TestRunOptions};
use bpfwall_datapath::test_run::{self, ipv4_packet, skb_ctx, TCP_ACK, TCP_SYN};
use bpfwall_datapath::{KernelDatapath as Datapath, EMPTY_OBJECT};
use clap::Parser;
use labels_policy::datapath_abi::{self as abi, CtKey, CtValue};
use labels_policy::model::{
    Direction, Peer, PortSpec, Protocol, Rule, RuleOrigin, Selector, Verdict,
};
use labels_policy::{
    compile, Attachment, CompileInput, ContainerInput, HostPolicy, IdentityAllocator, LabelSet,
};

#[derive(Debug, Parser)]
#[command(about = "bpfwall datapath microbenchmark (BPF_PROG_TEST_RUN) and compile time")]
struct Args {
    /// Rule counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    rules: Vec<usize>,
    /// Packets per run (the kernel reports the mean per packet).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Runs per point (the table shows median, min and max).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Write every run here as CSV.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

const CASES: [&str; 8] = [
    "empty program",
    "reply (conntrack)",
    "new flow allowed (policy)",
    "established (conntrack)",
    "new flow denied",
    "new flow allowed, events on",
    "established, events on",
    "new flow denied, events on",
];

fn peer_addr(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        100 + (k >> 16) as u8,
        (k >> 8) as u8,
        k as u8,
    ))
}

fn labels(pairs: &[(&str, String)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ifindex =
        test_run::enter_own_netns().context("a network namespace of our own (run as root)")?;
    let cgroup_id = test_run::own_cgroup_id()?;
    let mut dp = Datapath::load(None).context("loading the datapath (run as root)")?;
    dp.set_test_shares()?;
    let mut empty_obj = aya::Ebpf::load(EMPTY_OBJECT).context("loading the empty program")?;
    let empty: &mut CgroupSkb = empty_obj
        .program_mut("bench_empty")
        .context("bench_empty is missing")?
        .try_into()?;
    empty.load()?;
    let ctx = skb_ctx(ifindex);
    let local: IpAddr = "172.31.0.2".parse()?;
    let stranger: IpAddr = "172.31.0.4".parse()?;
    let mut csv = match &args.csv {
        Some(p) => Some(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => None,
    };
    if let Some(f) = csv.as_mut() {
        writeln!(f, "rules,case,run,ns_per_packet")?;
    }
    let mut table: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut compile_ms = BTreeMap::new();
    for &n in &args.rules {
        // N peers, each allowed by a rule of its own.
        let mut containers = vec![
            ContainerInput {
                name: "local".into(),
                labels: labels(&[("id", "local".into())]),
                addresses: vec![local],
                attachment: Some(Attachment {
                    cgroup_id,
                    endpoint_id: 1,
                }),
                network: Default::default(),
                default_deny: false,
                started: 0,
            },
            ContainerInput {
                name: "stranger".into(),
                labels: labels(&[("id", "stranger".into())]),
                addresses: vec![stranger],
                attachment: None,
                network: Default::default(),
                default_deny: false,
                started: 0,
            },
        ];
        let mut rules = Vec::with_capacity(n);
        for k in 0..n {
            containers.push(ContainerInput {
                name: format!("peer{k}"),
                labels: labels(&[("id", format!("peer{k}"))]),
                addresses: vec![peer_addr(k)],
                attachment: None,
                network: Default::default(),
                default_deny: false,
                started: 0,
            });
            rules.push(Rule {
                direction: Direction::Ingress,
                verdict: Verdict::Allow,
                peers: vec![Peer::Endpoints(Selector {
                    match_labels: [("id".to_string(), format!("peer{k}"))].into(),
                    match_expressions: Vec::new(),
                })],
                ports: vec![PortSpec {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 80,
                }],
                http: Vec::new(),
                origin: RuleOrigin {
                    source: "bench".into(),
                    index: k,
                },
            });
        }
        let policy = HostPolicy {
            subject: Selector {
                match_labels: [("id".to_string(), "local".to_string())].into(),
                match_expressions: Vec::new(),
            },
            rules,
        };
        let t0 = Instant::now();
        let compiled = compile(
            CompileInput {
                containers: &containers,
                host_addresses: &[],
                host_policies: std::slice::from_ref(&policy),
            },
            &mut IdentityAllocator::new(),
        )?;
        compile_ms.insert(n, t0.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            compiled.policy.len() == n,
            "expected {n} policy entries, got {}",
            compiled.policy.len()
        );
        dp.write_compiled(&compiled)?;
        // The reply case: a flow the local container opened towards the stranger.
        let mut key = CtKey {
            protocol: abi::IPPROTO_TCP,
            family: abi::FAMILY_IPV4,
            endpoint_id: 1,
            ..CtKey::default()
        };
        key.local_addr[..4].copy_from_slice(&[172, 31, 0, 2]);
        key.remote_addr[..4].copy_from_slice(&[172, 31, 0, 4]);
        key.local_port_be = 41000u16.to_be();
        key.remote_port_be = 443u16.to_be();
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let last_seen_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
        let revision = dp.maps()?.policy_revision()?;
        dp.maps()?.insert_conntrack(
            key,
            CtValue {
                last_seen_ns,
                origin_direction: abi::DIR_EGRESS,
                flags: abi::CT_SEEN_REPLY,
                // Allowed at the current revision: replies pass on it.
                policy_revision: revision,
                ..CtValue::default()
            },
        )?;

        let peer = peer_addr(n / 2);
        // A SYN is always decided by policy (never by conntrack); it leaves
        // a conntrack entry at the current policy revision, which the
        // established case (the same flow's next packets) then hits.
        let packets = [
            ipv4_packet(peer, local, abi::IPPROTO_TCP, 40000, 80, TCP_ACK),
            ipv4_packet(stranger, local, abi::IPPROTO_TCP, 443, 41000, TCP_ACK),
            ipv4_packet(peer, local, abi::IPPROTO_TCP, 40000, 80, TCP_SYN),
            ipv4_packet(peer, local, abi::IPPROTO_TCP, 40000, 80, TCP_ACK),
            ipv4_packet(stranger, local, abi::IPPROTO_TCP, 40000, 80, TCP_SYN),
            ipv4_packet(peer, local, abi::IPPROTO_TCP, 40000, 80, TCP_SYN),
            ipv4_packet(peer, local, abi::IPPROTO_TCP, 40000, 80, TCP_ACK),
            ipv4_packet(stranger, local, abi::IPPROTO_TCP, 40000, 80, TCP_SYN),
        ];
        let expected = [1u32, 1, 1, 1, 0, 1, 1, 0];
        let mut events = dp.open_events()?;
        for run in 0..args.runs {
            for (i, case) in CASES.iter().enumerate() {
                dp.set_event_settings(bpfwall_datapath::EventSettings {
                    enabled: case.ends_with("events on"),
                    ..bpfwall_datapath::EventSettings::default()
                })?;
                events.drain(|_| {});
                let opts = TestRunOptions {
                    data_in: Some(&packets[i]),
                    ctx_in: Some(&ctx),
                    repeat: args.repeat,
                    ..TestRunOptions::default()
                };
                let result = if i == 0 {
                    empty.test_run(opts)?
                } else {
                    dp.program(abi::PROG_INGRESS)?.test_run(opts)?
                };
                anyhow::ensure!(
                    result.return_value == expected[i],
                    "{case} at N={n}: the program returned {}",
                    result.return_value
                );
                let ns = result.duration.as_nanos() as f64;
                table.entry((n, case)).or_default().push(ns);
                if let Some(f) = csv.as_mut() {
                    writeln!(f, "{n},{case},{run},{ns}")?;
                }
            }
        }
    }
    println!("BPF_PROG_TEST_RUN, ns per packet: median (min-max) of {} runs x {} packets; configurations alternate within each run.\n", args.runs, args.repeat);
    println!("| rules (N) | {} | compile (ms) |", CASES.join(" | "));
    println!("|---|{}---|", "---|".repeat(CASES.len()));
    for &n in &args.rules {
        let cells: Vec<String> = CASES
            .iter()
            .map(|c| {
                let mut v = table[&(n, *c)].clone();
                v.sort_by(f64::total_cmp);
                format!("{:.0} ({:.0}-{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
            })
            .collect();
        println!("| {n} | {} | {:.1} |", cells.join(" | "), compile_ms[&n]);
    }
    Ok(())
}
