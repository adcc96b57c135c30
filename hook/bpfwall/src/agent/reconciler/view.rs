//! What the reconciler shows: the snapshot the API answers from, and the small lookups it is made of.

use super::*;

impl<D: Datapath, H: Host> Reconciler<D, H> {
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
    pub(super) fn source_states(&self) -> Vec<crate::api::SourceStatus> {
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
    pub(super) fn excluded_selector_keys(&self) -> Vec<String> {
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
    pub(super) fn endpoint_id(&self, id: &str) -> Option<u32> {
        self.endpoint_ids.get(id)
    }

    /// Which containers have a problem (tests).
    #[cfg(test)]
    pub(super) fn problem(&self, id: &str) -> Option<&str> {
        self.problems.get(id).map(String::as_str)
    }

    /// The ids of every container in the inventory (tests).
    #[cfg(test)]
    pub(super) fn container_ids(&self) -> Vec<String> {
        self.inventory.entries().keys().cloned().collect()
    }

    /// The last reconcile's error (tests).
    #[cfg(test)]
    pub(super) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Closures for full maps (tests).
    #[cfg(test)]
    pub(super) fn closures(&self) -> &[Closure] {
        &self.closures
    }
}
