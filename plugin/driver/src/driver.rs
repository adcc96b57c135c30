//! The driver: one handler per call of the protocol, over the networks and
//! endpoints it keeps (persisted after every change) and the host
//! ([`NetworkHost`]). Handlers never wait for Docker (Docker holds the
//! container's lock while it calls Join) nor for the reconcile loop: a
//! new endpoint is closed by the gate from the moment its interface
//! exists, and [`Driver::apply_bindings`] opens it once the daemon reports
//! its container policed.

use std::collections::{BTreeMap, BTreeSet};

use bpfwall_plugin_protocol::{
    decode, EndpointOptions, InterfaceName, JoinResponse, Method, ProtocolError, Request, Response,
};
use labels_policy::datapath_abi::{self as abi, NetgateEndpoint};
use serde::{Deserialize, Serialize};

use crate::binding::{BindState, Bindings, OpenGates};
use crate::host::{HostError, HostInterface, NetworkHost, Plug};
use crate::network::{self, short, EndpointRecord, NetworkRecord};
use crate::status::{EndpointStatus, NetworkStatus, PluginStatus};
use crate::store::{State, StateStore, StoreError};

/// An endpoint no running container has held since its creation this long
/// ago is stale (Docker forgot it, e.g. while the plugin was unreachable).
pub const STALE_AFTER_SECS: u64 = 120;
/// An endpoint a container held, and none holds now, is stale after this
/// long: Docker's own Leave and DeleteEndpoint come well before (a dockerd
/// that restarts forgets the endpoints of the containers it killed without
/// telling a plugin it has not reached yet).
pub const STALE_AFTER_HELD_SECS: u64 = 10;

/// Why a call was refused. Docker shows the words to the user.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request could not be read.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A network this daemon does not know.
    #[error("network {network} is not a bpfwall network this daemon knows")]
    UnknownNetwork {
        /// Its short id.
        network: String,
    },
    /// An endpoint this daemon does not know.
    #[error("endpoint {endpoint} of network {network} is not one this daemon knows")]
    UnknownEndpoint {
        /// Its short id.
        endpoint: String,
        /// Its network's short id.
        network: String,
    },
    /// A `-o` option with a value it cannot take.
    #[error("bpfwall network {network}: option {option}={value:?}: expected {expected}")]
    BadOption {
        /// The network.
        network: String,
        /// The option.
        option: String,
        /// Its value.
        value: String,
        /// What it takes.
        expected: &'static str,
    },
    /// A `-o` option bpfwall does not have (never silently ignored).
    #[error("bpfwall network {network}: option {option} is not supported (bpfwall networks take -o bpfwall.default=allow|deny)")]
    UnsupportedOption {
        /// The network.
        network: String,
        /// The option.
        option: String,
    },
    /// Subnets it cannot take.
    #[error("bpfwall network {network}: {reason}")]
    Pools {
        /// The network.
        network: String,
        /// Why.
        reason: String,
    },
    /// An endpoint's addresses do not fit its network.
    #[error("bpfwall network {network}, endpoint {endpoint}: {reason}")]
    Address {
        /// The network.
        network: String,
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// `-p` on a bpfwall network.
    #[error("bpfwall network {network} does not publish ports: -p {ports} cannot be done (reach the container from a container on the network, or publish from a container also on a bridge network)")]
    PortsNotPublished {
        /// The network.
        network: String,
        /// The ports asked for.
        ports: String,
    },
    /// The host could not be changed.
    #[error("bpfwall network {network}, endpoint {endpoint}")]
    Host {
        /// The network.
        network: String,
        /// The endpoint (empty for the network itself).
        endpoint: String,
        /// The cause.
        #[source]
        source: HostError,
    },
    /// The state could not be saved: the change is not made.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the daemon needs to know of the networks: which endpoints are on
/// a default-deny network (their containers are compiled default deny).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDefaults {
    /// Docker endpoint ids on `-o bpfwall.default=deny` networks.
    pub default_deny_endpoints: BTreeSet<String>,
    /// The joined endpoints' sandbox keys (Docker endpoint id to the path
    /// Docker gave at Join, `/var/run/docker/netns/<id>`, where the
    /// container's network namespace is mounted before its OCI hooks run):
    /// how the daemon finds the endpoints of a container its OCI hook
    /// reports before Docker lists them.
    #[serde(default)]
    pub sandbox_keys: BTreeMap<String, String>,
}

/// The driver.
#[derive(Debug)]
pub struct Driver<H> {
    name: String,
    host: H,
    store: StateStore,
    state: State,
    /// Host ends by endpoint id, for the joined endpoints.
    interfaces: BTreeMap<String, HostInterface>,
    /// Sandbox keys by endpoint id, for the endpoints joined since start.
    sandbox_keys: BTreeMap<String, String>,
    /// The endpoints whose gate is open, for whoever waits on one.
    open_gates: OpenGates,
    /// The last bindings taken from a daemon in sync with Docker.
    bindings: Option<Bindings>,
    /// Docker's network names, when known.
    names: BTreeMap<String, String>,
    /// Problems to show in status.
    errors: Vec<String>,
    /// When a running container last held each endpoint (unix seconds).
    last_held: BTreeMap<String, u64>,
    now: fn() -> u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<H: NetworkHost> Driver<H> {
    /// A driver over the state saved in `store`. Call [`Driver::start`]
    /// before serving.
    pub fn new(name: &str, host: H, store: StateStore) -> Result<Self, DriverError> {
        let state = store.load()?;
        Ok(Driver {
            name: name.to_string(),
            host,
            store,
            state,
            interfaces: BTreeMap::new(),
            sandbox_keys: BTreeMap::new(),
            open_gates: OpenGates::default(),
            bindings: None,
            names: BTreeMap::new(),
            errors: Vec::new(),
            last_held: BTreeMap::new(),
            now: unix_now,
        })
    }

    /// Publishes the open gates there (the daemon's reconcile thread waits
    /// on them).
    pub fn set_open_gates(&mut self, open_gates: OpenGates) {
        self.open_gates = open_gates;
    }

    /// Uses another clock (tests).
    pub fn with_clock(mut self, now: fn() -> u64) -> Self {
        self.now = now;
        self
    }

    /// The host (tests read the fake's record).
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, given back (tests restart a driver on it).
    pub fn into_host(self) -> H {
        self.host
    }

    /// The plugin's name (`docker network create -d NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What is kept.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Brings the host in line with the saved state, as a daemon starts:
    /// interfaces of this plugin that no joined endpoint has are removed;
    /// the joined endpoints' interfaces get the gate this daemon loaded
    /// (in place) and their entries, keeping whether each was open (what
    /// was in force stays in force until the daemon knows better);
    /// endpoints whose interface went away while no daemon ran (their
    /// container's namespace died) are no longer joined; firewall rules of
    /// networks it no longer has are removed, and its own are made sure of.
    pub async fn start(&mut self) -> Result<(), DriverError> {
        let prefix = network::alias(&self.name, "");
        let found = self
            .host
            .interfaces(&prefix)
            .await
            .map_err(|source| DriverError::Host {
                network: String::new(),
                endpoint: String::new(),
                source,
            })?;
        let entries = self.host.gate_entries().unwrap_or_default();
        let mut kept = BTreeMap::new();
        for iface in found {
            let endpoint = network::endpoint_of_alias(&self.name, &iface.alias)
                .map(str::to_string)
                .unwrap_or_default();
            let joined = self
                .state
                .endpoints
                .get(&endpoint)
                .is_some_and(|e| e.joined);
            if !joined {
                tracing::info!(interface = %iface.name, endpoint = %short(&endpoint), "removing an interface no endpoint has");
                if let Err(e) = self.host.unplug(&iface.name).await {
                    self.error(format!("cannot remove stale interface {}: {e}", iface.name));
                }
                continue;
            }
            kept.insert(endpoint, iface);
        }
        let mut changed = false;
        let ids: Vec<String> = self.state.endpoints.keys().cloned().collect();
        for id in ids {
            let Some(ep) = self.state.endpoints.get(&id).cloned() else {
                continue;
            };
            if !ep.joined {
                continue;
            }
            let Some(iface) = kept.remove(&id) else {
                tracing::info!(endpoint = %short(&id), "its interface went away while no daemon ran: not joined");
                if let Some(e) = self.state.endpoints.get_mut(&id) {
                    e.joined = false;
                }
                changed = true;
                continue;
            };
            let was_open = entries
                .get(&iface.ifindex)
                .is_some_and(|e| e.flags & abi::NETGATE_OPEN != 0);
            if let Err(e) = self.host.reattach(&iface.name) {
                self.error(format!("cannot put the gate on {}: {e}", iface.name));
            }
            if let Some(net) = self.state.networks.get(&ep.network_id) {
                let mut entry = gate_entry(net, &ep, iface.mac);
                if was_open {
                    entry.flags |= abi::NETGATE_OPEN;
                }
                if let Err(e) = self.host.gate_set(iface.ifindex, &entry) {
                    self.error(format!(
                        "cannot write the gate entry of {}: {e}",
                        iface.name
                    ));
                }
            }
            self.interfaces.insert(id, iface);
        }
        // Gate entries of interfaces that are gone, or not this plugin's.
        let live: BTreeSet<u32> = self.interfaces.values().map(|i| i.ifindex).collect();
        for ifindex in entries.keys().filter(|i| !live.contains(i)) {
            let _ = self.host.gate_remove(*ifindex);
        }
        let networks: Vec<NetworkRecord> = self.state.networks.values().cloned().collect();
        if let Err(e) = self.host.firewall_reconcile(&networks).await {
            self.error(format!("cannot reconcile the firewall rules: {e}"));
        }
        for net in &networks {
            if let Err(e) = self.host.firewall_add(net).await {
                self.error(format!(
                    "cannot add the firewall rules of network {}: {e}",
                    net.short_id()
                ));
            }
        }
        if let Err(e) = self.host.nat_sync(&networks).await {
            self.error(format!("cannot write the address translation: {e}"));
        }
        if changed {
            self.store.save(&self.state)?;
        }
        Ok(())
    }

    fn error(&mut self, message: String) {
        tracing::error!(error = %message, "network plugin");
        self.errors.push(message);
        if self.errors.len() > 20 {
            self.errors.remove(0);
        }
    }

    /// Decodes and answers one call. Never panics; a refusal is an
    /// `Err` answer Docker shows.
    pub async fn call(&mut self, method: Method, body: &[u8]) -> Response {
        let request = match decode(method, body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(call = %method, error = %e, "malformed request");
                return Response::Error(e.to_string());
            }
        };
        let span = tracing::info_span!("plugin", call = %method);
        let _guard = span.enter();
        match self.answer(request).await {
            Ok(r) => r,
            Err(e) => {
                let text = bpfwall_sys::error_chain(&e);
                tracing::warn!(error = %text, "refused");
                Response::Error(text)
            }
        }
    }

    fn network(&self, id: &str) -> Result<&NetworkRecord, DriverError> {
        self.state
            .networks
            .get(id)
            .ok_or_else(|| DriverError::UnknownNetwork {
                network: short(id).to_string(),
            })
    }

    fn endpoint(&self, network: &str, id: &str) -> Result<&EndpointRecord, DriverError> {
        self.state
            .endpoints
            .get(id)
            .filter(|e| e.network_id == network)
            .ok_or_else(|| DriverError::UnknownEndpoint {
                endpoint: short(id).to_string(),
                network: short(network).to_string(),
            })
    }

    fn refuse_ports(
        &self,
        network: &NetworkRecord,
        options: &EndpointOptions,
    ) -> Result<(), DriverError> {
        if options.port_map.is_empty() {
            return Ok(());
        }
        let name = self.names.get(&network.id).map_or_else(
            || network.short_id().to_string(),
            |n| format!("'{n}' ({})", network.short_id()),
        );
        Err(DriverError::PortsNotPublished {
            network: name,
            ports: options
                .port_map
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", -p "),
        })
    }

    async fn answer(&mut self, request: Request) -> Result<Response, DriverError> {
        match request {
            Request::Activate => Ok(Response::Activate),
            Request::GetCapabilities => Ok(Response::Capabilities),
            Request::CreateNetwork(req) => {
                let record = NetworkRecord::from_request(&req)?;
                if let Some(have) = self.state.networks.get(&record.id) {
                    // Docker never asks twice; a retry after our restart
                    // finds the network as it was made.
                    if *have == record {
                        return Ok(Response::Empty);
                    }
                }
                let host_error = |source| DriverError::Host {
                    network: record.short_id().to_string(),
                    endpoint: String::new(),
                    source,
                };
                self.host.firewall_add(&record).await.map_err(host_error)?;
                let mut all: Vec<NetworkRecord> = self.state.networks.values().cloned().collect();
                all.push(record.clone());
                if let Err(e) = self.host.nat_sync(&all).await {
                    let _ = self.host.firewall_remove(&record).await;
                    return Err(host_error(e));
                }
                tracing::info!(network = %record.short_id(), default_deny = record.default_deny, internal = record.internal,
                    subnets = ?record.subnets(), "network created");
                self.state.networks.insert(record.id.clone(), record);
                self.store.save(&self.state)?;
                Ok(Response::Empty)
            }
            Request::DeleteNetwork(req) => {
                let Some(record) = self.state.networks.get(&req.network_id).cloned() else {
                    return Ok(Response::Empty);
                };
                let left: Vec<String> = self
                    .state
                    .endpoints
                    .values()
                    .filter(|e| e.network_id == record.id)
                    .map(|e| e.id.clone())
                    .collect();
                for id in left {
                    self.remove_endpoint(&id).await?;
                }
                let host_error = |source| DriverError::Host {
                    network: record.short_id().to_string(),
                    endpoint: String::new(),
                    source,
                };
                self.host
                    .firewall_remove(&record)
                    .await
                    .map_err(host_error)?;
                let rest: Vec<NetworkRecord> = self
                    .state
                    .networks
                    .values()
                    .filter(|n| n.id != record.id)
                    .cloned()
                    .collect();
                self.host.nat_sync(&rest).await.map_err(host_error)?;
                self.state.networks.remove(&record.id);
                self.names.remove(&record.id);
                self.store.save(&self.state)?;
                tracing::info!(network = %record.short_id(), "network deleted");
                Ok(Response::Empty)
            }
            Request::CreateEndpoint(req) => {
                let net = self.network(&req.network_id)?.clone();
                let options = EndpointOptions::parse(Method::CreateEndpoint, &req.options)?;
                self.refuse_ports(&net, &options)?;
                let record = EndpointRecord::from_request(
                    &net,
                    &req.endpoint_id,
                    req.interface.as_ref(),
                    (self.now)(),
                )?;
                tracing::info!(network = %net.short_id(), endpoint = %short(&record.id), addresses = ?record.addresses(), "endpoint created");
                self.state.endpoints.insert(record.id.clone(), record);
                self.store.save(&self.state)?;
                Ok(Response::CreateEndpoint)
            }
            Request::EndpointOperInfo(req) => {
                let ep = self.endpoint(&req.network_id, &req.endpoint_id)?;
                let mut value = BTreeMap::new();
                value.insert(
                    "bpfwall.interface".to_string(),
                    serde_json::Value::String(ep.host_interface()),
                );
                Ok(Response::EndpointOperInfo(value))
            }
            Request::DeleteEndpoint(req) => {
                if self.state.endpoints.contains_key(&req.endpoint_id) {
                    self.remove_endpoint(&req.endpoint_id).await?;
                    self.store.save(&self.state)?;
                }
                Ok(Response::Empty)
            }
            Request::Join(req) => {
                let net = self.network(&req.network_id)?.clone();
                let ep = self.endpoint(&req.network_id, &req.endpoint_id)?.clone();
                let options = EndpointOptions::parse(Method::Join, &req.options)?;
                self.refuse_ports(&net, &options)?;
                if ep.joined {
                    self.unplug(&ep).await?;
                }
                let plug = Plug {
                    host_interface: ep.host_interface(),
                    container_interface: ep.container_interface(),
                    alias: network::alias(&self.name, &ep.id),
                    addresses: ep.addresses(),
                    gate: gate_entry(&net, &ep, [0; 6]),
                };
                let iface = self
                    .host
                    .plug(&plug)
                    .await
                    .map_err(|source| DriverError::Host {
                        network: net.short_id().to_string(),
                        endpoint: short(&ep.id).to_string(),
                        source,
                    })?;
                tracing::info!(network = %net.short_id(), endpoint = %short(&ep.id), interface = %iface.name, ifindex = iface.ifindex, "joined: closed until its container is policed");
                self.interfaces.insert(ep.id.clone(), iface);
                if !req.sandbox_key.is_empty() {
                    self.sandbox_keys
                        .insert(ep.id.clone(), req.sandbox_key.clone());
                }
                if let Some(e) = self.state.endpoints.get_mut(&ep.id) {
                    e.joined = true;
                }
                self.store.save(&self.state)?;
                let mut response = JoinResponse {
                    interface_name: Some(InterfaceName {
                        src_name: plug.container_interface,
                        dst_prefix: "eth".into(),
                    }),
                    disable_gateway_service: true,
                    ..JoinResponse::default()
                };
                if !net.internal {
                    if let Some((_, gw)) = net.ipv4 {
                        response.gateway = gw.to_string();
                    }
                    if let Some((_, gw)) = net.ipv6 {
                        response.gateway_ipv6 = gw.to_string();
                    }
                }
                Ok(Response::Join(response))
            }
            Request::Leave(req) => {
                if let Some(ep) = self.state.endpoints.get(&req.endpoint_id).cloned() {
                    if ep.joined {
                        self.unplug(&ep).await?;
                        if let Some(e) = self.state.endpoints.get_mut(&ep.id) {
                            e.joined = false;
                        }
                        self.store.save(&self.state)?;
                    }
                }
                Ok(Response::Empty)
            }
            Request::ProgramExternalConnectivity(req) => {
                let net = self.network(&req.network_id)?.clone();
                let options =
                    EndpointOptions::parse(Method::ProgramExternalConnectivity, &req.options)?;
                self.refuse_ports(&net, &options)?;
                Ok(Response::Empty)
            }
            Request::RevokeExternalConnectivity(_)
            | Request::DiscoverNew(_)
            | Request::DiscoverDelete(_)
            | Request::AllocateNetwork(_)
            | Request::FreeNetwork(_) => Ok(Response::Empty),
        }
    }

    async fn unplug(&mut self, ep: &EndpointRecord) -> Result<(), DriverError> {
        self.sandbox_keys.remove(&ep.id);
        if let Some(iface) = self.interfaces.remove(&ep.id) {
            let _ = self.host.gate_remove(iface.ifindex);
        }
        self.host
            .unplug(&ep.host_interface())
            .await
            .map_err(|source| DriverError::Host {
                network: short(&ep.network_id).to_string(),
                endpoint: short(&ep.id).to_string(),
                source,
            })
    }

    async fn remove_endpoint(&mut self, id: &str) -> Result<(), DriverError> {
        if let Some(ep) = self.state.endpoints.get(id).cloned() {
            if ep.joined || self.interfaces.contains_key(id) {
                self.unplug(&ep).await?;
            }
            self.state.endpoints.remove(id);
            self.last_held.remove(id);
            tracing::info!(endpoint = %short(id), "endpoint deleted");
        }
        Ok(())
    }

    /// Which endpoints are on default-deny networks.
    pub fn defaults(&self) -> NetworkDefaults {
        NetworkDefaults {
            default_deny_endpoints: self
                .state
                .endpoints
                .values()
                .filter(|e| {
                    self.state
                        .networks
                        .get(&e.network_id)
                        .is_some_and(|n| n.default_deny)
                })
                .map(|e| e.id.clone())
                .collect(),
            sandbox_keys: self.sandbox_keys.clone(),
        }
    }

    /// Docker's names of the networks (for messages and status).
    pub fn set_names(&mut self, names: BTreeMap<String, String>) {
        self.names = names;
    }

    /// Opens every joined endpoint whose container the daemon reports
    /// policed, closes the others. Bindings from a daemon not in sync with
    /// Docker are not acted on (they may lack containers that are there).
    /// Endpoints of containers Docker no longer has, long after their
    /// creation, are removed.
    pub async fn apply_bindings(&mut self, bindings: Bindings) {
        if !bindings.synced {
            return;
        }
        let now = (self.now)();
        for id in bindings.holders.keys() {
            if self.state.endpoints.contains_key(id) {
                self.last_held.insert(id.clone(), now);
            }
        }
        let last_held = &self.last_held;
        let stale: Vec<String> = self
            .state
            .endpoints
            .values()
            .filter(|e| {
                !bindings.holders.contains_key(&e.id)
                    && match last_held.get(&e.id) {
                        Some(t) => now.saturating_sub(*t) > STALE_AFTER_HELD_SECS,
                        None => now.saturating_sub(e.created_unix) > STALE_AFTER_SECS,
                    }
            })
            .map(|e| e.id.clone())
            .collect();
        for id in &stale {
            tracing::info!(endpoint = %short(id), "no container holds it: removing a stale endpoint");
            if let Err(e) = self.remove_endpoint(id).await {
                self.error(format!("cannot remove stale endpoint {}: {e}", short(id)));
            }
        }
        if !stale.is_empty() {
            if let Err(e) = self.store.save(&self.state) {
                self.error(format!("cannot save the plugin state: {e}"));
            }
        }
        self.bindings = Some(bindings);
        self.sync_gate();
    }

    /// Writes every joined endpoint's gate entry as the last bindings say
    /// (after a Join, the new endpoint may be bound already).
    pub fn sync_gate(&mut self) {
        let Some(bindings) = &self.bindings else {
            return;
        };
        let current = self.host.gate_entries().unwrap_or_default();
        let mut writes = Vec::new();
        let mut open = BTreeSet::new();
        for (id, iface) in &self.interfaces {
            let Some(ep) = self.state.endpoints.get(id) else {
                continue;
            };
            let Some(net) = self.state.networks.get(&ep.network_id) else {
                continue;
            };
            let mut entry = gate_entry(net, ep, iface.mac);
            if bindings.state_of(id).is_some_and(|(_, s)| s.opens()) {
                entry.flags |= abi::NETGATE_OPEN;
            }
            if current.get(&iface.ifindex) != Some(&entry) {
                writes.push((iface.ifindex, iface.name.clone(), id.clone(), entry));
            } else if entry.flags & abi::NETGATE_OPEN != 0 {
                open.insert(id.clone());
            }
        }
        for (ifindex, name, id, entry) in writes {
            let opens = entry.flags & abi::NETGATE_OPEN != 0;
            match self.host.gate_set(ifindex, &entry) {
                Ok(()) => {
                    tracing::info!(endpoint = %short(&id), interface = %name, open = opens, "gate");
                    if opens {
                        open.insert(id);
                    }
                }
                Err(e) => self.error(format!("cannot write the gate entry of {name}: {e}")),
            }
        }
        self.open_gates.set(open);
    }

    /// Periodic upkeep: the firewall's jumps first again (dockerd puts its
    /// own first when it starts).
    pub async fn upkeep(&mut self) {
        if self.state.networks.is_empty() {
            return;
        }
        let networks: Vec<NetworkRecord> = self.state.networks.values().cloned().collect();
        if let Err(e) = self.host.firewall_reconcile(&networks).await {
            self.error(format!("cannot reconcile the firewall rules: {e}"));
        }
    }

    /// What `bpfwall status` shows.
    pub fn status(&mut self, socket: &str) -> PluginStatus {
        let entries = self.host.gate_entries().unwrap_or_default();
        let drops = self
            .host
            .gate_drops()
            .map(|d| {
                d.into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect()
            })
            .unwrap_or_default();
        let networks = self
            .state
            .networks
            .values()
            .map(|n| NetworkStatus {
                id: n.id.clone(),
                name: self.names.get(&n.id).cloned(),
                default_deny: n.default_deny,
                internal: n.internal,
                subnets: n.subnets().iter().map(ToString::to_string).collect(),
                endpoints: self
                    .state
                    .endpoints
                    .values()
                    .filter(|e| e.network_id == n.id)
                    .map(|e| {
                        let iface = self.interfaces.get(&e.id);
                        let open = iface
                            .and_then(|i| entries.get(&i.ifindex))
                            .is_some_and(|g| g.flags & abi::NETGATE_OPEN != 0);
                        let bound = self.bindings.as_ref().and_then(|b| b.state_of(&e.id));
                        EndpointStatus {
                            id: e.id.clone(),
                            interface: iface.map(|i| i.name.clone()),
                            addresses: e.addresses().iter().map(ToString::to_string).collect(),
                            joined: e.joined,
                            open,
                            container: bound.map(|(c, _)| c.to_string()),
                            reason: match (open, bound) {
                                (true, Some((_, BindState::NotManaged))) => {
                                    "open: its container is not managed by this daemon".into()
                                }
                                (true, _) => "open: its container is policed".into(),
                                (false, _) if !e.joined => "not joined".into(),
                                (false, None) => "closed: no container is bound to it yet".into(),
                                (false, Some((_, BindState::NotPoliced(why)))) => {
                                    format!("closed: its container is not policed ({why})")
                                }
                                (false, Some(_)) => "closed".into(),
                            },
                        }
                    })
                    .collect(),
            })
            .collect();
        PluginStatus {
            name: self.name.clone(),
            socket: socket.to_string(),
            networks,
            drops,
            errors: self.errors.clone(),
        }
    }
}

/// A joined endpoint's gate entry, closed.
pub fn gate_entry(net: &NetworkRecord, ep: &EndpointRecord, mac: [u8; 6]) -> NetgateEndpoint {
    let mut e = NetgateEndpoint {
        host_mac: mac,
        ..NetgateEndpoint::default()
    };
    if net.internal {
        e.flags |= abi::NETGATE_INTERNAL;
    }
    if let (Some((subnet, _)), Some(addr)) = (net.ipv4, ep.ipv4) {
        e.flags |= abi::NETGATE_IPV4;
        e.addr4 = addr.octets();
        e.subnet4 = subnet.network().octets();
        e.subnet4_len = subnet.prefix_len();
    }
    if let (Some((subnet, _)), Some(addr)) = (net.ipv6, ep.ipv6) {
        e.flags |= abi::NETGATE_IPV6;
        e.addr6 = addr.octets();
        e.subnet6 = subnet.network().octets();
        e.subnet6_len = subnet.prefix_len();
    }
    e
}
