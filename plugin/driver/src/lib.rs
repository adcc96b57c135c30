//! bpfwall's Docker network driver (`docker network create -d bpfwall`).
//!
//! Docker calls it over the libnetwork remote driver protocol
//! (`bpfwall-plugin-protocol`) on `/run/docker/plugins/<name>.sock`; the
//! bpfwall daemon serves it ([`server`]), so one process owns every map.
//!
//! The shape is Calico's: each container gets a veth pair whose host end
//! is routed (/32, /128) from the host, with the network's gateway answered
//! by the host end (ARP and neighbour discovery are answered by the gate
//! program itself), and the host forwards between containers and, through
//! masquerade, to the world. The gate (bpf-src/network_gate.h) sits on the
//! host end from Join on, before the container has a process: closed until
//! the daemon reports the container that holds the endpoint policed
//! ([`binding`]), then open to what that container's cgroup programs allow.
//!
//! - [`network`]: what is kept of networks and endpoints (pure);
//! - [`driver`]: the handlers, over [`host::NetworkHost`];
//! - [`system`]: the real host (netlink, the gate, iptables);
//! - [`store`]: the state saved across restarts;
//! - [`server`]: HTTP over the unix socket, and the task that owns the driver;
//! - [`status`]: what `bpfwall status` shows.

pub mod binding;
pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod firewall;
pub mod host;
pub mod network;
pub mod server;
pub mod status;
pub mod store;
pub mod system;

pub use binding::{BindState, Bindings, OpenGates};
pub use driver::{Driver, DriverError, NetworkDefaults};
pub use server::{PluginConfig, PluginLink};

pub use status::PluginStatus;
