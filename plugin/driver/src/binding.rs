//! Which container holds each endpoint, and whether the daemon polices it:
//! what opens an endpoint's gate. The daemon builds [`Bindings`] from its
//! reconciler's snapshot (published after the flip that put a container's
//! programs and policy in force); the driver only reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// The endpoints whose gate is open now, as the driver last wrote them:
/// what a caller that must not go on before a gate opens waits on (the
/// daemon answers an OCI hook that bound an endpoint only once its gate is
/// open). Shared between the driver's task and the reconcile thread.
#[derive(Debug, Clone, Default)]
pub struct OpenGates(Arc<(Mutex<BTreeSet<String>>, Condvar)>);

impl OpenGates {
    /// Records the endpoints whose gate is open now.
    pub fn set(&self, open: BTreeSet<String>) {
        let (lock, changed) = &*self.0;
        let mut now = lock.lock().unwrap_or_else(|e| e.into_inner());
        if *now != open {
            *now = open;
            changed.notify_all();
        }
    }

    /// Is this endpoint's gate open?
    pub fn is_open(&self, endpoint_id: &str) -> bool {
        let (lock, _) = &*self.0;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(endpoint_id)
    }

    /// Waits (blocking, at most `timeout`) until every one of `endpoints`
    /// is open; true if they all are.
    pub fn wait_open(&self, endpoints: &[String], timeout: Duration) -> bool {
        let (lock, changed) = &*self.0;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |open| {
                !endpoints.iter().all(|e| open.contains(e))
            })
            .unwrap_or_else(|e| e.into_inner());
        endpoints.iter().all(|e| guard.contains(e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn wait_open_returns_when_the_driver_opens_and_times_out_otherwise() {
        let gates = OpenGates::default();
        let want = vec!["ep1".to_string()];
        assert!(!gates.wait_open(&want, Duration::from_millis(20)));
        let writer = gates.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.set(BTreeSet::from(["ep1".to_string(), "ep2".to_string()]));
        });
        assert!(gates.wait_open(&want, Duration::from_secs(5)));
        t.join().unwrap();
        assert!(gates.is_open("ep2"));
        assert!(gates.wait_open(&[], Duration::ZERO));
    }
}
