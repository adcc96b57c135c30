//! The reconciler: owns the datapath and everything known about
//! containers. Runtime events only update the inventory; a reconcile lists
//! what runs, compiles it, diffs the result against what the maps and
//! links hold and applies the difference, in an order that never opens a
//! container:
//!
//! 1. counters of newly handed-out endpoint slots are zeroed;
//! 2. policy, ipcache, then endpoint entries are written (a new endpoint is
//!    found only once its policy is in place);
//! 3. links are attached for new containers, and removed for gone ones;
//! 4. stale endpoint, ipcache and policy entries are deleted, the policy
//!    revision is bumped, then the conntrack entries of endpoints that are
//!    gone are forgotten.
//!
//! It reaches the kernel only through [`Datapath`] and the host only
//! through [`Host`], so all of this is unit-tested with fakes (tests.rs).

mod endpoint_ids;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bpfwall_datapath::{diff, Datapath, DatapathError, MapContents};
use bpfwall_sys::cgroup::CgroupError;
use bpfwall_sys::error_chain;
use labels_policy::datapath_abi::EndpointInfo;
use labels_policy::{
    compile, Attachment, CompileInput, Compiled, ContainerInput, HostPolicy, IdentityAllocator,
    Selector,
};

use self::endpoint_ids::EndpointIds;
use super::host::{CgroupPlace, Host};
use super::snapshot::{ContainerView, Snapshot};
use crate::api::{DaemonError, EnforceRequest, LabelProblem};
use crate::runtime::inventory::Inventory;
use crate::runtime::{ContainerRecord, RuntimeEvent, Source};

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
    /// The identity space is exhausted.
    #[error(transparent)]
    Identity(#[from] labels_policy::identity::IdentityExhausted),
    /// The cgroup2 mount could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Owns the datapath and everything known about containers.
#[derive(Debug)]
pub struct Reconciler<D, H> {
    datapath: D,
    host: H,
    allocator: IdentityAllocator,
    manage: Selector,
    inventory: Inventory,
    /// Each container's cgroup, found once per init process.
    cgroups: BTreeMap<String, (u32, CgroupPlace)>,
    endpoint_ids: EndpointIds,
    /// What the maps hold (as far as this daemon wrote or read them).
    applied: MapContents,
    compiled: Arc<Compiled>,
    /// The last compile's input, in order, with each container's id.
    inputs: Arc<Vec<ContainerInput>>,
    input_ids: Arc<Vec<String>>,
    host_addresses: Arc<Vec<IpAddr>>,
    host_policies: Vec<HostPolicy>,
    /// Why a container is not policed, by container id.
    problems: BTreeMap<String, String>,
    last_error: Option<String>,
    /// When each container's programs went on (unix microseconds).
    policed_since: BTreeMap<String, u64>,
}

impl<D: Datapath, H: Host> Reconciler<D, H> {
    /// Takes over a datapath and what its maps hold (`applied`: what a
    /// previous daemon left, read at start).
    pub fn new(datapath: D, host: H, manage: Selector, applied: MapContents) -> Self {
        let adoptable = applied
            .endpoints
            .iter()
            .map(|(k, v)| (k.cgroup_id, *v))
            .collect::<BTreeMap<u64, EndpointInfo>>();
        Reconciler {
            datapath,
            host,
            allocator: IdentityAllocator::new(),
            manage,
            inventory: Inventory::new(),
            cgroups: BTreeMap::new(),
            endpoint_ids: EndpointIds::new(adoptable),
            applied,
            compiled: Arc::default(),
            inputs: Arc::default(),
            input_ids: Arc::default(),
            host_addresses: Arc::default(),
            host_policies: Vec::new(),
            problems: BTreeMap::new(),
            last_error: None,
            policed_since: BTreeMap::new(),
        }
    }

    /// The datapath (for the daemon's counter reader, and tests).
    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    /// Records what a runtime source said. Returns true when a reconcile is due.
    pub fn handle(&mut self, event: RuntimeEvent) -> bool {
        let host = &self.host;
        self.inventory.apply(event, |pid| host.start_time(pid))
    }

    /// Forgets containers whose process is gone and whose exit no runtime
    /// event will tell us now (hook-reported ones, and Docker's while
    /// Docker is not in sync: see `Inventory::prune_dead`). Returns true
    /// if any went.
    pub fn prune_dead_hook_containers(&mut self) -> bool {
        let host = &self.host;
        self.inventory.prune_dead(|pid| host.start_time(pid))
    }

    /// Replaces the host-wide policies (from the policy directory).
    pub fn set_host_policies(&mut self, policies: Vec<HostPolicy>) {
        self.host_policies = policies;
    }

    /// True once Docker's containers have been listed: only then can a
    /// reconcile know every peer.
    pub fn synced(&self) -> bool {
        self.inventory.synced(Source::Docker)
    }

    fn managed(&self, record: &ContainerRecord) -> bool {
        self.manage.matches(&record.labels)
    }

    fn resolve_cgroups(&mut self) -> Result<(), ReconcileError> {
        let forbidden = self.host.forbidden_cgroups()?;
        // Forget what belongs to gone containers or to an earlier process.
        let inventory = &self.inventory;
        self.cgroups
            .retain(|id, (pid, _)| inventory.get(id).is_some_and(|e| e.record.pid == *pid));
        let todo: Vec<(String, String, u32)> = self
            .inventory
            .entries()
            .iter()
            .filter(|(id, e)| !self.cgroups.contains_key(*id) && self.managed(&e.record))
            .map(|(id, e)| (id.clone(), e.record.name.clone(), e.record.pid))
            .collect();
        for (id, name, pid) in todo {
            match self.host.cgroup_of(pid) {
                // Attaching to the root cgroup, or to the daemon's own, would
                // put the whole host (or bpfwall itself) under this
                // container's policy.
                Ok(place) if forbidden.contains(&place.dir) => {
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
                Ok(place) => {
                    self.problems.remove(&id);
                    self.cgroups.insert(id, (pid, place));
                }
                Err(CgroupError::Read(ref e)) if e.is_not_found() && !self.host.alive(pid) => {
                    // The container exited before we got to it; its die event follows.
                    tracing::debug!(container = %name, pid, "container exited before attach");
                }
                Err(e) => {
                    let msg = format!("cannot find the container's cgroup v2: {}", error_chain(&e));
                    tracing::error!(container = %name, error = %msg, "container is not enforced");
                    self.problems.insert(id, msg);
                }
            }
        }
        Ok(())
    }

    /// Brings the maps and links in line with the containers. Logs and
    /// records any error; on error, re-reads the maps so the next reconcile
    /// diffs against the truth.
    pub fn reconcile(&mut self) {
        if !self.synced() {
            return;
        }
        let span = tracing::info_span!("reconcile", containers = self.inventory.entries().len());
        let _guard = span.enter();
        match self.try_reconcile() {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let msg = error_chain(&e);
                tracing::error!(error = %msg, "reconcile failed");
                self.last_error = Some(msg);
                match self.datapath.read() {
                    Ok(contents) => self.applied = contents,
                    Err(e) => tracing::error!(error = %error_chain(&e), "cannot re-read maps"),
                }
            }
        }
    }

    fn try_reconcile(&mut self) -> Result<(), ReconcileError> {
        self.resolve_cgroups()?;
        let live: Vec<(String, u64)> = self
            .cgroups
            .iter()
            .map(|(id, (_, place))| (id.clone(), place.id))
            .collect();
        let assignment = self
            .endpoint_ids
            .assign(live.iter().map(|(id, cgroup)| (id.as_str(), *cgroup)));
        for id in &assignment.exhausted {
            self.problems.insert(
                id.clone(),
                format!(
                    "no free endpoint slot (max {})",
                    labels_policy::datapath_abi::MAX_ENDPOINTS
                ),
            );
        }

        // Identities a previous daemon pinned, taken over once.
        for (id, (_, place)) in &self.cgroups {
            if let (Some(info), Some(entry)) = (
                self.endpoint_ids.adoptable(place.id),
                self.inventory.get(id),
            ) {
                self.allocator
                    .adopt_container(&entry.record.labels, info.identity);
            }
        }
        self.endpoint_ids.done_adopting();

        let ids: Vec<String> = self.inventory.entries().keys().cloned().collect();
        let inputs: Vec<ContainerInput> = self
            .inventory
            .entries()
            .iter()
            .map(|(id, e)| ContainerInput {
                name: e.record.name.clone(),
                labels: e.record.labels.clone(),
                addresses: e.record.addresses.clone(),
                attachment: match (self.cgroups.get(id), self.endpoint_ids.get(id)) {
                    (Some((_, place)), Some(ep)) if self.managed(&e.record) => Some(Attachment {
                        cgroup_id: place.id,
                        endpoint_id: ep,
                    }),
                    _ => None,
                },
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
        for w in &compiled.warnings {
            tracing::warn!(warning = ?w, "compile warning");
        }
        for report in &compiled.containers {
            for e in &report.errors {
                tracing::error!(container = %report.name, label = %e.label, column = e.column, error = %e, "bad policy label: direction closed");
            }
        }

        let e = diff(&self.applied.endpoints, &compiled.endpoints);
        let i = diff(&self.applied.ipcache, &compiled.ipcache);
        let p = diff(&self.applied.policy, &compiled.policy);
        let changed = !(e.is_empty() && i.is_empty() && p.is_empty());

        for ep in &assignment.fresh {
            self.datapath.reset_counters(*ep)?;
        }
        // A new endpoint is found only once its policy and peers are in place.
        self.datapath.upsert_policy(&p.upsert)?;
        self.datapath.upsert_ipcache(&i.upsert)?;
        self.datapath.upsert_endpoints(&e.upsert)?;

        self.apply_links()?;

        self.datapath.remove_endpoints(&e.remove)?;
        self.datapath.remove_ipcache(&i.remove)?;
        self.datapath.remove_policy(&p.remove)?;
        if changed {
            // Last: established flows are decided again under the new maps.
            self.datapath.bump_policy_revision()?;
        }
        let forgotten = self.datapath.forget_conntrack(&assignment.freed)?;

        let inventory = &self.inventory;
        self.problems.retain(|id, _| inventory.get(id).is_some());

        if changed || forgotten > 0 {
            tracing::debug!(
                endpoints = compiled.endpoints.len(),
                ipcache = compiled.ipcache.len(),
                policy = compiled.policy.len(),
                upserts = e.upsert.len() + i.upsert.len() + p.upsert.len(),
                removals = e.remove.len() + i.remove.len() + p.remove.len(),
                conntrack_forgotten = forgotten,
                "applied"
            );
        }
        self.applied = MapContents {
            endpoints: compiled.endpoints.clone(),
            ipcache: compiled.ipcache.clone(),
            policy: compiled.policy.clone(),
        };
        self.compiled = Arc::new(compiled);
        self.input_ids = Arc::new(ids);
        self.inputs = Arc::new(inputs);
        self.host_addresses = Arc::new(host);
        Ok(())
    }

    /// Links: attach what is missing, remove what is stale.
    fn apply_links(&mut self) -> Result<(), ReconcileError> {
        let desired: BTreeMap<String, CgroupPlace> = self
            .cgroups
            .iter()
            .filter(|(id, _)| self.endpoint_ids.get(id).is_some())
            .map(|(id, (_, place))| (id.clone(), place.clone()))
            .collect();
        let mut existing: BTreeMap<String, Vec<bpfwall_datapath::LinkPin>> = BTreeMap::new();
        for pin in self.datapath.links()? {
            existing.entry(pin.owner.clone()).or_default().push(pin);
        }
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
                    self.policed_since.insert(id.clone(), unix_micros());
                    tracing::info!(container = %name, cgroup = %place.dir.display(), cgroup_id = place.id, "attached");
                }
                Err(err) => {
                    let msg = error_chain(&err);
                    tracing::error!(container = %name, error = %msg, "cannot attach: container is not enforced");
                    self.problems.insert(id.clone(), msg);
                }
            }
        }
        for (owner, pins) in &existing {
            for pin in pins {
                if desired.get(owner).is_some_and(|p| p.id == pin.cgroup_id) {
                    continue;
                }
                self.datapath.detach(pin)?;
                tracing::info!(container = %owner, cgroup_id = pin.cgroup_id, direction = %pin.direction, "detached");
            }
        }
        self.policed_since.retain(|id, _| desired.contains_key(id));
        Ok(())
    }

    /// For the OCI hook, before the reconcile that polices the container:
    /// take in a container that is being created. Err when it cannot be.
    pub fn admit(&mut self, request: EnforceRequest) -> Result<(), DaemonError> {
        if !self.synced() {
            return Err(DaemonError::DaemonBusy {
                reason: "it has not listed Docker's containers yet".into(),
            });
        }
        let addresses =
            self.host
                .netns_addresses(request.pid)
                .map_err(|e| DaemonError::NotPoliced {
                    container: request.name.clone(),
                    reason: format!(
                        "cannot read the addresses of pid {}: {}",
                        request.pid,
                        error_chain(&e)
                    ),
                })?;
        let record = ContainerRecord {
            id: request.id,
            name: request.name,
            labels: request.labels.into_iter().collect(),
            addresses,
            pid: request.pid,
            start_time: None,
        };
        self.inventory.report(Source::OciHook, record);
        Ok(())
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
        let containers = self
            .inventory
            .entries()
            .iter()
            .filter(|(_, e)| self.managed(&e.record))
            .map(|(id, e)| ContainerView {
                id: id.clone(),
                record: e.record.clone(),
                endpoint_id: self.endpoint_ids.get(id),
                problem: self.problems.get(id).cloned(),
                policed_since_unix_us: self.policed_since.get(id).copied(),
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
            synced: self.synced(),
            policy_entries: self.applied.policy.len(),
            ipcache_entries: self.applied.ipcache.len(),
            last_error: self.last_error.clone(),
        }
    }

    /// Every container's endpoint id (tests).
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
}
