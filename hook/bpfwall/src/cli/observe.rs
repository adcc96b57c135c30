//! The daemon's flags for what it reports (flow events, metrics, audit),
//! and the `advise` and `map` commands, which ask the daemon for its
//! learned edges.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::agent::ObserveConfig;
use crate::api::{self, Answer, Request};

/// How the daemon reports what it sees.
#[derive(Debug, clap::Args)]
pub(super) struct ObserveArgs {
    /// Audit every managed container: what policy would drop is reported
    /// (verdict audit) and passes. Per container: label bpfwall.mode=audit.
    #[arg(long)]
    pub audit: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9962);
    /// off by default, loopback only unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve metrics on a non-loopback address too (they name containers
    /// and their traffic: put them behind a firewall).
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Add per-container series (one per container and direction).
    #[arg(long)]
    pub metrics_per_container: bool,
    /// Send no flow events from the datapath (monitor, advise and map then
    /// learn nothing; counters and metrics go on).
    #[arg(long)]
    pub no_flow_events: bool,
    /// At most one flow event per (container, peer, direction, protocol,
    /// port, verdict) per this many milliseconds; the others are counted
    /// on the next one. 0: every one.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub flow_event_interval_ms: u64,
    /// Bytes of the flow event ring (default 1 MiB, about 13,000 events;
    /// a power of two of at least 4096). Applies when the ring is made:
    /// a pinned one keeps its size.
    #[arg(long, value_name = "BYTES", value_parser = ring_bytes)]
    pub flow_event_ring_bytes: Option<u32>,
}

fn ring_bytes(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n}: expected a power of two of at least 4096"));
    }
    Ok(n)
}

impl ObserveArgs {
    /// The daemon's settings; a non-loopback metrics address without
    /// --metrics-allow-remote is refused before anything starts.
    pub(super) fn config(&self) -> anyhow::Result<ObserveConfig> {
        if let Some(addr) = self.metrics_addr {
            if !addr.ip().is_loopback() && !self.metrics_allow_remote {
                return Err(crate::agent::metrics::MetricsError::NotLoopback { addr }.into());
            }
        }
        Ok(ObserveConfig {
            events: bpfwall_datapath::EventSettings {
                enabled: !self.no_flow_events,
                interval_ns: self.flow_event_interval_ms.saturating_mul(1_000_000),
            },
            metrics_addr: self.metrics_addr,
            metrics_allow_remote: self.metrics_allow_remote,
            metrics_per_container: self.metrics_per_container,
        })
    }
}

/// `bpfwall advise CONTAINER`.
pub(super) async fn advise(
    socket: &Path,
    container: String,
    format: super::advise::Format,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match api::call(socket, &Request::Advise { container }).await? {
        Answer::Advice(a) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print!("{}", super::advise::render(&a, format));
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error { message, .. } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `bpfwall map`.
pub(super) async fn map(
    socket: &Path,
    svg: Option<PathBuf>,
    dot: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let list = match api::call(socket, &Request::Edges).await? {
        Answer::Edges(l) => l,
        Answer::Error { message, .. } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    if let Some(path) = &svg {
        std::fs::write(path, super::service_map::svg(&list))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &dot {
        std::fs::write(path, super::service_map::dot(&list))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if svg.is_none() && dot.is_none() {
        let (_, arcs) = super::service_map::graph(&list);
        for a in arcs {
            println!("{} -> {} {}", a.from, a.to, a.label);
        }
        if list.evicted > 0 {
            println!(
                "({} edges forgotten: the record holds {})",
                list.evicted, list.capacity
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
