//! What the driver does to the host, behind [`NetworkHost`], so the
//! handlers are unit-tested with a fake (`crate::testing`) and run for real
//! on [`crate::system::SystemHost`] (netlink, the gate, iptables).

use std::future::Future;
use std::net::IpAddr;

use labels_policy::datapath_abi::{NetgateDrop, NetgateEndpoint};

use crate::network::NetworkRecord;

/// Why a change to the host failed. Each names what it was doing and to
/// what (interface, address, chain).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A netlink request failed.
    #[error("netlink: cannot {op} {target}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// To what.
        target: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gate refused a change.
    #[error("the network gate: cannot {op} {target}")]
    Gate {
        /// What was being done.
        op: &'static str,
        /// To what.
        target: String,
        /// The cause.
        #[source]
        source: Box<bpfwall_datapath::DatapathError>,
    },
    /// A firewall command failed.
    #[error("{command} failed: {stderr}")]
    Firewall {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A firewall command could not be run.
    #[error("cannot run {command}")]
    FirewallSpawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the driver asks for when a container joins: a veth pair whose
/// host end is closed by the gate before it comes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plug {
    /// The host end's name.
    pub host_interface: String,
    /// The container end's name.
    pub container_interface: String,
    /// The alias that marks the host end as this plugin's.
    pub alias: String,
    /// The container's addresses, routed to the host end (/32, /128).
    pub addresses: Vec<IpAddr>,
    /// The gate entry the host end gets before it comes up (its MAC is
    /// filled in by the host).
    pub gate: NetgateEndpoint,
}

/// A host end as found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    /// Its name.
    pub name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its alias (empty when none).
    pub alias: String,
}

/// Everything the driver changes on the host.
pub trait NetworkHost: Send {
    /// Makes the veth pair, puts the gate on the host end with `plug.gate`
    /// (closed), brings it up and routes the addresses to it. Returns the
    /// host end as made. On failure, whatever was made is removed.
    fn plug(
        &mut self,
        plug: &Plug,
    ) -> impl Future<Output = Result<HostInterface, HostError>> + Send;

    /// Removes a host end (and so its pair, its routes and its filters);
    /// one that is gone already is fine.
    fn unplug(
        &mut self,
        host_interface: &str,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Every interface whose alias starts with `prefix`.
    fn interfaces(
        &mut self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<HostInterface>, HostError>> + Send;

    /// Puts the gate's programs (the ones this daemon loaded) on a host end
    /// that exists, replacing what is there in place.
    fn reattach(&mut self, host_interface: &str) -> Result<(), HostError>;

    /// Writes a gate entry.
    fn gate_set(&mut self, ifindex: u32, entry: &NetgateEndpoint) -> Result<(), HostError>;

    /// Removes a gate entry.
    fn gate_remove(&mut self, ifindex: u32) -> Result<(), HostError>;

    /// Every gate entry, by ifindex.
    fn gate_entries(
        &mut self,
    ) -> Result<std::collections::BTreeMap<u32, NetgateEndpoint>, HostError>;

    /// The gate's drops by reason.
    fn gate_drops(&mut self) -> Result<std::collections::BTreeMap<NetgateDrop, u64>, HostError>;

    /// Adds (or confirms) a network's forwarding rules: accepted for its
    /// prefixes on plugin interfaces.
    fn firewall_add(
        &mut self,
        network: &NetworkRecord,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Removes a network's firewall rules.
    fn firewall_remove(
        &mut self,
        network: &NetworkRecord,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Writes the plugin's address translation for all its networks.
    fn nat_sync(
        &mut self,
        networks: &[NetworkRecord],
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Removes every rule this plugin made for networks not in `keep`, and
    /// puts its jumps first where another's rules would come before them.
    fn firewall_reconcile(
        &mut self,
        keep: &[NetworkRecord],
    ) -> impl Future<Output = Result<(), HostError>> + Send;
}
