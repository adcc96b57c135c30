//! What the driver keeps of each network and endpoint Docker asked for,
//! read from Docker's requests and checked against what a bpfwall network
//! supports. Pure: no I/O; the records are what the driver persists.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bpfwall_plugin_protocol::{CreateNetworkRequest, EndpointInterface, Method, ProtocolError};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::DriverError;

/// The `-o` option that sets a network's default.
pub const OPTION_DEFAULT: &str = "bpfwall.default";

/// The prefix of host-end interface names (`bw` + 12 hex digits of the
/// endpoint id: 14 characters, within the kernel's 15).
pub const HOST_PREFIX: &str = "bw";
/// The prefix of the container end's name until Docker renames it `ethN`.
pub const CONTAINER_PREFIX: &str = "bc";

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Docker's id.
    pub id: String,
    /// `-o bpfwall.default=deny`: every container on it is default deny
    /// both ways until its labels allow.
    pub default_deny: bool,
    /// `--internal`: no way out of the network's prefixes.
    pub internal: bool,
    /// The IPv4 prefix and its gateway.
    pub ipv4: Option<(Ipv4Net, Ipv4Addr)>,
    /// The IPv6 prefix and its gateway (`--ipv6`).
    pub ipv6: Option<(Ipv6Net, Ipv6Addr)>,
}

impl NetworkRecord {
    /// Docker's id, short (as `docker network ls` shows it).
    pub fn short_id(&self) -> &str {
        short(&self.id)
    }

    /// The network's prefixes.
    pub fn subnets(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        if let Some((n, _)) = self.ipv4 {
            out.push(IpNet::V4(n));
        }
        if let Some((n, _)) = self.ipv6 {
            out.push(IpNet::V6(n));
        }
        out
    }

    /// Reads a `CreateNetwork`: every option must be one bpfwall knows
    /// (an option it would ignore is refused, naming it), one IPv4 pool
    /// with a gateway, at most one IPv6 pool with a gateway.
    pub fn from_request(req: &CreateNetworkRequest) -> Result<NetworkRecord, DriverError> {
        check_id(Method::CreateNetwork, "NetworkID", &req.network_id)?;
        let network = short(&req.network_id).to_string();
        let options = req.options()?;
        let mut default_deny = false;
        for (key, value) in &options.generic {
            match key.as_str() {
                OPTION_DEFAULT => {
                    default_deny = match value.as_str() {
                        "deny" => true,
                        "allow" => false,
                        _ => {
                            return Err(DriverError::BadOption {
                                network,
                                option: key.clone(),
                                value: value.clone(),
                                expected: "allow or deny",
                            })
                        }
                    }
                }
                _ => {
                    return Err(DriverError::UnsupportedOption {
                        network,
                        option: key.clone(),
                    })
                }
            }
        }
        let pools = |what: &'static str, n: usize| -> Result<(), DriverError> {
            if n > 1 {
                return Err(DriverError::Pools {
                    network: network.clone(),
                    reason: format!("{n} {what} subnets were given: a bpfwall network takes one"),
                });
            }
            Ok(())
        };
        pools("IPv4", options.ipv4.len())?;
        pools("IPv6", options.ipv6.len())?;
        let no_gateway = |subnet: &IpNet| DriverError::Pools {
            network: network.clone(),
            reason: format!(
                "the IPAM gave subnet {subnet} no gateway address (containers route through it)"
            ),
        };
        let ipv4 = match options.ipv4.first() {
            None => {
                return Err(DriverError::Pools {
                    network,
                    reason: "no IPv4 subnet was given".into(),
                })
            }
            Some(p) => match (p.subnet, p.gateway) {
                (IpNet::V4(n), Some(IpAddr::V4(g))) if n.contains(&g) => Some((n, g)),
                (s, _) => return Err(no_gateway(&s)),
            },
        };
        let ipv6 = match options.ipv6.first() {
            None => None,
            Some(p) => match (p.subnet, p.gateway) {
                (IpNet::V6(n), Some(IpAddr::V6(g))) if n.contains(&g) => Some((n, g)),
                (s, _) => return Err(no_gateway(&s)),
            },
        };
        Ok(NetworkRecord {
            id: req.network_id.clone(),
            default_deny,
            internal: options.internal,
            ipv4,
            ipv6,
        })
    }
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Docker's id.
    pub id: String,
    /// Its network's id.
    pub network_id: String,
    /// Its IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// When it was created (unix seconds): an endpoint no container holds
    /// long after this is stale.
    pub created_unix: u64,
    /// Joined: its veth pair exists.
    pub joined: bool,
}

impl EndpointRecord {
    /// Reads a `CreateEndpoint`'s addresses for a network: each family the
    /// network has must come with an address inside its prefix.
    pub fn from_request(
        network: &NetworkRecord,
        endpoint_id: &str,
        iface: Option<&EndpointInterface>,
        now_unix: u64,
    ) -> Result<EndpointRecord, DriverError> {
        check_id(Method::CreateEndpoint, "EndpointID", endpoint_id)?;
        let default = EndpointInterface::default();
        let iface = iface.unwrap_or(&default);
        let ipv4 = match (network.ipv4, iface.ipv4()?) {
            (Some((subnet, _)), Some(IpNet::V4(a))) if subnet.contains(&a.addr()) => Some(a.addr()),
            (Some((subnet, _)), other) => {
                return Err(DriverError::Address {
                    network: network.short_id().to_string(),
                    endpoint: short(endpoint_id).to_string(),
                    reason: format!(
                        "an IPv4 address inside {subnet} is needed, got {}",
                        other.map_or("none".into(), |a| a.to_string())
                    ),
                })
            }
            (None, _) => None,
        };
        let ipv6 = match (network.ipv6, iface.ipv6()?) {
            (Some((subnet, _)), Some(IpNet::V6(a))) if subnet.contains(&a.addr()) => Some(a.addr()),
            (Some((subnet, _)), other) => {
                return Err(DriverError::Address {
                    network: network.short_id().to_string(),
                    endpoint: short(endpoint_id).to_string(),
                    reason: format!(
                        "an IPv6 address inside {subnet} is needed, got {}",
                        other.map_or("none".into(), |a| a.to_string())
                    ),
                })
            }
            (None, _) => None,
        };
        Ok(EndpointRecord {
            id: endpoint_id.to_string(),
            network_id: network.id.clone(),
            ipv4,
            ipv6,
            created_unix: now_unix,
            joined: false,
        })
    }

    /// The host end of its veth.
    pub fn host_interface(&self) -> String {
        host_interface(&self.id)
    }

    /// The container end, as made (Docker renames it).
    pub fn container_interface(&self) -> String {
        format!("{CONTAINER_PREFIX}{}", short(&self.id))
    }

    /// Its addresses.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
    }
}

/// The host end's name for an endpoint id.
pub fn host_interface(endpoint_id: &str) -> String {
    format!("{HOST_PREFIX}{}", short(endpoint_id))
}

/// The interface alias that marks a host end as this plugin's, naming its
/// endpoint: what a starting daemon reads back to find its interfaces.
pub fn alias(plugin: &str, endpoint_id: &str) -> String {
    format!("bpfwall:{plugin}:{endpoint_id}")
}

/// The endpoint id an alias of this plugin names.
pub fn endpoint_of_alias<'a>(plugin: &str, alias: &'a str) -> Option<&'a str> {
    alias
        .strip_prefix("bpfwall:")?
        .strip_prefix(plugin)?
        .strip_prefix(':')
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Docker's ids are hex; interface names are made of them.
fn check_id(method: Method, field: &str, id: &str) -> Result<(), DriverError> {
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(DriverError::Protocol(ProtocolError::Field {
        method: method.name(),
        field: field.to_string(),
        value: id.to_string(),
        expected: "Docker's hexadecimal id (at least 12 digits)",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernels_limit_and_aliases_read_back() {
        let id = "bfa0bc1e7aa62c8571ddae666cd58ee3025121303b67d6a8666cd19d18aaa2d1";
        assert_eq!(host_interface(id), "bwbfa0bc1e7aa6");
        assert!(host_interface(id).len() <= 15);
        let a = alias("bpfwall", id);
        assert_eq!(endpoint_of_alias("bpfwall", &a), Some(id));
        assert_eq!(endpoint_of_alias("bpfwall-other", &a), None);
        assert_eq!(endpoint_of_alias("bpf", &a), None);
    }
}
