//! An in-memory [`NetworkHost`] that records what it was asked, for the
//! handlers' unit tests (no root, no kernel).

use std::collections::BTreeMap;

use labels_policy::datapath_abi::{NetgateDrop, NetgateEndpoint};

use crate::host::{HostError, HostInterface, NetworkHost, Plug};
use crate::network::NetworkRecord;

/// The fake host.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// Interfaces by name.
    pub interfaces: BTreeMap<String, HostInterface>,
    /// Routes: address to interface.
    pub routes: BTreeMap<String, String>,
    /// Gate entries by ifindex.
    pub gate: BTreeMap<u32, NetgateEndpoint>,
    /// Networks with firewall rules, by id.
    pub firewall: BTreeMap<String, NetworkRecord>,
    /// Networks in the nat tables.
    pub nat: Vec<String>,
    /// Interfaces the gate was put on again.
    pub reattached: Vec<String>,
    /// What was done, in order.
    pub log: Vec<String>,
    next_ifindex: u32,
}

impl NetworkHost for FakeHost {
    async fn plug(&mut self, plug: &Plug) -> Result<HostInterface, HostError> {
        self.next_ifindex += 1;
        let iface = HostInterface {
            name: plug.host_interface.clone(),
            ifindex: 1000 + self.next_ifindex,
            mac: [0xee, 0, 0, 0, 0, self.next_ifindex as u8],
            alias: plug.alias.clone(),
        };
        let mut gate = plug.gate;
        gate.host_mac = iface.mac;
        self.gate.insert(iface.ifindex, gate);
        for a in &plug.addresses {
            self.routes.insert(a.to_string(), iface.name.clone());
        }
        self.log
            .push(format!("plug {} {}", iface.name, plug.container_interface));
        self.interfaces.insert(iface.name.clone(), iface.clone());
        Ok(iface)
    }

    async fn unplug(&mut self, host_interface: &str) -> Result<(), HostError> {
        if let Some(i) = self.interfaces.remove(host_interface) {
            self.gate.remove(&i.ifindex);
        }
        self.routes.retain(|_, dev| dev != host_interface);
        self.log.push(format!("unplug {host_interface}"));
        Ok(())
    }

    async fn interfaces(&mut self, prefix: &str) -> Result<Vec<HostInterface>, HostError> {
        Ok(self
            .interfaces
            .values()
            .filter(|i| i.alias.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn reattach(&mut self, host_interface: &str) -> Result<(), HostError> {
        self.reattached.push(host_interface.to_string());
        Ok(())
    }

    fn gate_set(&mut self, ifindex: u32, entry: &NetgateEndpoint) -> Result<(), HostError> {
        self.gate.insert(ifindex, *entry);
        Ok(())
    }

    fn gate_remove(&mut self, ifindex: u32) -> Result<(), HostError> {
        self.gate.remove(&ifindex);
        Ok(())
    }

    fn gate_entries(&mut self) -> Result<BTreeMap<u32, NetgateEndpoint>, HostError> {
        Ok(self.gate.clone())
    }

    fn gate_drops(&mut self) -> Result<BTreeMap<NetgateDrop, u64>, HostError> {
        Ok(BTreeMap::new())
    }

    async fn firewall_add(&mut self, network: &NetworkRecord) -> Result<(), HostError> {
        self.firewall.insert(network.id.clone(), network.clone());
        self.log
            .push(format!("firewall add {}", network.short_id()));
        Ok(())
    }

    async fn firewall_remove(&mut self, network: &NetworkRecord) -> Result<(), HostError> {
        self.firewall.remove(&network.id);
        self.log
            .push(format!("firewall remove {}", network.short_id()));
        Ok(())
    }

    async fn nat_sync(&mut self, networks: &[NetworkRecord]) -> Result<(), HostError> {
        self.nat = networks.iter().map(|n| n.id.clone()).collect();
        Ok(())
    }

    async fn firewall_reconcile(&mut self, keep: &[NetworkRecord]) -> Result<(), HostError> {
        self.firewall
            .retain(|id, _| keep.iter().any(|n| n.id == *id));
        Ok(())
    }
}
