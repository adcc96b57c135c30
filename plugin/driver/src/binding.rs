//! Which container holds each endpoint, and whether the daemon polices it:
//! what opens an endpoint's gate. The daemon builds [`Bindings`] from its
//! reconciler's snapshot (published after the flip that put a container's
//! programs and policy in force); the driver only reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the daemon stands with the container that holds an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindState {
    /// Its cgroup programs are attached and its policy is in force.
    Policed,
    /// It is not one the daemon manages (`--manage-label`): no policy of
    /// bpfwall's applies to it, so its endpoint opens as the operator chose.
    NotManaged,
    /// The daemon knows it but does not police it (yet), and why.
    NotPoliced(String),
}

impl BindState {
    /// Does this state open the endpoint?
    pub fn opens(&self) -> bool {
        matches!(self, BindState::Policed | BindState::NotManaged)
    }
}

/// Every endpoint some running container holds, as the daemon knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    /// The daemon has listed Docker's containers since it last (re)connected:
    /// only then does a missing holder mean there is none.
    pub synced: bool,
    /// Docker endpoint id to (container name, state).
    pub holders: BTreeMap<String, (String, BindState)>,
}

impl Bindings {
    /// The container that holds an endpoint, and its state.
    pub fn state_of(&self, endpoint_id: &str) -> Option<(&str, &BindState)> {
        self.holders
            .get(endpoint_id)
            .map(|(name, state)| (name.as_str(), state))
    }
}
