//! The HTTP proxy: bpfwall's L7 enforcement, in the daemon.
//!
//! For each attached container in a network namespace of its own whose
//! identity has ports steered to the proxy (the compile's `IDENTITY_PROXY`
//! entries: its own ingress HTTP rules, and clients' egress HTTP rules
//! towards it), the proxy keeps a listening socket *inside that
//! namespace* ([`netns_sockets`]), puts it in the datapath's socket map,
//! says which addresses are the container's, and attaches the sk_lookup
//! program to the namespace ([`bpfwall_datapath::steering`]). The program
//! hands every new connection to a steered port (that L3/L4 policy admits)
//! to that socket; [`connection`] serves it.
//!
//! The proxy follows the reconciler's snapshots: after each, it sets up
//! what became served and tears down what is served no more. Until a
//! container is set up (a few milliseconds after the flip that steers its
//! ports), connections to its steered ports meet its own cgroup program,
//! which drops them (step 10b): closed, never open.
//!
//! A namespace shared by several containers (`--network container:X`) is
//! not steered: which container's socket a connection would reach is not
//! known at lookup, so its steered ports stay closed (reported).

pub mod connection;
pub mod netns_sockets;
pub mod request_flows;
pub mod stats;
pub mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;

use bpfwall_datapath::steering::Steering;
use bpfwall_sys::error_chain;
use labels_policy::compile::Network;
use labels_policy::datapath_abi::{self as abi, l7_address_key, L7AddressKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::connection::{Served, Shared};
use self::netns_sockets::{NetnsSockets, SocketKind};
pub use self::request_flows::RequestFlows;
pub use self::stats::{ProxyStats, ProxyTotals};
use super::snapshot::Snapshot;
use crate::api::ProxyState;

/// A container the proxy should serve, as a snapshot says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    name: String,
    pid: u32,
    endpoint_id: u32,
    cgroup_id: u64,
    addresses: BTreeSet<IpAddr>,
    ports: Vec<u16>,
}

/// A container the proxy serves.
#[derive(Debug)]
struct Serving {
    want: Want,
    served: Arc<Served>,
    accept: Vec<JoinHandle<()>>,
    families: Vec<bool>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.accept {
            task.abort();
        }
    }
}

/// Why a container could not be served.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("cannot open the network namespace of pid {pid}")]
    Netns {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("its network namespace is the daemon's own (host networking)")]
    HostNetns,
    #[error(transparent)]
    Socket(#[from] netns_sockets::NetnsSocketError),
    #[error("cannot register the proxy socket")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Datapath(#[from] bpfwall_datapath::DatapathError),
}

/// The steered ports of each identity, from the compiled policy.
fn steered_ports(snapshot: &Snapshot) -> BTreeMap<u32, Vec<u16>> {
    let mut out: BTreeMap<u32, Vec<u16>> = BTreeMap::new();
    for (k, v) in &snapshot.compiled.policy {
        if k.peer_identity == abi::IDENTITY_PROXY && *v == abi::VERDICT_PROXY {
            out.entry(k.local_identity)
                .or_default()
                .push(u16::from_be(k.dport_be));
        }
    }
    out
}

/// What the snapshot says should be served, and why some containers with
/// steered ports cannot be.
fn wanted(snapshot: &Snapshot) -> (BTreeMap<String, Want>, BTreeMap<String, String>) {
    let ports = steered_ports(snapshot);
    let mut want = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (i, input) in snapshot.inputs.iter().enumerate() {
        let id = &snapshot.input_ids[i];
        let report = &snapshot.compiled.containers[i];
        let (Some(attachment), Some(ports)) = (input.attachment, ports.get(&report.identity))
        else {
            continue;
        };
        let Some(view) = snapshot.containers.iter().find(|c| c.id == *id) else {
            continue;
        };
        if input.network != Network::Own || view.problem.is_some() {
            continue;
        }
        let joined = format!("joined {}", view.record.name);
        if let Some(other) = snapshot.containers.iter().find(|c| c.network == joined) {
            problems.insert(
                id.clone(),
                format!(
                    "http-policed ports {ports:?} stay closed: container '{}' shares this network namespace",
                    other.record.name
                ),
            );
            continue;
        }
        want.insert(
            id.clone(),
            Want {
                name: view.record.name.clone(),
                pid: view.record.pid,
                endpoint_id: attachment.endpoint_id,
                cgroup_id: attachment.cgroup_id,
                addresses: input.addresses.iter().copied().collect(),
                ports: ports.clone(),
            },
        );
    }
    (want, problems)
}

/// The proxy: follows the snapshots until they end.
#[derive(Debug)]
pub struct Proxy {
    steering: Steering,
    shared: Arc<Shared>,
    serving: BTreeMap<String, Serving>,
    host_netns: Option<u64>,
}

impl Proxy {
    /// A proxy on a loaded steering, answering from `snapshots`.
    pub fn new(
        steering: Steering,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        stats: Arc<ProxyStats>,
        flows: RequestFlows,
    ) -> std::io::Result<Proxy> {
        Ok(Proxy {
            steering,
            shared: Arc::new(Shared {
                snapshots,
                sockets: NetnsSockets::start()?,
                stats,
                flows,
            }),
            serving: BTreeMap::new(),
            host_netns: std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()),
        })
    }

    /// Runs until the snapshots end.
    pub async fn run(mut self) {
        let mut snapshots = self.shared.snapshots.clone();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            self.reconcile(&snapshot).await;
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }

    async fn reconcile(&mut self, snapshot: &Snapshot) {
        if !snapshot.synced {
            return; // nothing is known yet: keep what an earlier daemon left
        }
        let (want, problems) = wanted(snapshot);
        // Gone or changed: torn down first.
        let stale: Vec<String> = self
            .serving
            .iter()
            .filter(|(id, s)| {
                want.get(*id).is_none_or(|w| {
                    w.pid != s.want.pid
                        || w.endpoint_id != s.want.endpoint_id
                        || w.cgroup_id != s.want.cgroup_id
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(s) = self.serving.remove(&id) {
                self.tear_down(&id, s);
            }
        }
        for (id, w) in &want {
            match self.serving.get_mut(id) {
                Some(s) if s.want == *w => {}
                Some(s) => {
                    // Same process: new addresses or ports.
                    for a in s.want.addresses.difference(&w.addresses) {
                        let _ = self.steering.remove_address(&l7_address_key(*a));
                    }
                    for a in &w.addresses {
                        if let Err(e) = self.steering.set_address(l7_address_key(*a), w.cgroup_id) {
                            tracing::error!(container = %w.name, error = %error_chain(&e), "cannot steer an address");
                        }
                    }
                    s.want = w.clone();
                    self.shared.stats.set_served(
                        id,
                        Some(ProxyState {
                            ports: w.ports.clone(),
                            ready: true,
                            error: None,
                        }),
                    );
                }
                None => match self.set_up(id, w).await {
                    Ok(s) => {
                        tracing::info!(container = %w.name, ports = ?w.ports, "http proxy serving");
                        self.shared.stats.set_served(
                            id,
                            Some(ProxyState {
                                ports: w.ports.clone(),
                                ready: true,
                                error: None,
                            }),
                        );
                        self.serving.insert(id.clone(), s);
                    }
                    Err(e) => {
                        let error = error_chain(&e);
                        tracing::error!(container = %w.name, error = %error, "cannot serve http-policed ports: they stay closed");
                        self.shared.stats.set_served(
                            id,
                            Some(ProxyState {
                                ports: w.ports.clone(),
                                ready: false,
                                error: Some(error),
                            }),
                        );
                    }
                },
            }
        }
        for (id, problem) in &problems {
            self.shared.stats.set_served(
                id,
                Some(ProxyState {
                    ports: Vec::new(),
                    ready: false,
                    error: Some(problem.clone()),
                }),
            );
        }
        for id in self.shared.stats.served() {
            if !want.contains_key(&id) && !problems.contains_key(&id) {
                self.shared.stats.set_served(&id, None);
            }
        }
        self.clean_leftovers(&want);
    }

    /// Links and addresses that no served container accounts for (an
    /// earlier daemon's, or a container that went while none ran).
    fn clean_leftovers(&mut self, want: &BTreeMap<String, Want>) {
        match self.steering.links() {
            Ok(links) => {
                for pin in links {
                    let keep = self
                        .serving
                        .get(&pin.owner)
                        .is_some_and(|s| s.served.inode == pin.netns);
                    if !keep {
                        if let Err(e) = self.steering.detach(&pin) {
                            tracing::warn!(owner = %pin.owner, error = %error_chain(&e), "cannot remove a netns link");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "cannot list the netns links"),
        }
        let keep: BTreeSet<L7AddressKey> = want
            .iter()
            .filter(|(id, _)| self.serving.contains_key(*id))
            .flat_map(|(_, w)| w.addresses.iter().map(|a| l7_address_key(*a)))
            .collect();
        if let Ok(addresses) = self.steering.addresses() {
            for key in addresses.keys().filter(|k| !keep.contains(k)) {
                let _ = self.steering.remove_address(key);
            }
        }
    }

    async fn set_up(&mut self, id: &str, want: &Want) -> Result<Serving, ServeError> {
        let path = format!("/proc/{}/ns/net", want.pid);
        let netns = File::open(&path).map_err(|source| ServeError::Netns {
            pid: want.pid,
            source,
        })?;
        let inode = netns
            .metadata()
            .map_err(|source| ServeError::Netns {
                pid: want.pid,
                source,
            })?
            .ino();
        if Some(inode) == self.host_netns {
            return Err(ServeError::HostNetns);
        }
        let served = Arc::new(Served {
            id: id.to_string(),
            name: want.name.clone(),
            netns: Arc::new(netns),
            inode,
        });
        let mut families = vec![false];
        if want.addresses.iter().any(IpAddr::is_ipv6) {
            families.push(true);
        }
        let mut accept = Vec::new();
        for &v6 in &families {
            let fd = self
                .shared
                .sockets
                .make(&served.netns, inode, SocketKind::Listener { v6 })
                .await?;
            let listener = std::net::TcpListener::from(fd);
            self.steering.set_socket(want.endpoint_id, v6, &listener)?;
            let listener = TcpListener::from_std(listener).map_err(ServeError::Listener)?;
            accept.push(tokio::spawn(accept_loop(
                listener,
                Arc::clone(&self.shared),
                Arc::clone(&served),
            )));
        }
        for a in &want.addresses {
            self.steering
                .set_address(l7_address_key(*a), want.cgroup_id)?;
        }
        self.steering.attach(id, &served.netns, inode)?;
        Ok(Serving {
            want: want.clone(),
            served,
            accept,
            families,
        })
    }

    fn tear_down(&mut self, id: &str, serving: Serving) {
        tracing::info!(container = %serving.want.name, "http proxy no longer serving");
        for v6 in &serving.families {
            let _ = self.steering.clear_socket(serving.want.endpoint_id, *v6);
        }
        for a in &serving.want.addresses {
            let _ = self.steering.remove_address(&l7_address_key(*a));
        }
        let pin = bpfwall_datapath::steering::NetnsLinkPin {
            owner: id.to_string(),
            netns: serving.served.inode,
        };
        if let Err(e) = self.steering.detach(&pin) {
            tracing::warn!(container = %serving.want.name, error = %error_chain(&e), "cannot remove a netns link");
        }
        drop(serving);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, served: Arc<Served>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection::serve(
                    Arc::clone(&shared),
                    Arc::clone(&served),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                tracing::warn!(container = %served.name, error = %e, "proxy accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}
