//! The real host: veth pairs, links and routes through rtnetlink, the gate
//! through `bpfwall_datapath::NetworkGate`, the firewall through
//! [`crate::firewall`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use bpfwall_datapath::NetworkGate;
use futures_util::TryStreamExt as _;
use labels_policy::datapath_abi::{NetgateDrop, NetgateEndpoint};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::firewall::Firewall;
use crate::host::{HostError, HostInterface, NetworkHost, Plug};
use crate::network::NetworkRecord;

/// The host as it is.
#[derive(Debug)]
pub struct SystemHost {
    netlink: Handle,
    gate: NetworkGate,
    firewall: Firewall,
}

fn netlink<'a>(
    op: &'static str,
    target: &'a str,
) -> impl FnOnce(rtnetlink::Error) -> HostError + 'a {
    move |e| HostError::Netlink {
        op,
        target: target.to_string(),
        source: Box::new(e),
    }
}

fn gate(
    op: &'static str,
    target: String,
) -> impl FnOnce(bpfwall_datapath::DatapathError) -> HostError {
    move |e| HostError::Gate {
        op,
        target,
        source: Box::new(e),
    }
}

fn interface_of(msg: &LinkMessage) -> HostInterface {
    let mut iface = HostInterface {
        name: String::new(),
        ifindex: msg.header.index,
        mac: [0; 6],
        alias: String::new(),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name = n.clone(),
            LinkAttribute::IfAlias(a) => iface.alias = a.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => iface.mac.copy_from_slice(a),
            _ => {}
        }
    }
    iface
}

impl SystemHost {
    /// Connects to rtnetlink (the connection runs as a task of the current
    /// tokio runtime) and loads the gate with the maps under `pin_root`.
    pub fn new(pin_root: &Path, plugin: &str) -> Result<Self, HostError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| HostError::Netlink {
                op: "open",
                target: "a netlink socket".into(),
                source: Box::new(e),
            })?;
        tokio::spawn(connection);
        let gate = NetworkGate::load(Some(pin_root))
            .map_err(gate("load", pin_root.display().to_string()))?;
        Ok(SystemHost {
            netlink: handle,
            gate,
            firewall: Firewall::new(plugin),
        })
    }

    async fn find(&self, name: &str) -> Result<Option<HostInterface>, HostError> {
        let mut links = self
            .netlink
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(interface_of(&msg))),
            Ok(None) => Ok(None),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(netlink("look up", name)(e)),
        }
    }

    async fn make(&mut self, plug: &Plug) -> Result<HostInterface, HostError> {
        let host = plug.host_interface.as_str();
        self.netlink
            .link()
            .add(LinkVeth::new(host, &plug.container_interface).build())
            .execute()
            .await
            .map_err(netlink("create the veth pair", host))?;
        let iface = self.find(host).await?.ok_or_else(|| HostError::Netlink {
            op: "find the new veth",
            target: host.to_string(),
            source: "it is not there after its creation".into(),
        })?;
        self.netlink
            .link()
            .set(
                LinkUnspec::new_with_index(iface.ifindex)
                    .alias(plug.alias.clone())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink("set the alias of", host))?;
        // Closed before it is up: the gate and its entry first.
        self.gate
            .attach(host)
            .map_err(gate("attach to", host.to_string()))?;
        let mut entry = plug.gate;
        entry.host_mac = iface.mac;
        self.gate
            .set(iface.ifindex, &entry)
            .map_err(gate("write the entry of", host.to_string()))?;
        self.netlink
            .link()
            .set(LinkUnspec::new_with_index(iface.ifindex).up().build())
            .execute()
            .await
            .map_err(netlink("bring up", host))?;
        for addr in &plug.addresses {
            let route = match addr {
                IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(*a, 32)
                    .output_interface(iface.ifindex)
                    .scope(RouteScope::Link)
                    .protocol(RouteProtocol::Static)
                    .build(),
                IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(*a, 128)
                    .output_interface(iface.ifindex)
                    .protocol(RouteProtocol::Static)
                    .build(),
            };
            self.netlink
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| HostError::Netlink {
                    op: "route to",
                    target: format!("{addr} via {host}"),
                    source: Box::new(e),
                })?;
        }
        Ok(HostInterface {
            alias: plug.alias.clone(),
            ..iface
        })
    }
}

impl NetworkHost for SystemHost {
    async fn plug(&mut self, plug: &Plug) -> Result<HostInterface, HostError> {
        // A leftover of the same name (a Join after a failed one).
        self.unplug(&plug.host_interface).await?;
        match self.make(plug).await {
            Ok(iface) => Ok(iface),
            Err(e) => {
                if let Ok(Some(i)) = self.find(&plug.host_interface).await {
                    let _ = self.gate.remove(i.ifindex);
                }
                let _ = self.unplug(&plug.host_interface).await;
                Err(e)
            }
        }
    }

    async fn unplug(&mut self, host_interface: &str) -> Result<(), HostError> {
        let Some(iface) = self.find(host_interface).await? else {
            return Ok(());
        };
        match self.netlink.link().del(iface.ifindex).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(()),
            Err(e) => Err(netlink("delete", host_interface)(e)),
        }
    }

    async fn interfaces(&mut self, prefix: &str) -> Result<Vec<HostInterface>, HostError> {
        let mut links = self.netlink.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(netlink("list", "interfaces"))?
        {
            let iface = interface_of(&msg);
            if iface.alias.starts_with(prefix) {
                out.push(iface);
            }
        }
        Ok(out)
    }

    fn reattach(&mut self, host_interface: &str) -> Result<(), HostError> {
        self.gate
            .attach(host_interface)
            .map_err(gate("attach to", host_interface.to_string()))
    }

    fn gate_set(&mut self, ifindex: u32, entry: &NetgateEndpoint) -> Result<(), HostError> {
        self.gate
            .set(ifindex, entry)
            .map_err(gate("write the entry of", format!("ifindex {ifindex}")))
    }

    fn gate_remove(&mut self, ifindex: u32) -> Result<(), HostError> {
        self.gate
            .remove(ifindex)
            .map_err(gate("remove the entry of", format!("ifindex {ifindex}")))
    }

    fn gate_entries(&mut self) -> Result<BTreeMap<u32, NetgateEndpoint>, HostError> {
        self.gate
            .entries()
            .map_err(gate("read", "the entries".into()))
    }

    fn gate_drops(&mut self) -> Result<BTreeMap<NetgateDrop, u64>, HostError> {
        self.gate.drops().map_err(gate("read", "the drops".into()))
    }

    async fn firewall_add(&mut self, network: &NetworkRecord) -> Result<(), HostError> {
        self.firewall.add(network).await
    }

    async fn firewall_remove(&mut self, network: &NetworkRecord) -> Result<(), HostError> {
        self.firewall.remove(network).await
    }

    async fn firewall_reconcile(&mut self, keep: &[NetworkRecord]) -> Result<(), HostError> {
        self.firewall.reconcile(keep).await
    }

    async fn nat_sync(&mut self, networks: &[NetworkRecord]) -> Result<(), HostError> {
        self.firewall.sync_nat(networks).await
    }
}
