//! The OCI hook's path: a container reported before it starts is taken in, policed and answered; containers only the hook knows are saved and pruned.

use super::*;

impl<D: Datapath, H: Host> Reconciler<D, H> {
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
    pub fn set_hook_store(&mut self, mut store: crate::agent::hook_store::HookStore) {
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
    pub(super) fn forget_gone_hook_containers(&mut self) {
        let inventory = &self.inventory;
        if let Some(store) = &mut self.hook_store {
            store.retain(|key| inventory.get(key).is_some());
        }
    }

    /// Puts a container the hook reported into the inventory, once its pid
    /// is checked and its addresses read. Returns its key.
    pub(super) fn take_in_hook_container(
        &mut self,
        request: EnforceRequest,
    ) -> Result<String, DaemonError> {
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
}
