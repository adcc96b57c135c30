//! What the proxy counts and reports in `status`: HTTP requests allowed and
//! denied per container and direction, connections it closed and why,
//! whether each served container's proxy is ready, and the L7 drops of the
//! datapath.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bpfwall_datapath::steering::L7Drops;
use labels_policy::Direction;

use crate::api::{ProxyState, Status};

/// Why the proxy closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closed {
    /// HTTP/2 prior knowledge on an http-policed port.
    Http2,
    /// Not HTTP/1.x on an http-policed port.
    NotHttp,
    /// A malformed request (400).
    Malformed,
    /// A request line or headers above the bound (431).
    Oversized,
    /// The policy no longer admits the connection.
    Revoked,
    /// A connection to a port or container the proxy does not serve.
    NotSteered,
}

impl Closed {
    /// Every reason.
    pub const ALL: [Closed; 6] = [
        Closed::Http2,
        Closed::NotHttp,
        Closed::Malformed,
        Closed::Oversized,
        Closed::Revoked,
        Closed::NotSteered,
    ];

    /// The name in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Closed::Http2 => "http2-prior-knowledge",
            Closed::NotHttp => "not-http",
            Closed::Malformed => "malformed-request",
            Closed::Oversized => "request-head-too-large",
            Closed::Revoked => "policy-revoked",
            Closed::NotSteered => "not-steered",
        }
    }
}

/// The proxy's host-wide counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyTotals {
    /// Decided requests: [ingress, egress] x [allowed, denied].
    pub requests: [[u64; 2]; 2],
    /// Requests that could not be parsed (400) or whose head was above
    /// the bound (431).
    pub parse_errors: u64,
    /// Connections closed, by reason.
    pub closed: Vec<(&'static str, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Container id -> [ingress, egress] x [allowed, denied].
    requests: BTreeMap<String, [[u64; 2]; 2]>,
    /// Every decided request, whoever's rules decided it: [ingress,
    /// egress] x [allowed, denied].
    totals: [[u64; 2]; 2],
    closed: BTreeMap<Closed, u64>,
    /// Container id -> its proxy's state.
    served: BTreeMap<String, ProxyState>,
}

/// The proxy's counters, shared with the API.
#[derive(Debug, Default)]
pub struct ProxyStats {
    inner: Mutex<Inner>,
    drops: Option<L7Drops>,
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl ProxyStats {
    /// Counters that also report the datapath's L7 drops.
    pub fn new(drops: Option<L7Drops>) -> ProxyStats {
        ProxyStats {
            inner: Mutex::default(),
            drops,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut i| f(&mut i))
    }

    /// One request decided by a direction's rules (of a container, when
    /// the side is one bpfwall knows).
    pub fn request(&self, container: Option<&str>, direction: Direction, allowed: bool) {
        self.with(|i| {
            i.totals[index(direction)][usize::from(!allowed)] += 1;
            if let Some(container) = container {
                let slot = match i.requests.get_mut(container) {
                    Some(slot) => slot,
                    None => i.requests.entry(container.to_string()).or_default(),
                };
                slot[index(direction)][usize::from(!allowed)] += 1;
            }
        });
    }

    /// The datapath's drops for the proxy (sk_lookup's, and step 10b's),
    /// by reason name; all of them are of new inbound connections.
    pub fn l7_drops(&self) -> Vec<(&'static str, u64)> {
        let Some(drops) = &self.drops else {
            return Vec::new();
        };
        match drops.read() {
            Ok(d) => d.into_iter().map(|(r, n)| (r.name(), n)).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the L7 drops");
                Vec::new()
            }
        }
    }

    /// The host-wide counts, for the metrics.
    pub fn totals(&self) -> ProxyTotals {
        self.with(|i| ProxyTotals {
            requests: i.totals,
            parse_errors: [Closed::Malformed, Closed::Oversized]
                .iter()
                .map(|c| i.closed.get(c).copied().unwrap_or(0))
                .sum(),
            closed: Closed::ALL
                .iter()
                .map(|c| (c.name(), i.closed.get(c).copied().unwrap_or(0)))
                .collect(),
        })
        .unwrap_or_default()
    }

    /// One connection closed.
    pub fn closed(&self, why: Closed) {
        self.with(|i| *i.closed.entry(why).or_default() += 1);
    }

    /// The proxy's state for a container (None: it serves it no more).
    pub fn set_served(&self, container: &str, state: Option<ProxyState>) {
        self.with(|i| match state {
            Some(s) => {
                i.served.insert(container.to_string(), s);
            }
            None => {
                i.served.remove(container);
            }
        });
    }

    /// The containers with a proxy state.
    pub fn served(&self) -> Vec<String> {
        self.with(|i| i.served.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds what the proxy knows to a status.
    pub fn fill(&self, status: &mut Status) {
        self.with(|i| {
            for ep in &mut status.endpoints {
                let full = i
                    .served
                    .keys()
                    .chain(i.requests.keys())
                    .find(|id| id.starts_with(&ep.id))
                    .cloned();
                let Some(id) = full else { continue };
                if let Some(counts) = i.requests.get(&id) {
                    ep.ingress.http_allowed = counts[0][0];
                    ep.ingress.http_denied = counts[0][1];
                    ep.egress.http_allowed = counts[1][0];
                    ep.egress.http_denied = counts[1][1];
                }
                ep.proxy = i.served.get(&id).cloned();
            }
            status.proxy_closed = i
                .closed
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect();
        });
        if let Some(drops) = &self.drops {
            match drops.read() {
                Ok(d) => {
                    for (reason, n) in d {
                        status.drops.insert(reason.name().to_string(), n);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the L7 drops"),
            }
        }
    }
}
