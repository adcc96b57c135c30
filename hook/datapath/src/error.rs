//! Why the datapath could not be loaded or changed.

use std::path::PathBuf;

use bpfwall_sys::IoError;

/// Why the datapath could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A file system operation on the pin root failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// bpffs could not be mounted.
    #[error("cannot mount bpffs at {}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The object could not be loaded.
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or could not be loaded.
    #[error("program {name}")]
    Program {
        /// The program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program could not be attached to a cgroup.
    #[error("cannot attach {name} to {}", cgroup.display())]
    Attach {
        /// The program name.
        name: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program could not be attached to a network namespace.
    #[error("cannot attach {name} to network namespace {netns}")]
    AttachNetns {
        /// The program name.
        name: &'static str,
        /// The namespace's inode.
        netns: u64,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A link could not be turned into a pinnable fd link.
    #[error("link of {name} on {} is not an fd link", cgroup.display())]
    Link {
        /// The program name.
        name: &'static str,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A link or program could not be pinned.
    #[error("cannot pin at {}", path.display())]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// A pinned link could not be moved onto this daemon's program.
    #[error("cannot move the link {} onto {name}", path.display())]
    LinkUpdate {
        /// The link's pin.
        path: PathBuf,
        /// The program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The RCU barrier's maps could not be made.
    #[error("cannot create the maps of the RCU barrier")]
    Barrier {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A map is missing from the object.
    #[error("map {name} is missing from the object")]
    MissingMap {
        /// The map name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("map {name}: {op}")]
    Map {
        /// The map name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The network gate's programs could not be put on an interface.
    #[error("cannot attach {name} to interface {interface}")]
    TcAttach {
        /// The program name.
        name: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// A closure for `map_err` naming the map and the operation.
pub(crate) fn map_error(
    name: &'static str,
    op: &'static str,
) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        name,
        op,
        source: Box::new(e),
    }
}
