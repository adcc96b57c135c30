//! What `bpfwall status` shows, as the daemon sends it and as it is printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One direction of one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionStatus {
    /// "open", "enforced" or "closed (label error)".
    pub state: String,
    /// Rules in force.
    pub rules: usize,
    /// Packets passed.
    pub allowed_packets: u64,
    /// Packets dropped.
    pub dropped_packets: u64,
}

/// One managed container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointStatus {
    /// Short container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Its identity.
    pub identity: u32,
    /// Programs attached and policy in the maps.
    pub attached: bool,
    /// When this daemon found the programs on (attached them, or found them
    /// attached): unix time in microseconds.
    #[serde(default)]
    pub policed_since_unix_us: Option<u64>,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// bpfwall labels and labels some selector uses.
    pub labels: BTreeMap<String, String>,
    /// Ingress.
    pub ingress: DirectionStatus,
    /// Egress.
    pub egress: DirectionStatus,
    /// Policy errors and attach problems.
    pub errors: Vec<String>,
}

/// The daemon's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Where programs, maps and links are pinned.
    pub pin_root: String,
    /// Whether the Docker listener is connected.
    pub docker_connected: bool,
    /// Managed containers.
    pub endpoints: Vec<EndpointStatus>,
    /// Drops per named reason, host-wide.
    pub drops: BTreeMap<String, u64>,
    /// Entries in the policy map.
    pub policy_entries: usize,
    /// Entries in the ipcache.
    pub ipcache_entries: usize,
    /// Compile warnings.
    pub warnings: Vec<String>,
    /// The last reconcile error, if the last reconcile failed.
    pub last_error: Option<String>,
    /// Host-wide policy files and their errors.
    pub policy_files: Vec<crate::policy_dir::FileStatus>,
}

impl Status {
    /// The human form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(
            out,
            "bpfwall: {} endpoints, {} policy entries, {} ipcache entries, docker {}, pins in {}",
            self.endpoints.len(),
            self.policy_entries,
            self.ipcache_entries,
            if self.docker_connected { "connected" } else { "DISCONNECTED" },
            self.pin_root
        );
        if let Some(e) = &self.last_error {
            let _ = writeln!(out, "last reconcile FAILED: {e}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for f in &self.policy_files {
            match &f.error {
                None => {
                    let _ = writeln!(out, "policy file {}: {} specs", f.file, f.specs);
                }
                Some(e) => {
                    let _ = writeln!(out, "ERROR policy file {e}");
                }
            }
        }
        for ep in &self.endpoints {
            let _ = writeln!(
                out,
                "\n{} ({}) identity {}{} [{}]",
                ep.name,
                ep.id,
                ep.identity,
                if ep.attached { "" } else { " NOT ATTACHED" },
                ep.addresses.join(", ")
            );
            for (k, v) in &ep.labels {
                let _ = writeln!(out, "  label {k}={v}");
            }
            for (name, d) in [("ingress", &ep.ingress), ("egress", &ep.egress)] {
                let _ = writeln!(
                    out,
                    "  {name:<7} {:<20} rules {:<3} allowed {:<8} dropped {}",
                    d.state, d.rules, d.allowed_packets, d.dropped_packets
                );
            }
            for e in &ep.errors {
                let _ = writeln!(out, "  ERROR {e}");
            }
        }
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        if !drops.is_empty() {
            let _ = writeln!(out, "\ndrops: {}", drops.join(" "));
        }
        out
    }
}

/// `bpfwall policy explain` as a person reads it.
pub fn render_explanation(e: &labels_policy::query::Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} identity {}{}",
        e.container,
        e.identity,
        if e.attached {
            ""
        } else {
            " (NOT ATTACHED: not policed)"
        }
    );
    for err in &e.errors {
        let _ = writeln!(out, "  ERROR {err}");
    }
    for d in &e.directions {
        let _ = writeln!(out, "{}: {}", d.direction, d.state);
        for r in &d.rules {
            let who = if r.matching_containers.is_empty() {
                String::new()
            } else {
                format!(" [now: {}]", r.matching_containers.join(", "))
            };
            let _ = writeln!(
                out,
                "  {:<5} {}{} port {}   ({})",
                r.verdict, r.peers, who, r.ports, r.origin
            );
        }
    }
    out
}
