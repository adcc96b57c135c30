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

mod audit;
mod capacity;
mod endpoint_ids;
mod network_plugin;
#[cfg(test)]
mod tests;

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

    fn resolve_cgroups(&mut self) -> Result<(), ReconcileError> {
        let forbidden = self.host.forbidden_cgroups()?;
        // Forget what belongs to gone containers or to an earlier process.
        let inventory = &self.inventory;
        self.cgroups
            .retain(|id, (pid, _)| inventory.get(id).is_some_and(|e| e.record.pid == *pid));
        let todo: Vec<ContainerRecord> = self
            .inventory
            .entries()
            .iter()
            .filter(|(id, e)| !self.cgroups.contains_key(*id) && self.managed(&e.record))
            .map(|(_, e)| e.record.clone())
            .collect();
        for record in todo {
            let (id, name, pid) = (record.id.clone(), record.name.clone(), record.pid);
            // The pid must name the process the runtime reported, before and
            // after its cgroup is read: a pid reused in between would put the
            // programs on someone else's cgroup.
            let found = if self.same_process(&record) {
                let found = self.host.cgroup_of(pid);
                if self.same_process(&record) {
                    Some(found)
                } else {
                    None
                }
            } else {
                None
            };
            match found {
                None => {
                    // The container exited (or its pid was reused) before we
                    // got to it; its die event follows.
                    tracing::debug!(container = %name, pid, "container's process is gone before attach");
                }
                // Attaching to the root cgroup, or to the daemon's own, would
                // put the whole host (or bpfwall itself) under this
                // container's policy.
                Some(Ok(place)) if forbidden.contains(&place.dir) => {
                    let msg = format!(
                        "the container shares the cgroup {} with {}: refusing to attach there",
                        place.dir.display(),
                        if Some(&place.dir) == forbidden.first() {
                            "the whole host"
                        } else {
                            "the bpfwall daemon"
                        }
                    );
                    tracing::error!(container = %name, error = %msg, "container is not enforced");
                    self.problems.insert(id, msg);
                }
                Some(Ok(place)) => {
                    self.problems.remove(&id);
                    self.cgroups.insert(id, (pid, place));
                }
                Some(Err(CgroupError::Read(ref e)))
                    if e.is_not_found() && !self.host.alive(pid) =>
                {
                    tracing::debug!(container = %name, pid, "container exited before attach");
                }
                Some(Err(e)) => {
                    let msg = format!("cannot find the container's cgroup v2: {}", error_chain(&e));
                    tracing::error!(container = %name, error = %msg, "container is not enforced");
                    self.problems.insert(id, msg);
                }
            }
        }
        Ok(())
    }

    /// Reads every container's network namespace and its addresses (link
    /// local ones too), once per process, again when the runtime reports
    /// other addresses.
    fn resolve_placements(&mut self) {
        let inventory = &self.inventory;
        self.placements
            .retain(|id, p| inventory.get(id).is_some_and(|e| e.record.pid == p.pid));
        let todo: Vec<ContainerRecord> = self
            .inventory
            .entries()
            .iter()
            .filter(|(id, e)| {
                self.placements
                    .get(*id)
                    .is_none_or(|p| p.read_for != e.record.addresses)
            })
            .map(|(_, e)| e.record.clone())
            .collect();
        for record in todo {
            if !self.same_process(&record) {
                continue;
            }
            let (Ok(netns), Ok(addresses)) = (
                self.host.netns(record.pid),
                self.host.netns_addresses(record.pid),
            ) else {
                continue;
            };
            if !self.same_process(&record) {
                continue;
            }
            self.placements.insert(
                record.id.clone(),
                Placement {
                    pid: record.pid,
                    netns,
                    addresses,
                    read_for: record.addresses.clone(),
                },
            );
        }
    }

    /// Whose namespace each container runs in, and the addresses that go
    /// with it.
    fn networks(&self) -> BTreeMap<String, (Network, Vec<IpAddr>)> {
        let own = self.host.own_netns().ok();
        // The first container in each namespace (by start) owns it.
        let mut owners: BTreeMap<u64, (u64, &str)> = BTreeMap::new();
        for (id, e) in self.inventory.entries() {
            if e.record.joins.is_some() {
                continue;
            }
            if let Some(p) = self.placements.get(id) {
                let started = e.record.pid_start_time.unwrap_or(u64::MAX);
                let slot = owners.entry(p.netns).or_insert((started, id));
                if started < slot.0 {
                    *slot = (started, id);
                }
            }
        }
        let mut out = BTreeMap::new();
        for (id, e) in self.inventory.entries() {
            let placement = self.placements.get(id);
            let mut addresses = e.record.addresses.clone();
            if let Some(p) = placement {
                addresses.extend(p.addresses.iter().copied());
            }
            addresses.sort();
            addresses.dedup();
            let network = match placement {
                Some(p) if Some(p.netns) == own => Network::Host,
                _ if e.record.joins.is_some() => Network::Joined,
                Some(p) if owners.get(&p.netns).is_some_and(|(_, owner)| *owner != id) => {
                    Network::Joined
                }
                _ => Network::Own,
            };
            if network == Network::Host {
                addresses.clear();
            }
            out.insert(id.clone(), (network, addresses));
        }
        out
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

    /// Links: with `attach`, attach what is missing; without, remove what
    /// is stale.
    fn apply_links(&mut self, attach: bool) -> Result<(), ReconcileError> {
        let desired: BTreeMap<String, CgroupPlace> = self
            .cgroups
            .iter()
            .map(|(id, (_, place))| (id.clone(), place.clone()))
            .collect();
        // What is pinned, read once and kept in step with every attach and
        // detach (this daemon alone owns the pin root).
        if self.links.is_none() {
            self.links = Some(self.datapath.links()?.into_iter().collect());
        }
        // The links an earlier daemon left (read once): only those can
        // belong to a container of a runtime this daemon has not heard from.
        if self.inherited_links.is_none() {
            self.inherited_links = Some(
                self.links
                    .iter()
                    .flatten()
                    .map(|pin| pin.owner.clone())
                    .collect(),
            );
        }
        let mut existing: BTreeMap<String, Vec<bpfwall_datapath::LinkPin>> = BTreeMap::new();
        for pin in self.links.iter().flatten() {
            existing
                .entry(pin.owner.clone())
                .or_default()
                .push(pin.clone());
        }
        if attach {
            for (id, place) in &desired {
                let have = existing.get(id).map_or(0, |pins| {
                    pins.iter().filter(|p| p.cgroup_id == place.id).count()
                });
                if have == 2 {
                    // Attached by an earlier reconcile (or an earlier daemon).
                    self.policed_since
                        .entry(id.clone())
                        .or_insert_with(unix_micros);
                    continue;
                }
                let name = self
                    .inventory
                    .get(id)
                    .map_or_else(|| id.clone(), |e| e.record.name.clone());
                match self.datapath.attach(id, &place.dir, place.id) {
                    Ok(()) => {
                        if let Some(links) = &mut self.links {
                            for direction in Direction::ALL {
                                links.insert(bpfwall_datapath::LinkPin {
                                    owner: id.clone(),
                                    cgroup_id: place.id,
                                    direction,
                                });
                            }
                        }
                        self.policed_since.insert(id.clone(), unix_micros());
                        tracing::info!(container = %name, cgroup = %place.dir.display(), cgroup_id = place.id, "attached");
                    }
                    Err(err) => {
                        // One of the two may be pinned: read them again next time.
                        self.links = None;
                        let msg = error_chain(&err);
                        tracing::error!(container = %name, error = %msg, "cannot attach: container is not enforced");
                        self.problems.insert(id.clone(), msg);
                    }
                }
            }
            return Ok(());
        }
        for (owner, pins) in &existing {
            // A container an earlier daemon policed that no source reports
            // may belong to a runtime that has not listed yet: its links
            // stay (closed, never opened).
            if self.inventory.get(owner).is_none()
                && !self.inventory.may_forget_unreported(owner)
                && self
                    .inherited_links
                    .as_ref()
                    .is_some_and(|owners| owners.contains(owner))
            {
                continue;
            }
            for pin in pins {
                if desired.get(owner).is_some_and(|p| p.id == pin.cgroup_id) {
                    continue;
                }
                self.datapath.detach(pin)?;
                if let Some(links) = &mut self.links {
                    links.remove(pin);
                }
                tracing::info!(container = %owner, cgroup_id = pin.cgroup_id, direction = %pin.direction, "detached");
            }
        }
        self.policed_since.retain(|id, _| desired.contains_key(id));
        Ok(())
    }

    /// For the OCI hook, before the reconcile that polices the container:
    /// take in a container that is being created. Returns its key
    /// (`runtime::container_key`); Err when it cannot be taken in.
    pub fn admit(&mut self, request: EnforceRequest) -> Result<String, DaemonError> {
        if !self.synced() {
            return Err(DaemonError::DaemonBusy {
                reason: "it has not listed the containers of every runtime that answers yet".into(),
            });
        }
        let saved = request.clone();
        let key = self.take_in_hook_container(request)?;
        // No source lists a podman container (or one of a runc config
        // written by hand): saved, so a restarted daemon knows it.
        if matches!(saved.runtime, None | Some(Runtime::Podman | Runtime::Oci)) {
            if let Some(store) = &mut self.hook_store {
                if let Err(e) = store.save(&key, &saved) {
                    tracing::error!(container = %saved.name, error = %error_chain(&e),
                        "cannot save the hook container: a restarted daemon would not know it");
                }
            }
        }
        Ok(key)
    }

    /// Takes back the containers only the hook reported that an earlier
    /// daemon saved, those whose process still runs; forgets the rest.
    pub fn set_hook_store(&mut self, mut store: super::hook_store::HookStore) {
        let mut taken = 0;
        for (key, request) in store.load() {
            let name = request.name.clone();
            match self.take_in_hook_container(request) {
                Ok(_) => taken += 1,
                Err(e) => {
                    tracing::info!(container = %name, key, reason = %e, "a saved hook container is gone")
                }
            }
        }
        if taken > 0 {
            tracing::info!(
                containers = taken,
                "took back the containers only the hook reported"
            );
        }
        let inventory = &self.inventory;
        store.retain(|key| inventory.get(key).is_some());
        self.hook_store = Some(store);
    }

    /// Forgets the saved hook containers that are gone.
    fn forget_gone_hook_containers(&mut self) {
        let inventory = &self.inventory;
        if let Some(store) = &mut self.hook_store {
            store.retain(|key| inventory.get(key).is_some());
        }
    }

    /// Puts a container the hook reported into the inventory, once its pid
    /// is checked and its addresses read. Returns its key.
    fn take_in_hook_container(&mut self, request: EnforceRequest) -> Result<String, DaemonError> {
        let not_policed = |reason: String| DaemonError::NotPoliced {
            container: request.name.clone(),
            reason,
        };
        // The pid must still be the process the hook saw.
        if let Some(t) = request.pid_start_time {
            if self.host.start_time(request.pid) != Some(t) {
                return Err(not_policed(format!(
                    "pid {} is not the process the hook was given (it exited, or the pid was reused)",
                    request.pid
                )));
            }
        }
        let addresses = self.host.netns_addresses(request.pid).map_err(|e| {
            not_policed(format!(
                "cannot read the addresses of pid {}: {}",
                request.pid,
                error_chain(&e)
            ))
        })?;
        let runtime = request.runtime.unwrap_or(Runtime::Oci);
        let key = container_key(runtime, &request.namespace, &request.id);
        let mut endpoint_ids = request.endpoint_ids;
        if runtime == Runtime::Docker && request.joins.is_none() {
            for id in self.endpoints_in_netns_of(&key, request.pid, request.pid_start_time) {
                if !endpoint_ids.contains(&id) {
                    endpoint_ids.push(id);
                }
            }
        }
        let record = ContainerRecord {
            id: key.clone(),
            name: request.name,
            runtime,
            namespace: request.namespace,
            runtime_id: request.id,
            labels: request.labels.into_iter().collect(),
            addresses,
            pid: request.pid,
            pid_start_time: request.pid_start_time,
            image_labels: request.image_labels.into_iter().collect(),
            joins: request.joins,
            endpoint_ids,
        };
        self.inventory.report(Source::OciHook, record);
        Ok(key)
    }

    /// For the OCI hook, after the reconcile: is the container policed (or
    /// not ours to manage)? Err with the reason when it must not start.
    pub fn admitted(&self, id: &str) -> Result<String, DaemonError> {
        let Some(entry) = self.inventory.get(id) else {
            return Err(DaemonError::NotPoliced {
                container: id.to_string(),
                reason: "the container is gone".into(),
            });
        };
        let name = &entry.record.name;
        if !self.managed(&entry.record) {
            return Ok(format!("container '{name}' is not managed by this daemon"));
        }
        if let Some(e) = &self.last_error {
            return Err(DaemonError::ApplyFailed { reason: e.clone() });
        }
        if let Some(p) = self.problems.get(id) {
            return Err(DaemonError::NotPoliced {
                container: name.clone(),
                reason: p.clone(),
            });
        }
        if let Some(report) = self.compiled.containers.iter().find(|r| r.name == *name) {
            if !report.errors.is_empty() {
                return Err(DaemonError::PolicyInvalid {
                    container: name.clone(),
                    problems: report
                        .errors
                        .iter()
                        .map(|e| LabelProblem {
                            label: e.label.clone(),
                            column: e.column,
                            message: e.to_string(),
                        })
                        .collect(),
                });
            }
            if let Some(c) = self.closures.iter().find(|c| c.identity == report.identity) {
                return Err(DaemonError::NotPoliced {
                    container: name.clone(),
                    reason: format!(
                        "map {} is full: its {} policy cannot be applied",
                        c.map, c.direction
                    ),
                });
            }
        }
        if self.endpoint_ids.get(id).is_none() {
            return Err(DaemonError::NotPoliced {
                container: name.clone(),
                reason: "the container could not be attached".into(),
            });
        }
        Ok(format!("container '{name}' is policed"))
    }

    /// What the API answers from until the next reconcile.
    pub fn snapshot(&self) -> Snapshot {
        let networks = &self.networks;
        let names: BTreeMap<&str, &str> = self
            .inventory
            .entries()
            .iter()
            .map(|(id, e)| (id.as_str(), e.record.name.as_str()))
            .collect();
        let identities: BTreeMap<&str, u32> = self
            .compiled
            .containers
            .iter()
            .map(|r| (r.name.as_str(), r.identity))
            .collect();
        let containers = self
            .inventory
            .entries()
            .iter()
            .filter(|(_, e)| self.managed(&e.record))
            .map(|(id, e)| {
                let network = match networks.get(id).map(|(n, _)| *n) {
                    Some(Network::Host) => "host".to_string(),
                    Some(Network::Joined) => match &e.record.joins {
                        Some(other) => format!(
                            "joined {}",
                            names.get(other.as_str()).copied().unwrap_or(other)
                        ),
                        None => "joined".to_string(),
                    },
                    _ => "own".to_string(),
                };
                let identity = identities.get(e.record.name.as_str()).copied();
                ContainerView {
                    id: id.clone(),
                    record: e.record.clone(),
                    endpoint_id: self.endpoint_ids.get(id),
                    problem: self.problems.get(id).cloned(),
                    policed_since_unix_us: self.policed_since.get(id).copied(),
                    network,
                    addresses: networks
                        .get(id)
                        .map_or_else(|| e.record.addresses.clone(), |(_, a)| a.clone()),
                    closed: self
                        .closures
                        .iter()
                        .filter(|c| Some(c.identity) == identity)
                        .map(|c| (c.direction, c.map))
                        .collect::<BTreeMap<Direction, &'static str>>(),
                }
            })
            .collect();
        Snapshot {
            compiled: self.compiled.clone(),
            inputs: self.inputs.clone(),
            input_ids: self.input_ids.clone(),
            host_addresses: self.host_addresses.clone(),
            containers,
            docker_connected: self.inventory.connected(Source::Docker),
            docker_synced: self.inventory.in_sync(Source::Docker),
            sources: self.source_states(),
            synced: self.synced(),
            maps: self.datapath.fill(),
            map_full_events: self.map_full_events,
            conntrack_capacity: self.datapath.conntrack_capacity() as usize,
            warnings: self.excluded_selector_keys(),
            last_error: self.last_error.clone(),
            bindings: self.bindings(),
            policy_revision: self.revision,
            audit_all: self.config.audit,
        }
    }

    /// Each streaming source's state, for `status`.
    fn source_states(&self) -> Vec<crate::api::SourceStatus> {
        Source::STREAMING
            .iter()
            .map(|&source| {
                let inv = &self.inventory;
                // "off" is a runtime never seen; one seen before and gone
                // is disconnected (its containers may still run).
                let state = if inv.in_sync(source) {
                    "synced".to_string()
                } else if let Some(reason) = inv.off_reason(source) {
                    if inv.synced(source) {
                        format!("disconnected: {reason} (watching for it)")
                    } else {
                        format!("off: {reason} (watching for it)")
                    }
                } else if inv.connected(source) {
                    "connected, listing".to_string()
                } else if inv.synced(source) {
                    "disconnected (reconnecting)".to_string()
                } else {
                    "connecting".to_string()
                };
                crate::api::SourceStatus {
                    source: source.to_string(),
                    synced: inv.in_sync(source),
                    state,
                }
            })
            .collect()
    }

    /// Rules that select peers by a label left out of identities: they
    /// match no container (each names its rule and the label).
    fn excluded_selector_keys(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for report in &self.compiled.containers {
            for rule in report.ingress_rules.iter().chain(&report.egress_rules) {
                for peer in &rule.peers {
                    let labels_policy::Peer::Endpoints(sel) = peer else {
                        continue;
                    };
                    let keys = sel
                        .match_labels
                        .keys()
                        .chain(sel.match_expressions.iter().map(|r| &r.key));
                    for key in keys {
                        if self.config.identity_labels.excludes(key) {
                            out.insert(format!(
                                "rule {} selects on label '{key}', which is left out of identities: no container has it there (daemon flag --identity-keep-label {key})",
                                rule.origin
                            ));
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// A container's endpoint id (tests).
    #[cfg(test)]
    fn endpoint_id(&self, id: &str) -> Option<u32> {
        self.endpoint_ids.get(id)
    }

    /// Which containers have a problem (tests).
    #[cfg(test)]
    fn problem(&self, id: &str) -> Option<&str> {
        self.problems.get(id).map(String::as_str)
    }

    /// The ids of every container in the inventory (tests).
    #[cfg(test)]
    fn container_ids(&self) -> Vec<String> {
        self.inventory.entries().keys().cloned().collect()
    }

    /// The last reconcile's error (tests).
    #[cfg(test)]
    fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Closures for full maps (tests).
    #[cfg(test)]
    fn closures(&self) -> &[Closure] {
        &self.closures
    }
}
