//! What `bpfwall status` shows, as the daemon sends it (the CLI prints it:
//! `cli::render`).

use std::collections::BTreeMap;

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

/// One map's fill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapStatus {
    /// The map's name.
    pub name: String,
    /// Entries it holds (both generations, while a change is under way).
    pub entries: usize,
    /// Entries it can hold.
    pub capacity: usize,
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
    /// Whose network namespace it is in: "own", "host" (its loopback
    /// traffic is policed, peers see it as the host) or "joined NAME".
    #[serde(default)]
    pub network: String,
    /// Conntrack entries it holds.
    #[serde(default)]
    pub conntrack_entries: u32,
    /// Allowed flows it opened that found no conntrack room.
    #[serde(default)]
    pub untracked_flows: u64,
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
    /// Every compiled map's fill, and conntrack's.
    #[serde(default)]
    pub maps: Vec<MapStatus>,
    /// Changes that had to close directions because a map was full.
    #[serde(default)]
    pub map_full_events: u64,
    /// Compile warnings.
    pub warnings: Vec<String>,
    /// The last reconcile error, if the last reconcile failed.
    pub last_error: Option<String>,
    /// Host-wide policy files and their errors.
    pub policy_files: Vec<FileStatus>,
}

/// One host-wide policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The file.
    pub file: String,
    /// Policies (specs) in force from it.
    pub specs: usize,
    /// Its current error: the last good version stays in force.
    pub error: Option<String>,
}
