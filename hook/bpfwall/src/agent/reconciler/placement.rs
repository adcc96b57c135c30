//! Where each container is: its cgroup (resolved once per process, checked against pid reuse), its network placement (own, joined, host), and the networks with the host's addresses on them.

use super::*;

impl<D: Datapath, H: Host> Reconciler<D, H> {
    pub(super) fn resolve_cgroups(&mut self) -> Result<(), ReconcileError> {
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
    pub(super) fn resolve_placements(&mut self) {
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
    pub(super) fn networks(&self) -> BTreeMap<String, (Network, Vec<IpAddr>)> {
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
}
