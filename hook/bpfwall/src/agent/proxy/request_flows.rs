//! The proxy's decisions on HTTP requests as flow records, for `bpfwall
//! monitor`: one record per decided request, rate-limited the way the
//! datapath limits its events, so a flood of requests cannot swamp the
//! daemon. At most one record per key (server container, client address,
//! direction, port, verdict, deciding rule) per interval (the daemon's
//! `--flow-event-interval-ms`); the requests in between are counted and
//! ride, as `suppressed`, on the next record of their key. The table of
//! keys is bounded: a request whose key finds it full is counted as lost
//! and reported as a lost-events record (source "proxy").
//!
//! Nothing is built when no monitor listens. The exact counts are the
//! proxy's counters ([`super::stats`]), never these records.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use labels_policy::http::HttpRequest;
use labels_policy::http_decision::RequestVerdict;
use labels_policy::Direction;
use tokio::sync::broadcast;

use crate::agent::flows::describe::end_of;
use crate::agent::snapshot::Snapshot;
use crate::api::flow::{FlowRecord, HttpFlow, MonitorRecord};

/// The most keys the limiter remembers.
const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LimitKey {
    server: String,
    client: IpAddr,
    direction: Direction,
    port: u16,
    allowed: bool,
    rule: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    last_sent: Instant,
    suppressed: u32,
}

#[derive(Debug, Default)]
struct Limiter {
    keys: HashMap<LimitKey, Limit>,
    lost: u64,
}

/// What one decided request is.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The policy in force.
    pub snapshot: &'a Snapshot,
    /// The server container's id and name.
    pub server: (&'a str, &'a str),
    /// The server's identity and the client's.
    pub identities: (u32, u32),
    /// The server's address (as the client asked) and the client's.
    pub local: SocketAddr,
    /// The client.
    pub peer: SocketAddr,
    /// Whose rules decided.
    pub direction: Direction,
    /// What they said.
    pub verdict: &'a RequestVerdict,
    /// The request.
    pub request: &'a HttpRequest,
}

/// Sends the proxy's records to every monitor.
#[derive(Debug)]
pub struct RequestFlows {
    records: Option<broadcast::Sender<Arc<MonitorRecord>>>,
    interval: Duration,
    limiter: Mutex<Limiter>,
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl RequestFlows {
    /// Records to `records` (None: flow events are off), at most one per
    /// key per `interval` (zero: every one).
    pub fn new(
        records: Option<broadcast::Sender<Arc<MonitorRecord>>>,
        interval: Duration,
    ) -> RequestFlows {
        RequestFlows {
            records,
            interval,
            limiter: Mutex::default(),
        }
    }

    /// No records at all.
    pub fn off() -> RequestFlows {
        RequestFlows::new(None, Duration::ZERO)
    }

    /// Reports one decided request (or counts it on its key's next record).
    pub fn report(&self, d: &Decided<'_>) {
        let Some(records) = &self.records else { return };
        if records.receiver_count() == 0 {
            return;
        }
        let key = LimitKey {
            server: d.server.0.to_string(),
            client: d.peer.ip(),
            direction: d.direction,
            port: d.local.port(),
            allowed: d.verdict.allowed(),
            rule: origin(d.verdict).map(str::to_string),
        };
        let (suppressed, lost) = match self.admit(key, Instant::now()) {
            Some(admitted) => admitted,
            None => return,
        };
        if lost > 0 {
            let _ = records.send(Arc::new(MonitorRecord::LostEvents {
                time_unix_ns: now_unix_ns(),
                count: lost,
                source: "proxy".into(),
            }));
        }
        let _ = records.send(Arc::new(MonitorRecord::Flow(record(d, suppressed))));
    }

    /// Whether a request of `key` is recorded now: Some((suppressed since
    /// the last record of the key, lost since the last report)), or None
    /// (counted on the key, or lost).
    fn admit(&self, key: LimitKey, now: Instant) -> Option<(u32, u64)> {
        let Ok(mut limiter) = self.limiter.lock() else {
            return None;
        };
        let interval = self.interval;
        if let Some(limit) = limiter.keys.get_mut(&key) {
            if !interval.is_zero() && now.duration_since(limit.last_sent) < interval {
                limit.suppressed = limit.suppressed.saturating_add(1);
                return None;
            }
            let suppressed = std::mem::take(&mut limit.suppressed);
            limit.last_sent = now;
            let lost = std::mem::take(&mut limiter.lost);
            return Some((suppressed, lost));
        }
        if limiter.keys.len() >= MAX_KEYS {
            // Keys with nothing pending and out of their interval can go.
            limiter.keys.retain(|_, l| {
                l.suppressed > 0
                    || (!interval.is_zero() && now.duration_since(l.last_sent) < interval)
            });
            if limiter.keys.len() >= MAX_KEYS {
                limiter.lost += 1;
                return None;
            }
        }
        limiter.keys.insert(
            key,
            Limit {
                last_sent: now,
                suppressed: 0,
            },
        );
        let lost = std::mem::take(&mut limiter.lost);
        Some((0, lost))
    }
}

fn origin(verdict: &RequestVerdict) -> Option<&str> {
    match verdict {
        RequestVerdict::Allowed { origin, .. } | RequestVerdict::Denied { origin, .. } => {
            Some(origin)
        }
        RequestVerdict::DeniedByDefault => None,
    }
}

/// The record of one decided request: from the client to the server,
/// decided at `direction` of the container whose rules those are.
fn record(d: &Decided<'_>, suppressed: u32) -> FlowRecord {
    let snap = d.snapshot;
    let (_, server_name) = d.server;
    let (server_identity, client_identity) = d.identities;
    let (mut destination, _) = end_of(
        snap,
        Some(d.local.ip()),
        Some(d.local.port()),
        server_identity,
    );
    if destination.container.is_none() {
        destination.container = Some(server_name.to_string());
    }
    let (source, _) = end_of(
        snap,
        Some(d.peer.ip()),
        Some(d.peer.port()),
        client_identity,
    );
    let container = match d.direction {
        Direction::Ingress => Some(server_name.to_string()),
        Direction::Egress => source.container.clone(),
    };
    let allowed = d.verdict.allowed();
    let described = d.verdict.describe();
    let summary = match d.direction {
        Direction::Ingress => format!("http {described}"),
        Direction::Egress => format!("http {described} (the client's egress)"),
    };
    FlowRecord {
        time_unix_ns: now_unix_ns(),
        verdict: if allowed { "allowed" } else { "denied" }.to_string(),
        direction: d.direction.to_string(),
        container,
        source,
        destination,
        protocol: "tcp".into(),
        port: d.local.port(),
        rule: origin(d.verdict).map(str::to_string),
        drop_reason: None,
        summary,
        suppressed,
        policy_revision: snap.policy_revision,
        http: Some(HttpFlow {
            method: d.request.method.clone(),
            path: d.request.target.clone(),
            host: d.request.host.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn key(client: &str, allowed: bool) -> LimitKey {
        LimitKey {
            server: "abc".into(),
            client: client.parse().unwrap(),
            direction: Direction::Ingress,
            port: 80,
            allowed,
            rule: Some("bpfwall.ingress[0]".into()),
        }
    }

    #[test]
    fn one_record_per_key_and_interval_the_rest_ride_on_the_next() {
        let flows = RequestFlows::new(None, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(flows.admit(key("10.0.0.2", false), t0), Some((0, 0)));
        for i in 1..=5 {
            assert_eq!(
                flows.admit(key("10.0.0.2", false), t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another key is its own.
        assert_eq!(flows.admit(key("10.0.0.2", true), t0), Some((0, 0)));
        assert_eq!(
            flows.admit(key("10.0.0.2", false), t0 + Duration::from_secs(1)),
            Some((5, 0))
        );
        // Interval zero: every one.
        let every = RequestFlows::new(None, Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(every.admit(key("10.0.0.2", false), t0), Some((0, 0)));
        }
    }

    #[test]
    fn a_full_table_loses_records_and_says_so() {
        let flows = RequestFlows::new(None, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let mut k = key("10.0.0.2", false);
            k.client = ip;
            assert!(flows.admit(k, t0).is_some());
        }
        assert_eq!(flows.admit(key("10.9.9.9", false), t0), None);
        assert_eq!(flows.admit(key("10.9.9.8", false), t0), None);
        // Out of their interval, idle keys make room; the loss is told.
        assert_eq!(
            flows.admit(key("10.9.9.9", false), t0 + Duration::from_secs(2)),
            Some((0, 2))
        );
    }
}
