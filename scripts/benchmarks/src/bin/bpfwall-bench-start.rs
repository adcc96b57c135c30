//! bpfwall-bench-start: `docker run` → enforced, for scripts/bench.
//!
//! Runs its own `bpfwall daemon` and `bpfwall-runc` runtime, then starts
//! containers with a policy (`docker run -d`), alternating the two ways a
//! container gets policed: Docker's start event (runc) and the OCI hook
//! (bpfwall-runc). The latency of a start is the time from just before
//! `docker run` is spawned to the moment the daemon attached the
//! container's programs (after writing its policy), as the daemon reports
//! it in `policed_since_unix_us`. Both clocks are the same host's
//! CLOCK_REALTIME. Prints p50 / p99 / min / max per way.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bpfwall_benchmarks::BenchDaemon;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "bpfwall benchmark: docker run to enforced, p50/p99")]
struct Args {
    /// The bpfwall binary.
    #[arg(long)]
    bpfwall: PathBuf,
    /// Starts per way.
    #[arg(long, default_value_t = 100)]
    starts: usize,
    /// The image to run (must have `sleep`).
    #[arg(long, default_value = "bpfwall-test:latest")]
    image: String,
    /// Write every start here as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

const LABEL: &str = "bpfwall-bench-start";
const RUNTIME: &str = "bpfwall-bench-start";

/// Removes our containers and runtime, then (on drop of its field) stops
/// the daemon.
struct Guard {
    bpfwall: PathBuf,
    daemon: BenchDaemon,
}

impl Drop for Guard {
    fn drop(&mut self) {
        remove_containers();
        let _ = Command::new(&self.bpfwall)
            .args(["uninstall-runtime", "--name", RUNTIME])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn remove_containers() {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={LABEL}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// p50, p99, min, max.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v[0], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    remove_containers();
    let guard = Guard {
        bpfwall: args.bpfwall.clone(),
        daemon: BenchDaemon::start(&args.bpfwall, LABEL, LABEL)?,
    };
    let socket = guard.daemon.socket().to_path_buf();
    let ok = Command::new(&args.bpfwall)
        .args(["install-runtime", "--name", RUNTIME, "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("install-runtime failed");
    }

    let mut csv = match &args.csv {
        Some(p) => {
            let mut f = std::fs::File::create(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            writeln!(f, "way,start,docker_run_ms,enforced_ms")?;
            Some(f)
        }
        None => None,
    };
    let ways = [
        ("events (runc)", "runc"),
        ("OCI hook (bpfwall-runc)", RUNTIME),
    ];
    let mut enforced: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let mut returned: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for i in 0..args.starts {
        for (w, (way, runtime)) in ways.iter().enumerate() {
            let name = format!("{LABEL}-{i}-{w}");
            let start_us = unix_micros();
            let t = Instant::now();
            let out = Command::new("docker")
                .args(["run", "-d", "--name", &name, "--runtime", runtime])
                .args(["--label", &format!("{LABEL}=1")])
                .args([
                    "--label",
                    "bpfwall.ingress=allow from id=nobody port 80/tcp",
                ])
                .args([args.image.as_str(), "sleep", "600"])
                .output()?;
            let run_ms = t.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!(
                    "docker run ({way}) failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let short: String = id.chars().take(12).collect();
            let t = Instant::now();
            let since = loop {
                let s = guard.daemon.status()?;
                if let Some(ep) = s.endpoints.iter().find(|e| e.id == short) {
                    if let (true, "enforced", Some(since)) = (
                        ep.attached,
                        ep.ingress.state.as_str(),
                        ep.policed_since_unix_us,
                    ) {
                        break since;
                    }
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("{name} ({way}) was not enforced within 10 s");
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            let enforced_ms = since.saturating_sub(start_us) as f64 / 1e3;
            enforced[w].push(enforced_ms);
            returned[w].push(run_ms);
            if let Some(f) = csv.as_mut() {
                writeln!(f, "{way},{i},{run_ms:.1},{enforced_ms:.1}")?;
            }
            let _ = Command::new("docker")
                .args(["rm", "-f", &id])
                .stdout(Stdio::null())
                .status()?;
        }
    }
    println!("`docker run -d` → policy enforced (the daemon's attach time minus the time docker run was spawned), ms over {} starts per way, ways alternating:\n", args.starts);
    println!("| way | enforced p50 | enforced p99 | min | max | docker run -d returned, p50 |");
    println!("|---|---|---|---|---|---|");
    for (w, (way, _)) in ways.iter().enumerate() {
        let (p50, p99, min, max) = stats(&enforced[w]);
        let (r50, ..) = stats(&returned[w]);
        println!("| {way} | {p50:.1} | {p99:.1} | {min:.1} | {max:.1} | {r50:.1} |");
    }
    Ok(())
}
