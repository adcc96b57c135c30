//! bpfwall-bench-apply: the control plane, for scripts/bench.
//!
//! Runs a real `bpfwall daemon` and grows a population of M simulated
//! endpoints: each one a `sleep` process in a network namespace of its own
//! (its address on the namespace's loopback) and in a cgroup of its own,
//! reported to the daemon the way the OCI hook reports a container (an
//! `enforce` request: the daemon reads the address in the namespace,
//! compiles, writes the maps and attaches both programs to the cgroup). No
//! Docker containers; Docker must run only because the daemon lists it.
//!
//! Endpoint i carries `app=svc{i%10}` and allows ingress from
//! `app=svc{(i+1)%10}` on 80/tcp. For each M the measured change is one new
//! endpoint of `svc0` starting, timed three ways, alternating within each
//! run:
//!   bpfwall    the enforce round trip over the daemon's socket (list,
//!              compile, diff, write the maps, attach), as the hook waits
//!              for it;
//!   iptables   `iptables-restore --noflush` of the same change written as
//!              iptables rules by address (a chain per endpoint with one
//!              rule per allowed peer address, a dispatch rule, and the new
//!              address added to the chains of the svc9 endpoints that
//!              allow svc0), with the M endpoints' rules already loaded;
//!   nft        `nft -f` of the same change in nftables written well (a set
//!              of addresses per service, a chain per endpoint, a verdict
//!              map for dispatch): add an element, a chain and a map entry.
//! The iptables and nftables rules live in chains of their own that no hook
//! jumps to (the cost of applying them is the same); everything is removed
//! at the end. The daemon's resident memory is read at every M.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bpfwall::api::{Answer, EnforceRequest, Request};
use bpfwall_benchmarks::BenchDaemon;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "bpfwall control-plane benchmark: apply time vs iptables-restore and nft -f, daemon RSS"
)]
struct Args {
    /// The bpfwall binary to run as the daemon.
    #[arg(long)]
    bpfwall: PathBuf,
    /// Endpoint counts (M) to measure at.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    endpoints: Vec<usize>,
    /// Runs per point.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Write every run here as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

const PREFIX: &str = "bpfwall-bench-apply";
const NFT_TABLE: &str = "bpfwall_bench_apply";
const IPT_DISPATCH: &str = "BWA-D";
const IPT_NEW: &str = "BWA-EN";

fn addr_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, (i >> 8) as u8, i as u8)
}

fn service(i: usize) -> usize {
    i % 10
}

fn allowed_service(i: usize) -> usize {
    (i + 1) % 10
}

struct Endpoint {
    child: Child,
    cgroup: PathBuf,
}

/// Everything this benchmark creates, removed on drop (also on error).
struct Bench {
    cgroup_root: PathBuf,
    endpoints: BTreeMap<usize, Endpoint>,
    /// Dropped after `Bench::drop` has stopped the endpoints.
    daemon: Option<BenchDaemon>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (_, mut ep) in std::mem::take(&mut self.endpoints) {
            let _ = ep.child.kill();
            let _ = ep.child.wait();
            let _ = std::fs::remove_dir(&ep.cgroup);
        }
        self.daemon = None;
        let _ = std::fs::remove_dir(&self.cgroup_root);
        let _ = run_stdin(
            "nft",
            &["-f", "-"],
            &format!("delete table inet {NFT_TABLE}\n"),
        );
        let _ = remove_iptables_chains();
    }
}

fn run_stdin(cmd: &str, args: &[&str], input: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Our chains (BWA-*), found in iptables-save and removed.
fn remove_iptables_chains() -> anyhow::Result<()> {
    let out = Command::new("iptables-save")
        .args(["-t", "filter"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let chains: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(":BWA-"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if chains.is_empty() {
        return Ok(());
    }
    let mut rules = String::from("*filter\n");
    for c in &chains {
        let _ = writeln!(rules, "-F BWA-{c}");
    }
    for c in &chains {
        let _ = writeln!(rules, "-X BWA-{c}");
    }
    rules.push_str("COMMIT\n");
    run_stdin("iptables-restore", &["--noflush"], &rules).map(|_| ())
}

impl Bench {
    fn daemon(&self) -> anyhow::Result<&BenchDaemon> {
        self.daemon.as_ref().context("the daemon is not running")
    }

    fn call(&self, request: &Request) -> anyhow::Result<Answer> {
        Ok(self.daemon()?.call(request)?)
    }

    fn endpoint_count(&self) -> anyhow::Result<usize> {
        Ok(self.daemon()?.status()?.endpoints.len())
    }

    /// All m endpoints attached, their ingress enforced by one rule.
    fn check_enforced(&self, m: usize) -> anyhow::Result<()> {
        let s = self.daemon()?.status()?;
        let good = s
            .endpoints
            .iter()
            .filter(|e| e.attached && e.ingress.state == "enforced" && e.ingress.rules == 1)
            .count();
        if good != m || s.endpoints.len() != m {
            bail!(
                "{good} of {} endpoints are attached and enforced, expected {m}",
                s.endpoints.len()
            );
        }
        Ok(())
    }

    /// Starts endpoint i (not yet reported to the daemon).
    fn spawn(&mut self, i: usize) -> anyhow::Result<u32> {
        let addr = addr_of(i);
        let mut child = Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                &format!("ip link set lo up && ip addr add {addr}/32 dev lo && exec sleep 1000000"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run unshare")?;
        let pid = child.id();
        // Wait for the exec: the address is set by then.
        let t0 = Instant::now();
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            if child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("endpoint {i}: could not set {addr} up in a network namespace");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let cgroup = self.cgroup_root.join(format!("ep{i}"));
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("cannot create {}", cgroup.display()))?;
        let moved = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string());
        self.endpoints.insert(i, Endpoint { child, cgroup });
        moved.context("cannot move an endpoint into its cgroup")?;
        Ok(pid)
    }

    fn enforce(&self, i: usize, pid: u32) -> anyhow::Result<Duration> {
        let labels = [
            (PREFIX.to_string(), "1".to_string()),
            ("app".to_string(), format!("svc{}", service(i))),
            (
                "bpfwall.ingress".to_string(),
                format!("allow from app=svc{} port 80/tcp", allowed_service(i)),
            ),
        ]
        .into_iter()
        .collect();
        let request = Request::Enforce(EnforceRequest {
            id: format!("{PREFIX}-{i}"),
            name: format!("{PREFIX}-{i}"),
            pid,
            labels,
            pid_start_time: bpfwall_sys::process::start_time(pid).ok(),
            image_labels: Default::default(),
            joins: None,
            runtime: None,
            namespace: String::new(),
        });
        let t0 = Instant::now();
        let answer = self.call(&request)?;
        let took = t0.elapsed();
        match answer {
            Answer::Enforced { .. } => Ok(took),
            other => bail!("endpoint {i} was not enforced: {other:?}"),
        }
    }

    fn add(&mut self, i: usize) -> anyhow::Result<Duration> {
        let pid = self.spawn(i)?;
        self.enforce(i, pid)
    }

    /// Stops endpoint i and waits until the daemon has let it go.
    fn remove(&mut self, i: usize, expect: usize) -> anyhow::Result<()> {
        if let Some(mut ep) = self.endpoints.remove(&i) {
            ep.child.kill()?;
            ep.child.wait()?;
            let t0 = Instant::now();
            while self.endpoint_count()? != expect {
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!("the daemon did not prune endpoint {i}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::remove_dir(&ep.cgroup)
                .with_context(|| format!("cannot remove {}", ep.cgroup.display()))?;
        }
        Ok(())
    }
}

/// Kilobytes of a /proc/PID/status field.
fn proc_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The iptables rules of endpoints 0..m (rules by address).
fn iptables_base(m: usize) -> String {
    let mut s = String::from("*filter\n");
    let _ = writeln!(s, ":{IPT_DISPATCH} - [0:0]");
    for i in 0..m {
        let _ = writeln!(s, ":BWA-E{i} - [0:0]");
    }
    for i in 0..m {
        let _ = writeln!(s, "-A {IPT_DISPATCH} -d {}/32 -j BWA-E{i}", addr_of(i));
        for j in (0..m).filter(|j| service(*j) == allowed_service(i)) {
            let _ = writeln!(
                s,
                "-A BWA-E{i} -s {}/32 -p tcp -m tcp --dport 80 -j ACCEPT",
                addr_of(j)
            );
        }
        let _ = writeln!(s, "-A BWA-E{i} -j DROP");
    }
    s.push_str("COMMIT\n");
    s
}

/// The change for new endpoint `new` (a svc0 member) among 0..m, and its undo.
fn iptables_change(m: usize, new: usize) -> (String, String) {
    let a = addr_of(new);
    let mut add = String::from("*filter\n");
    let mut undo = String::from("*filter\n");
    let _ = writeln!(add, ":{IPT_NEW} - [0:0]");
    for j in (0..m).filter(|j| service(*j) == allowed_service(new)) {
        let _ = writeln!(
            add,
            "-A {IPT_NEW} -s {}/32 -p tcp -m tcp --dport 80 -j ACCEPT",
            addr_of(j)
        );
    }
    let _ = writeln!(add, "-A {IPT_NEW} -j DROP");
    let _ = writeln!(add, "-A {IPT_DISPATCH} -d {a}/32 -j {IPT_NEW}");
    let _ = writeln!(undo, "-D {IPT_DISPATCH} -d {a}/32 -j {IPT_NEW}");
    let _ = writeln!(undo, "-F {IPT_NEW}");
    let _ = writeln!(undo, "-X {IPT_NEW}");
    for j in (0..m).filter(|j| allowed_service(*j) == service(new)) {
        let _ = writeln!(
            add,
            "-I BWA-E{j} 1 -s {a}/32 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
        let _ = writeln!(
            undo,
            "-D BWA-E{j} -s {a}/32 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
    }
    add.push_str("COMMIT\n");
    undo.push_str("COMMIT\n");
    (add, undo)
}

/// The nftables ruleset of endpoints 0..m (sets per service).
fn nft_base(m: usize) -> String {
    let mut s = format!("table inet {NFT_TABLE} {{\n");
    for svc in 0..10 {
        let members: Vec<String> = (0..m)
            .filter(|i| service(*i) == svc)
            .map(|i| addr_of(i).to_string())
            .collect();
        let _ = write!(s, "  set svc{svc} {{ type ipv4_addr;");
        if !members.is_empty() {
            let _ = write!(s, " elements = {{ {} }};", members.join(", "));
        }
        s.push_str(" }\n");
    }
    for i in 0..m {
        let _ = writeln!(
            s,
            "  chain e{i} {{ ip saddr @svc{} tcp dport 80 accept; drop; }}",
            allowed_service(i)
        );
    }
    let _ = write!(s, "  map dispatch {{ type ipv4_addr : verdict;");
    if m > 0 {
        let els: Vec<String> = (0..m)
            .map(|i| format!("{} : jump e{i}", addr_of(i)))
            .collect();
        let _ = write!(s, " elements = {{ {} }};", els.join(", "));
    }
    s.push_str(" }\n  chain dispatch { ip daddr vmap @dispatch; }\n}\n");
    s
}

fn nft_change(new: usize) -> (String, String) {
    let a = addr_of(new);
    let t = NFT_TABLE;
    let add = format!(
        "add element inet {t} svc{svc} {{ {a} }}\nadd chain inet {t} en\nadd rule inet {t} en ip saddr @svc{allowed} tcp dport 80 accept\nadd rule inet {t} en drop\nadd element inet {t} dispatch {{ {a} : jump en }}\n",
        svc = service(new),
        allowed = allowed_service(new)
    );
    let undo = format!(
        "delete element inet {t} dispatch {{ {a} }}\nflush chain inet {t} en\ndelete chain inet {t} en\ndelete element inet {t} svc{svc} {{ {a} }}\n",
        svc = service(new)
    );
    (add, undo)
}

fn summary(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.1} ({:.1}-{:.1})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mount = bpfwall_sys::cgroup::cgroup2_mount()?;
    let cgroup_root = mount.join(PREFIX);
    let mut bench = Bench {
        cgroup_root: cgroup_root.clone(),
        endpoints: BTreeMap::new(),
        daemon: None,
    };
    // Leftovers of an interrupted run of ours.
    let _ = run_stdin(
        "nft",
        &["-f", "-"],
        &format!("delete table inet {NFT_TABLE}\n"),
    );
    remove_iptables_chains()?;
    if cgroup_root.exists() {
        for e in std::fs::read_dir(&cgroup_root)?.flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    } else {
        std::fs::create_dir(&cgroup_root)
            .with_context(|| format!("cannot create {}", cgroup_root.display()))?;
    }
    bench.daemon = Some(BenchDaemon::start(&args.bpfwall, PREFIX, PREFIX)?);
    let pid = bench.daemon()?.pid();
    let mut rss = vec![(0usize, proc_kb(pid, "VmRSS:")?)];

    let mut csv = match &args.csv {
        Some(p) => {
            let mut f = std::fs::File::create(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            writeln!(f, "endpoints,method,run,ms")?;
            Some(f)
        }
        None => None,
    };
    let mut results: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut loads: BTreeMap<(usize, &str), f64> = BTreeMap::new();
    let mut present = 0usize;
    let mut ms_list = args.endpoints.clone();
    ms_list.sort_unstable();
    for &m in &ms_list {
        eprintln!("bench-apply: growing to {m} endpoints");
        let mut grow = Duration::ZERO;
        while present < m {
            grow += bench.add(present)?;
            present += 1;
        }
        bench.check_enforced(m)?;
        rss.push((m, proc_kb(pid, "VmRSS:")?));
        // The same M endpoints' rules in iptables and nftables (not timed per
        // run; the load time is reported for scale).
        remove_iptables_chains()?;
        loads.insert(
            (m, "iptables"),
            run_stdin("iptables-restore", &["--noflush"], &iptables_base(m))?.as_secs_f64() * 1e3,
        );
        let _ = run_stdin(
            "nft",
            &["-f", "-"],
            &format!("delete table inet {NFT_TABLE}\n"),
        );
        loads.insert(
            (m, "nft"),
            run_stdin("nft", &["-f", "-"], &nft_base(m))?.as_secs_f64() * 1e3,
        );
        loads.insert((m, "bpfwall"), grow.as_secs_f64() * 1e3);
        for run in 0..args.runs {
            // A fresh svc0 endpoint each run, never one of the M.
            let new = 20_000 + 10 * run;
            let took = bench.add(new)?;
            bench.remove(new, m)?;
            let (add, undo) = iptables_change(m, new);
            let ipt = run_stdin("iptables-restore", &["--noflush"], &add)?;
            run_stdin("iptables-restore", &["--noflush"], &undo)?;
            let (add, undo) = nft_change(new);
            let nft = run_stdin("nft", &["-f", "-"], &add)?;
            run_stdin("nft", &["-f", "-"], &undo)?;
            for (method, d) in [
                ("bpfwall", took),
                ("iptables-restore", ipt),
                ("nft -f", nft),
            ] {
                let ms = d.as_secs_f64() * 1e3;
                results.entry((m, method)).or_default().push(ms);
                if let Some(f) = csv.as_mut() {
                    writeln!(f, "{m},{method},{run},{ms:.3}")?;
                }
            }
        }
    }

    println!("Apply one new container's policy with M endpoints present (simulated: a process in a cgroup and network namespace of its own each, no Docker). ms, median (min-max) of {} runs, methods alternating within each run.\n", args.runs);
    println!("| M | bpfwall (enforce round trip) | iptables-restore --noflush | nft -f | bpfwall / iptables | bpfwall / nft |");
    println!("|---|---|---|---|---|---|");
    for &m in &ms_list {
        let b = &results[&(m, "bpfwall")];
        let i = &results[&(m, "iptables-restore")];
        let n = &results[&(m, "nft -f")];
        println!(
            "| {m} | {} | {} | {} | {:.2} | {:.2} |",
            summary(b),
            summary(i),
            summary(n),
            median(b) / median(i),
            median(b) / median(n)
        );
    }
    println!("\nState for M endpoints, built once per M (ms; bpfwall: the sum of the M enforce round trips, one after another, iptables and nftables: one restore of the whole ruleset):\n");
    println!("| M | bpfwall (M enforce calls) | iptables-restore (rules) | nft -f |");
    println!("|---|---|---|---|");
    for &m in &ms_list {
        let rules = m + m * (m / 10 + 1);
        println!(
            "| {m} | {:.0} | {:.0} ({rules}) | {:.0} |",
            loads[&(m, "bpfwall")],
            loads[&(m, "iptables")],
            loads[&(m, "nft")]
        );
    }
    println!("\nbpfwall daemon resident memory (VmRSS):\n");
    println!("| endpoints | RSS (MiB) |");
    println!("|---|---|");
    for (m, kb) in &rss {
        println!("| {m} | {:.1} |", *kb as f64 / 1024.0);
    }
    println!(
        "\npeak (VmHWM): {:.1} MiB",
        proc_kb(pid, "VmHWM:")? as f64 / 1024.0
    );
    Ok(())
}
