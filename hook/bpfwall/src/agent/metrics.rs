//! Prometheus metrics (`--metrics-addr`, off by default): a small HTTP
//! server on its own task answering `GET /metrics` in the OpenMetrics text
//! format (prometheus-client, the official crate). Every value is read at
//! scrape time from what is exact: the datapath's per-CPU maps (drops by
//! reason and direction, forwarded packets, policy verdicts, events sent
//! and lost), the reconciler's last snapshot (map fill, endpoints by
//! state) and the reconcile loop's own account (apply latency, errors).
//! Names follow Cilium's where it has one. Per-container series only with
//! `--metrics-per-container` (one series per container and direction).

use std::net::SocketAddr;
use std::sync::Arc;

use bpfwall_datapath::{CounterReader, MetricsReader};
use labels_policy::datapath_abi::{self as abi, DropReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::proxy::ProxyStats;
use super::snapshot::Snapshot;

/// Why the metrics server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A non-loopback address without `--metrics-allow-remote`.
    #[error("--metrics-addr {addr}: not a loopback address; the metrics name every container and its traffic, so they are served beyond this host only with --metrics-allow-remote")]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address cannot be bound.
    #[error("cannot listen on --metrics-addr {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the reconcile loop accounts for.
#[derive(Debug, Clone)]
pub struct ReconcileStats {
    /// Seconds from a reconcile's start to its change in force.
    pub apply_seconds: Histogram,
    /// Reconciles that failed.
    pub errors: Counter,
}

impl Default for ReconcileStats {
    fn default() -> Self {
        ReconcileStats {
            // 0.25 ms to 8 s.
            apply_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            errors: Counter::default(),
        }
    }
}

/// Everything a scrape reads.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    /// The reconciler's last snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Per-endpoint counters.
    pub counters: Option<Arc<dyn CounterReader>>,
    /// Host-wide datapath metrics.
    pub datapath: Option<Arc<MetricsReader>>,
    /// The reconcile loop's account.
    pub reconcile: ReconcileStats,
    /// Series per container.
    pub per_container: bool,
    /// The HTTP proxy's counts (None: it did not start).
    pub proxy: Option<Arc<ProxyStats>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L7Labels {
    rule: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    container: String,
    direction: String,
}

const DIRECTIONS: [&str; 2] = ["ingress", "egress"];

impl MetricsSource {
    /// The metrics now, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        let snapshot = self.snapshots.borrow().clone();

        if let Some(m) = self.datapath.as_ref().and_then(|d| d.read().ok()) {
            let drops = Family::<DropLabels, Counter>::default();
            for reason in DropReason::ALL {
                for (d, direction) in DIRECTIONS.iter().enumerate() {
                    drops
                        .get_or_create(&DropLabels {
                            reason: reason.name().into(),
                            direction: (*direction).into(),
                        })
                        .inc_by(m.drops[reason as usize][d]);
                }
            }
            // The HTTP proxy's drops (no proxy socket, a connection around
            // the proxy): of new inbound connections, so ingress.
            for (reason, n) in self
                .proxy
                .as_ref()
                .map(|p| p.l7_drops())
                .unwrap_or_default()
            {
                for direction in DIRECTIONS {
                    let counter = drops.get_or_create(&DropLabels {
                        reason: reason.into(),
                        direction: direction.into(),
                    });
                    if direction == "ingress" {
                        counter.inc_by(n);
                    }
                }
            }
            registry.register(
                "bpfwall_drop_count",
                "Packets dropped, by reason and direction",
                drops,
            );
            let forwarded = Family::<DirectionLabels, Counter>::default();
            let verdicts = Family::<VerdictLabels, Counter>::default();
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                forwarded
                    .get_or_create(&DirectionLabels {
                        direction: (*direction).into(),
                    })
                    .inc_by(m.forwarded[d]);
                for (kind, action) in [
                    (abi::EVENT_ALLOWED, "allow"),
                    (abi::EVENT_DENIED, "deny"),
                    (abi::EVENT_AUDIT, "audit"),
                ] {
                    verdicts
                        .get_or_create(&VerdictLabels {
                            direction: (*direction).into(),
                            action: action.into(),
                        })
                        .inc_by(m.verdicts[kind as usize][d]);
                }
            }
            registry.register(
                "bpfwall_forward_count",
                "Packets passed, by direction",
                forwarded,
            );
            registry.register(
                "bpfwall_policy_verdicts",
                "Policy decisions on new flows, by direction and action",
                verdicts,
            );
            let sent = Counter::<u64>::default();
            sent.inc_by(m.events_sent);
            registry.register(
                "bpfwall_flow_events_sent",
                "Flow events the datapath sent",
                sent,
            );
            let lost = Counter::<u64>::default();
            lost.inc_by(m.events_lost);
            registry.register(
                "bpfwall_flow_events_lost",
                "Flow events lost because the ring buffer was full",
                lost,
            );
        }

        if let Some(proxy) = &self.proxy {
            // Cilium's cilium_policy_l7_total{rule="forwarded|denied|parse_errors"},
            // with bpfwall's words and the side whose rules decided.
            let totals = proxy.totals();
            let l7 = Family::<L7Labels, Counter>::default();
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                for (v, rule) in ["allowed", "denied"].iter().enumerate() {
                    l7.get_or_create(&L7Labels {
                        rule: (*rule).into(),
                        direction: (*direction).into(),
                    })
                    .inc_by(totals.requests[d][v]);
                }
            }
            // A request that cannot be parsed is decided by no side's rules:
            // it is counted where the proxy stands, the server's ingress.
            l7.get_or_create(&L7Labels {
                rule: "parse_errors".into(),
                direction: "ingress".into(),
            })
            .inc_by(totals.parse_errors);
            registry.register(
                "bpfwall_policy_l7",
                "HTTP requests the proxy decided (allowed, denied) or could not parse, by the direction whose rules decided",
                l7,
            );
            let closed = Family::<ReasonLabels, Counter>::default();
            for (reason, n) in &totals.closed {
                closed
                    .get_or_create(&ReasonLabels {
                        reason: (*reason).into(),
                    })
                    .inc_by(*n);
            }
            registry.register(
                "bpfwall_proxy_connections_closed",
                "Connections the HTTP proxy closed, by reason",
                closed,
            );
        }

        let entries = Family::<MapLabels, Gauge>::default();
        let capacity = Family::<MapLabels, Gauge>::default();
        let mut maps: Vec<(String, usize, usize)> = snapshot
            .maps
            .iter()
            .map(|(name, (n, cap))| (name.to_string(), *n, *cap))
            .collect();
        if let Some(used) = self
            .counters
            .as_ref()
            .and_then(|c| c.conntrack_used(0).ok())
        {
            maps.push((
                abi::MAP_CT.into(),
                used as usize,
                snapshot.conntrack_capacity,
            ));
        }
        for (name, n, cap) in maps {
            let labels = MapLabels { map: name };
            entries.get_or_create(&labels).set(n as i64);
            capacity.get_or_create(&labels).set(cap as i64);
        }
        registry.register(
            "bpfwall_map_entries",
            "Entries in each map (both generations during a change)",
            entries,
        );
        registry.register(
            "bpfwall_map_capacity",
            "Entries each map can hold",
            capacity,
        );

        let states = Family::<StateLabels, Gauge>::default();
        for state in ["policed", "audit", "closed", "not_policed"] {
            let _ = states.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        let reports: std::collections::BTreeMap<&str, u32> = snapshot
            .compiled
            .containers
            .iter()
            .map(|r| (r.name.as_str(), r.flags))
            .collect();
        for c in &snapshot.containers {
            let flags = reports.get(c.record.name.as_str()).copied().unwrap_or(0);
            let state = if c.endpoint_id.is_none() || c.problem.is_some() {
                "not_policed"
            } else if !c.closed.is_empty()
                || flags & (abi::EP_ERROR_INGRESS | abi::EP_ERROR_EGRESS) != 0
            {
                "closed"
            } else if flags & abi::EP_AUDIT != 0 {
                "audit"
            } else {
                "policed"
            };
            states
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .inc();
        }
        registry.register("bpfwall_endpoints", "Managed containers by state", states);

        registry.register_with_unit(
            "bpfwall_policy_apply_duration",
            "Time from a reconcile's start to its change in force",
            Unit::Seconds,
            self.reconcile.apply_seconds.clone(),
        );
        registry.register(
            "bpfwall_reconcile_errors",
            "Reconciles that failed (what was in force stayed)",
            self.reconcile.errors.clone(),
        );

        if self.per_container {
            if let Some(reader) = &self.counters {
                let passed = Family::<ContainerLabels, Counter>::default();
                let dropped = Family::<ContainerLabels, Counter>::default();
                for c in &snapshot.containers {
                    let Some(ep) = c.endpoint_id else { continue };
                    let Ok(n) = reader.counters(ep) else { continue };
                    for (d, direction) in DIRECTIONS.iter().enumerate() {
                        let labels = ContainerLabels {
                            container: c.record.name.clone(),
                            direction: (*direction).into(),
                        };
                        passed.get_or_create(&labels).inc_by(n.allowed_packets[d]);
                        dropped.get_or_create(&labels).inc_by(n.dropped_packets[d]);
                    }
                }
                registry.register(
                    "bpfwall_container_forward_count",
                    "Packets a container passed, by direction",
                    passed,
                );
                registry.register(
                    "bpfwall_container_drop_count",
                    "Packets a container dropped, by direction",
                    dropped,
                );
            }
        }

        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Binds the metrics address: loopback only unless `allow_remote`.
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, MetricsError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(MetricsError::NotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` until the daemon stops.
pub async fn serve(listener: TcpListener, source: MetricsSource) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &source).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

/// One HTTP/1.x request, one answer, then the connection closes.
async fn answer(mut stream: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            source.render(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "bpfwall serves /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
