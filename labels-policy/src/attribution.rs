//! Rule-level attribution: which rule decides a flow, read from the rules
//! themselves rather than from the compiled maps, so `check` can name it.
//!
//! The semantics are Cilium's: a direction no rule mentions is open; once a
//! rule applies to it, it is default deny plus its allows; a matching deny
//! wins over every allow, whatever their order or specificity. A peer
//! matches through [`peer_selects`], the same function the compiler's
//! selector index uses, so the two cannot drift apart.
//!
//! Imports: [`crate::model`], [`crate::identity`] and [`crate::datapath_abi`]
//! (protocol numbers). Nothing from the compiler or the decision table:
//! `query` holds this module's answer against the maps' answer.

use crate::datapath_abi as abi;
use crate::http::{rule_matches, HttpRequest};
use crate::http_decision::RequestVerdict;
use crate::identity::{peer_selects, IdentityKind};
use crate::model::{Direction, PortSpec, Protocol, Rule, RuleOrigin, Verdict};

/// Does a port spec match a packet's protocol and port?
pub fn port_matches(spec: &PortSpec, protocol: u8, dport: u16) -> bool {
    let in_range = spec.first <= dport && dport <= spec.last;
    match spec.protocol {
        Protocol::Tcp => protocol == abi::IPPROTO_TCP && in_range,
        Protocol::Udp => protocol == abi::IPPROTO_UDP && in_range,
        Protocol::Icmp => {
            (protocol == abi::IPPROTO_ICMP || protocol == abi::IPPROTO_ICMPV6) && in_range
        }
        Protocol::Icmp4 => protocol == abi::IPPROTO_ICMP && in_range,
        Protocol::Icmp6 => protocol == abi::IPPROTO_ICMPV6 && in_range,
        Protocol::Any if spec.is_all_ports() => true,
        Protocol::Any => {
            [abi::IPPROTO_TCP, abi::IPPROTO_UDP, abi::IPPROTO_SCTP].contains(&protocol) && in_range
        }
    }
}

/// A verdict from the rules, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleVerdict {
    /// The direction has no rules: open.
    Unenforced,
    /// An allow matched and no deny did.
    Allowed(RuleOrigin),
    /// A deny matched (the first deny in rule order is named).
    Denied(RuleOrigin),
    /// Rules apply but none matched.
    DefaultDeny,
}

/// Evaluates rules directly: deny wins over allow, whatever their order or
/// specificity; no rule in the direction means open. The remote is taken
/// to be proxied (see [`evaluate_rules_for`]).
pub fn evaluate_rules(
    rules: &[Rule],
    direction: Direction,
    remote: &IdentityKind,
    protocol: u8,
    dport: u16,
) -> RuleVerdict {
    evaluate_rules_for(rules, direction, remote, true, protocol, dport)
}

/// [`evaluate_rules`] at L3/L4 with HTTP rules: an HTTP deny refuses
/// requests, not connections, so it matches nothing here (it still puts the
/// direction into default deny); an egress HTTP allow admits the connection
/// only when the remote is `proxied` (a server whose side bpfwall proxies),
/// where its HTTP rules are enforced.
pub fn evaluate_rules_for(
    rules: &[Rule],
    direction: Direction,
    remote: &IdentityKind,
    proxied: bool,
    protocol: u8,
    dport: u16,
) -> RuleVerdict {
    let in_direction: Vec<&Rule> = rules.iter().filter(|r| r.direction == direction).collect();
    if in_direction.is_empty() {
        return RuleVerdict::Unenforced;
    }
    let matching = |r: &&&Rule| {
        if r.is_http()
            && (r.verdict == Verdict::Deny || (direction == Direction::Egress && !proxied))
        {
            return false;
        }
        r.peers.iter().any(|p| peer_selects(p, remote))
            && (r.ports.is_empty() || r.ports.iter().any(|s| port_matches(s, protocol, dport)))
    };
    if let Some(r) = in_direction
        .iter()
        .filter(matching)
        .find(|r| r.verdict == Verdict::Deny)
    {
        return RuleVerdict::Denied(r.origin.clone());
    }
    if let Some(r) = in_direction.iter().find(matching) {
        return RuleVerdict::Allowed(r.origin.clone());
    }
    RuleVerdict::DefaultDeny
}

/// The HTTP verdict of one side's rules on a request on TCP `port` from (or
/// to) `remote`, read from the rules (the semantics of
/// [`crate::http_decision`]); None when HTTP rules do not restrict the
/// connection on this side.
pub fn evaluate_http(
    rules: &[Rule],
    direction: Direction,
    remote: &IdentityKind,
    port: u16,
    request: &HttpRequest,
) -> Option<RequestVerdict> {
    let applies = |r: &&Rule| {
        r.direction == direction
            && (r.ports.is_empty()
                || r.ports
                    .iter()
                    .any(|s| port_matches(s, abi::IPPROTO_TCP, port)))
            && r.peers.iter().any(|p| peer_selects(p, remote))
    };
    let names_port = rules.iter().any(|r| {
        r.direction == direction && r.is_http() && r.ports.iter().any(|s| s.first == port)
    });
    if !names_port {
        return None;
    }
    let applicable: Vec<&Rule> = rules.iter().filter(applies).collect();
    let lift = applicable
        .iter()
        .find(|r| r.verdict == Verdict::Allow && !r.is_http());
    let http_deny = applicable
        .iter()
        .any(|r| r.verdict == Verdict::Deny && r.is_http());
    let http_allow = applicable
        .iter()
        .any(|r| r.verdict == Verdict::Allow && r.is_http());
    if !(http_deny || (http_allow && lift.is_none())) {
        return None;
    }
    for r in applicable.iter().filter(|r| r.verdict == Verdict::Deny) {
        if let Some(h) = r
            .http
            .iter()
            .find(|h| rule_matches(h, request, Verdict::Deny))
        {
            return Some(RequestVerdict::Denied {
                origin: r.origin.to_string(),
                http: h.to_string(),
            });
        }
    }
    if let Some(r) = lift {
        return Some(RequestVerdict::Allowed {
            origin: r.origin.to_string(),
            http: None,
        });
    }
    for r in applicable.iter().filter(|r| r.verdict == Verdict::Allow) {
        if let Some(h) = r
            .http
            .iter()
            .find(|h| rule_matches(h, request, Verdict::Allow))
        {
            return Some(RequestVerdict::Allowed {
                origin: r.origin.to_string(),
                http: Some(h.to_string()),
            });
        }
    }
    Some(RequestVerdict::DeniedByDefault)
}
