//! bpfwall's eBPF datapath as a library: the compiled C programs of
//! `bpf-src/`, their pinned maps, and the cgroup links that attach them to
//! containers.
//!
//! - [`Datapath`] is the small interface the agent's reconciler uses: stage
//!   a change beside what is in force, flip to it, prune what only the old
//!   generation had ([`generations`]: no packet is ever decided by a mix of
//!   old and new entries), attach and detach, forget conntrack. The
//!   reconciler decides the order; this crate only carries it out.
//! - [`KernelDatapath`] is the real one ([`kernel`]); with the `testing`
//!   feature, `fake::FakeDatapath` is an in-memory one for unit tests that
//!   need neither root nor BPF.
//! - [`maps`] has one module per map family, [`links`] the pinned cgroup
//!   links, [`bpffs`] the pin root's layout.
//! - [`steering`] is the HTTP proxy's part: the sk_lookup program, its
//!   netns links, the proxy sockets and addresses it reads.
//!
//! Layout under the pin root (default /sys/fs/bpf/bpfwall_v1, versioned
//! with the ABI):
//!
//! ```text
//! maps/bpfwall_<what>_v2         every map, shared by all links
//! progs/bpfwall_ingress          the programs this daemon loaded (replaced at
//! progs/bpfwall_egress           each start; links keep the ones they hold)
//! links/<owner>_<cgroup id>_ingress
//! links/<owner>_<cgroup id>_egress
//! progs/bpfwall_l7_lookup        the sk_lookup program (steering)
//! netns_links/<owner>_<netns inode>   its links to network namespaces
//! ```
//!
//! (bpffs refuses names with a '.', so the parts are joined by '_'.)
//!
//! Links hold the programs in the kernel, so enforcement goes on while no
//! daemon runs; a new daemon reuses the pinned maps and reads the links
//! directory to know what is attached.

pub mod bpffs;
mod error;
#[cfg(feature = "testing")]
pub mod fake;
pub mod generations;
pub mod kernel;
pub mod links;
pub mod maps;
pub mod netgate;
pub mod pod;
mod rcu;
mod seam;
pub mod steering;
mod syscall;
#[cfg(feature = "testing")]
pub mod test_run;

pub use bpffs::{ensure_bpffs, remove_pins};
pub use error::DatapathError;
pub use generations::MapContents;
pub use kernel::{AdoptReport, KernelDatapath, MapSizes};
pub use links::LinkPin;
pub use maps::conntrack::{Collected, CtShares};
pub use maps::events::{EventReader, EventSettings, MetricsReader};
pub use maps::{diff, Diff};
pub use netgate::{NetgateDropsReader, NetworkGate};
pub use seam::{ConntrackCollector, CounterReader, Datapath, StageError};

/// The compiled datapath object (bpf-src/bpfwall_cgroup_skb.c).
pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfwall.o"));

/// The network plugin's gate (bpf-src/bpfwall_network_gate.c).
pub const NETGATE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfwall_netgate.o"));

/// The benchmarks' baseline: cgroup/skb programs that only pass
/// (bpf-src/bench_empty.c).
#[cfg(feature = "testing")]
pub const EMPTY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_empty.o"));
