//! The libnetwork remote network driver protocol, as Docker 20.10 and
//! later speak it to a plugin on `/run/docker/plugins/<name>.sock`: every
//! call is an HTTP `POST /<Method>` whose body is one JSON object (Docker
//! sends no `Content-Type`, and no body at all for `Plugin.Activate` and
//! `NetworkDriver.GetCapabilities`), answered by one JSON object, with
//! `{"Err": "..."}` for a refusal.
//!
//! This crate is the wire format only, pure like rust-netlink's packet
//! crates: [`Method`] names a call from its path, [`decode`] turns a body
//! into a typed [`Request`] (or a [`ProtocolError`] that names the call,
//! the position and what was expected), and [`Response::to_json`] writes
//! the answer Docker reads. The types follow moby's
//! `libnetwork/drivers/remote/api` field for field; fields Docker may add
//! in later versions are ignored rather than refused (a plugin must keep
//! working across Docker upgrades), so requests do not deny unknown fields.
//!
//! What the options mean is read here too (typed, still pure):
//! [`CreateNetworkRequest::options`] (the `-o` options, `--internal`,
//! `--ipv6` and the address pools) and [`EndpointOptions`] (published and
//! exposed ports). What the driver does with them is its own business.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The media type of the plugin protocol (Docker sends it in `Accept`).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// What `Plugin.Activate` answers: this plugin is a network driver.
pub const IMPLEMENTS_NETWORK_DRIVER: &str = "NetworkDriver";

/// Docker's option keys (moby `libnetwork/netlabel`).
pub mod netlabel {
    /// The `-o KEY=VALUE` options of `docker network create`.
    pub const GENERIC: &str = "com.docker.network.generic";
    /// `--ipv6`.
    pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
    /// `--internal`.
    pub const INTERNAL: &str = "com.docker.network.internal";
    /// `-p`: the port bindings of an endpoint.
    pub const PORT_MAP: &str = "com.docker.network.portmap";
    /// `--expose` and the image's exposed ports.
    pub const EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
}

/// Errors decoding a request. Each names the call, and for bad JSON the
/// line and column.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A path that is no call of the protocol.
    #[error("no such plugin call: {path}")]
    UnknownMethod {
        /// The request's path.
        path: String,
    },
    /// A call that needs a JSON object got no body.
    #[error("{method}: the request has no body (expected a JSON object)")]
    EmptyBody {
        /// The call.
        method: &'static str,
    },
    /// The body is not the JSON the call takes.
    #[error("{method}: the request body is not valid at line {line} column {column}: {reason}")]
    Json {
        /// The call.
        method: &'static str,
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
        /// serde_json's words.
        reason: String,
    },
    /// A field holds a value the call cannot take.
    #[error("{method}: field {field} is {value:?}: expected {expected}")]
    Field {
        /// The call.
        method: &'static str,
        /// The field, as Docker names it.
        field: String,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
}

/// Every call Docker makes of a network plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// `Plugin.Activate`: the handshake.
    Activate,
    /// `NetworkDriver.GetCapabilities`.
    GetCapabilities,
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork,
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork,
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint,
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointOperInfo,
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint,
    /// `NetworkDriver.Join`.
    Join,
    /// `NetworkDriver.Leave`.
    Leave,
    /// `NetworkDriver.ProgramExternalConnectivity`.
    ProgramExternalConnectivity,
    /// `NetworkDriver.RevokeExternalConnectivity`.
    RevokeExternalConnectivity,
    /// `NetworkDriver.DiscoverNew` (node discovery; nothing for a local driver).
    DiscoverNew,
    /// `NetworkDriver.DiscoverDelete`.
    DiscoverDelete,
    /// `NetworkDriver.AllocateNetwork` (swarm only).
    AllocateNetwork,
    /// `NetworkDriver.FreeNetwork` (swarm only).
    FreeNetwork,
}

impl Method {
    /// Every call, in the protocol's order.
    pub const ALL: [Method; 15] = [
        Method::Activate,
        Method::GetCapabilities,
        Method::CreateNetwork,
        Method::DeleteNetwork,
        Method::CreateEndpoint,
        Method::EndpointOperInfo,
        Method::DeleteEndpoint,
        Method::Join,
        Method::Leave,
        Method::ProgramExternalConnectivity,
        Method::RevokeExternalConnectivity,
        Method::DiscoverNew,
        Method::DiscoverDelete,
        Method::AllocateNetwork,
        Method::FreeNetwork,
    ];

    /// The call's name, as in its path (`NetworkDriver.Join`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Activate => "Plugin.Activate",
            Method::GetCapabilities => "NetworkDriver.GetCapabilities",
            Method::CreateNetwork => "NetworkDriver.CreateNetwork",
            Method::DeleteNetwork => "NetworkDriver.DeleteNetwork",
            Method::CreateEndpoint => "NetworkDriver.CreateEndpoint",
            Method::EndpointOperInfo => "NetworkDriver.EndpointOperInfo",
            Method::DeleteEndpoint => "NetworkDriver.DeleteEndpoint",
            Method::Join => "NetworkDriver.Join",
            Method::Leave => "NetworkDriver.Leave",
            Method::ProgramExternalConnectivity => "NetworkDriver.ProgramExternalConnectivity",
            Method::RevokeExternalConnectivity => "NetworkDriver.RevokeExternalConnectivity",
            Method::DiscoverNew => "NetworkDriver.DiscoverNew",
            Method::DiscoverDelete => "NetworkDriver.DiscoverDelete",
            Method::AllocateNetwork => "NetworkDriver.AllocateNetwork",
            Method::FreeNetwork => "NetworkDriver.FreeNetwork",
        }
    }

    /// The call a request path names (`/NetworkDriver.Join`).
    pub fn from_path(path: &str) -> Result<Method, ProtocolError> {
        let name = path.strip_prefix('/').unwrap_or(path);
        Method::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| ProtocolError::UnknownMethod {
                path: path.to_string(),
            })
    }

    /// Calls that carry no body (Docker sends `Content-Length: 0`).
    fn takes_no_body(self) -> bool {
        matches!(self, Method::Activate | Method::GetCapabilities)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One address pool of a network, as Docker's IPAM handed it out
/// (`driverapi.IPAMData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    /// The IPAM address space (`LocalDefault`).
    #[serde(default)]
    pub address_space: String,
    /// The pool, a prefix (`10.77.0.0/24`).
    pub pool: String,
    /// The gateway address with the pool's length (`10.77.0.1/24`), when
    /// the IPAM gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Addresses kept out of the pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkRequest {
    /// Docker's network id (64 hex digits).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's options (`netlabel` keys).
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    /// The IPv4 pools.
    #[serde(default, rename = "IPv4Data")]
    pub ipv4_data: Vec<IpamData>,
    /// The IPv6 pools (with `--ipv6`).
    #[serde(default, rename = "IPv6Data")]
    pub ipv6_data: Vec<IpamData>,
}

/// One address pool, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The prefix.
    pub subnet: IpNet,
    /// The gateway address Docker's IPAM reserved in it.
    pub gateway: Option<IpAddr>,
}

/// What a `CreateNetwork` asks for, read from its options and pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// `-o KEY=VALUE` options, as given.
    pub generic: BTreeMap<String, String>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub enable_ipv6: bool,
    /// The IPv4 pools.
    pub ipv4: Vec<Pool>,
    /// The IPv6 pools.
    pub ipv6: Vec<Pool>,
}

fn field_error(
    method: Method,
    field: &str,
    value: &Value,
    expected: &'static str,
) -> ProtocolError {
    ProtocolError::Field {
        method: method.name(),
        field: field.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// A bool option: Docker sends a JSON bool (older versions a string).
fn bool_option(
    options: &BTreeMap<String, Value>,
    method: Method,
    key: &str,
) -> Result<bool, ProtocolError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" || s.is_empty() => Ok(false),
        Some(other) => Err(field_error(method, key, other, "true or false")),
    }
}

fn parse_pools(data: &[IpamData], field: &str, v6: bool) -> Result<Vec<Pool>, ProtocolError> {
    let method = Method::CreateNetwork;
    let mut out = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let pool_field = format!("{field}[{i}].Pool");
        let subnet: IpNet = d.pool.parse().map_err(|_| ProtocolError::Field {
            method: method.name(),
            field: pool_field.clone(),
            value: d.pool.clone(),
            expected: "an address prefix such as 10.77.0.0/24",
        })?;
        if matches!(subnet, IpNet::V6(_)) != v6 {
            return Err(ProtocolError::Field {
                method: method.name(),
                field: pool_field,
                value: d.pool.clone(),
                expected: if v6 {
                    "an IPv6 prefix"
                } else {
                    "an IPv4 prefix"
                },
            });
        }
        let gateway = match d.gateway.as_deref() {
            None | Some("") => None,
            Some(text) => {
                // "10.77.0.1/24"; a bare address is taken too.
                let addr = text
                    .parse::<IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| text.parse::<IpAddr>())
                    .map_err(|_| ProtocolError::Field {
                        method: method.name(),
                        field: format!("{field}[{i}].Gateway"),
                        value: text.to_string(),
                        expected: "an address with the pool's length such as 10.77.0.1/24",
                    })?;
                Some(addr)
            }
        };
        out.push(Pool {
            subnet: subnet.trunc(),
            gateway,
        });
    }
    Ok(out)
}

impl CreateNetworkRequest {
    /// The options and pools, typed.
    pub fn options(&self) -> Result<NetworkOptions, ProtocolError> {
        let method = Method::CreateNetwork;
        let generic = match self.options.get(netlabel::GENERIC) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(map)) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(_) | Value::Number(_) => v.to_string(),
                        other => {
                            return Err(field_error(
                                method,
                                &format!("Options.{}.{k}", netlabel::GENERIC),
                                other,
                                "a string",
                            ))
                        }
                    };
                    out.insert(k.clone(), text);
                }
                out
            }
            Some(other) => {
                return Err(field_error(
                    method,
                    &format!("Options.{}", netlabel::GENERIC),
                    other,
                    "an object of -o options",
                ))
            }
        };
        Ok(NetworkOptions {
            generic,
            internal: bool_option(&self.options, method, netlabel::INTERNAL)?,
            enable_ipv6: bool_option(&self.options, method, netlabel::ENABLE_IPV6)?,
            ipv4: parse_pools(&self.ipv4_data, "IPv4Data", false)?,
            ipv6: parse_pools(&self.ipv6_data, "IPv6Data", true)?,
        })
    }
}

/// `NetworkDriver.DeleteNetwork` (and `FreeNetwork`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The interface Docker asks an endpoint to have (`EndpointInterface`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    /// IPv4 address with the pool's length (`10.77.0.2/24`); empty for none.
    #[serde(default)]
    pub address: String,
    /// IPv6 address with the pool's length; empty for none.
    #[serde(default, rename = "AddressIPv6")]
    pub address_ipv6: String,
    /// A MAC address Docker chose (`--mac-address`); empty for none.
    #[serde(default)]
    pub mac_address: String,
}

impl EndpointInterface {
    /// The IPv4 address, parsed (None when empty).
    pub fn ipv4(&self) -> Result<Option<IpNet>, ProtocolError> {
        parse_address(&self.address, "Interface.Address", false)
    }

    /// The IPv6 address, parsed (None when empty).
    pub fn ipv6(&self) -> Result<Option<IpNet>, ProtocolError> {
        parse_address(&self.address_ipv6, "Interface.AddressIPv6", true)
    }
}

fn parse_address(text: &str, field: &str, v6: bool) -> Result<Option<IpNet>, ProtocolError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || ProtocolError::Field {
        method: Method::CreateEndpoint.name(),
        field: field.to_string(),
        value: text.to_string(),
        expected: if v6 {
            "an IPv6 address with its prefix length"
        } else {
            "an IPv4 address with its prefix length"
        },
    };
    let net: IpNet = text.parse().map_err(|_| bad())?;
    if matches!(net, IpNet::V6(_)) != v6 {
        return Err(bad());
    }
    Ok(Some(net))
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The new endpoint's id (64 hex digits).
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The addresses Docker's IPAM gave it.
    #[serde(default)]
    pub interface: Option<EndpointInterface>,
    /// Endpoint options (ports).
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

/// One port Docker asks to publish (`types.PortBinding`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// The container's address (empty).
    #[serde(default, rename = "IP")]
    pub ip: String,
    /// The container's port.
    pub port: u16,
    /// The host address (empty: every address).
    #[serde(default, rename = "HostIP")]
    pub host_ip: String,
    /// The first host port.
    #[serde(default)]
    pub host_port: u16,
    /// The last host port of a range.
    #[serde(default)]
    pub host_port_end: u16,
}

impl std::fmt::Display for PortBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            132 => "sctp".to_string(),
            n => n.to_string(),
        };
        if !self.host_ip.is_empty() {
            write!(f, "{}:", self.host_ip)?;
        }
        if self.host_port_end > self.host_port {
            write!(f, "{}-{}", self.host_port, self.host_port_end)?;
        } else {
            write!(f, "{}", self.host_port)?;
        }
        write!(f, ":{}/{proto}", self.port)
    }
}

/// One exposed port (`types.TransportPort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransportPort {
    /// IP protocol number.
    pub proto: u8,
    /// The port.
    pub port: u16,
}

/// What an endpoint's options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOptions {
    /// `-p`: ports to publish on the host.
    pub port_map: Vec<PortBinding>,
    /// `--expose`: ports the container says it serves.
    pub exposed_ports: Vec<TransportPort>,
}

impl EndpointOptions {
    /// Reads the options of a `CreateEndpoint`, `Join` or
    /// `ProgramExternalConnectivity`.
    pub fn parse(
        method: Method,
        options: &BTreeMap<String, Value>,
    ) -> Result<EndpointOptions, ProtocolError> {
        fn list<T: serde::de::DeserializeOwned>(
            method: Method,
            options: &BTreeMap<String, Value>,
            key: &str,
            expected: &'static str,
        ) -> Result<Vec<T>, ProtocolError> {
            match options.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| field_error(method, &format!("Options.{key}"), v, expected)),
            }
        }
        Ok(EndpointOptions {
            port_map: list(
                method,
                options,
                netlabel::PORT_MAP,
                "a list of port bindings",
            )?,
            exposed_ports: list(method, options, netlabel::EXPOSED_PORTS, "a list of ports")?,
        })
    }
}

/// `DeleteEndpoint`, `EndpointOperInfo`, `Leave` and
/// `RevokeExternalConnectivity`: an endpoint of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The path of the sandbox's network namespace. At Join it may not
    /// exist yet: Docker creates it when the container's process does.
    #[serde(default)]
    pub sandbox_key: String,
    /// Endpoint options (ports).
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

/// `NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProgramExternalConnectivityRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Endpoint options (ports).
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

/// `DiscoverNew` and `DiscoverDelete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiscoveryNotification {
    /// The kind of discovery (1: node).
    #[serde(default)]
    pub discovery_type: i64,
    /// Its data.
    #[serde(default)]
    pub discovery_data: Value,
}

/// `NetworkDriver.AllocateNetwork` (swarm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocateNetworkRequest {
    /// The network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Options.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `Plugin.Activate`.
    Activate,
    /// `NetworkDriver.GetCapabilities`.
    GetCapabilities,
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork(CreateNetworkRequest),
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork(NetworkRequest),
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint(CreateEndpointRequest),
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointOperInfo(EndpointRequest),
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint(EndpointRequest),
    /// `NetworkDriver.Join`.
    Join(JoinRequest),
    /// `NetworkDriver.Leave`.
    Leave(EndpointRequest),
    /// `NetworkDriver.ProgramExternalConnectivity`.
    ProgramExternalConnectivity(ProgramExternalConnectivityRequest),
    /// `NetworkDriver.RevokeExternalConnectivity`.
    RevokeExternalConnectivity(EndpointRequest),
    /// `NetworkDriver.DiscoverNew`.
    DiscoverNew(DiscoveryNotification),
    /// `NetworkDriver.DiscoverDelete`.
    DiscoverDelete(DiscoveryNotification),
    /// `NetworkDriver.AllocateNetwork`.
    AllocateNetwork(AllocateNetworkRequest),
    /// `NetworkDriver.FreeNetwork`.
    FreeNetwork(NetworkRequest),
}

fn json<T: serde::de::DeserializeOwned>(method: Method, body: &[u8]) -> Result<T, ProtocolError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ProtocolError::EmptyBody {
            method: method.name(),
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde_json ends its words with the position, which is said once.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        ProtocolError::Json {
            method: method.name(),
            line: e.line(),
            column: e.column(),
            reason: text.strip_suffix(&suffix).unwrap_or(&text).to_string(),
        }
    })
}

/// Decodes a request body for a call. Calls without arguments take any
/// body (Docker sends none); every other call needs its JSON object.
pub fn decode(method: Method, body: &[u8]) -> Result<Request, ProtocolError> {
    if method.takes_no_body() {
        return Ok(match method {
            Method::Activate => Request::Activate,
            _ => Request::GetCapabilities,
        });
    }
    Ok(match method {
        Method::Activate => Request::Activate,
        Method::GetCapabilities => Request::GetCapabilities,
        Method::CreateNetwork => Request::CreateNetwork(json(method, body)?),
        Method::DeleteNetwork => Request::DeleteNetwork(json(method, body)?),
        Method::CreateEndpoint => Request::CreateEndpoint(json(method, body)?),
        Method::EndpointOperInfo => Request::EndpointOperInfo(json(method, body)?),
        Method::DeleteEndpoint => Request::DeleteEndpoint(json(method, body)?),
        Method::Join => Request::Join(json(method, body)?),
        Method::Leave => Request::Leave(json(method, body)?),
        Method::ProgramExternalConnectivity => {
            Request::ProgramExternalConnectivity(json(method, body)?)
        }
        Method::RevokeExternalConnectivity => {
            Request::RevokeExternalConnectivity(json(method, body)?)
        }
        Method::DiscoverNew => Request::DiscoverNew(json(method, body)?),
        Method::DiscoverDelete => Request::DiscoverDelete(json(method, body)?),
        Method::AllocateNetwork => Request::AllocateNetwork(json(method, body)?),
        Method::FreeNetwork => Request::FreeNetwork(json(method, body)?),
    })
}

/// Names of the interface to move into the container (`InterfaceName`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The interface the driver made, in the host's namespace.
    pub src_name: String,
    /// The prefix Docker numbers its name in the container with (`eth`).
    pub dst_prefix: String,
}

/// A route Docker adds in the container (`StaticRoute`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    /// The prefix.
    pub destination: String,
    /// 0: through `next_hop`; 1: on the interface.
    pub route_type: u8,
    /// The next hop (route type 0).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// The answer to a `Join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    /// The interface to move into the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    /// The IPv4 default gateway (empty: no default route from this network).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// The IPv6 default gateway.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    /// Routes to add.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    /// True: Docker must not add its gateway bridge (docker_gwbridge) for
    /// this endpoint's outside traffic.
    pub disable_gateway_service: bool,
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `Plugin.Activate`.
    Activate,
    /// `GetCapabilities`: local scope.
    Capabilities,
    /// A call that answers nothing but success.
    Empty,
    /// `CreateEndpoint`: nothing changed in the interface Docker asked for.
    CreateEndpoint,
    /// `EndpointOperInfo`.
    EndpointOperInfo(BTreeMap<String, Value>),
    /// `Join`.
    Join(JoinResponse),
    /// A refusal, with the words Docker shows the user.
    Error(String),
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ActivateJson<'a> {
    implements: [&'a str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CapabilitiesJson {
    scope: &'static str,
    connectivity_scope: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ValueJson<'a> {
    value: &'a BTreeMap<String, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrJson<'a> {
    err: &'a str,
}

impl Response {
    /// The body Docker reads.
    pub fn to_json(&self) -> Vec<u8> {
        let encoded = match self {
            Response::Activate => serde_json::to_vec(&ActivateJson {
                implements: [IMPLEMENTS_NETWORK_DRIVER],
            }),
            Response::Capabilities => serde_json::to_vec(&CapabilitiesJson {
                scope: "local",
                connectivity_scope: "local",
            }),
            Response::Empty | Response::CreateEndpoint => Ok(b"{}".to_vec()),
            Response::EndpointOperInfo(value) => serde_json::to_vec(&ValueJson { value }),
            Response::Join(join) => serde_json::to_vec(join),
            Response::Error(err) => serde_json::to_vec(&ErrJson { err }),
        };
        // Only plain structs of strings, bools and JSON values are encoded:
        // serde_json cannot fail on them, but an answer is owed whatever.
        encoded.unwrap_or_else(|e| {
            format!("{{\"Err\":\"cannot encode the answer: {e}\"}}").into_bytes()
        })
    }

    /// Is this a refusal?
    pub fn is_error(&self) -> bool {
        matches!(self, Response::Error(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_through_its_path() {
        for m in Method::ALL {
            assert_eq!(Method::from_path(&format!("/{}", m.name())).ok(), Some(m));
        }
        assert!(matches!(
            Method::from_path("/NetworkDriver.Frobnicate"),
            Err(ProtocolError::UnknownMethod { .. })
        ));
    }

    #[test]
    fn answers_are_what_docker_reads() {
        assert_eq!(
            Response::Activate.to_json(),
            br#"{"Implements":["NetworkDriver"]}"#
        );
        assert_eq!(
            Response::Capabilities.to_json(),
            br#"{"Scope":"local","ConnectivityScope":"local"}"#
        );
        assert_eq!(Response::Empty.to_json(), b"{}");
        assert_eq!(
            Response::Error("no \"such\" network".into()).to_json(),
            br#"{"Err":"no \"such\" network"}"#
        );
        let join = JoinResponse {
            interface_name: Some(InterfaceName {
                src_name: "bwc1".into(),
                dst_prefix: "eth".into(),
            }),
            gateway: "10.77.0.1".into(),
            gateway_ipv6: String::new(),
            static_routes: Vec::new(),
            disable_gateway_service: true,
        };
        assert_eq!(
            Response::Join(join).to_json(),
            br#"{"InterfaceName":{"SrcName":"bwc1","DstPrefix":"eth"},"Gateway":"10.77.0.1","DisableGatewayService":true}"#
        );
    }

    #[test]
    fn port_bindings_read_as_docker_run_writes_them() {
        let b = PortBinding {
            proto: 17,
            ip: String::new(),
            port: 53,
            host_ip: "127.0.0.1".into(),
            host_port: 5353,
            host_port_end: 5353,
        };
        assert_eq!(b.to_string(), "127.0.0.1:5353:53/udp");
    }
}
