//! What the reconciler publishes after each reconcile, and the answers the
//! API builds from it without waiting for the reconciler: `policy check`,
//! `policy explain`, and `status` (with counters read on the side).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use bpfwall_datapath::CounterReader;
use labels_policy::datapath_abi as abi;
use labels_policy::query::{CheckResult, Explanation, FlowEnd};
use labels_policy::{Compiled, ContainerInput};

use super::policy_watch::PolicyDirStatus;
use crate::api::{
    DaemonError, DirectionStatus, EndpointStatus, FlowEndArg, HttpCheck, MapStatus, Status,
};
use crate::runtime::{ContainerRecord, Runtime};

/// One managed container as the reconciler last saw it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// Its full id.
    pub id: String,
    /// What the runtime said of it.
    pub record: ContainerRecord,
    /// Its endpoint slot, once attached.
    pub endpoint_id: Option<u32>,
    /// Why it is not policed, if it is not.
    pub problem: Option<String>,
    /// When its programs went on.
    pub policed_since_unix_us: Option<u64>,
    /// Whose network namespace it is in ("own", "host", "joined NAME").
    pub network: String,
    /// Its addresses as the last compile had them (what the runtime said
    /// and what was read in its network namespace).
    pub addresses: Vec<IpAddr>,
    /// Directions closed because a map was full, and which map.
    pub closed: BTreeMap<labels_policy::Direction, &'static str>,
}

/// The reconciler's state after a reconcile.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The last compile.
    pub compiled: Arc<Compiled>,
    /// Its input, in order.
    pub inputs: Arc<Vec<ContainerInput>>,
    /// The container id of each input.
    pub input_ids: Arc<Vec<String>>,
    /// The host's addresses at that compile.
    pub host_addresses: Arc<Vec<IpAddr>>,
    /// Managed containers.
    pub containers: Vec<ContainerView>,
    /// Is the Docker source connected now?
    pub docker_connected: bool,
    /// Is the Docker source in sync: connected, and its list since it
    /// connected taken in by this snapshot's reconcile?
    pub docker_synced: bool,
    /// Has every source that is on listed its containers at least once?
    pub synced: bool,
    /// Each streaming source's state.
    pub sources: Vec<crate::api::SourceStatus>,
    /// Entries and capacity of every compiled map, by name.
    pub maps: BTreeMap<&'static str, (usize, usize)>,
    /// Changes that had to close directions because a map was full.
    pub map_full_events: u64,
    /// The conntrack map's size.
    pub conntrack_capacity: usize,
    /// Problems of the policy that the compile does not see (rules that
    /// select on labels left out of identities).
    pub warnings: Vec<String>,
    /// The last reconcile's error.
    pub last_error: Option<String>,
    /// Which container holds each network plugin endpoint, and whether it
    /// is policed.
    pub bindings: bpfwall_plugin::Bindings,
    /// The policy revision this snapshot's compile was put in force at
    /// (0: none by this daemon yet); flow events name theirs.
    pub policy_revision: u32,
    /// Every managed container audits (daemon flag `--audit`).
    pub audit_all: bool,
}

/// The id `status` shows: a 64-digit hex id (Docker's, podman's) shortened
/// to 12 as `docker ps` does; any other (containerd's, chosen by people) whole.
fn short_id(record: &ContainerRecord) -> String {
    let id = if record.runtime_id.is_empty() {
        &record.id
    } else {
        &record.runtime_id
    };
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_string()
    } else {
        id.clone()
    }
}

/// How an error names a container: Docker's by name, as always; others
/// with their runtime, namespace and id.
pub fn describe(record: &ContainerRecord) -> String {
    match record.runtime {
        Runtime::Docker => format!("container '{}'", record.name),
        Runtime::Containerd => format!(
            "containerd container '{}' (namespace {}, id {})",
            record.name, record.namespace, record.runtime_id
        ),
        other => format!(
            "{other} container '{}' (id {})",
            record.name,
            short_id(record)
        ),
    }
}

impl Snapshot {
    fn entries_of(&self, maps: &[&str]) -> usize {
        maps.iter()
            .filter_map(|m| self.maps.get(m))
            .map(|(n, _)| n)
            .sum()
    }

    /// The index of a container in the last compile, by name or id prefix.
    fn find(&self, name: &str) -> Result<usize, DaemonError> {
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
            [] => Err(DaemonError::NotFound {
                container: name.to_string(),
            }),
            _ => Err(DaemonError::Ambiguous {
                prefix: name.to_string(),
            }),
        }
    }

    /// A container of the last compile, by name or id prefix.
    pub fn container_input(&self, name: &str) -> Result<&ContainerInput, DaemonError> {
        self.find(name).map(|i| &self.inputs[i])
    }

    fn flow_end(&self, end: &FlowEndArg) -> Result<FlowEnd, DaemonError> {
        match end {
            FlowEndArg::Container(name) => self.find(name).map(FlowEnd::Container),
            FlowEndArg::Address(a) => Ok(FlowEnd::Address(*a)),
        }
    }

    /// Would a new connection pass? Answered from the last compile.
    pub fn check(
        &self,
        from: &FlowEndArg,
        to: &FlowEndArg,
        protocol: u8,
        port: u16,
        http: Option<&HttpCheck>,
    ) -> Result<CheckResult, DaemonError> {
        let from = self.flow_end(from)?;
        let to = self.flow_end(to)?;
        if let Some(h) = http {
            if protocol != abi::IPPROTO_TCP {
                return Err(DaemonError::BadRequest {
                    reason: "an http request needs a TCP port".into(),
                });
            }
            let request = labels_policy::http::HttpRequest::from_parts(
                &h.method,
                &h.target,
                h.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            )
            .map_err(|e| DaemonError::BadRequest {
                reason: format!(
                    "http request '{} {}': {e} (the proxy answers 400)",
                    h.method, h.target
                ),
            })?;
            return labels_policy::query::check_http(
                &self.compiled,
                &self.inputs,
                &self.host_addresses,
                &from,
                &to,
                port,
                &request,
            )
            .map_err(|e| DaemonError::Internal {
                reason: e.to_string(),
            });
        }
        labels_policy::query::check(
            &self.compiled,
            &self.inputs,
            &self.host_addresses,
            &from,
            &to,
            protocol,
            port,
        )
        .map_err(|e| DaemonError::Internal {
            reason: e.to_string(),
        })
    }

    /// A container's effective policy.
    pub fn explain(&self, name: &str) -> Result<Explanation, DaemonError> {
        let i = self.find(name)?;
        Ok(labels_policy::query::explain(
            &self.compiled,
            &self.inputs,
            i,
        ))
    }

    /// `bpfwall status`: this snapshot, the counters as they are now, and
    /// the policy files' state.
    pub fn status(
        &self,
        pin_root: &str,
        counters: Option<&dyn CounterReader>,
        policy_files: PolicyDirStatus,
    ) -> Status {
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
        for c in &self.containers {
            let report = reports.get(c.record.name.as_str());
            let counters_reader = counters;
            let counters = match (counters, c.endpoint_id) {
                (Some(reader), Some(ep)) => reader.counters(ep).unwrap_or_default(),
                _ => Default::default(),
            };
            let flags = report.map_or(0, |r| r.flags);
            let closed = |d: usize| {
                let direction = if d == 0 {
                    labels_policy::Direction::Ingress
                } else {
                    labels_policy::Direction::Egress
                };
                c.closed.get(&direction).copied()
            };
            let direction = |d: usize, enforce: u32, error: u32, rules: usize| DirectionStatus {
                state: if let Some(map) = closed(d) {
                    format!("closed (map {map} full)")
                } else if flags & error != 0 {
                    "closed (label error)".into()
                } else if flags & enforce != 0 {
                    "enforced".into()
                } else {
                    "open".into()
                },
                rules,
                allowed_packets: counters.allowed_packets[d],
                dropped_packets: counters.dropped_packets[d],
                http_allowed: 0,
                http_denied: 0,
            };
            let labels = c
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
                        .map(|e| format!("{}: {e}", describe(&c.record)))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(p) = &c.problem {
                errors.push(p.clone());
            }
            endpoints.push(EndpointStatus {
                mode: if flags & abi::EP_AUDIT != 0 {
                    "audit".into()
                } else {
                    "enforce".into()
                },
                id: short_id(&c.record),
                name: c.record.name.clone(),
                runtime: c.record.runtime.to_string(),
                namespace: c.record.namespace.clone(),
                identity: report.map_or(0, |r| r.identity),
                attached: c.endpoint_id.is_some() && c.problem.is_none(),
                policed_since_unix_us: c.policed_since_unix_us,
                addresses: c.addresses.iter().map(ToString::to_string).collect(),
                network: c.network.clone(),
                conntrack_entries: match (counters_reader, c.endpoint_id) {
                    (Some(reader), Some(ep)) => reader.conntrack_used(ep).unwrap_or(0),
                    _ => 0,
                },
                untracked_flows: counters.untracked_flows,
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
                proxy: None,
            });
        }
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        let drops = counters
            .and_then(|r| r.drops().ok())
            .map(|d| {
                d.into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect()
            })
            .unwrap_or_default();
        Status {
            pin_root: pin_root.to_string(),
            docker_connected: self.docker_connected,
            docker_synced: self.docker_synced,
            sources: self.sources.clone(),
            endpoints,
            drops,
            proxy_closed: BTreeMap::new(),
            policy_entries: self.entries_of(&[abi::MAP_POLICY, abi::MAP_POLICY_EXACT]),
            ipcache_entries: self.entries_of(&[abi::MAP_IPCACHE, abi::MAP_IPCACHE_EXACT]),
            maps: self
                .maps
                .iter()
                .map(|(name, (entries, capacity))| MapStatus {
                    name: name.to_string(),
                    entries: *entries,
                    capacity: *capacity,
                })
                .chain(
                    counters
                        .and_then(|r| r.conntrack_used(0).ok())
                        .map(|used| MapStatus {
                            name: abi::MAP_CT.to_string(),
                            entries: used as usize,
                            capacity: self.conntrack_capacity,
                        }),
                )
                .collect(),
            map_full_events: self.map_full_events,
            warnings: self
                .compiled
                .warnings
                .iter()
                .map(|w| format!("{w:?}"))
                .chain(self.warnings.iter().cloned())
                .collect(),
            last_error: self.last_error.clone(),
            policy_files: policy_files.files,
            policy_dir_errors: policy_files.errors,
            network_plugin: None,
            audit_all: self.audit_all,
        }
    }
}
