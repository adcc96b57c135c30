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
    /// HTTP requests this direction's rules allowed (at the proxy).
    #[serde(default)]
    pub http_allowed: u64,
    /// HTTP requests this direction's rules denied (403 from the proxy).
    #[serde(default)]
    pub http_denied: u64,
}

/// The HTTP proxy of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyState {
    /// The ports steered to it.
    pub ports: Vec<u16>,
    /// Serving: its socket is in the datapath's map and the namespace steered.
    pub ready: bool,
    /// Why it is not (the steered ports stay closed meanwhile).
    pub error: Option<String>,
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
    /// Container name (containerd: `<namespace>/<id>`).
    pub name: String,
    /// Which runtime runs it: docker, containerd, podman or oci.
    #[serde(default)]
    pub runtime: String,
    /// Its containerd namespace (`moby` for Docker's; empty for podman).
    #[serde(default)]
    pub namespace: String,
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
    /// Its HTTP proxy, when ports of it are http-policed.
    #[serde(default)]
    pub proxy: Option<ProxyState>,
    /// "enforce", or "audit": what its policy would drop is reported
    /// (verdict audit) and passes (label `bpfwall.mode=audit`, or the
    /// daemon's `--audit`).
    #[serde(default)]
    pub mode: String,
}

/// The daemon's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Where programs, maps and links are pinned.
    pub pin_root: String,
    /// Whether the Docker listener is connected.
    pub docker_connected: bool,
    /// Whether the daemon is in sync with Docker: connected, and Docker's
    /// list since it connected is in the maps. While it is not, containers
    /// started meanwhile are not policed (without bpfwall-runc) and
    /// Docker's exit events are not coming (containers whose process died
    /// are still withdrawn).
    #[serde(default)]
    pub docker_synced: bool,
    /// Every runtime source (docker, containerd): synced, connecting,
    /// disconnected, or off (its socket is absent) and why.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// Managed containers.
    pub endpoints: Vec<EndpointStatus>,
    /// Drops per named reason, host-wide (the L7 reasons start `l7-`).
    pub drops: BTreeMap<String, u64>,
    /// Connections the HTTP proxy closed, by reason.
    #[serde(default)]
    pub proxy_closed: BTreeMap<String, u64>,
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
    /// Problems with the policy directory as a whole (it cannot be read:
    /// every file's version in force stays) or with the saved last good
    /// versions; each names its path.
    #[serde(default)]
    pub policy_dir_errors: Vec<String>,
    /// The Docker network plugin (`docker network create -d bpfwall`):
    /// its networks, each endpoint's gate, and the gate's drops.
    #[serde(default)]
    pub network_plugin: Option<Box<bpfwall_plugin::PluginStatus>>,
    /// The daemon audits every managed container (`--audit`).
    #[serde(default)]
    pub audit_all: bool,
}

/// One host-wide policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The file.
    pub file: String,
    /// Policies (specs) in force from it.
    pub specs: usize,
    /// Its current error (it does not parse, or cannot be read), saying
    /// which version stays in force.
    pub error: Option<String>,
    /// Which version of the file is in force.
    #[serde(default)]
    pub in_force: VersionInForce,
    /// When the version in force was read (unix seconds).
    #[serde(default)]
    pub in_force_since_unix: Option<u64>,
    /// The version in force could not be saved, so it would not survive a
    /// restart of the daemon.
    #[serde(default)]
    pub save_error: Option<String>,
}

/// Which version of a policy file is in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionInForce {
    /// The file as it is now.
    Current,
    /// The last good version read by this run of the daemon: the file
    /// changed since and does not parse (or cannot be read).
    LastGood,
    /// The last good version saved by an earlier run of the daemon: the
    /// file has been broken (or unreadable) since this run started.
    Saved,
    /// Nothing: the file never parsed.
    #[default]
    Nothing,
}

/// One runtime source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStatus {
    /// docker or containerd.
    pub source: String,
    /// Connected, and its list since it connected is in the maps.
    pub synced: bool,
    /// In words: "synced", "connecting", "connected, listing",
    /// "disconnected (reconnecting)", "disconnected: <why> (watching for
    /// it)" (listed before, gone now), or "off: <why> (watching for it)"
    /// (never seen: holds nothing up).
    pub state: String,
}
