//! What the reconciler tells the network plugin and hears from it: which
//! endpoints are on default-deny networks (their containers are compiled
//! default deny both ways), and which container holds each endpoint and
//! whether it is policed (what opens the endpoint's gate). Kept beside the
//! reconcile so that the reconcile itself only reads one set.

use std::collections::{BTreeMap, BTreeSet};

use bpfwall_datapath::Datapath;
use bpfwall_plugin::{BindState, Bindings};

use super::Reconciler;
use crate::agent::host::Host;
use crate::runtime::{ContainerRecord, Source};

impl<D: Datapath, H: Host> Reconciler<D, H> {
    /// The endpoints on default-deny networks, as the plugin last said.
    pub fn set_default_deny_endpoints(&mut self, endpoints: BTreeSet<String>) {
        self.default_deny_endpoints = endpoints;
    }

    /// Is a container on a default-deny network?
    pub(super) fn default_deny(&self, record: &ContainerRecord) -> bool {
        record
            .endpoint_ids
            .iter()
            .any(|e| self.default_deny_endpoints.contains(e))
    }

    /// Where the daemon stands with one container, for its endpoints.
    fn bind_state(&self, id: &str) -> BindState {
        let Some(entry) = self.inventory.get(id) else {
            return BindState::NotPoliced("the container is gone".into());
        };
        if !self.managed(&entry.record) {
            return BindState::NotManaged;
        }
        if let Some(e) = &self.last_error {
            return BindState::NotPoliced(format!("the last change failed: {e}"));
        }
        if let Some(p) = self.problems.get(id) {
            return BindState::NotPoliced(p.clone());
        }
        let in_force = self.endpoint_ids.get(id).is_some()
            && self.policed_since.contains_key(id)
            && self.input_ids.iter().any(|i| i == id);
        if in_force {
            BindState::Policed
        } else {
            BindState::NotPoliced("its programs are not attached yet".into())
        }
    }

    /// Which container holds each endpoint, and whether it is policed:
    /// as of the last reconcile (after its flip).
    pub fn bindings(&self) -> Bindings {
        let mut holders = BTreeMap::new();
        for (id, entry) in self.inventory.entries() {
            if entry.record.endpoint_ids.is_empty() {
                continue;
            }
            let state = self.bind_state(id);
            for endpoint in &entry.record.endpoint_ids {
                holders.insert(endpoint.clone(), (entry.record.name.clone(), state.clone()));
            }
        }
        Bindings {
            synced: self.inventory.in_sync(Source::Docker),
            holders,
        }
    }
}
