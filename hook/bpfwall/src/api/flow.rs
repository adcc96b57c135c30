//! The wire types of what the daemon saw: flow records streamed by
//! `bpfwall monitor` (one JSON object a line), lost-event records, the
//! learned edges (`bpfwall map`) and the suggested policy (`bpfwall
//! advise`). One record type for every verdict, after Hubble's flow
//! record: both ends with their labels, the direction, the rule that
//! decided or the drop reason.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One end of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    /// The container's name, when the end is a container bpfwall knows.
    #[serde(default)]
    pub container: Option<String>,
    /// Its identity-relevant labels (the `bpfwall.*` ones left out).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// "container", "host", "world", "cidr" or "unknown".
    pub kind: String,
    /// Its identity.
    pub identity: u32,
    /// Its address.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Its port (TCP, UDP), if any.
    #[serde(default)]
    pub port: Option<u16>,
}

impl FlowPeer {
    /// The name a person reads: the container, else the kind and address.
    pub fn display_name(&self) -> String {
        match (&self.container, self.address) {
            (Some(c), _) => c.clone(),
            (None, Some(a)) if self.kind == "container" => a.to_string(),
            (None, Some(a)) => format!("{} {a}", self.kind),
            (None, None) => self.kind.clone(),
        }
    }
}

/// One decision of the datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When (unix time, nanoseconds).
    pub time_unix_ns: u64,
    /// "allowed", "dropped" or "audit" (passed, but policy would drop it);
    /// an HTTP request the proxy denied (403): "denied".
    pub verdict: String,
    /// "ingress" or "egress", at the container that decided.
    pub direction: String,
    /// The container whose program decided (None: no endpoint).
    #[serde(default)]
    pub container: Option<String>,
    /// Who sent the packet that opened the flow.
    pub source: FlowPeer,
    /// Whom it went to.
    pub destination: FlowPeer,
    /// "tcp", "udp", "icmp", "icmpv6" or the protocol number.
    pub protocol: String,
    /// The decided destination port (ICMP: type).
    pub port: u16,
    /// The rule that decided (label or file, and index), if one did.
    #[serde(default)]
    pub rule: Option<String>,
    /// Why it was dropped (or, for audit, would have been).
    #[serde(default)]
    pub drop_reason: Option<String>,
    /// The same in words.
    pub summary: String,
    /// Decisions of the same kind (container, peer, direction, protocol,
    /// port, verdict) not reported on their own since the last record.
    #[serde(default)]
    pub suppressed: u32,
    /// The policy revision that decided.
    pub policy_revision: u32,
    /// The HTTP request the proxy decided (L7 records only; their verdict
    /// is "allowed" or "denied", a denied request answered with 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFlow>,
}

/// The HTTP request of an L7 record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFlow {
    /// The method, as sent.
    pub method: String,
    /// The request target in normal form (path, then `?query`).
    pub path: String,
    /// The host, lower-cased ("" when none was sent).
    #[serde(default)]
    pub host: String,
}

/// What `bpfwall monitor` receives, one a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "records are built once and shared behind an Arc; a Box would only add an allocation"
)]
pub enum MonitorRecord {
    /// A decision.
    Flow(FlowRecord),
    /// Events that never reached this stream: counted, never silent.
    LostEvents {
        /// When it was noticed (unix time, nanoseconds).
        time_unix_ns: u64,
        /// How many.
        count: u64,
        /// Where: "datapath" (the ring buffer was full), "proxy" (its table
        /// of request keys was full) or "monitor" (this client read too
        /// slowly).
        source: String,
    },
}

/// Which records a monitor wants. Every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFilter {
    /// A container name (either end), or a label selector `k=v[,k=v]`
    /// that either end's labels match.
    #[serde(default)]
    pub container: Option<String>,
    /// "allowed", "dropped", "audit" or "denied" (HTTP requests answered
    /// with 403).
    #[serde(default)]
    pub verdict: Option<String>,
    /// "ingress" or "egress".
    #[serde(default)]
    pub direction: Option<String>,
    /// The decided destination port.
    #[serde(default)]
    pub port: Option<u16>,
}

impl MonitorFilter {
    /// Does a record pass the filter? Lost-event records always do.
    pub fn admits(&self, record: &MonitorRecord) -> bool {
        let MonitorRecord::Flow(f) = record else {
            return true;
        };
        if self.verdict.as_ref().is_some_and(|v| *v != f.verdict) {
            return false;
        }
        if self.direction.as_ref().is_some_and(|d| *d != f.direction) {
            return false;
        }
        if self.port.is_some_and(|p| p != f.port) {
            return false;
        }
        match &self.container {
            None => true,
            Some(c) if c.contains('=') => {
                let wanted: Vec<(&str, &str)> =
                    c.split(',').filter_map(|kv| kv.split_once('=')).collect();
                [&f.source, &f.destination].iter().any(|end| {
                    wanted
                        .iter()
                        .all(|(k, v)| end.labels.get(*k).map(String::as_str) == Some(*v))
                })
            }
            Some(name) => {
                let name = name.trim_start_matches('/');
                [&f.source, &f.destination]
                    .iter()
                    .any(|end| end.container.as_deref() == Some(name))
            }
        }
    }

    /// Checks the fields' values; Err names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(v) = &self.verdict {
            if !["allowed", "dropped", "audit", "denied"].contains(&v.as_str()) {
                return Err(format!(
                    "--verdict '{v}': expected allowed, dropped, audit or denied"
                ));
            }
        }
        if let Some(d) = &self.direction {
            if !["ingress", "egress"].contains(&d.as_str()) {
                return Err(format!("--direction '{d}': expected ingress or egress"));
            }
        }
        if let Some(c) = &self.container {
            if c.contains('=')
                && c.split(',')
                    .any(|kv| kv.split_once('=').is_none_or(|(k, _)| k.is_empty()))
            {
                return Err(format!(
                    "--container '{c}': expected a name or a selector KEY=VALUE[,KEY=VALUE]"
                ));
            }
        }
        Ok(())
    }
}

/// The other end of a learned edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EdgePeer {
    /// Containers with these identity-relevant labels (`bpfwall.*` left out).
    Container {
        /// The labels.
        labels: BTreeMap<String, String>,
    },
    /// The host.
    Host,
    /// An address outside the containers and the host.
    Outside {
        /// The address.
        address: IpAddr,
    },
}

/// One learned edge: a workload, a direction, a peer, a protocol and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeKey {
    /// The workload that decided: its identity-relevant labels without the
    /// `bpfwall.*` ones (so a new policy does not make it another workload).
    pub local: BTreeMap<String, String>,
    /// "ingress" or "egress".
    pub direction: String,
    /// The other end.
    pub peer: EdgePeer,
    /// The IP protocol number.
    pub protocol: u8,
    /// The destination port (ICMP: type).
    pub port: u16,
}

/// What was seen of one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// New flows allowed.
    pub allowed: u64,
    /// New flows (or packets) dropped by policy.
    pub denied: u64,
    /// New flows policy would drop, passed in audit mode.
    pub audit: u64,
    /// First seen (unix seconds).
    pub first_seen_unix: u64,
    /// Last seen (unix seconds).
    pub last_seen_unix: u64,
    /// The last container seen at the local end.
    #[serde(default)]
    pub local_name: Option<String>,
    /// The last container seen at the peer end.
    #[serde(default)]
    pub peer_name: Option<String>,
}

/// One edge with what was seen of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// Which edge.
    #[serde(flatten)]
    pub key: EdgeKey,
    /// What was seen.
    #[serde(flatten)]
    pub stats: EdgeStats,
}

/// Every learned edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeList {
    /// The edges.
    pub edges: Vec<Edge>,
    /// Edges forgotten because the record was full (the least recently
    /// seen go first).
    #[serde(default)]
    pub evicted: u64,
    /// The record's bound.
    #[serde(default)]
    pub capacity: usize,
}

/// One suggested allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestedRule {
    /// "ingress" or "egress".
    pub direction: String,
    /// The rule in the label language (`allow from k=v port 80/tcp`).
    pub rule: String,
    /// The peer's selector labels, for a container peer.
    #[serde(default)]
    pub peer_labels: BTreeMap<String, String>,
    /// "container", "host" or "cidr".
    pub peer_kind: String,
    /// The peer prefix, for an outside peer.
    #[serde(default)]
    pub peer_cidr: Option<String>,
    /// (protocol name, port) pairs: "tcp"/"udp"/"icmp".
    pub ports: Vec<(String, u16)>,
    /// New flows seen that it allows.
    pub seen: u64,
}

/// `bpfwall advise`: the least allow policy for what a container did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advice {
    /// The container.
    pub container: String,
    /// Its compose service name, if it has one.
    #[serde(default)]
    pub service: Option<String>,
    /// Its labels that select it (for a policy file's endpointSelector).
    pub selector: BTreeMap<String, String>,
    /// The rules, ingress first.
    pub rules: Vec<SuggestedRule>,
    /// What could not be turned into a rule, and why.
    #[serde(default)]
    pub notes: Vec<String>,
}
