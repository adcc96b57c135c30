//! What `bpfwall status` shows of the network plugin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The plugin's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The driver name (`docker network create -d NAME`).
    pub name: String,
    /// The socket Docker calls.
    pub socket: String,
    /// Its networks.
    pub networks: Vec<NetworkStatus>,
    /// The gate's drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// Recent problems.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// One network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Docker's id.
    pub id: String,
    /// Docker's name, when known.
    pub name: Option<String>,
    /// `-o bpfwall.default=deny`.
    pub default_deny: bool,
    /// `--internal`.
    pub internal: bool,
    /// Its prefixes.
    pub subnets: Vec<String>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Docker's id.
    pub id: String,
    /// The host end of its veth, when joined.
    pub interface: Option<String>,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// Its veth pair exists.
    pub joined: bool,
    /// Its gate lets IP through.
    pub open: bool,
    /// The container bound to it.
    pub container: Option<String>,
    /// Why it is open or closed.
    pub reason: String,
}
