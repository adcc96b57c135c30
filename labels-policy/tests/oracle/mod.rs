//! An independent reference of the rule semantics, for the property tests.
//!
//! Written from the semantics as the documentation states them (Cilium's),
//! not from the product code, so that the tests can catch the compiler's
//! mistakes instead of repeating them. It imports only the model types, to
//! read rules: not `Selector::matches`, `PortSpec::is_all_ports`, nor
//! anything of `compile`, `identity`, `decision` or `attribution`. Where the
//! product has an obvious way to do a thing, this module does it another
//! way: selectors are evaluated from their parts with an explicit loop,
//! address prefixes are compared as masked integers (never
//! `ipnet::IpNet::contains`), protocols come from a table of their own.
//!
//! The semantics:
//! - A direction that no rule mentions is open. Once a rule mentions it
//!   (even one that selects nobody), it is default deny plus its allows.
//! - A rule matches a flow when one of its peers matches the remote and, if
//!   it lists ports, one of its ports matches the packet.
//! - A matching deny wins over every matching allow, whatever their order
//!   or specificity.
//! - Peers: `any` is everyone; `host` the Docker host; `world` everything
//!   that is neither a container nor the host (the world identity and every
//!   CIDR identity); a label selector matches containers whose labels meet
//!   every `matchLabels` pair and every `matchExpressions` requirement (In:
//!   the label is present with a listed value; NotIn: absent or unlisted;
//!   Exists; DoesNotExist); a CIDR peer matches the CIDR identities inside
//!   its prefix and inside none of its excepts, never a container or the
//!   host.
//! - Ports: tcp and udp by destination port; icmp by ICMP or ICMPv6 type,
//!   icmpv4 and icmpv6 by one family's type; `any` with every port is every
//!   protocol, `any` with a range is TCP, UDP and SCTP in that range.
//! - The remote address is: a host address, else a container's address
//!   (the first container that has it), else the longest prefix any rule
//!   names (prefixes and excepts) that holds it, as a CIDR identity, else
//!   the world.

#![allow(
    dead_code,
    reason = "each test crate that includes the oracle uses a part of it"
)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use labels_policy::model::{
    Direction, Peer, PortSpec, Protocol, Requirement, Rule, RuleOrigin, Selector, SelectorOperator,
    Verdict,
};

/// IP protocol numbers (IANA), written out here rather than taken from the
/// ABI module.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

/// An address block: family, the leading `len` bits of the address as an
/// integer (the rest zero), and `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    pub v6: bool,
    pub bits: u128,
    pub len: u8,
}

impl Block {
    fn width(v6: bool) -> u8 {
        if v6 {
            128
        } else {
            32
        }
    }

    /// The integer with the first `len` of the family's bits set.
    fn mask(v6: bool, len: u8) -> u128 {
        let width = Block::width(v6);
        if len == 0 {
            return 0;
        }
        let all: u128 = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let host_bits = u32::from(width - len);
        (all >> host_bits) << host_bits
    }

    /// One address as a block of its full width.
    pub fn of_addr(addr: IpAddr) -> Block {
        match addr {
            IpAddr::V4(a) => Block {
                v6: false,
                bits: u128::from(u32::from(a)),
                len: 32,
            },
            IpAddr::V6(a) => Block {
                v6: true,
                bits: u128::from(a),
                len: 128,
            },
        }
    }

    /// A prefix as a block (host bits, if any, cleared).
    pub fn of_net(net: &IpNet) -> Block {
        let whole = Block::of_addr(net.addr());
        let len = net.prefix_len();
        Block {
            v6: whole.v6,
            bits: whole.bits & Block::mask(whole.v6, len),
            len,
        }
    }

    /// Does this block hold every address of `inner`?
    pub fn holds(&self, inner: &Block) -> bool {
        self.v6 == inner.v6
            && inner.len >= self.len
            && (inner.bits & Block::mask(self.v6, self.len)) == self.bits
    }
}

/// What the other end of a flow is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// The Docker host.
    Host,
    /// A container with these labels.
    Container(BTreeMap<String, String>),
    /// An address outside containers and host, in this rule prefix (the
    /// longest that holds it).
    Cidr(Block),
    /// Any other address.
    World,
}

/// Every prefix the rules name, excepts included.
pub fn named_prefixes<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Vec<Block> {
    let mut out = Vec::new();
    for rule in rules {
        for peer in &rule.peers {
            if let Peer::Cidr { prefix, except } = peer {
                out.push(Block::of_net(prefix));
                out.extend(except.iter().map(Block::of_net));
            }
        }
    }
    out
}

/// What `addr` is, given the host's addresses, the containers (addresses and
/// labels, in input order) and the prefixes rules name.
pub fn classify(
    addr: IpAddr,
    host: &[IpAddr],
    containers: &[(Vec<IpAddr>, BTreeMap<String, String>)],
    prefixes: &[Block],
) -> Remote {
    if host.contains(&addr) {
        return Remote::Host;
    }
    for (addresses, labels) in containers {
        if addresses.contains(&addr) {
            return Remote::Container(labels.clone());
        }
    }
    let me = Block::of_addr(addr);
    let mut best: Option<Block> = None;
    for p in prefixes {
        if p.holds(&me) && best.is_none_or(|b| p.len > b.len) {
            best = Some(*p);
        }
    }
    match best {
        Some(p) => Remote::Cidr(p),
        None => Remote::World,
    }
}

fn requirement_holds(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let present = labels.contains_key(&r.key);
    let listed = match labels.get(&r.key) {
        Some(value) => r.values.iter().any(|v| v == value),
        None => false,
    };
    match r.operator {
        SelectorOperator::In => listed,
        SelectorOperator::NotIn => !listed,
        SelectorOperator::Exists => present,
        SelectorOperator::DoesNotExist => !present,
    }
}

fn selector_holds(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    for (key, wanted) in &selector.match_labels {
        match labels.get(key) {
            Some(value) if value == wanted => {}
            _ => return false,
        }
    }
    for r in &selector.match_expressions {
        if !requirement_holds(r, labels) {
            return false;
        }
    }
    true
}

fn peer_holds(peer: &Peer, remote: &Remote) -> bool {
    match (peer, remote) {
        (Peer::Any, _) => true,
        (Peer::Host, Remote::Host) => true,
        (Peer::World, Remote::World) | (Peer::World, Remote::Cidr(_)) => true,
        (Peer::Endpoints(selector), Remote::Container(labels)) => selector_holds(selector, labels),
        (Peer::Cidr { prefix, except }, Remote::Cidr(identity)) => {
            Block::of_net(prefix).holds(identity)
                && !except.iter().any(|e| Block::of_net(e).holds(identity))
        }
        _ => false,
    }
}

/// The protocols a port spec names, or None for every protocol.
fn spec_protocols(spec: &PortSpec) -> Option<&'static [u8]> {
    let whole_range = spec.first == 0 && spec.last == u16::MAX;
    Some(match spec.protocol {
        Protocol::Tcp => &[TCP],
        Protocol::Udp => &[UDP],
        Protocol::Icmp => &[ICMP, ICMPV6],
        Protocol::Icmp4 => &[ICMP],
        Protocol::Icmp6 => &[ICMPV6],
        Protocol::Any if whole_range => return None,
        Protocol::Any => &[TCP, UDP, SCTP],
    })
}

fn port_holds(spec: &PortSpec, protocol: u8, dport: u16) -> bool {
    match spec_protocols(spec) {
        None => true,
        Some(protocols) => {
            protocols.contains(&protocol) && dport >= spec.first && dport <= spec.last
        }
    }
}

fn rule_holds(rule: &Rule, remote: &Remote, protocol: u8, dport: u16) -> bool {
    let peer = rule.peers.iter().any(|p| peer_holds(p, remote));
    let port = rule.ports.is_empty() || rule.ports.iter().any(|s| port_holds(s, protocol, dport));
    peer && port
}

/// What the rules say about one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// No rule mentions the direction.
    Open,
    /// No deny matches; these allows do (in rule order, at least one).
    Allowed(Vec<RuleOrigin>),
    /// These denies match (in rule order, at least one).
    Denied(Vec<RuleOrigin>),
    /// Rules mention the direction; none matches.
    DefaultDeny,
}

/// The verdict of `rules` for a flow in `direction` with `remote`.
pub fn expected(
    rules: &[Rule],
    direction: Direction,
    remote: &Remote,
    protocol: u8,
    dport: u16,
) -> Expected {
    let mut mentioned = false;
    let mut allows = Vec::new();
    let mut denies = Vec::new();
    for rule in rules {
        if rule.direction != direction {
            continue;
        }
        mentioned = true;
        if !rule_holds(rule, remote, protocol, dport) {
            continue;
        }
        match rule.verdict {
            Verdict::Allow => allows.push(rule.origin.clone()),
            Verdict::Deny => denies.push(rule.origin.clone()),
        }
    }
    if !denies.is_empty() {
        Expected::Denied(denies)
    } else if !allows.is_empty() {
        Expected::Allowed(allows)
    } else if mentioned {
        Expected::DefaultDeny
    } else {
        Expected::Open
    }
}

// ---- HTTP (L7) -------------------------------------------------------------
//
// The semantics, as docs/labels.md states them:
// - At L3/L4, an HTTP deny matches no connection (it refuses requests), but
//   it still mentions its direction; an egress HTTP allow admits a
//   connection only to a peer bpfwall proxies (a managed container in a
//   network namespace of its own), where its HTTP rules are checked.
// - A side (the server's ingress rules, the client's egress rules) has a say
//   on requests to TCP port P when one of its HTTP rules names P. Its rules
//   that apply to a request are those whose peer matches the other end and
//   whose ports hold P (an L3/L4 deny never reaches a request).
// - The side restricts the connection when an HTTP deny applies, or an HTTP
//   allow applies and no L3/L4 allow does (an L3/L4 allow lifts the HTTP
//   rules of an allow). A side that does not restrict lets every request by.
// - A restricting side: the first HTTP deny (rule order) one of whose HTTP
//   rules matches denies; else the first L3/L4 allow allows; else the first
//   HTTP allow one of whose HTTP rules matches allows (naming that HTTP
//   rule); else the request is denied by default.
// - An HTTP rule matches when each part it names matches: the method, the
//   target (path and query) or, for a deny, the path alone; the host; every
//   header (present, or its occurrences joined by ", " equal to the value,
//   or for a deny any one occurrence equal). Patterns match whole strings.

/// A request as the oracle sees it (targets are already in normal form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: String,
    /// (name in lower case, value).
    pub headers: Vec<(String, String)>,
}

/// The oracle's own reading of a pattern: `\A(?:text)\z`.
fn whole(text: &str, s: &str) -> bool {
    regex::Regex::new(&format!(r"\A(?:{text})\z")).is_ok_and(|r| r.is_match(s))
}

fn http_part_holds(h: &labels_policy::HttpRule, request: &Request, deny: bool) -> bool {
    if let Some(m) = &h.method {
        if !whole(m.text(), &request.method) {
            return false;
        }
    }
    if let Some(p) = &h.path {
        let path_only = match request.target.find('?') {
            Some(i) => &request.target[..i],
            None => request.target.as_str(),
        };
        let target = whole(p.text(), &request.target);
        if !(target || (deny && whole(p.text(), path_only))) {
            return false;
        }
    }
    if let Some(host) = &h.host {
        if !whole(host.text(), &request.host) {
            return false;
        }
    }
    for want in &h.headers {
        let mut values = Vec::new();
        for (name, value) in &request.headers {
            if name.eq_ignore_ascii_case(&want.name) {
                values.push(value.clone());
            }
        }
        if values.is_empty() {
            return false;
        }
        if let Some(v) = &want.value {
            let joined = values.join(", ");
            let any_one = values.iter().any(|x| x == v);
            if !(joined == *v || (deny && any_one)) {
                return false;
            }
        }
    }
    true
}

fn tcp_port_in(rule: &Rule, port: u16) -> bool {
    if rule.ports.is_empty() {
        return true;
    }
    rule.ports.iter().any(|s| port_holds(s, TCP, port))
}

/// What one side says of a request on TCP `port` with the other end
/// `remote`: None when it does not restrict the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedRequest {
    /// Allowed by this rule; the HTTP rule (as written) that matched, or
    /// None for an L3/L4 allow.
    Allowed(RuleOrigin, Option<String>),
    /// Denied by this HTTP deny, through this HTTP rule.
    Denied(RuleOrigin, String),
    /// No rule allows it.
    DeniedByDefault,
}

pub fn expected_request(
    rules: &[Rule],
    direction: Direction,
    remote: &Remote,
    port: u16,
    request: &Request,
) -> Option<ExpectedRequest> {
    let mut has_say = false;
    let mut applying = Vec::new();
    for rule in rules {
        if rule.direction != direction {
            continue;
        }
        if !rule.http.is_empty() && rule.ports.iter().any(|s| s.first == port && s.last == port) {
            has_say = true;
        }
        let peer = rule.peers.iter().any(|p| peer_holds(p, remote));
        let l4_deny = rule.http.is_empty() && rule.verdict == Verdict::Deny;
        if peer && tcp_port_in(rule, port) && !l4_deny {
            applying.push(rule);
        }
    }
    if !has_say {
        return None;
    }
    let mut lift = None;
    let mut http_deny = false;
    let mut http_allow = false;
    for r in &applying {
        match (r.verdict, r.http.is_empty()) {
            (Verdict::Allow, true) => {
                if lift.is_none() {
                    lift = Some(*r);
                }
            }
            (Verdict::Allow, false) => http_allow = true,
            (Verdict::Deny, false) => http_deny = true,
            (Verdict::Deny, true) => {}
        }
    }
    if !(http_deny || (http_allow && lift.is_none())) {
        return None;
    }
    for r in &applying {
        if r.verdict != Verdict::Deny {
            continue;
        }
        for h in &r.http {
            if http_part_holds(h, request, true) {
                return Some(ExpectedRequest::Denied(r.origin.clone(), h.to_string()));
            }
        }
    }
    if let Some(r) = lift {
        return Some(ExpectedRequest::Allowed(r.origin.clone(), None));
    }
    for r in &applying {
        if r.verdict != Verdict::Allow {
            continue;
        }
        for h in &r.http {
            if http_part_holds(h, request, false) {
                return Some(ExpectedRequest::Allowed(
                    r.origin.clone(),
                    Some(h.to_string()),
                ));
            }
        }
    }
    Some(ExpectedRequest::DeniedByDefault)
}

/// [`expected`] with HTTP rules at L3/L4: HTTP denies match no connection;
/// an egress HTTP allow only admits a `proxied` remote.
pub fn expected_connection(
    rules: &[Rule],
    direction: Direction,
    remote: &Remote,
    proxied: bool,
    protocol: u8,
    dport: u16,
) -> Expected {
    let kept: Vec<Rule> = rules
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let blind = !r.http.is_empty()
                && (r.verdict == Verdict::Deny || (r.direction == Direction::Egress && !proxied));
            if blind {
                // Mentions its direction, matches nobody.
                r.peers.clear();
            }
            r
        })
        .collect();
    expected(&kept, direction, remote, protocol, dport)
}
