//! The policy model: what every input (labels, Cilium files) parses to,
//! and what the compiler turns into map entries. Host-wide policies
//! ([`HostPolicy`]) are model too: the Cilium parser produces them and the
//! compiler reads them.
//!
//! A leaf: imports nothing of the crate. In particular it does not know the
//! datapath's encoding (the compiler maps a [`Direction`] to `BPFWALL_DIR_*`),
//! so every other module may import it.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

/// A container's labels, as Docker reports them (image labels included).
pub type LabelSet = BTreeMap<String, String>;

/// Which way a packet crosses the endpoint's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the container.
    Ingress,
    /// Away from the container.
    Egress,
}

impl Direction {
    /// Both directions, ingress first.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What a rule does with the traffic it matches. Deny wins over allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Let the traffic through.
    Allow,
    /// Drop the traffic, whatever any allow says.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// The L4 protocol a port rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP for IPv4 (1) and ICMPv6 (58); the "port" is the ICMP type.
    Icmp,
    /// ICMP for IPv4 only (Cilium's `icmps` with family IPv4).
    Icmp4,
    /// ICMPv6 only (Cilium's `icmps` with family IPv6).
    Icmp6,
    /// Every protocol; with a port range, every protocol that has ports.
    Any,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmp4 => "icmpv4",
            Protocol::Icmp6 => "icmpv6",
            Protocol::Any => "any",
        })
    }
}

impl Protocol {
    /// True for the ICMP protocols, whose "ports" are ICMP types.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmp4 | Protocol::Icmp6)
    }
}

/// One protocol and an inclusive range of ports (ICMP: types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// The protocol.
    pub protocol: Protocol,
    /// First port of the range.
    pub first: u16,
    /// Last port of the range, inclusive.
    pub last: u16,
}

impl PortSpec {
    /// Every port of `protocol` (every ICMP type for ICMP).
    pub fn all_ports(protocol: Protocol) -> PortSpec {
        let last = if protocol == Protocol::Icmp {
            255
        } else {
            u16::MAX
        };
        PortSpec {
            protocol,
            first: 0,
            last,
        }
    }

    /// True when the spec covers every port of its protocol.
    pub fn is_all_ports(&self) -> bool {
        *self == PortSpec::all_ports(self.protocol)
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all_ports() {
            write!(f, "any/{}", self.protocol)
        } else if self.first == self.last {
            write!(f, "{}/{}", self.first, self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.protocol)
        }
    }
}

/// An operator of a set-based selector requirement (Kubernetes semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SelectorOperator {
    /// The label's value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One set-based requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key's value is tested.
    pub operator: SelectorOperator,
    /// The values, for In and NotIn.
    pub values: Vec<String>,
}

/// A label selector: every pair and every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// Labels that must be present with exactly these values.
    pub match_labels: BTreeMap<String, String>,
    /// Further set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// True when `labels` satisfy every part of the selector. An empty
    /// selector matches every label set.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.match_labels {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        for r in &self.match_expressions {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{} {:?} {:?}", r.key, r.operator, r.values)?;
        }
        Ok(())
    }
}

/// Who is on the other side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Every peer: containers, the host and the world.
    Any,
    /// The Docker host itself (its own addresses).
    Host,
    /// Anything that is neither a container nor the host.
    World,
    /// Containers whose labels match.
    Endpoints(Selector),
    /// Addresses outside containers and the host within `prefix`, minus `except`.
    Cidr {
        /// The prefix.
        prefix: IpNet,
        /// Sub-prefixes carved out of it.
        except: Vec<IpNet>,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => f.write_str("any"),
            Peer::Host => f.write_str("host"),
            Peer::World => f.write_str("world"),
            Peer::Endpoints(s) => write!(f, "{s}"),
            Peer::Cidr { prefix, except } => {
                write!(f, "cidr {prefix}")?;
                if !except.is_empty() {
                    let list: Vec<String> = except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", list.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// Where a rule was written, so tools can say which rule decided.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrigin {
    /// The label key (`bpfwall.ingress.web`) or the file the rule came from.
    pub source: String,
    /// The rule's position within its source, from 0.
    pub index: usize,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.source, self.index)
    }
}

/// Where a pattern of an HTTP rule does not compile: the character offset
/// in its text and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    /// Character offset in the pattern's text, from 0.
    pub offset: usize,
    /// What is wrong, in a few words.
    pub message: String,
}

/// The most memory one compiled pattern may take (the `regex` crate's size
/// limit): a label must not make the daemon grow without bound.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression of an HTTP rule, matched against the *whole* string
/// (anchored at both ends), in the `regex` crate's syntax (RE2's, as
/// Cilium's proxy reads them), with the text it was written as. Equal,
/// ordered and hashed by that text.
#[derive(Clone)]
pub struct HttpPattern {
    text: String,
    regex: regex::Regex,
}

impl HttpPattern {
    /// Compiles `text`. The text must be a regular expression by itself (so
    /// `a)|(b` cannot escape the anchors); the error gives the character
    /// offset in `text` where it goes wrong.
    pub fn new(text: &str) -> Result<HttpPattern, PatternError> {
        let char_offset = |byte: usize| text[..byte.min(text.len())].chars().count();
        if let Err(e) = regex_syntax::ast::parse::Parser::new().parse(text) {
            return Err(PatternError {
                offset: char_offset(e.span().start.offset),
                message: e.kind().to_string(),
            });
        }
        if let Err(e) = regex_syntax::Parser::new().parse(text) {
            let (offset, message) = match &e {
                regex_syntax::Error::Parse(a) => (a.span().start.offset, a.kind().to_string()),
                regex_syntax::Error::Translate(t) => (t.span().start.offset, t.kind().to_string()),
                other => (0, other.to_string()),
            };
            return Err(PatternError {
                offset: char_offset(offset),
                message,
            });
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{text})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| PatternError {
                offset: 0,
                message: match e {
                    regex::Error::CompiledTooBig(limit) => {
                        format!("the pattern compiles to more than {limit} bytes")
                    }
                    other => other.to_string(),
                },
            })?;
        Ok(HttpPattern {
            text: text.to_string(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does the pattern match all of `s`?
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl fmt::Debug for HttpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for HttpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for HttpPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for HttpPattern {}

impl PartialOrd for HttpPattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HttpPattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for HttpPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

/// A header an HTTP rule requires: present, or present with exactly this
/// value. Names compare without regard to case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderMatch {
    /// The header's name, lower-cased.
    pub name: String,
    /// The exact value, or None for "present".
    pub value: Option<String>,
}

impl fmt::Display for HeaderMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One HTTP rule: a request matches when every part it names matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRule {
    /// The method, or None for any.
    pub method: Option<HttpPattern>,
    /// The request target (path and query, as sent), or None for any.
    pub path: Option<HttpPattern>,
    /// The Host header (lower-cased, port included if sent), or None for any.
    pub host: Option<HttpPattern>,
    /// Headers that must be present (all of them).
    pub headers: Vec<HeaderMatch>,
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let any = |p: &Option<HttpPattern>| p.as_ref().map_or("*".to_string(), |p| p.to_string());
        write!(f, "{} {}", any(&self.method), any(&self.path))?;
        if let Some(h) = &self.host {
            write!(f, " host {h}")?;
        }
        for h in &self.headers {
            write!(f, " header {h}")?;
        }
        Ok(())
    }
}

/// One rule: a verdict for traffic in one direction with any of `peers` on
/// any of `ports`; with `http` rules, a verdict on the HTTP requests of
/// those connections (their ports are then single TCP ports).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Ingress or egress.
    pub direction: Direction,
    /// Allow or deny.
    pub verdict: Verdict,
    /// The peers the rule applies to (any of them).
    pub peers: Vec<Peer>,
    /// The ports (any of them); empty means all traffic.
    pub ports: Vec<PortSpec>,
    /// HTTP rules (any of them): empty for an L3/L4 rule. An allow with
    /// http rules admits the connection and then only the requests one of
    /// them matches; a deny with http rules refuses the requests one of them
    /// matches (a bpfwall extension) and does nothing at L3/L4.
    pub http: Vec<HttpRule>,
    /// Where the rule was written.
    pub origin: RuleOrigin,
}

impl Rule {
    /// Is this an L7 (HTTP) rule?
    pub fn is_http(&self) -> bool {
        !self.http.is_empty()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        write!(f, "{} {} {}", self.verdict, word, peers.join(" | "))?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            write!(f, " port {}", ports.join(","))?;
        }
        if !self.http.is_empty() {
            let http: Vec<String> = self.http.iter().map(ToString::to_string).collect();
            write!(f, " http {}", http.join(" | "))?;
        }
        Ok(())
    }
}

/// Rules that apply to every container a selector matches (host-wide files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Which containers the rules apply to.
    pub subject: Selector,
    /// The rules.
    pub rules: Vec<Rule>,
}
