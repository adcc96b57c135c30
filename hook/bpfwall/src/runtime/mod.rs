//! Where containers come from. Each runtime source tells the agent about
//! containers in the same terms, a [`ContainerRecord`] and a
//! [`RuntimeEvent`]; [`inventory`] is the one place where what the sources
//! say is merged into the set of containers the reconciler polices.
//!
//! - [`docker`]: dockerd's API (list, then events; reconnects and resyncs);
//! - [`oci_hook`]: the `bpfwall oci-hook` command a runtime runs before a
//!   container's first instruction, and [`runc_wrapper`] (`bpfwall-runc`),
//!   which adds that hook to every bundle, with [`install`] registering the
//!   wrapper with Docker.

pub mod docker;
pub mod install;
pub mod inventory;
pub mod oci_hook;
pub mod runc_wrapper;

use std::net::IpAddr;

/// Which source told the agent about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// dockerd's API.
    Docker,
    /// The OCI hook, before the container's first instruction.
    OciHook,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Docker => "docker",
            Source::OciHook => "oci-hook",
        })
    }
}

/// A running container as bpfwall needs it, whatever its runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The full container id.
    pub id: String,
    /// The name, without Docker's leading '/'.
    pub name: String,
    /// All labels (image labels included).
    pub labels: labels_policy::LabelSet,
    /// Addresses on every network the container joined.
    pub addresses: Vec<IpAddr>,
    /// The init process's pid on the host.
    pub pid: u32,
    /// When that process started (`bpfwall_sys::process::start_time`),
    /// read when the runtime reported it: a later process with the same
    /// pid is not this container.
    pub pid_start_time: Option<u64>,
    /// The labels its image carries (left out of its identity by default).
    pub image_labels: labels_policy::LabelSet,
    /// The id of the container whose network namespace it joined
    /// (`--network container:X`), when the runtime says so.
    pub joins: Option<String>,
    /// Docker's endpoint ids of its networks (`NetworkSettings.Networks[*]
    /// .EndpointID`): what binds a bpfwall network's endpoint to it.
    pub endpoint_ids: Vec<String>,
}

/// What a streaming source reports.
#[derive(Debug, Clone)]
pub enum RuntimeEvent {
    /// The complete set of running containers this source knows (after
    /// connecting).
    Resync(Source, Vec<ContainerRecord>),
    /// A container started or changed networks.
    Upsert(Source, ContainerRecord),
    /// A container stopped or is gone.
    Remove(Source, String),
    /// The source reached its runtime again; a resync follows (until
    /// then, what it said before may be stale).
    Connected(Source),
    /// The source lost its runtime; a resync follows when it is back.
    Disconnected(Source),
}
