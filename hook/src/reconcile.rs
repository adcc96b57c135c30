//! The reconciler: events only mark state dirty; a reconcile lists what runs,
//! compiles it, diffs the result against what the maps and links hold and
//! applies the difference, in an order that never opens a container:
//!
//! 1. new counters slots are zeroed;
//! 2. policy, ipcache, then endpoint entries are written (a new endpoint is
//!    found only once its policy is in place);
//! 3. links are attached for new containers, and removed for gone ones;
//! 4. stale endpoint, ipcache and policy entries are deleted, then the
//!    conntrack entries of endpoints that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use labels_policy::datapath_abi::{self as abi, EndpointInfo};
use labels_policy::query::{CheckResult, Explanation, FlowEnd};
use labels_policy::{
    compile, Attachment, CompileInput, Compiled, ContainerInput, HostPolicy, IdentityAllocator,
    Selector,
};

use crate::cgroup;
use crate::datapath::maps::{diff, MapContents};
use crate::datapath::{Datapath, DatapathError};
use crate::docker_events::{format_chain, ContainerRecord, RuntimeEvent};
use crate::status::{DirectionStatus, EndpointStatus, Status};

/// A container the reconciler knows of.
#[derive(Debug, Clone)]
struct Tracked {
    record: ContainerRecord,
    /// Its cgroup v2 directory and id, once found.
    cgroup: Option<(PathBuf, u64)>,
    /// Known only from the OCI hook (not, or not yet, from Docker): kept
    /// across Docker resyncs while its process lives, dropped when it dies.
    from_hook: bool,
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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
    Cgroup(#[from] cgroup::CgroupError),
}

/// Owns the datapath and everything known about containers.
#[derive(Debug)]
pub struct Reconciler {
    datapath: Datapath,
    allocator: IdentityAllocator,
    manage: Selector,
    containers: BTreeMap<String, Tracked>,
    endpoint_ids: BTreeMap<String, u32>,
    applied: MapContents,
    /// Endpoints a previous daemon left pinned, by cgroup id; consumed by the
    /// first reconcile after the first list of containers.
    adoptable: BTreeMap<u64, EndpointInfo>,
    synced: bool,
    docker_connected: bool,
    compiled: Compiled,
    /// The last compile's input, in order, with each container's id.
    inputs: Vec<ContainerInput>,
    input_ids: Vec<String>,
    host: Vec<IpAddr>,
    host_policies: Vec<HostPolicy>,
    problems: BTreeMap<String, String>,
    last_error: Option<String>,
    cgroup_mount: Option<PathBuf>,
    /// When each container's programs went on (unix microseconds).
    policed_since: BTreeMap<String, u64>,
}

/// The host's own addresses (every interface in the daemon's netns).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Reconciler {
    /// Takes over a loaded datapath and what it already holds.
    pub fn new(mut datapath: Datapath, manage: Selector) -> Result<Self, ReconcileError> {
        // Links a previous daemon pinned (perhaps an older bpfwall) run the
        // programs loaded now; only then may exact entries leave the tries
        // (older programs read the tries only), and the revision moves on
        // so conntrack entries older programs wrote are decided again.
        let links = datapath.update_pinned_links()?;
        for e in &links.failed {
            tracing::error!(error = %format_chain(e), "a pinned link keeps an older program");
        }
        let (migrated, revision) = {
            let mut maps = datapath.maps()?;
            // An older program reads the tries only: keep its entries there.
            let migrated = if links.failed.is_empty() {
                maps.migrate_exact_entries()?
            } else {
                0
            };
            (migrated, maps.bump_policy_revision()?)
        };
        let applied = datapath.maps()?.read()?;
        let adoptable = applied
            .endpoints
            .iter()
            .map(|(k, v)| (k.cgroup_id, *v))
            .collect::<BTreeMap<_, _>>();
        tracing::info!(
            endpoints = applied.endpoints.len(),
            policy_entries = applied.policy.len(),
            links_moved = links.updated,
            links_defunct = links.defunct,
            links_not_moved = links.failed.len(),
            exact_entries_moved = migrated,
            policy_revision = revision,
            "adopted pinned state (links moved onto the programs loaded now)"
        );
        Ok(Reconciler {
            datapath,
            allocator: IdentityAllocator::new(),
            manage,
            containers: BTreeMap::new(),
            endpoint_ids: BTreeMap::new(),
            applied,
            adoptable,
            synced: false,
            docker_connected: false,
            compiled: Compiled::default(),
            inputs: Vec::new(),
            input_ids: Vec::new(),
            host: Vec::new(),
            host_policies: Vec::new(),
            problems: BTreeMap::new(),
            last_error: None,
            cgroup_mount: None,
            policed_since: BTreeMap::new(),
        })
    }

    /// Records what the runtime said. Returns true when a reconcile is due.
    pub fn handle(&mut self, event: RuntimeEvent) -> bool {
        match event {
            RuntimeEvent::Resync(records) => {
                let mut old = std::mem::take(&mut self.containers);
                for record in records {
                    let cgroup = old
                        .remove(&record.id)
                        .filter(|t| t.record.pid == record.pid)
                        .and_then(|t| t.cgroup);
                    self.containers.insert(
                        record.id.clone(),
                        Tracked {
                            record,
                            cgroup,
                            from_hook: false,
                        },
                    );
                }
                // Containers the hook reported that Docker does not list (other
                // runtimes, or still being created) stay while they live.
                for (id, t) in old {
                    if t.from_hook && process_alive(t.record.pid) {
                        self.containers.insert(id, t);
                    }
                }
                self.synced = true;
                self.docker_connected = true;
            }
            RuntimeEvent::Upsert(record) => self.upsert(record, false),
            RuntimeEvent::Remove(id) => {
                if self.containers.remove(&id).is_none() {
                    return false;
                }
            }
            RuntimeEvent::Disconnected => {
                // Keep everything as it is: enforcement goes on; resync on reconnect.
                self.docker_connected = false;
                return false;
            }
        }
        true
    }

    fn upsert(&mut self, record: ContainerRecord, from_hook: bool) {
        let cgroup = self
            .containers
            .get(&record.id)
            .filter(|t| t.record.pid == record.pid)
            .and_then(|t| t.cgroup.clone());
        self.containers.insert(
            record.id.clone(),
            Tracked {
                record,
                cgroup,
                from_hook,
            },
        );
    }

    /// Forgets hook-reported containers whose process is gone (no runtime
    /// event will tell us). Returns true if any went.
    pub fn prune_dead_hook_containers(&mut self) -> bool {
        let before = self.containers.len();
        self.containers
            .retain(|_, t| !t.from_hook || process_alive(t.record.pid));
        self.containers.len() != before
    }

    fn managed(&self, t: &Tracked) -> bool {
        self.manage.matches(&t.record.labels)
    }

    fn resolve_cgroups(&mut self) -> Result<(), ReconcileError> {
        let mount = match &self.cgroup_mount {
            Some(m) => m.clone(),
            None => {
                let m = cgroup::cgroup2_mount()?;
                self.cgroup_mount = Some(m.clone());
                m
            }
        };
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, t)| t.cgroup.is_none() && self.managed(t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(t) = self.containers.get_mut(&id) else {
                continue;
            };
            let found = cgroup::cgroup_dir_of_pid(&mount, t.record.pid)
                .and_then(|dir| cgroup::cgroup_id(&dir).map(|cid| (dir, cid)));
            // Attaching to the root cgroup, or to the daemon's own, would put the
            // whole host (or bpfwall itself) under this container's policy.
            if let Ok((dir, _)) = &found {
                let own = cgroup::cgroup_dir_of_pid(&mount, std::process::id()).ok();
                if *dir == mount || Some(dir) == own.as_ref() {
                    let msg = format!(
                        "the container shares the cgroup {} with {}: refusing to attach there",
                        dir.display(),
                        if *dir == mount {
                            "the whole host"
                        } else {
                            "the bpfwall daemon"
                        }
                    );
                    tracing::error!(container = %t.record.name, error = %msg, "container is not enforced");
                    self.problems.insert(id, msg);
                    continue;
                }
            }
            match found {
                Ok(c) => {
                    self.problems.remove(&id);
                    t.cgroup = Some(c);
                }
                Err(cgroup::CgroupError::Read { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && !std::path::Path::new(&format!("/proc/{}", t.record.pid)).exists() =>
                {
                    // The container exited before we got to it; its die event follows.
                    tracing::debug!(container = %t.record.name, pid = t.record.pid, "container exited before attach");
                }
                Err(e) => {
                    let msg = format!(
                        "cannot find the container's cgroup v2: {}",
                        format_chain(&e)
                    );
                    tracing::error!(container = %t.record.name, error = %msg, "container is not enforced");
                    self.problems.insert(id, msg);
                }
            }
        }
        Ok(())
    }

    /// Hands out endpoint ids; returns the ids handed out fresh (whose
    /// counters must be zeroed) and the ids freed.
    fn assign_endpoint_ids(&mut self) -> (Vec<u32>, BTreeSet<u32>) {
        let live: BTreeSet<&String> = self
            .containers
            .iter()
            .filter(|(_, t)| t.cgroup.is_some() && self.managed(t))
            .map(|(id, _)| id)
            .collect();
        let mut freed = BTreeSet::new();
        self.endpoint_ids.retain(|id, ep| {
            let keep = live.contains(id);
            if !keep {
                freed.insert(*ep);
            }
            keep
        });
        let mut fresh = Vec::new();
        let live: Vec<String> = live.into_iter().cloned().collect();
        for id in live {
            if self.endpoint_ids.contains_key(&id) {
                continue;
            }
            let used: BTreeSet<u32> = self.endpoint_ids.values().copied().collect();
            let cgroup_id = self.containers[&id].cgroup.as_ref().map_or(0, |c| c.1);
            let adopted = self
                .adoptable
                .get(&cgroup_id)
                .map(|info| info.endpoint_id)
                .filter(|ep| !used.contains(ep) && *ep < abi::MAX_ENDPOINTS);
            let ep = match adopted {
                Some(ep) => ep,
                None => match (1..abi::MAX_ENDPOINTS).find(|n| !used.contains(n)) {
                    Some(ep) => {
                        fresh.push(ep);
                        ep
                    }
                    None => {
                        self.problems.insert(
                            id.clone(),
                            format!("no free endpoint slot (max {})", abi::MAX_ENDPOINTS),
                        );
                        continue;
                    }
                },
            };
            freed.remove(&ep);
            self.endpoint_ids.insert(id, ep);
        }
        (fresh, freed)
    }

    /// Brings the maps and links in line with the containers. Logs and
    /// records any error; on error, re-reads the maps so the next reconcile
    /// diffs against the truth.
    pub fn reconcile(&mut self) {
        if !self.synced {
            return;
        }
        let span = tracing::info_span!("reconcile", containers = self.containers.len());
        let _guard = span.enter();
        match self.try_reconcile() {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let msg = format_chain(&e);
                tracing::error!(error = %msg, "reconcile failed");
                self.last_error = Some(msg);
                match self.datapath.maps().and_then(|m| m.read()) {
                    Ok(contents) => self.applied = contents,
                    Err(e) => tracing::error!(error = %format_chain(&e), "cannot re-read maps"),
                }
            }
        }
    }

    fn try_reconcile(&mut self) -> Result<(), ReconcileError> {
        self.resolve_cgroups()?;
        let (fresh, freed) = self.assign_endpoint_ids();

        // Identities a previous daemon pinned, taken over once.
        if !self.adoptable.is_empty() {
            for t in self.containers.values() {
                if let Some((_, cid)) = &t.cgroup {
                    if let Some(info) = self.adoptable.get(cid) {
                        self.allocator
                            .adopt_container(&t.record.labels, info.identity);
                    }
                }
            }
            self.adoptable.clear();
        }

        let inputs: Vec<ContainerInput> = self
            .containers
            .iter()
            .map(|(id, t)| ContainerInput {
                name: t.record.name.clone(),
                labels: t.record.labels.clone(),
                addresses: t.record.addresses.clone(),
                attachment: match (&t.cgroup, self.endpoint_ids.get(id)) {
                    (Some((_, cgroup_id)), Some(ep)) if self.managed(t) => Some(Attachment {
                        cgroup_id: *cgroup_id,
                        endpoint_id: *ep,
                    }),
                    _ => None,
                },
            })
            .collect();
        let host = host_addresses();
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

        {
            let mut maps = self.datapath.maps()?;
            for ep in &fresh {
                maps.reset_counters(*ep)?;
            }
            maps.apply_upserts(&e, &i, &p)?;
        }

        // Links: attach what is missing, remove what is stale.
        let desired: BTreeMap<String, (PathBuf, u64)> = self
            .containers
            .iter()
            .filter(|(id, t)| self.managed(t) && self.endpoint_ids.contains_key(*id))
            .filter_map(|(id, t)| t.cgroup.clone().map(|c| (id.clone(), c)))
            .collect();
        let existing = self.datapath.links_by_owner()?;
        for (id, (dir, cgroup_id)) in &desired {
            let have = existing.get(id).map_or(0, |pins| {
                pins.iter().filter(|p| p.cgroup_id == *cgroup_id).count()
            });
            if have == 2 {
                // Attached by an earlier reconcile (or an earlier daemon).
                self.policed_since
                    .entry(id.clone())
                    .or_insert_with(unix_micros);
                continue;
            }
            let name = &self.containers[id].record.name;
            match self.datapath.attach(id, dir, *cgroup_id) {
                Ok(()) => {
                    self.policed_since.insert(id.clone(), unix_micros());
                    tracing::info!(container = %name, cgroup = %dir.display(), cgroup_id, "attached")
                }
                Err(err) => {
                    let msg = format_chain(&err);
                    tracing::error!(container = %name, error = %msg, "cannot attach: container is not enforced");
                    self.problems.insert(id.clone(), msg);
                }
            }
        }
        for (owner, pins) in &existing {
            for pin in pins {
                if desired
                    .get(owner)
                    .is_some_and(|(_, cid)| *cid == pin.cgroup_id)
                {
                    continue;
                }
                self.datapath.detach(pin)?;
                tracing::info!(container = %owner, cgroup_id = pin.cgroup_id, direction = pin.direction, "detached");
            }
        }

        let forgotten = {
            let mut maps = self.datapath.maps()?;
            maps.apply_removals(&e, &i, &p)?;
            if !(e.is_empty() && i.is_empty() && p.is_empty()) {
                // Last: established flows are decided again under the new maps.
                maps.bump_policy_revision()?;
            }
            maps.forget_conntrack(&freed)?
        };
        self.problems
            .retain(|id, _| self.containers.contains_key(id));
        self.policed_since.retain(|id, _| desired.contains_key(id));

        if !(e.is_empty() && i.is_empty() && p.is_empty()) || forgotten > 0 {
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
        self.compiled = compiled;
        self.input_ids = self.containers.keys().cloned().collect();
        self.inputs = inputs;
        self.host = host;
        Ok(())
    }

    /// For the OCI hook: take in a container that is being created, attach
    /// to it and write its policy now. Ok when it is policed (or not ours to
    /// manage); Err with the reason when it must not start.
    pub fn enforce(&mut self, record: ContainerRecord) -> Result<String, String> {
        if !self.synced {
            return Err(
                "the bpfwall daemon has not listed Docker's containers yet; retry in a moment"
                    .into(),
            );
        }
        let id = record.id.clone();
        let name = record.name.clone();
        let managed = self.manage.matches(&record.labels);
        self.upsert(record, true);
        self.reconcile();
        if !managed {
            return Ok(format!("container '{name}' is not managed by this daemon"));
        }
        if let Some(e) = &self.last_error {
            return Err(format!("policy could not be applied: {e}"));
        }
        if let Some(p) = self.problems.get(&id) {
            return Err(p.clone());
        }
        if let Some(report) = self.compiled.containers.iter().find(|r| r.name == name) {
            if !report.errors.is_empty() {
                let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
                return Err(errors.join("; "));
            }
        }
        if !self.endpoint_ids.contains_key(&id) {
            return Err("the container could not be attached".into());
        }
        Ok(format!("container '{name}' is policed"))
    }

    /// Replaces the host-wide policies (from the policy directory).
    pub fn set_host_policies(&mut self, policies: Vec<HostPolicy>) {
        self.host_policies = policies;
    }

    /// The index of a container in the last compile, by name or id prefix.
    fn find(&self, name: &str) -> Result<usize, String> {
        let name = name.trim_start_matches('/');
        if let Some(i) = self.inputs.iter().position(|c| c.name == name) {
            return Ok(i);
        }
        let by_id: Vec<usize> = self
            .input_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| name.len() >= 4 && id.starts_with(name))
            .map(|(i, _)| i)
            .collect();
        match by_id.as_slice() {
            [i] => Ok(*i),
            [] => Err(format!("no running container is named '{name}'")),
            _ => Err(format!("'{name}' is the start of several container ids")),
        }
    }

    fn flow_end(&self, end: &crate::api::FlowEndArg) -> Result<FlowEnd, String> {
        match end {
            crate::api::FlowEndArg::Container(name) => self.find(name).map(FlowEnd::Container),
            crate::api::FlowEndArg::Address(a) => Ok(FlowEnd::Address(*a)),
        }
    }

    /// Would a new connection pass? Answered from the last compile.
    pub fn check(
        &self,
        from: &crate::api::FlowEndArg,
        to: &crate::api::FlowEndArg,
        protocol: u8,
        port: u16,
    ) -> Result<CheckResult, String> {
        let from = self.flow_end(from)?;
        let to = self.flow_end(to)?;
        labels_policy::query::check(
            &self.compiled,
            &self.inputs,
            &self.host,
            &from,
            &to,
            protocol,
            port,
        )
        .map_err(|e| e.to_string())
    }

    /// A container's effective policy.
    pub fn explain(&self, name: &str) -> Result<Explanation, String> {
        let i = self.find(name)?;
        Ok(labels_policy::query::explain(
            &self.compiled,
            &self.inputs,
            i,
        ))
    }

    /// A snapshot for `bpfwall status`.
    pub fn status(&mut self, pin_root: &str) -> Status {
        // Label keys any selector uses, so status shows the labels that matter.
        let mut selector_keys = BTreeSet::new();
        for report in &self.compiled.containers {
            for rule in report.ingress_rules.iter().chain(&report.egress_rules) {
                for peer in &rule.peers {
                    if let labels_policy::Peer::Endpoints(sel) = peer {
                        selector_keys.extend(sel.match_labels.keys().cloned());
                        selector_keys.extend(sel.match_expressions.iter().map(|r| r.key.clone()));
                    }
                }
            }
        }
        let reports: BTreeMap<&str, &labels_policy::ContainerReport> = self
            .compiled
            .containers
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        let mut endpoints = Vec::new();
        let mut maps = self.datapath.maps().ok();
        for (id, t) in &self.containers {
            if !self.manage.matches(&t.record.labels) {
                continue;
            }
            let report = reports.get(t.record.name.as_str());
            let ep = self.endpoint_ids.get(id).copied();
            let counters = match (&mut maps, ep) {
                (Some(m), Some(ep)) => m.counters(ep).unwrap_or_default(),
                _ => Default::default(),
            };
            let flags = report.map_or(0, |r| r.flags);
            let direction = |d: usize, enforce: u32, error: u32, rules: usize| DirectionStatus {
                state: if flags & error != 0 {
                    "closed (label error)".into()
                } else if flags & enforce != 0 {
                    "enforced".into()
                } else {
                    "open".into()
                },
                rules,
                allowed_packets: counters.allowed_packets[d],
                dropped_packets: counters.dropped_packets[d],
            };
            let labels = t
                .record
                .labels
                .iter()
                .filter(|(k, _)| {
                    k.starts_with(labels_policy::syntax::LABEL_PREFIX) || selector_keys.contains(*k)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut errors: Vec<String> = report
                .map(|r| {
                    r.errors
                        .iter()
                        .map(|e| format!("container '{}': {e}", t.record.name))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(p) = self.problems.get(id) {
                errors.push(p.clone());
            }
            endpoints.push(EndpointStatus {
                id: id.chars().take(12).collect(),
                name: t.record.name.clone(),
                identity: report.map_or(0, |r| r.identity),
                attached: ep.is_some() && !self.problems.contains_key(id),
                policed_since_unix_us: self.policed_since.get(id).copied(),
                addresses: t.record.addresses.iter().map(ToString::to_string).collect(),
                labels,
                ingress: direction(
                    0,
                    abi::EP_ENFORCE_INGRESS,
                    abi::EP_ERROR_INGRESS,
                    report.map_or(0, |r| r.ingress_rules.len()),
                ),
                egress: direction(
                    1,
                    abi::EP_ENFORCE_EGRESS,
                    abi::EP_ERROR_EGRESS,
                    report.map_or(0, |r| r.egress_rules.len()),
                ),
                errors,
            });
        }
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        let drops = maps
            .as_ref()
            .and_then(|m| m.drops().ok())
            .map(|d| {
                d.into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect()
            })
            .unwrap_or_default();
        Status {
            pin_root: pin_root.to_string(),
            docker_connected: self.docker_connected,
            endpoints,
            drops,
            policy_entries: self.applied.policy.len(),
            ipcache_entries: self.applied.ipcache.len(),
            warnings: self
                .compiled
                .warnings
                .iter()
                .map(|w| format!("{w:?}"))
                .collect(),
            last_error: self.last_error.clone(),
            // The daemon fills this in from its policy directory.
            policy_files: Vec::new(),
        }
    }
}
