//! What the reconciler tells the network plugin and hears from it: which
//! endpoints are on default-deny networks (their containers are compiled
//! default deny both ways), and which container holds each endpoint and
//! whether it is policed (what opens the endpoint's gate). Kept beside the
//! reconcile so that the reconcile itself only reads one set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bpfwall_datapath::Datapath;
use bpfwall_plugin::{BindState, Bindings, NetworkDefaults};

use super::Reconciler;
use crate::agent::host::Host;
use crate::runtime::{ContainerRecord, Source};

impl<D: Datapath, H: Host> Reconciler<D, H> {
    /// What the plugin last said of its endpoints: those on default-deny
    /// networks, and the joined ones' sandbox keys.
    pub fn set_network_defaults(&mut self, defaults: NetworkDefaults) {
        self.default_deny_endpoints = defaults.default_deny_endpoints;
        self.sandbox_keys = defaults.sandbox_keys;
    }

    /// The plugin's joined endpoints whose sandbox is the network namespace
    /// of `pid` (the process an OCI hook reports, still the one it saw:
    /// `start_time`), that no other container holds. Docker mounts the
    /// container's namespace on the sandbox key (libnetwork's prestart
    /// hook) before runc runs the createRuntime hooks, so at the hook the
    /// endpoints Docker joined for this container are found here, before
    /// Docker lists the container. Anything unreadable matches nothing
    /// (the endpoint is then bound when Docker lists the container).
    pub(super) fn endpoints_in_netns_of(
        &self,
        key: &str,
        pid: u32,
        start_time: Option<u64>,
    ) -> Vec<String> {
        if self.sandbox_keys.is_empty() {
            return Vec::new();
        }
        let proc_ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(netns) = self.host.netns_at(&proc_ns) else {
            return Vec::new();
        };
        // The namespace read is that of the process the hook saw.
        if start_time.is_none() || self.host.start_time(pid) != start_time {
            return Vec::new();
        }
        let held: BTreeSet<&str> = self
            .inventory
            .entries()
            .iter()
            .filter(|(id, _)| id.as_str() != key)
            .flat_map(|(_, e)| e.record.endpoint_ids.iter().map(String::as_str))
            .collect();
        let mut found = Vec::new();
        for (endpoint, sandbox) in &self.sandbox_keys {
            if held.contains(endpoint.as_str()) {
                continue;
            }
            match self.host.netns_at(Path::new(sandbox)) {
                Ok(at) if at == netns => {
                    tracing::info!(endpoint = %endpoint, sandbox = %sandbox, pid,
                        "the hook's container holds this plugin endpoint (its namespace is the sandbox)");
                    found.push(endpoint.clone());
                }
                _ => {}
            }
        }
        found
    }

    /// A container's plugin endpoints that its state opens: those whose
    /// gates an OCI hook's answer waits for.
    pub fn gated_endpoints(&self, id: &str) -> Vec<String> {
        let Some(entry) = self.inventory.get(id) else {
            return Vec::new();
        };
        if !self.bind_state(id).opens() {
            return Vec::new();
        }
        entry
            .record
            .endpoint_ids
            .iter()
            .filter(|e| self.sandbox_keys.contains_key(*e))
            .cloned()
            .collect()
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
