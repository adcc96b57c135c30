//! The cgroup links: attach what a reconcile polices, detach what it no longer does, in the order that never opens.

use super::*;

impl<D: Datapath, H: Host> Reconciler<D, H> {
    /// Links: with `attach`, attach what is missing; without, remove what
    /// is stale.
    pub(super) fn apply_links(&mut self, attach: bool) -> Result<(), ReconcileError> {
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
}
