//! What the reconcile loop is told: the one type every part that feeds the
//! loop (runtime sources, the policy watcher, the API server, the network
//! plugin) sends, kept apart from the loop so they depend on this and not
//! on the loop.

use labels_policy::HostPolicy;
use tokio::sync::oneshot;

use crate::api::{DaemonError, EnforceRequest};
use crate::runtime::RuntimeEvent;

/// What the loop is told.
#[derive(Debug)]
pub enum Input {
    /// A runtime source's event.
    Runtime(RuntimeEvent),
    /// The host-wide policies in force changed.
    HostPolicies(Vec<HostPolicy>),
    /// The OCI hook asks to police a container before it starts.
    Enforce {
        /// The container.
        request: EnforceRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, DaemonError>>,
    },
    /// The network plugin's endpoints on default-deny networks.
    NetworkDefaults(bpfwall_plugin::NetworkDefaults),
}
