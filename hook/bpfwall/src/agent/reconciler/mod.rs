//! The reconciler: owns the datapath and everything known about
//! containers. Runtime events only update the inventory; a reconcile lists
//! what runs, compiles it, and carries the result out in an order that
//! never opens a container:
//!
//! 1. counters of newly handed-out endpoint slots are zeroed;
//! 2. the new content is staged beside the one in force (the datapath
//!    keeps two generations: no packet is decided by a mix of the two);
//!    if a map is full, whatever would grow it is closed instead, and the
//!    smaller change is staged;
//! 3. links are attached for new containers (until the flip their packets
//!    meet no endpoint and are dropped);
//! 4. the flip: the staged generation is in force for every new packet,
//!    and the datapath waits for packets decided by the old one;
//! 5. links of gone containers are removed, then what only the old
//!    generation had;
//! 6. the conntrack entries of endpoint slots taken back are forgotten,
//!    and only then may those slots be handed out again.
//!
//! It reaches the kernel only through [`Datapath`] and the host only
//! through [`Host`], so all of this is unit-tested with fakes (tests.rs).
//! This file holds the loop of one reconcile; beside it, by job: where a
//! container is (`placement`), its cgroup links (`links`), the OCI hook's
//! path (`hook_path`), endpoint slots (`endpoint_ids`), full maps
//! (`capacity`), audit mode (`audit`), the network plugin's endpoints
//! (`network_plugin`) and what the API is shown (`view`).

mod audit;
mod capacity;
mod endpoint_ids;
mod hook_path;
mod links;
mod network_plugin;
mod placement;
#[cfg(test)]
mod tests;
mod view;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bpfwall_datapath::{CtShares, Datapath, DatapathError, MapContents, StageError};
use bpfwall_sys::cgroup::CgroupError;
use bpfwall_sys::error_chain;
use labels_policy::compile::{Endpoint, Network};
use labels_policy::identity::IdentityLabels;
use labels_policy::{
    compile, Attachment, CompileInput, Compiled, ContainerInput, Direction, HostPolicy,
    IdentityAllocator, Selector,
};

pub use self::capacity::Closure;
use self::endpoint_ids::EndpointIds;
use super::host::{CgroupPlace, Host};
use super::snapshot::{ContainerView, Snapshot};
use crate::api::{DaemonError, EnforceRequest, LabelProblem};
use crate::runtime::inventory::Inventory;
use crate::runtime::{container_key, ContainerRecord, Runtime, RuntimeEvent, Source};

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The datapath refused a change.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A change could not be staged.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The identity space is exhausted.
    #[error(transparent)]
    Identity(#[from] labels_policy::identity::IdentityExhausted),
    /// The cgroup2 mount could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// How the reconciler polices.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Only containers matching this are attached (all are peers).
    pub manage: Selector,
    /// Which labels make an identity.
    pub identity_labels: IdentityLabels,
    /// Conntrack entries one endpoint may hold at most.
    pub ct_per_endpoint: u32,
    /// Conntrack entries every endpoint may take, however full the map.
    pub ct_guaranteed: u32,
    /// Audit every managed container (daemon flag `--audit`): policy drops
    /// are reported and pass.
    pub audit: bool,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            manage: Selector::default(),
            identity_labels: IdentityLabels::default(),
            ct_per_endpoint: 65_536,
            ct_guaranteed: 1024,
            audit: false,
        }
    }
}

/// Where a container's processes are, as found on the host.
#[derive(Debug, Clone)]
struct Placement {
    /// The init pid this was read for.
    pid: u32,
    /// Its network namespace.
    netns: u64,
    /// The addresses read in that namespace ...
    addresses: Vec<IpAddr>,
    /// ... for what the runtime said then (read again when that changes).
    read_for: Vec<IpAddr>,
}

/// Owns the datapath and everything known about containers.
#[derive(Debug)]
pub struct Reconciler<D, H> {
    datapath: D,
    host: H,
    config: ReconcilerConfig,
    allocator: IdentityAllocator,
    inventory: Inventory,
    /// Each managed container's cgroup, found once per init process.
    cgroups: BTreeMap<String, (u32, CgroupPlace)>,
    /// Each container's network namespace and addresses.
    placements: BTreeMap<String, Placement>,
    endpoint_ids: EndpointIds,
    compiled: Arc<Compiled>,
    /// The last compile's input, in order, with each container's id.
    inputs: Arc<Vec<ContainerInput>>,
    input_ids: Arc<Vec<String>>,
    host_addresses: Arc<Vec<IpAddr>>,
    host_policies: Vec<HostPolicy>,
    /// Why a container is not (fully) policed, by container id.
    problems: BTreeMap<String, String>,
    /// Directions closed because a map was full.
    closures: Vec<Closure>,
    /// How many times a change had to close something for a full map.
    map_full_events: u64,
    last_error: Option<String>,
    /// When each container's programs went on (unix microseconds).
    policed_since: BTreeMap<String, u64>,
    shares: Option<CtShares>,
    /// Endpoint slots taken back whose conntrack entries `finish` forgets.
    pending_forget: std::collections::BTreeSet<u32>,
    /// The pinned links, once read.
    links: Option<std::collections::BTreeSet<bpfwall_datapath::LinkPin>>,
    /// Whose namespace each container is in, as of the last reconcile.
    networks: BTreeMap<String, (Network, Vec<IpAddr>)>,
    /// The policy revision of the last flip (0: none by this daemon).
    revision: u32,
    /// The containers only the hook reported, saved for a restarted daemon.
    hook_store: Option<super::hook_store::HookStore>,
    /// Owners of the links pinned when this daemon first read them.
    inherited_links: Option<std::collections::BTreeSet<String>>,
    /// Docker endpoint ids on default-deny networks (the network plugin's).
    default_deny_endpoints: std::collections::BTreeSet<String>,
    /// The plugin's joined endpoints' sandbox keys (endpoint id to path).
    sandbox_keys: BTreeMap<String, String>,
}

impl<D: Datapath, H: Host> Reconciler<D, H> {
    /// Takes over a datapath and what its maps hold (what a previous daemon
    /// left: endpoint slots and identities are adopted by cgroup).
    pub fn new(datapath: D, host: H, config: ReconcilerConfig) -> Self {
        let adoptable = datapath
            .active()
            .endpoints
            .iter()
            .map(|(k, v)| (k.cgroup_id, *v))
            .collect::<BTreeMap<u64, Endpoint>>();
        Reconciler {
            datapath,
            host,
            config,
            allocator: IdentityAllocator::new(),
            inventory: Inventory::new(),
            cgroups: BTreeMap::new(),
            placements: BTreeMap::new(),
            endpoint_ids: EndpointIds::new(adoptable),
            compiled: Arc::default(),
            inputs: Arc::default(),
            input_ids: Arc::default(),
            host_addresses: Arc::default(),
            host_policies: Vec::new(),
            problems: BTreeMap::new(),
            closures: Vec::new(),
            map_full_events: 0,
            last_error: None,
            policed_since: BTreeMap::new(),
            shares: None,
            pending_forget: Default::default(),
            links: None,
            networks: BTreeMap::new(),
            revision: 0,
            hook_store: None,
            inherited_links: None,
            default_deny_endpoints: Default::default(),
            sandbox_keys: Default::default(),
        }
    }

    /// The datapath (for the daemon's readers, and tests).
    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    /// Records what a runtime source said. Returns true when a reconcile is due.
    pub fn handle(&mut self, event: RuntimeEvent) -> bool {
        let host = &self.host;
        let changed = self.inventory.apply(event, |pid| host.start_time(pid));
        if changed {
            self.forget_gone_hook_containers();
        }
        changed
    }

    /// Forgets containers whose process is gone and whose exit no runtime
    /// event will tell us now (hook-reported ones, and Docker's while
    /// Docker is not in sync: see `Inventory::prune_dead`). Returns true
    /// if any went.
    pub fn prune_dead_hook_containers(&mut self) -> bool {
        let host = &self.host;
        let pruned = self.inventory.prune_dead(|pid| host.start_time(pid));
        if pruned {
            self.forget_gone_hook_containers();
        }
        pruned
    }

    /// Replaces the host-wide policies (from the policy directory).
    pub fn set_host_policies(&mut self, policies: Vec<HostPolicy>) {
        self.host_policies = policies;
    }

    /// The streaming sources the daemon runs: the first reconcile waits
    /// until each has listed its containers or found its runtime absent
    /// (`Inventory::ready`). Called before any event.
    pub fn expect_sources(&mut self, sources: &[Source]) {
        self.inventory = Inventory::expecting(sources);
    }

    /// True once every source that is on has listed its containers (a
    /// source whose runtime is absent does not count): only then can a
    /// reconcile know every peer.
    pub fn synced(&self) -> bool {
        self.inventory.ready()
    }

    fn managed(&self, record: &ContainerRecord) -> bool {
        self.config.manage.matches(&record.labels)
    }

    /// Is the process still the one the runtime reported?
    fn same_process(&self, record: &ContainerRecord) -> bool {
        match record.pid_start_time {
            Some(t) => self.host.start_time(record.pid) == Some(t),
            None => self.host.alive(record.pid),
        }
    }

    /// Brings the maps and links in line with the containers. Logs and
    /// records any error; the datapath keeps what was in force.
    pub fn reconcile(&mut self) {
        if !self.synced() {
            return;
        }
        let span = tracing::info_span!("reconcile", containers = self.inventory.entries().len());
        let _guard = span.enter();
        let mut result = self.try_reconcile();
        if result.is_ok() && !self.closures.is_empty() {
            // Both generations need room during a change: once the old one
            // is pruned, what was closed may fit. Try again at once.
            self.finish();
            result = self.try_reconcile();
        }
        match result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let msg = error_chain(&e);
                tracing::error!(error = %msg, "reconcile failed: what was in force stays in force");
                self.last_error = Some(msg);
            }
        }
    }

    fn try_reconcile(&mut self) -> Result<(), ReconcileError> {
        self.resolve_cgroups()?;
        self.resolve_placements();
        let live: Vec<(String, u64)> = self
            .cgroups
            .iter()
            .map(|(id, (_, place))| (id.clone(), place.id))
            .collect();
        // Identities an earlier daemon gave, taken over with its slots.
        for (id, (_, place)) in &self.cgroups {
            if let (Some(e), Some(entry)) = (
                self.endpoint_ids.adoptable(place.id),
                self.inventory.get(id),
            ) {
                let labels = self
                    .config
                    .identity_labels
                    .relevant(&entry.record.labels, &entry.record.image_labels);
                self.allocator.adopt_container(&labels, e.identity);
            }
        }
        let assignment = self
            .endpoint_ids
            .assign(live.iter().map(|(id, cgroup)| (id.as_str(), *cgroup)));
        for id in &assignment.exhausted {
            self.problems.insert(
                id.clone(),
                format!(
                    "no free endpoint slot (max {}): its traffic is dropped",
                    labels_policy::datapath_abi::MAX_ENDPOINTS
                ),
            );
        }

        let networks = self.networks();
        self.networks = networks.clone();
        let ids: Vec<String> = self.inventory.entries().keys().cloned().collect();
        let inputs: Vec<ContainerInput> = self
            .inventory
            .entries()
            .iter()
            .map(|(id, e)| {
                let (network, addresses) = networks.get(id).cloned().unwrap_or_default();
                ContainerInput {
                    name: e.record.name.clone(),
                    labels: self
                        .config
                        .identity_labels
                        .relevant(&e.record.labels, &e.record.image_labels),
                    addresses,
                    network,
                    started: e.record.pid_start_time.unwrap_or(0),
                    attachment: match (self.cgroups.get(id), self.endpoint_ids.get(id)) {
                        (Some((_, place)), Some(ep)) => Some(Attachment {
                            cgroup_id: place.id,
                            endpoint_id: ep,
                        }),
                        _ => None,
                    },
                    default_deny: self.default_deny(&e.record),
                }
            })
            .collect();
        let host = self.host.addresses();
        let compiled = compile(
            CompileInput {
                containers: &inputs,
                host_addresses: &host,
                host_policies: &self.host_policies,
            },
            &mut self.allocator,
        )?;
        let mut compiled = compiled;
        if self.config.audit {
            audit::audit_everything(&mut compiled);
        }
        for w in &compiled.warnings {
            tracing::warn!(warning = ?w, "compile warning");
        }
        for report in &compiled.containers {
            for e in &report.errors {
                tracing::error!(container = %report.name, label = %e.label, column = e.column, error = %e, "bad policy label: direction closed");
            }
        }

        // Conntrack shares follow the number of endpoints.
        let shares = CtShares::for_endpoints(
            self.datapath.conntrack_capacity(),
            self.config.ct_per_endpoint,
            self.config.ct_guaranteed,
            self.endpoint_ids.len() as u32,
        );
        if self.shares != Some(shares) {
            self.datapath.set_conntrack_shares(&shares)?;
            self.shares = Some(shares);
        }
        for ep in &assignment.fresh {
            self.datapath.reset_counters(*ep)?;
        }

        let mut next = MapContents::of(&compiled);
        let mut closures = Vec::new();
        let staged = if next == *self.datapath.active() {
            false
        } else {
            let mut tries = 0;
            loop {
                match self.datapath.stage(&next) {
                    Ok(()) => break true,
                    Err(StageError::Full { map, .. }) if tries < 4 => {
                        tries += 1;
                        let held = self.datapath.active().clone();
                        let closed = capacity::close_growth(&mut next, &held, map);
                        tracing::error!(
                            map,
                            closed = closed.len(),
                            "a map is full: closing what would grow it"
                        );
                        closures.extend(closed);
                        if next == *self.datapath.active() {
                            break false;
                        }
                    }
                    Err(e) => {
                        // Still attach new containers' programs: without an
                        // endpoint in force their packets are dropped.
                        self.apply_links(true)?;
                        return Err(e.into());
                    }
                }
            }
        };
        if !closures.is_empty() {
            self.map_full_events += 1;
            for c in &closures {
                for r in compiled
                    .containers
                    .iter()
                    .filter(|r| r.identity == c.identity)
                {
                    tracing::error!(container = %r.name, map = c.map, direction = %c.direction,
                        "map full: direction closed until there is room");
                }
            }
        }
        self.closures = closures;

        // New containers' programs before the flip: until it, their packets
        // meet no endpoint and are dropped.
        self.apply_links(true)?;
        if staged {
            let revision = self.datapath.flip()?;
            self.revision = revision;
            tracing::debug!(revision, "flipped to the new generation");
        }
        self.apply_links(false)?;
        self.pending_forget = assignment.quarantined;

        let inventory = &self.inventory;
        self.problems.retain(|id, _| inventory.get(id).is_some());
        if staged {
            tracing::debug!(
                endpoints = compiled.endpoints.len(),
                ipcache = compiled.ipcache.len(),
                policy = compiled.policy.len(),
                sources = compiled.sources.len(),
                "applied"
            );
        }
        self.compiled = Arc::new(compiled);
        self.input_ids = Arc::new(ids);
        self.inputs = Arc::new(inputs);
        self.host_addresses = Arc::new(host);
        Ok(())
    }

    /// The end of a change, after the answers it owes (the OCI hooks) are
    /// given: what only the old generation had is deleted (once no packet
    /// decided by it runs), then the conntrack entries of endpoint slots
    /// taken back, which frees those slots.
    pub fn finish(&mut self) {
        let result = self.datapath.prune().and_then(|()| {
            let slots = std::mem::take(&mut self.pending_forget);
            let forgotten = self.datapath.forget_conntrack(&slots);
            if forgotten.is_ok() {
                self.endpoint_ids.release(&slots);
            } else {
                self.pending_forget = slots;
            }
            forgotten
        });
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(conntrack_forgotten = n, "finished a change"),
            Err(e) => {
                let msg = error_chain(&e);
                tracing::error!(error = %msg, "cannot finish a change (it is in force; leftovers stay)");
                self.last_error = Some(msg);
            }
        }
    }
}
