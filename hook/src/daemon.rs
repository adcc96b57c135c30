//! The daemon's loop: runtime events and API calls in, reconciles out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use labels_policy::Selector;
use tokio::sync::mpsc;

use crate::api::{self, Answer, Call, Request};
use crate::datapath::Datapath;
use crate::docker_events::{self, RuntimeEvent};
use crate::policy_dir::PolicyDir;
use crate::reconcile::Reconciler;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// dockerd's socket.
    pub docker_socket: String,
    /// Pin root on bpffs.
    pub pin_root: PathBuf,
    /// The API socket.
    pub api_socket: PathBuf,
    /// Only containers matching this are attached (all are peers).
    pub manage: Selector,
    /// Host-wide policy files.
    pub policy_dir: PathBuf,
}

/// Events arriving within this window are handled by one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// The policy directory is read this often (changes apply within a second).
const POLICY_POLL: Duration = Duration::from_millis(250);
/// Containers known only from the OCI hook are checked for exit this often.
const HOOK_PRUNE: Duration = Duration::from_secs(1);
/// A reconcile runs at least this often (host addresses change without events).
const PERIODIC: Duration = Duration::from_secs(10);

/// Runs until SIGINT or SIGTERM. Leaves every pin in place: enforcement
/// goes on without the daemon.
pub async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let datapath = Datapath::load(Some(&config.pin_root)).with_context(|| {
        format!(
            "loading the datapath with pins under {}",
            config.pin_root.display()
        )
    })?;
    let mut reconciler =
        Reconciler::new(datapath, config.manage.clone()).context("adopting pinned state")?;
    let listener = api::bind(&config.api_socket)?;
    let (events_tx, mut events) = mpsc::channel::<RuntimeEvent>(4096);
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    tokio::spawn(docker_events::run(config.docker_socket.clone(), events_tx));
    tokio::spawn(api::serve(listener, calls_tx));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(PERIODIC);
    let mut policy_tick = tokio::time::interval(POLICY_POLL);
    let mut prune_tick = tokio::time::interval(HOOK_PRUNE);
    let mut policy_dir = PolicyDir::new(&config.policy_dir);
    policy_dir.poll();
    reconciler.set_host_policies(policy_dir.policies());
    let pin_root = config.pin_root.display().to_string();
    tracing::info!(pin_root, api = %config.api_socket.display(), docker = config.docker_socket,
        policy_dir = %config.policy_dir.display(), "bpfwall daemon running");
    loop {
        tokio::select! {
            Some(event) = events.recv() => {
                let mut dirty = reconciler.handle(event);
                // Take whatever else arrives in the debounce window.
                let deadline = tokio::time::Instant::now() + DEBOUNCE;
                while let Ok(Some(more)) = tokio::time::timeout_at(deadline, events.recv()).await {
                    dirty |= reconciler.handle(more);
                }
                if dirty {
                    reconciler.reconcile();
                }
            }
            Some(call) = calls.recv() => {
                let error = |message: String| Answer::Error { message };
                let answer = match call.request {
                    Request::Status => {
                        let mut status = reconciler.status(&pin_root);
                        status.policy_files = policy_dir.status();
                        Answer::Status(status)
                    }
                    Request::Check { from, to, protocol, port } => {
                        reconciler.check(&from, &to, protocol, port).map_or_else(error, Answer::Check)
                    }
                    Request::Explain { container } => reconciler.explain(&container).map_or_else(error, Answer::Explain),
                    Request::Enforce { id, name, pid, labels } => {
                        let span = tracing::info_span!("oci_hook", container = %name, pid);
                        let _guard = span.enter();
                        match crate::netns::addresses_of_pid(pid) {
                            Err(e) => error(format!("cannot read the addresses of pid {pid}: {e}")),
                            Ok(addresses) => {
                                let record = docker_events::ContainerRecord { id, name, labels: labels.into_iter().collect(), addresses, pid };
                                match reconciler.enforce(record) {
                                    Ok(message) => {
                                        tracing::info!(%message, "enforced before start");
                                        Answer::Enforced { message }
                                    }
                                    Err(message) => {
                                        tracing::error!(%message, "refused a container start");
                                        Answer::Error { message }
                                    }
                                }
                            }
                        }
                    }
                };
                let _ = call.reply.send(answer);
            }
            _ = tick.tick() => reconciler.reconcile(),
            _ = prune_tick.tick() => {
                if reconciler.prune_dead_hook_containers() {
                    reconciler.reconcile();
                }
            }
            _ = policy_tick.tick() => {
                if policy_dir.poll() {
                    reconciler.set_host_policies(policy_dir.policies());
                    reconciler.reconcile();
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("stopping; pinned programs keep enforcing");
    let _ = std::fs::remove_file(&config.api_socket);
    Ok(())
}
