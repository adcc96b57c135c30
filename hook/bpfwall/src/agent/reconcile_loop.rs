//! The reconcile loop: a thread of its own that owns the [`Reconciler`]
//! (and so the datapath). Everything reaches it as an [`Input`] (its own
//! module, so that those who send need not know the loop); it takes
//! in every input that is waiting, reconciles once, answers the OCI hooks
//! whose containers that reconcile covered, and publishes a [`Snapshot`]
//! for the API. A hook request therefore waits for at most the reconcile
//! in flight and its own, never behind a queue of them; status, check and
//! explain never wait for the loop at all.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfwall_datapath::Datapath;
use tokio::sync::watch;

use super::host::Host;
use super::input::Input;
use super::metrics::ReconcileStats;
use super::reconciler::Reconciler;
use super::snapshot::Snapshot;

/// Events arriving within this window are handled by one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Containers whose exit no runtime reports now (known only from the OCI
/// hook, or Docker's while Docker is not in sync) are checked this often.
const HOOK_PRUNE: Duration = Duration::from_secs(1);
/// A reconcile runs at least this often (host addresses change without events).
const PERIODIC: Duration = Duration::from_secs(10);
/// A hook that bound network plugin endpoints waits at most this long for
/// their gates to open before it is answered (the gate then opens when the
/// plugin's task gets to it, as without the hook).
const GATE_WAIT: Duration = Duration::from_secs(1);

/// Runs until every sender of `inputs` is gone.
pub fn run<D: Datapath, H: Host>(
    mut reconciler: Reconciler<D, H>,
    inputs: Receiver<Input>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stats: ReconcileStats,
    open_gates: Option<bpfwall_plugin::OpenGates>,
) {
    let mut revision = 0;
    let mut next_periodic = Instant::now() + PERIODIC;
    let mut next_prune = Instant::now() + HOOK_PRUNE;
    loop {
        let wake = next_periodic.min(next_prune);
        let first = match inputs.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut dirty = false;
        let mut hooks = Vec::new();
        if let Some(first) = first {
            // Events come in bursts (a compose up): wait a moment for the
            // rest, unless a hook is waiting.
            let mut batch = vec![first];
            let deadline = Instant::now() + DEBOUNCE;
            loop {
                let hook_waiting = batch.iter().any(|i| matches!(i, Input::Enforce { .. }));
                let next = if hook_waiting {
                    inputs.try_recv().ok()
                } else {
                    inputs
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                };
                match next {
                    Some(input) => batch.push(input),
                    None => break,
                }
            }
            for input in batch {
                match input {
                    Input::Runtime(event) => dirty |= reconciler.handle(event),
                    Input::HostPolicies(policies) => {
                        reconciler.set_host_policies(policies);
                        dirty = true;
                    }
                    Input::NetworkDefaults(defaults) => {
                        reconciler.set_network_defaults(defaults);
                        dirty = true;
                    }
                    Input::Enforce { request, reply } => {
                        let span = tracing::info_span!("oci_hook", container = %request.name, pid = request.pid);
                        let _guard = span.enter();
                        match reconciler.admit(request) {
                            Ok(key) => {
                                dirty = true;
                                hooks.push((key, reply));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "refused a container start");
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= next_prune {
            dirty |= reconciler.prune_dead_hook_containers();
            next_prune = now + HOOK_PRUNE;
        }
        if now >= next_periodic {
            dirty = true;
            next_periodic = now + PERIODIC;
        }
        let started = Instant::now();
        if dirty {
            reconciler.reconcile();
        }
        let snapshot = reconciler.snapshot();
        if dirty {
            if snapshot.last_error.is_some() {
                stats.errors.inc();
            }
            if snapshot.policy_revision != revision {
                stats.apply_seconds.observe(started.elapsed().as_secs_f64());
            }
        }
        revision = snapshot.policy_revision;
        // Published before the hooks hear back: whoever is told a container
        // is policed finds it in `status`.
        let bindings_synced = snapshot.bindings.synced;
        snapshots.send_replace(Arc::new(snapshot));
        for (id, reply) in hooks {
            let answer = reconciler.admitted(&id);
            // Its plugin endpoints open before its first instruction: the
            // plugin's task writes the gates from the snapshot just sent
            // (the policy is in force already).
            if let (Ok(_), Some(gates)) = (&answer, &open_gates) {
                let endpoints = reconciler.gated_endpoints(&id);
                if !endpoints.is_empty() && bindings_synced {
                    let waited = Instant::now();
                    if gates.wait_open(&endpoints, GATE_WAIT) {
                        tracing::info!(container = %id, endpoints = ?endpoints, waited_us = waited.elapsed().as_micros() as u64, "gate open before start");
                    } else {
                        tracing::warn!(container = %id, endpoints = ?endpoints, "the gate did not open within 1 s of the hook: it opens when the plugin gets to it");
                    }
                }
            }
            match &answer {
                Ok(message) => tracing::info!(container = %id, %message, "enforced before start"),
                Err(e) => tracing::error!(container = %id, error = %e, "refused a container start"),
            }
            let _ = reply.send(answer);
        }
        if dirty {
            reconciler.finish();
        }
    }
}
