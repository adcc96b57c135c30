//! Where containers come from. Each runtime source tells the agent about
//! containers in the same terms, a [`ContainerRecord`] and a
//! [`RuntimeEvent`]; [`inventory`] is the one place where what the sources
//! say is merged into the set of containers the reconciler polices.
//!
//! - [`docker`]: dockerd's API (list, then events; reconnects and resyncs);
//! - [`containerd`]: containerd's API, every namespace but Docker's own
//!   (list, then events; reconnects and resyncs);
//! - [`podman`]: what the OCI hook reads of a podman container (podman
//!   passes its labels to no runtime: they are read from its database),
//!   and [`hooks_d`], which installs the hook for podman;
//! - [`oci_hook`]: the `bpfwall oci-hook` command a runtime runs before a
//!   container's first instruction, and [`runc_wrapper`] (`bpfwall-runc`),
//!   which adds that hook to every bundle, with [`install`] registering the
//!   wrapper with Docker.

pub mod boltdb;
pub mod containerd;
pub mod docker;
pub mod hooks_d;
pub mod install;
pub mod inventory;
pub mod oci_hook;
pub mod podman;
pub mod runc_wrapper;
pub mod socket_watch;

use std::net::IpAddr;

/// Which source told the agent about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// dockerd's API.
    Docker,
    /// The OCI hook, before the container's first instruction.
    OciHook,
    /// containerd's API (every namespace but Docker's).
    Containerd,
}

impl Source {
    /// The sources that list their containers and follow events (the OCI
    /// hook only reports).
    pub const STREAMING: [Source; 2] = [Source::Docker, Source::Containerd];
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Docker => "docker",
            Source::OciHook => "oci-hook",
            Source::Containerd => "containerd",
        })
    }
}

/// Which container runtime runs a container (whoever reported it).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// dockerd (its containers live in containerd's namespace `moby`).
    #[default]
    Docker,
    /// containerd itself (`ctr`, nerdctl, ...), outside Docker's namespaces.
    Containerd,
    /// podman (through the OCI hook).
    Podman,
    /// Another OCI runtime set-up (a runc config written by hand).
    Oci,
}

impl Runtime {
    /// Its name in `status` and the API.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Podman => "podman",
            Runtime::Oci => "oci",
        }
    }

    /// Reads a name back (`status`, the API).
    pub fn parse(name: &str) -> Option<Runtime> {
        [
            Runtime::Docker,
            Runtime::Containerd,
            Runtime::Podman,
            Runtime::Oci,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Docker's containerd namespace (its containers are the Docker source's).
pub const DOCKER_NAMESPACE: &str = "moby";

/// The key a container has in the inventory, the maps' link pins and the
/// API: unique across runtimes and usable as a bpffs name (no '/' and no
/// '.'). Docker's (and other runtimes' hex) ids are their own key; a
/// containerd container is `containerd:<namespace>:<id>` (ids are unique
/// only within a namespace), with '%' and '.' written as `%25` and `%2E`;
/// a podman container is `podman:<id>`.
pub fn container_key(runtime: Runtime, namespace: &str, id: &str) -> String {
    fn escape(s: &str) -> String {
        s.replace('%', "%25")
            .replace('.', "%2E")
            .replace('/', "%2F")
    }
    match runtime {
        Runtime::Containerd => format!("containerd:{}:{}", escape(namespace), escape(id)),
        Runtime::Podman => format!("podman:{}", escape(id)),
        Runtime::Docker | Runtime::Oci => escape(id),
    }
}

/// The streaming source that could own a container with this key (its
/// link pins are kept until that source has listed its containers): None
/// for containers only the OCI hook reports (podman).
pub fn key_source(key: &str) -> Option<Source> {
    if key.starts_with("containerd:") {
        Some(Source::Containerd)
    } else if key.starts_with("podman:") {
        None
    } else {
        Some(Source::Docker)
    }
}

/// A running container as bpfwall needs it, whatever its runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container's key ([`container_key`]): its id for Docker.
    pub id: String,
    /// The name, without Docker's leading '/' (containerd: `<namespace>/<id>`).
    pub name: String,
    /// Which runtime runs it.
    pub runtime: Runtime,
    /// Its containerd namespace (`moby` for Docker's; empty for podman).
    pub namespace: String,
    /// The id its runtime knows it by.
    pub runtime_id: String,
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
    /// The source's runtime is not there (no socket, or nothing answers
    /// on it): the source is off. It does not hold up the daemon's first
    /// reconcile; it is tried again, and lists when its runtime appears.
    Unavailable(Source, String),
}
