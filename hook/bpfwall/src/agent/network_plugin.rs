//! The Docker network plugin, served by the daemon (one process owns the
//! maps): started before the Docker source, told after every reconcile
//! which container holds each endpoint and whether it is policed (from the
//! snapshot, published after the flip), and telling the reconcile loop
//! which endpoints are on default-deny networks. Its first word on that
//! is in the loop's queue before the Docker source starts, so no container
//! is ever compiled without its network's default.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use anyhow::Context as _;
use bpfwall_plugin::{Bindings, OpenGates, PluginConfig, PluginLink, PluginStatus};
use tokio::sync::{mpsc, watch};

use super::input::Input;
use super::snapshot::Snapshot;

/// The default driver name (`docker network create -d bpfwall`).
pub const DEFAULT_NAME: &str = "bpfwall";
/// Where Docker looks for plugin sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/run/docker/plugins";

/// How the plugin runs.
#[derive(Debug, Clone)]
pub struct NetworkPluginConfig {
    /// The driver name.
    pub name: String,
    /// Docker's plugin socket directory.
    pub socket_dir: PathBuf,
}

/// Starts the plugin; returns its status once it serves its socket.
pub async fn start(
    config: &NetworkPluginConfig,
    pin_root: PathBuf,
    state_dir: PathBuf,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    inputs: Sender<Input>,
    open_gates: OpenGates,
) -> anyhow::Result<watch::Receiver<PluginStatus>> {
    let (bindings_tx, bindings_rx) = watch::channel(Bindings::default());
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let bindings = snapshots.borrow_and_update().bindings.clone();
            bindings_tx.send_if_modified(|b| {
                let changed = *b != bindings;
                *b = bindings;
                changed
            });
        }
    });
    let (defaults_tx, mut defaults_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(PluginStatus::default());
    let socket = bpfwall_plugin::server::start(
        PluginConfig {
            name: config.name.clone(),
            socket_dir: config.socket_dir.clone(),
            state_dir,
            pin_root,
        },
        PluginLink {
            bindings: bindings_rx,
            defaults: defaults_tx,
            status: status_tx,
            open_gates,
        },
    )
    .await
    .with_context(|| format!("starting the network plugin {}", config.name))?;
    // The first word, in the queue before anything from Docker.
    let first = defaults_rx
        .recv()
        .await
        .context("the network plugin stopped as it started")?;
    inputs
        .send(Input::NetworkDefaults(first))
        .context("the reconcile loop stopped")?;
    tokio::spawn(async move {
        while let Some(defaults) = defaults_rx.recv().await {
            if inputs.send(Input::NetworkDefaults(defaults)).is_err() {
                return;
            }
        }
    });
    tracing::info!(name = %config.name, socket = %socket.display(), "network plugin serving");
    Ok(status_rx)
}
