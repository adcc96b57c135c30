//! Cilium's rule format (the `spec` of a CiliumNetworkPolicy), in JSON or
//! YAML, for host-wide policy files and the `bpfwall.policy` label.
//!
//! A document is one rule, a list of rules, or a whole CiliumNetworkPolicy /
//! CiliumClusterwideNetworkPolicy object (`spec` or `specs`); a YAML file may
//! hold several documents. Every field bpfwall does not support is an error
//! that names it, and every error carries the line and column where it is.
//! All checks happen while deserialising (through `try_from` types), so
//! serde_json and serde_yaml attach the position.
//!
//! Imports: [`crate::model`] (host-wide files become [`HostPolicy`]s) and
//! the leaf `syntax::prefix`. It owns the [`POLICY_LABEL`] key, whose rules
//! it names, and [`crate::syntax`] re-exports it.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::model::{
    Direction, HeaderMatch, HostPolicy, HttpPattern, HttpRule, Peer, PortSpec, Protocol,
    Requirement, Rule, RuleOrigin, Selector, SelectorOperator, Verdict,
};
use crate::syntax::prefix::parse_prefix;

/// Where a policy document failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file path, or the label key.
    pub source_name: String,
    /// 1-based line (1 for a label).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The policy label key.
pub const POLICY_LABEL: &str = "bpfwall.policy";

// ---- the document types -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<CiliumRule>,
    specs: Option<Vec<CiliumRule>>,
    endpoint_selector: Option<EndpointSelector>,
    ingress: Option<Vec<IngressRule>>,
    ingress_deny: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
    egress_deny: Option<Vec<EgressRule>>,
    #[allow(dead_code, reason = "rule labels are metadata: accepted, unused")]
    labels: Option<IgnoredAny>,
    #[allow(dead_code, reason = "accepted, unused")]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CiliumRule {
    endpoint_selector: Option<EndpointSelector>,
    ingress: Option<Vec<IngressRule>>,
    ingress_deny: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
    egress_deny: Option<Vec<EgressRule>>,
    #[allow(dead_code, reason = "rule labels are metadata: accepted, unused")]
    labels: Option<IgnoredAny>,
    #[allow(dead_code, reason = "accepted, unused")]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<Expression>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawExpression")]
struct Expression(Requirement);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpression {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

impl TryFrom<RawExpression> for Expression {
    type Error = String;
    fn try_from(r: RawExpression) -> Result<Self, String> {
        let operator = match r.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                return Err(format!(
                    "operator `{other}` is not one of In, NotIn, Exists, DoesNotExist"
                ))
            }
        };
        let values = r.values.unwrap_or_default();
        match operator {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                return Err(format!("operator {} needs values", r.operator))
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                return Err(format!("operator {} takes no values", r.operator))
            }
            _ => {}
        }
        Ok(Expression(Requirement {
            key: strip_source(&r.key).to_string(),
            operator,
            values,
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRule {
    from_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<Cidr>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrSet>>,
    from_entities: Option<Vec<Entity>>,
    to_ports: Option<Vec<PortRule>>,
    icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRule {
    to_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<Cidr>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrSet>>,
    to_entities: Option<Vec<Entity>>,
    to_ports: Option<Vec<PortRule>>,
    icmps: Option<Vec<IcmpRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Cidr(IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_prefix(&s)
            .map(Cidr)
            .map_err(|expected| format!("`{s}`: expected {expected}"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawCidrSet")]
struct CidrSet(Peer);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCidrSet {
    cidr: Cidr,
    except: Option<Vec<Cidr>>,
}

impl TryFrom<RawCidrSet> for CidrSet {
    type Error = String;
    fn try_from(r: RawCidrSet) -> Result<Self, String> {
        let prefix = r.cidr.0;
        let except: Vec<IpNet> = r
            .except
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect();
        if let Some(e) = except.iter().find(|e| !prefix.contains(*e)) {
            return Err(format!("except {e} is not inside {prefix}"));
        }
        Ok(CidrSet(Peer::Cidr { prefix, except }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Entity(Peer);

impl TryFrom<String> for Entity {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "host" => Ok(Entity(Peer::Host)),
            "world" => Ok(Entity(Peer::World)),
            "all" => Ok(Entity(Peer::Any)),
            other => Err(format!(
                "entity `{other}` is not supported by bpfwall (supported: host, world, all)"
            )),
        }
    }
}

/// One `toPorts` entry: ports, and optionally L7 rules for them.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawPortRule")]
struct PortRule {
    ports: Vec<PortSpec>,
    /// HTTP rules; empty for an L4-only entry.
    http: Vec<HttpRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortRule {
    ports: Option<Vec<PortProtocol>>,
    rules: Option<L7Rules>,
}

impl TryFrom<RawPortRule> for PortRule {
    type Error = String;
    fn try_from(r: RawPortRule) -> Result<Self, String> {
        let ports: Vec<PortSpec> = r
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.0)
            .collect();
        let http: Vec<HttpRule> = r
            .rules
            .and_then(|rules| rules.http)
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.0)
            .collect();
        if http.is_empty() {
            return Ok(PortRule { ports, http });
        }
        if ports.is_empty() {
            return Err(
                "rules.http needs ports: one TCP port each, such as {port: \"80\", protocol: TCP}"
                    .into(),
            );
        }
        // L7 rules apply to single TCP ports (as in Cilium, no ranges); a
        // port of protocol ANY is taken as its TCP port.
        let ports = ports
            .into_iter()
            .map(|p| match p.protocol {
                Protocol::Tcp | Protocol::Any if p.first == p.last && p.first != 0 => Ok(PortSpec {
                    protocol: Protocol::Tcp,
                    ..p
                }),
                _ => Err(format!(
                    "rules.http applies to single TCP ports, not {p} (no endPort, no port 0, protocol TCP or ANY)"
                )),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PortRule { ports, http })
    }
}

/// A field bpfwall rejects by name, wherever it is written: deserialising
/// it fails at once, so the error carries its position.
#[derive(Debug)]
struct Rejected<T>(std::marker::PhantomData<T>);

/// Why a field is rejected.
trait RejectReason {
    const MESSAGE: &'static str;
}

impl<'de, T: RejectReason> Deserialize<'de> for Rejected<T> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(T::MESSAGE))
    }
}

macro_rules! rejected {
    ($($name:ident: $message:literal;)*) => {$(
        #[derive(Debug)]
        struct $name;
        impl RejectReason for $name {
            const MESSAGE: &'static str = $message;
        }
    )*};
}

rejected! {
    Kafka: "rules.kafka is not supported by bpfwall (only rules.http)";
    Dns: "rules.dns is not supported by bpfwall (only rules.http)";
    L7Proto: "rules.l7proto is not supported by bpfwall (only rules.http)";
    L7Generic: "rules.l7 is not supported by bpfwall (only rules.http)";
    Mismatch: "headerMatches[].mismatch is not supported by bpfwall: a header rule only matches";
    Secret: "headerMatches[].secret is not supported by bpfwall: write the value";
}

/// `toPorts[].rules`: the L7 rules of a port rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct L7Rules {
    http: Option<Vec<CiliumHttp>>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    kafka: Option<Rejected<Kafka>>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    dns: Option<Rejected<Dns>>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    l7proto: Option<Rejected<L7Proto>>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    l7: Option<Rejected<L7Generic>>,
}

/// One `rules.http[]` entry.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawHttp")]
struct CiliumHttp(HttpRule);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttp {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Option<Vec<String>>,
    header_matches: Option<Vec<RawHeaderMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    value: Option<String>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    mismatch: Option<Rejected<Mismatch>>,
    #[allow(dead_code, reason = "never built: deserialising it fails, naming it")]
    secret: Option<Rejected<Secret>>,
}

fn http_pattern(field: &str, text: Option<String>) -> Result<Option<HttpPattern>, String> {
    match text.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => HttpPattern::new(t).map(Some).map_err(|e| {
            format!(
                "{field} `{t}`: {} (at character {})",
                e.message,
                e.offset + 1
            )
        }),
    }
}

fn header_match(name: &str, value: Option<String>) -> Result<HeaderMatch, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("header name `{name}` is not an HTTP token"));
    }
    if let Some(v) = &value {
        if v.chars().any(char::is_control) {
            return Err(format!("header `{name}`: the value has control characters"));
        }
    }
    Ok(HeaderMatch {
        name: name.to_ascii_lowercase(),
        value: value.filter(|v| !v.is_empty()),
    })
}

impl TryFrom<RawHttp> for CiliumHttp {
    type Error = String;
    fn try_from(r: RawHttp) -> Result<Self, String> {
        let mut headers = Vec::new();
        // Cilium's `headers: ["Name: value", "Name"]`: split at the first
        // space, the name without its trailing ':'.
        for h in r.headers.unwrap_or_default() {
            let (name, value) = match h.split_once(' ') {
                Some((n, v)) => (n.trim_end_matches(':'), Some(v.to_string())),
                None => (h.trim_end_matches(':'), None),
            };
            headers.push(header_match(name, value).map_err(|e| format!("headers: {e}"))?);
        }
        for m in r.header_matches.unwrap_or_default() {
            headers
                .push(header_match(&m.name, m.value).map_err(|e| format!("headerMatches: {e}"))?);
        }
        Ok(CiliumHttp(HttpRule {
            method: http_pattern("method", r.method)?,
            path: http_pattern("path", r.path)?,
            host: http_pattern("host", r.host)?,
            headers,
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawPortProtocol")]
struct PortProtocol(PortSpec);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPortProtocol {
    port: Option<PortValue>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

/// A port, as a number or a string.
#[derive(Debug)]
struct PortValue(String);

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a string holding one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl TryFrom<RawPortProtocol> for PortProtocol {
    type Error = String;
    fn try_from(r: RawPortProtocol) -> Result<Self, String> {
        let protocol = match r
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("ANY") => Protocol::Any,
            Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("ICMP") => Protocol::Icmp,
            Some(_) => {
                return Err(format!(
                    "protocol `{}` is not supported (TCP, UDP, ICMP or ANY)",
                    r.protocol.unwrap_or_default()
                ))
            }
        };
        let port: u16 = match r.port.as_ref().map(|p| p.0.as_str()) {
            None | Some("") => 0,
            Some(text) => match text.parse::<u16>() {
                Ok(n) => n,
                Err(_) if text.chars().any(|c| c.is_ascii_alphabetic()) => {
                    return Err(format!(
                        "named port `{text}` is not supported: use a number"
                    ))
                }
                Err(_) => return Err(format!("port `{text}` is not a number from 0 to 65535")),
            },
        };
        if protocol == Protocol::Icmp {
            if port != 0 || r.end_port.is_some() {
                return Err("protocol ICMP takes no port (use icmps for ICMP types)".into());
            }
            return Ok(PortProtocol(PortSpec::all_ports(Protocol::Icmp)));
        }
        if port == 0 {
            if r.end_port.is_some() {
                return Err("endPort needs a port".into());
            }
            return Ok(PortProtocol(PortSpec::all_ports(protocol)));
        }
        let last = match r.end_port {
            None => port,
            Some(e) => match u16::try_from(e) {
                Ok(e) if e >= port => e,
                _ => return Err(format!("endPort {e} must be from port ({port}) to 65535")),
            },
        };
        Ok(PortProtocol(PortSpec {
            protocol,
            first: port,
            last,
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRule {
    fields: Vec<IcmpField>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "RawIcmpField")]
struct IcmpField(PortSpec);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIcmpField {
    family: Option<String>,
    #[serde(rename = "type")]
    icmp_type: PortValue,
}

/// Cilium's ICMP type names: (name, IPv4 type, IPv6 type).
const ICMP_NAMES: &[(&str, u16, u16)] = &[
    ("EchoReply", 0, 129),
    ("DestinationUnreachable", 3, 1),
    ("Redirect", 5, 137),
    ("EchoRequest", 8, 128),
    ("TimeExceeded", 11, 3),
    ("ParameterProblem", 12, 4),
];

impl TryFrom<RawIcmpField> for IcmpField {
    type Error = String;
    fn try_from(r: RawIcmpField) -> Result<Self, String> {
        let v6 = match r.family.as_deref() {
            None | Some("IPv4") => false,
            Some("IPv6") => true,
            Some(other) => return Err(format!("family `{other}` is not IPv4 or IPv6")),
        };
        let text = r.icmp_type.0;
        let t = match text.parse::<u8>() {
            Ok(n) => u16::from(n),
            Err(_) => ICMP_NAMES
                .iter()
                .find(|(n, _, _)| *n == text)
                .map(|(_, a, b)| if v6 { *b } else { *a })
                .ok_or_else(|| format!("ICMP type `{text}` is neither 0-255 nor a known name"))?,
        };
        let protocol = if v6 { Protocol::Icmp6 } else { Protocol::Icmp4 };
        Ok(IcmpField(PortSpec {
            protocol,
            first: t,
            last: t,
        }))
    }
}

/// One T or a list of them.
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule, a list of rules, or a CiliumNetworkPolicy object")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| OneOrMany(vec![t]))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

// ---- conversion to the model -------------------------------------------

fn strip_source(key: &str) -> &str {
    // Cilium prefixes label keys with their source ("any:", "container:"); for
    // Docker labels only "any:" and "container:" make sense.
    key.strip_prefix("any:")
        .or_else(|| key.strip_prefix("container:"))
        .unwrap_or(key)
}

fn selector(s: EndpointSelector) -> Selector {
    Selector {
        match_labels: s
            .match_labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (strip_source(&k).to_string(), v))
            .collect(),
        match_expressions: s
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.0)
            .collect(),
    }
}

struct L3L4 {
    endpoints: Option<Vec<EndpointSelector>>,
    cidr: Option<Vec<Cidr>>,
    cidr_set: Option<Vec<CidrSet>>,
    entities: Option<Vec<Entity>>,
    to_ports: Option<Vec<PortRule>>,
    icmps: Option<Vec<IcmpRule>>,
}

impl From<IngressRule> for L3L4 {
    fn from(r: IngressRule) -> Self {
        L3L4 {
            endpoints: r.from_endpoints,
            cidr: r.from_cidr,
            cidr_set: r.from_cidr_set,
            entities: r.from_entities,
            to_ports: r.to_ports,
            icmps: r.icmps,
        }
    }
}

impl From<EgressRule> for L3L4 {
    fn from(r: EgressRule) -> Self {
        L3L4 {
            endpoints: r.to_endpoints,
            cidr: r.to_cidr,
            cidr_set: r.to_cidr_set,
            entities: r.to_entities,
            to_ports: r.to_ports,
            icmps: r.icmps,
        }
    }
}

/// One Cilium ingress/egress entry as model rules. As in Cilium, the L3
/// parts are alternatives, the L4 parts (ports and ICMP types) are
/// alternatives, and the two are combined; no L3 part with some L4 part
/// means every peer; an empty entry (`{}`) selects nobody but still puts
/// the direction into default deny. A `toPorts` entry with `rules.http`
/// becomes a rule of its own (its ports, its HTTP rules); the entry's other
/// ports and ICMP types make one L4 rule.
fn model_rules(r: L3L4, direction: Direction, verdict: Verdict, origin: RuleOrigin) -> Vec<Rule> {
    let mut peers = Vec::new();
    peers.extend(
        r.endpoints
            .unwrap_or_default()
            .into_iter()
            .map(|s| Peer::Endpoints(selector(s))),
    );
    peers.extend(r.cidr.unwrap_or_default().into_iter().map(|c| Peer::Cidr {
        prefix: c.0,
        except: Vec::new(),
    }));
    peers.extend(r.cidr_set.unwrap_or_default().into_iter().map(|c| c.0));
    peers.extend(r.entities.unwrap_or_default().into_iter().map(|e| e.0));
    let mut ports: Vec<PortSpec> = Vec::new();
    let mut http_rules: Vec<(Vec<PortSpec>, Vec<HttpRule>)> = Vec::new();
    for p in r.to_ports.unwrap_or_default() {
        if p.http.is_empty() {
            ports.extend(p.ports);
        } else {
            http_rules.push((p.ports, p.http));
        }
    }
    ports.extend(
        r.icmps
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.fields)
            .map(|f| f.0),
    );
    if peers.is_empty() && (!ports.is_empty() || !http_rules.is_empty()) {
        peers.push(Peer::Any);
    }
    let mut out = Vec::new();
    if !ports.is_empty() || http_rules.is_empty() {
        out.push(Rule {
            direction,
            verdict,
            peers: peers.clone(),
            ports,
            http: Vec::new(),
            origin: origin.clone(),
        });
    }
    for (ports, http) in http_rules {
        out.push(Rule {
            direction,
            verdict,
            peers: peers.clone(),
            ports,
            http,
            origin: origin.clone(),
        });
    }
    out
}

struct Spec {
    selector: Option<EndpointSelector>,
    ingress: Vec<IngressRule>,
    ingress_deny: Vec<IngressRule>,
    egress: Vec<EgressRule>,
    egress_deny: Vec<EgressRule>,
}

fn spec_rules(spec: Spec, source: &str, spec_index: usize) -> Vec<Rule> {
    let mut out = Vec::new();
    let origin = |field: &str, i: usize| RuleOrigin {
        source: format!("{source} spec[{spec_index}].{field}"),
        index: i,
    };
    for (i, r) in spec.ingress.into_iter().enumerate() {
        out.extend(model_rules(
            r.into(),
            Direction::Ingress,
            Verdict::Allow,
            origin("ingress", i),
        ));
    }
    for (i, r) in spec.ingress_deny.into_iter().enumerate() {
        out.extend(model_rules(
            r.into(),
            Direction::Ingress,
            Verdict::Deny,
            origin("ingressDeny", i),
        ));
    }
    for (i, r) in spec.egress.into_iter().enumerate() {
        out.extend(model_rules(
            r.into(),
            Direction::Egress,
            Verdict::Allow,
            origin("egress", i),
        ));
    }
    for (i, r) in spec.egress_deny.into_iter().enumerate() {
        out.extend(model_rules(
            r.into(),
            Direction::Egress,
            Verdict::Deny,
            origin("egressDeny", i),
        ));
    }
    out
}

fn rule_spec(r: CiliumRule) -> Spec {
    Spec {
        selector: r.endpoint_selector,
        ingress: r.ingress.unwrap_or_default(),
        ingress_deny: r.ingress_deny.unwrap_or_default(),
        egress: r.egress.unwrap_or_default(),
        egress_deny: r.egress_deny.unwrap_or_default(),
    }
}

/// The specs of one document, with the document's name if it has one.
fn document_specs(doc: Document) -> Result<(Option<String>, Vec<Spec>), String> {
    let is_object = doc.api_version.is_some()
        || doc.kind.is_some()
        || doc.spec.is_some()
        || doc.specs.is_some();
    let has_rule_fields = doc.endpoint_selector.is_some()
        || doc.ingress.is_some()
        || doc.ingress_deny.is_some()
        || doc.egress.is_some()
        || doc.egress_deny.is_some();
    if !is_object {
        return Ok((
            None,
            vec![Spec {
                selector: doc.endpoint_selector,
                ingress: doc.ingress.unwrap_or_default(),
                ingress_deny: doc.ingress_deny.unwrap_or_default(),
                egress: doc.egress.unwrap_or_default(),
                egress_deny: doc.egress_deny.unwrap_or_default(),
            }],
        ));
    }
    if has_rule_fields {
        return Err("rule fields (endpointSelector, ingress, ...) belong inside spec or specs of a policy object".into());
    }
    match doc.kind.as_deref() {
        None | Some("CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {}
        Some(other) => {
            return Err(format!(
                "kind `{other}` is not supported (CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy)"
            ))
        }
    }
    let mut specs: Vec<Spec> = doc.spec.into_iter().map(rule_spec).collect();
    specs.extend(doc.specs.unwrap_or_default().into_iter().map(rule_spec));
    if specs.is_empty() {
        return Err("a policy object needs spec or specs".into());
    }
    Ok((doc.metadata.and_then(|m| m.name), specs))
}

/// How the text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML (one or more documents).
    Yaml,
}

impl Format {
    /// By file extension: `.json` is JSON, anything else YAML (a superset).
    pub fn from_path(path: &str) -> Format {
        if path.ends_with(".json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

fn parse_documents(text: &str, format: Format, source: &str) -> Result<Vec<Document>, PolicyError> {
    let mut out = Vec::new();
    match format {
        Format::Json => {
            let docs: OneOrMany<Document> =
                serde_json::from_str(text).map_err(|e| PolicyError {
                    source_name: source.to_string(),
                    line: e.line(),
                    column: e.column(),
                    message: e
                        .to_string()
                        .split(" at line ")
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                })?;
            out.extend(docs.0);
        }
        Format::Yaml => {
            for d in serde_yaml::Deserializer::from_str(text) {
                let docs = OneOrMany::<Document>::deserialize(d).map_err(|e| {
                    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                    PolicyError {
                        source_name: source.to_string(),
                        line,
                        column,
                        message: e
                            .to_string()
                            .split(" at line ")
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    }
                })?;
                out.extend(docs.0);
            }
        }
    }
    Ok(out)
}

fn error_at_start(source: &str, message: String) -> PolicyError {
    PolicyError {
        source_name: source.to_string(),
        line: 1,
        column: 1,
        message,
    }
}

/// Parses a host-wide policy file. Every spec must have an endpointSelector
/// (`{}` selects every container).
pub fn parse_policy_file(
    text: &str,
    format: Format,
    source: &str,
) -> Result<Vec<HostPolicy>, PolicyError> {
    let mut out = Vec::new();
    let mut spec_index = 0;
    for doc in parse_documents(text, format, source)? {
        let (name, specs) = document_specs(doc).map_err(|m| error_at_start(source, m))?;
        let label = match &name {
            Some(n) => format!("{source} ({n})"),
            None => source.to_string(),
        };
        for mut spec in specs {
            let Some(subject) = spec.selector.take() else {
                return Err(error_at_start(
                    source,
                    format!(
                        "spec[{spec_index}] has no endpointSelector ({{}} selects every container)"
                    ),
                ));
            };
            out.push(HostPolicy {
                subject: selector(subject),
                rules: spec_rules(spec, &label, spec_index),
            });
            spec_index += 1;
        }
    }
    Ok(out)
}

/// Parses the `bpfwall.policy` label of one container: rules in the same
/// format, JSON, without endpointSelector (the container is the subject).
pub fn parse_policy_label(value: &str) -> Result<Vec<Rule>, PolicyError> {
    let docs = parse_documents(value, Format::Json, POLICY_LABEL)?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let (_, specs) = document_specs(doc).map_err(|m| error_at_start(POLICY_LABEL, m))?;
        for spec in specs {
            if spec.selector.is_some() {
                return Err(error_at_start(
                    POLICY_LABEL,
                    format!("spec[{i}]: endpointSelector is not allowed in a label: its rules apply to the container that carries it"),
                ));
            }
            out.extend(spec_rules(spec, POLICY_LABEL, i));
        }
    }
    Ok(out)
}
