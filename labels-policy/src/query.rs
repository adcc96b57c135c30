//! Questions about compiled policy, answered without sending a packet:
//! "would A reach B on 80/tcp, and which rule decides?" ([`check`]) and
//! "what is A's effective policy?" ([`explain`]).
//!
//! A verdict comes from the compiled maps through [`decide`], the datapath's
//! own decision table, so it is what the kernel does; the rule that decided
//! comes from [`evaluate_rules`]. The two are checked against each other: a
//! disagreement is a compiler bug and is reported as one.
//!
//! Imports: every product module before it ([`crate::compile`](mod@crate::compile),
//! [`crate::decision`], [`crate::attribution`], [`crate::identity`],
//! [`crate::model`], [`crate::datapath_abi`]); only the daemon imports it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::attribution::{evaluate_http, evaluate_rules_for, RuleVerdict};
use crate::compile::{Compiled, ContainerInput, HttpKey};
use crate::datapath_abi::{self as abi, DropReason, EndpointKey, L7DropReason};
use crate::decision::{decide, ipcache_identity, CtState, Decision, Packet};
use crate::http::HttpRequest;
use crate::http_decision::{RequestVerdict, SideRules};
use crate::identity::IdentityKind;
use crate::model::{Direction, Peer, Rule};

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// A container, by its index in the compile's input.
    Container(usize),
    /// An address outside the containers (or the host's).
    Address(IpAddr),
}

/// One endpoint's say on a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideVerdict {
    /// The container whose program decides.
    pub container: String,
    /// "ingress" or "egress".
    pub direction: String,
    /// Whether this side lets the flow through.
    pub allowed: bool,
    /// Why, in words, naming the deciding rule when there is one.
    pub reason: String,
    /// The deciding rule's origin (label or file, and index), if any.
    pub rule: Option<String>,
    /// With an HTTP request: this side's HTTP verdict, when its HTTP rules
    /// restrict the connection (None: they do not, or none was asked).
    #[serde(default)]
    pub http: Option<RequestVerdict>,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Allowed by every side that polices the flow.
    pub allowed: bool,
    /// The sides that had a say (sender's egress, receiver's ingress).
    pub sides: Vec<SideVerdict>,
}

/// A check that cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The maps and the rules disagree: a compiler bug.
    #[error(
        "internal disagreement for {container} {direction}: maps say {maps:?}, rules say {rules:?}"
    )]
    Disagreement {
        /// The container.
        container: String,
        /// The direction.
        direction: Direction,
        /// The map-level decision.
        maps: Decision,
        /// The rule-level verdict.
        rules: RuleVerdict,
    },
    /// A container has no address and the host has none either.
    #[error("no address to use for {0}")]
    NoAddress(String),
    /// The HTTP table and the rules disagree: a compiler bug.
    #[error("internal disagreement on http for {container} {direction}: table says {table}, rules say {rules}")]
    HttpDisagreement {
        /// The container.
        container: String,
        /// The direction.
        direction: Direction,
        /// The table's verdict (debug text).
        table: String,
        /// The rules' verdict (debug text).
        rules: String,
    },
}

fn address_of(
    end: &FlowEnd,
    containers: &[ContainerInput],
    host: &[IpAddr],
) -> Result<IpAddr, CheckError> {
    match end {
        FlowEnd::Address(a) => Ok(*a),
        FlowEnd::Container(i) => {
            let c = &containers[*i];
            // A host-network container has no address of its own: peers see the host.
            c.addresses
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| c.addresses.first())
                .or_else(|| host.iter().find(|a| a.is_ipv4() && !a.is_loopback()))
                .copied()
                .ok_or_else(|| CheckError::NoAddress(c.name.clone()))
        }
    }
}

fn side(
    compiled: &Compiled,
    containers: &[ContainerInput],
    index: usize,
    direction: Direction,
    (local, remote): (IpAddr, IpAddr),
    protocol: u8,
    port: u16,
) -> Result<SideVerdict, CheckError> {
    let c = &containers[index];
    let report = &compiled.containers[index];
    let mut out = SideVerdict {
        container: c.name.clone(),
        direction: direction.to_string(),
        allowed: true,
        reason: String::new(),
        rule: None,
        http: None,
    };
    let Some(endpoint) = c.attachment.and_then(|a| {
        compiled.endpoints.get(&EndpointKey {
            cgroup_id: a.cgroup_id,
        })
    }) else {
        out.reason = "not attached: bpfwall does not police this container".into();
        return Ok(out);
    };
    let packet = Packet {
        direction,
        local,
        remote,
        protocol,
        dport: port,
        tcp_syn: protocol == abi::IPPROTO_TCP,
        loopback: false,
    };
    // A connection to a port steered to the HTTP proxy never meets the
    // container's own program (which drops one that went around the
    // proxy): the proxy's sk_lookup step lets it through on the same
    // decision, and the proxy decides its requests.
    let decision = match decide(compiled, endpoint, &packet, CtState::None) {
        Decision::DropL7(L7DropReason::Bypass) => Decision::Pass,
        other => other,
    };
    let remote_kind = compiled
        .identities
        .get(&ipcache_identity(compiled, remote))
        .cloned()
        .unwrap_or(IdentityKind::World);
    let rules = match direction {
        Direction::Ingress => &report.ingress_rules,
        Direction::Egress => &report.egress_rules,
    };
    let remote_identity = ipcache_identity(compiled, remote);
    let proxied = compiled.proxied.contains(&remote_identity);
    let verdict = match evaluate_rules_for(rules, direction, &remote_kind, proxied, protocol, port)
    {
        // No rule, but its network's default is deny.
        RuleVerdict::Unenforced if report.default_deny => RuleVerdict::DefaultDeny,
        v => v,
    };
    let disagree = || CheckError::Disagreement {
        container: c.name.clone(),
        direction,
        maps: decision,
        rules: verdict.clone(),
    };
    match (decision, &verdict) {
        (Decision::Pass, RuleVerdict::Unenforced) => {
            out.reason = format!("open: no {direction} rules apply")
        }
        (Decision::Pass, RuleVerdict::Allowed(origin)) => {
            out.reason = format!("allowed by {origin}");
            out.rule = Some(origin.to_string());
        }
        (Decision::Drop(DropReason::PolicyDeny), RuleVerdict::Denied(origin)) => {
            out.allowed = false;
            out.reason = format!("denied by {origin}");
            out.rule = Some(origin.to_string());
        }
        (Decision::Drop(DropReason::PolicyDefault), RuleVerdict::DefaultDeny) => {
            out.allowed = false;
            out.reason = if rules.iter().any(|r| r.direction == direction) {
                format!("denied by default: {direction} rules apply and none allows this")
            } else {
                format!("denied by default: its network's default is deny (bpfwall.default=deny) and no {direction} rule allows this")
            };
        }
        (Decision::Drop(DropReason::PolicyError), _) => {
            out.allowed = false;
            let errors: Vec<String> = report
                .errors
                .iter()
                .filter(|e| e.closes.contains(&direction))
                .map(ToString::to_string)
                .collect();
            out.reason = format!("closed: {}", errors.join("; "));
        }
        _ => return Err(disagree()),
    }
    Ok(out)
}

/// One side's HTTP verdict, from the table and from the rules, held
/// against each other.
fn http_side(
    compiled: &Compiled,
    containers: &[ContainerInput],
    index: usize,
    direction: Direction,
    remote: IpAddr,
    port: u16,
    request: &HttpRequest,
) -> Result<Option<RequestVerdict>, CheckError> {
    let report = &compiled.containers[index];
    let remote_identity = ipcache_identity(compiled, remote);
    let remote_kind = compiled
        .identities
        .get(&remote_identity)
        .cloned()
        .unwrap_or(IdentityKind::World);
    let rules = match direction {
        Direction::Ingress => &report.ingress_rules,
        Direction::Egress => &report.egress_rules,
    };
    let table = SideRules::of(
        compiled,
        HttpKey {
            identity: report.identity,
            direction,
            port,
        },
        remote_identity,
    )
    .filter(SideRules::restricts)
    .map(|s| s.decide(request));
    let from_rules = evaluate_http(rules, direction, &remote_kind, port, request);
    if table != from_rules {
        return Err(CheckError::HttpDisagreement {
            container: containers[index].name.clone(),
            direction,
            table: format!("{table:?}"),
            rules: format!("{from_rules:?}"),
        });
    }
    Ok(table)
}

/// [`check`] for a TCP connection that carries `request`: the L3/L4 check,
/// then, on each side that lets the connection through, the HTTP verdict
/// the proxy gives the request (the sender's egress rules are enforced by
/// the receiver's proxy).
pub fn check_http(
    compiled: &Compiled,
    containers: &[ContainerInput],
    host: &[IpAddr],
    from: &FlowEnd,
    to: &FlowEnd,
    port: u16,
    request: &HttpRequest,
) -> Result<CheckResult, CheckError> {
    let mut result = check(compiled, containers, host, from, to, abi::IPPROTO_TCP, port)?;
    let sender = address_of(from, containers, host)?;
    let receiver = address_of(to, containers, host)?;
    let mut ends = Vec::new();
    if let FlowEnd::Container(i) = from {
        ends.push((*i, Direction::Egress, receiver));
    }
    if let FlowEnd::Container(i) = to {
        ends.push((*i, Direction::Ingress, sender));
    }
    for (side, (index, direction, remote)) in result.sides.iter_mut().zip(ends) {
        if !side.allowed || side.reason.starts_with("not attached") {
            continue;
        }
        side.http = http_side(
            compiled, containers, index, direction, remote, port, request,
        )?;
        if let Some(v) = &side.http {
            side.allowed = v.allowed();
            side.reason = format!("{}; {request}: {}", side.reason, v.describe());
        }
    }
    result.allowed = result.sides.iter().all(|s| s.allowed);
    Ok(result)
}

/// Would a new connection from `from` to `to` on (protocol, port) pass?
/// Both the sender's egress and the receiver's ingress are asked.
pub fn check(
    compiled: &Compiled,
    containers: &[ContainerInput],
    host: &[IpAddr],
    from: &FlowEnd,
    to: &FlowEnd,
    protocol: u8,
    port: u16,
) -> Result<CheckResult, CheckError> {
    let mut sides = Vec::new();
    let sender = address_of(from, containers, host)?;
    let receiver = address_of(to, containers, host)?;
    if let FlowEnd::Container(i) = from {
        sides.push(side(
            compiled,
            containers,
            *i,
            Direction::Egress,
            (sender, receiver),
            protocol,
            port,
        )?);
    }
    if let FlowEnd::Container(i) = to {
        sides.push(side(
            compiled,
            containers,
            *i,
            Direction::Ingress,
            (receiver, sender),
            protocol,
            port,
        )?);
    }
    Ok(CheckResult {
        allowed: sides.iter().all(|s| s.allowed),
        sides,
    })
}

/// One rule of an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleLine {
    /// "allow" or "deny".
    pub verdict: String,
    /// The peers as written.
    pub peers: String,
    /// Containers the peers match now.
    pub matching_containers: Vec<String>,
    /// The ports, or "all".
    pub ports: String,
    /// Its HTTP rules as written (none for an L3/L4 rule).
    #[serde(default)]
    pub http: Vec<String>,
    /// Where the rule was written.
    pub origin: String,
}

/// One direction of an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    /// "ingress" or "egress".
    pub direction: String,
    /// "open", "default deny plus allows" or "closed (label error)".
    pub state: String,
    /// The rules in force, denies first (deny wins).
    pub rules: Vec<RuleLine>,
}

/// A container's effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The container.
    pub container: String,
    /// Its identity.
    pub identity: u32,
    /// Whether bpfwall's programs are attached to it.
    pub attached: bool,
    /// Ingress, then egress.
    pub directions: Vec<DirectionExplanation>,
    /// Policy errors.
    pub errors: Vec<String>,
}

fn rule_line(rule: &Rule, containers: &[ContainerInput]) -> RuleLine {
    let mut matching = Vec::new();
    for peer in &rule.peers {
        if let Peer::Endpoints(sel) = peer {
            matching.extend(
                containers
                    .iter()
                    .filter(|c| sel.matches(&c.labels))
                    .map(|c| c.name.clone()),
            );
        } else if *peer == Peer::Any {
            matching.extend(containers.iter().map(|c| c.name.clone()));
        }
    }
    matching.sort();
    matching.dedup();
    let peers: Vec<String> = rule.peers.iter().map(ToString::to_string).collect();
    let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
    RuleLine {
        verdict: rule.verdict.to_string(),
        peers: if peers.is_empty() {
            "nobody".into()
        } else {
            peers.join(" | ")
        },
        matching_containers: matching,
        ports: if ports.is_empty() {
            "all".into()
        } else {
            ports.join(",")
        },
        http: rule.http.iter().map(ToString::to_string).collect(),
        origin: rule.origin.to_string(),
    }
}

/// The effective policy of the container at `index`.
pub fn explain(compiled: &Compiled, containers: &[ContainerInput], index: usize) -> Explanation {
    let report = &compiled.containers[index];
    let c = &containers[index];
    let attached = c.attachment.is_some_and(|a| {
        compiled.endpoints.contains_key(&EndpointKey {
            cgroup_id: a.cgroup_id,
        })
    });
    let mut directions = Vec::new();
    for (direction, rules, error, enforce) in [
        (
            Direction::Ingress,
            &report.ingress_rules,
            abi::EP_ERROR_INGRESS,
            abi::EP_ENFORCE_INGRESS,
        ),
        (
            Direction::Egress,
            &report.egress_rules,
            abi::EP_ERROR_EGRESS,
            abi::EP_ENFORCE_EGRESS,
        ),
    ] {
        let state = if report.flags & error != 0 {
            "closed (label error)"
        } else if report.flags & enforce != 0 {
            "default deny plus allows"
        } else {
            "open"
        };
        let mut lines: Vec<RuleLine> = rules.iter().map(|r| rule_line(r, containers)).collect();
        lines.sort_by_key(|l| l.verdict != "deny");
        directions.push(DirectionExplanation {
            direction: direction.to_string(),
            state: state.into(),
            rules: lines,
        });
    }
    Explanation {
        container: c.name.clone(),
        identity: report.identity,
        attached,
        directions,
        errors: report.errors.iter().map(ToString::to_string).collect(),
    }
}
