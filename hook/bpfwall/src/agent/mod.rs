//! The daemon (`bpfwall daemon`), split by job, each a task or thread of
//! its own:
//!
//! - [`reconcile_loop`]: the thread that owns the [`reconciler`] and so the
//!   datapath; every change reaches it as an input;
//! - [`api_server`]: the local API, answering status, check and explain
//!   from the reconciler's last [`snapshot`], and passing OCI-hook requests
//!   to the loop;
//! - [`policy_watch`]: the policy directory, read a few times a second,
//!   with the last good version of each file saved in [`policy_store`];
//! - the runtime sources (`crate::runtime`), whose events are forwarded to
//!   the loop;
//! - [`host`]: what the reconciler reads of the host, behind a trait;
//! - [`instance_lock`]: one daemon per pin root;
//! - [`proxy`]: the HTTP proxy (L7 policy), following the snapshots.
//! - [`flows`]: the datapath's flow events (monitor, the edge record,
//!   advise), and [`metrics`]: Prometheus.

pub mod api_server;
pub mod flows;
pub mod hook_store;
pub mod host;
pub mod input;
pub mod instance_lock;
pub mod metrics;
pub mod network_plugin;
pub mod policy_store;
pub mod policy_watch;
pub mod proxy;
pub mod reconcile_loop;
pub mod reconciler;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bpfwall_datapath::MapSizes;
use bpfwall_datapath::{Datapath as _, KernelDatapath};
use bpfwall_sys::error_chain;
use tokio::sync::{mpsc, watch};

use self::host::SystemHost;
use self::input::Input;
use self::policy_store::PolicyStore;
use self::policy_watch::PolicyDir;
use self::reconciler::{Reconciler, ReconcilerConfig};
use self::snapshot::Snapshot;
use crate::runtime::{containerd, docker, RuntimeEvent, Source};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// dockerd's socket.
    pub docker_socket: String,
    /// containerd's socket (absent: the containerd source is off until it appears).
    pub containerd_socket: String,
    /// Pin root on bpffs.
    pub pin_root: PathBuf,
    /// The API socket.
    pub api_socket: PathBuf,
    /// How containers are policed (which are managed, identity labels,
    /// conntrack shares).
    pub reconciler: ReconcilerConfig,
    /// Map sizes other than the defaults.
    pub map_sizes: MapSizes,
    /// Host-wide policy files.
    pub policy_dir: PathBuf,
    /// What the daemon keeps across restarts (the last good version of
    /// each policy file, the network plugin's networks, the edge record).
    pub state_dir: PathBuf,
    /// The Docker network plugin, unless turned off.
    pub network_plugin: Option<network_plugin::NetworkPluginConfig>,
    /// Flow events and metrics.
    pub observe: ObserveConfig,
}

/// How the daemon reports what it sees.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    /// How the datapath sends flow events.
    pub events: bpfwall_datapath::EventSettings,
    /// Where to serve Prometheus metrics (None: nowhere).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve them on a non-loopback address too.
    pub metrics_allow_remote: bool,
    /// Series per container.
    pub metrics_per_container: bool,
}

/// The policy directory is read this often (changes apply within a second).
const POLICY_POLL: Duration = Duration::from_millis(250);
/// Expired conntrack entries are removed this often.
const CONNTRACK_COLLECT: Duration = Duration::from_secs(5);

/// Removes expired conntrack entries and recounts each endpoint's share,
/// on a thread of its own (a full map takes a while to walk).
fn spawn_collector(
    mut collector: Box<dyn bpfwall_datapath::ConntrackCollector>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || loop {
            std::thread::sleep(CONNTRACK_COLLECT);
            let now = bpfwall_datapath::maps::conntrack::coarse_now();
            match collector.collect(now) {
                Ok(c) if c.expired > 0 => {
                    tracing::debug!(expired = c.expired, left = c.total, "conntrack collected")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %error_chain(&e), "conntrack collection failed"),
            }
        })
        .context("cannot start the conntrack collector")?;
    Ok(())
}

/// Runs until SIGINT or SIGTERM. Leaves every pin in place: enforcement
/// goes on without the daemon.
pub async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    // Before the pins or the socket are touched: one daemon per pin root.
    let lock = instance_lock::InstanceLock::acquire(
        std::path::Path::new(instance_lock::LOCK_DIR),
        &config.pin_root,
    )?;
    let mut datapath = KernelDatapath::load_sized(Some(&config.pin_root), &config.map_sizes)
        .with_context(|| {
            format!(
                "loading the datapath with pins under {}",
                config.pin_root.display()
            )
        })?;
    let adopted = datapath.adopt().context("adopting pinned state")?;
    tracing::info!(
        endpoints = datapath.active().endpoints.len(),
        policy_entries = datapath.active().policy.len(),
        links_moved = adopted.links_moved,
        links_defunct = adopted.links_defunct,
        links_not_moved = adopted.links_not_moved.len(),
        policy_revision = adopted.policy_revision,
        "adopted pinned state (links moved onto the programs loaded now)"
    );
    match datapath.conntrack_collector() {
        Ok(collector) => spawn_collector(collector)?,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cannot open conntrack for collection: expired entries stay")
        }
    }
    // Flow events and metrics: readers of their own, opened before the
    // reconciler takes the datapath.
    if let Err(e) = datapath.set_event_settings(config.observe.events) {
        tracing::error!(error = %error_chain(&e), "cannot set the flow event settings");
    }
    let events = datapath
        .open_events()
        .map_err(|e| tracing::error!(error = %error_chain(&e), "cannot open the flow event ring: no monitor, no edges"))
        .ok();
    let datapath_metrics = datapath
        .open_metrics()
        .map_err(
            |e| tracing::error!(error = %error_chain(&e), "cannot open the datapath's metrics"),
        )
        .ok()
        .map(Arc::new);
    let metrics_listener = match config.observe.metrics_addr {
        Some(addr) => Some(metrics::bind(addr, config.observe.metrics_allow_remote).await?),
        None => None,
    };
    let edge_record = flows::edges::EdgeRecord::open(&config.state_dir)
        .context("reading the edge record in the state directory (--state-dir)")?;
    let reconcile_stats = metrics::ReconcileStats::default();

    let counters = match datapath.counter_reader() {
        Ok(reader) => Some(Arc::from(reader)),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cannot open the counters: status shows none");
            None
        }
    };
    let mut reconciler = Reconciler::new(datapath, SystemHost::new(), config.reconciler.clone());
    let flow_hub = events.as_ref().map(|_| flows::FlowHub::new(edge_record));
    reconciler.expect_sources(&Source::STREAMING);

    // The versions saved by the last run are in force until the directory
    // says otherwise; without them the daemon does not start (a broken file
    // would lose its policy).
    let store = PolicyStore::open(&config.state_dir)
        .context("opening the state directory (--state-dir)")?;
    let mut policy_dir = PolicyDir::open(&config.policy_dir, store)
        .context("reading the saved last good policy versions")?;
    // Containers only the OCI hook reported (podman's), saved by an earlier run.
    reconciler.set_hook_store(
        hook_store::HookStore::open(&config.state_dir)
            .context("opening the hook containers' records (--state-dir)")?,
    );
    policy_dir.poll();
    reconciler.set_host_policies(policy_dir.policies());
    let (files_tx, files_rx) = watch::channel(policy_dir.status());

    let listener = crate::agent::api_server::bind(&config.api_socket)?;
    let (inputs_tx, inputs_rx) = std::sync::mpsc::channel::<Input>();
    let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(Snapshot::default()));
    // The plugin's open gates: a hook that bound an endpoint is answered
    // once its gate is open.
    let open_gates = bpfwall_plugin::OpenGates::default();
    let reconcile_thread = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn({
            let stats = reconcile_stats.clone();
            let gates = config.network_plugin.is_some().then(|| open_gates.clone());
            move || reconcile_loop::run(reconciler, inputs_rx, snapshots_tx, stats, gates)
        })
        .context("cannot start the reconcile thread")?;

    // The network plugin, before the runtime sources: the loop hears which
    // endpoints are on default-deny networks before any container.
    let network_plugin = match &config.network_plugin {
        Some(plugin) => {
            let status = network_plugin::start(
                plugin,
                config.pin_root.clone(),
                config.state_dir.clone(),
                snapshots_rx.clone(),
                inputs_tx.clone(),
                open_gates,
            )
            .await?;
            let drops = match bpfwall_datapath::NetgateDropsReader::open(&config.pin_root) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), "cannot open the gate's drops: status shows the last read");
                    None
                }
            };
            Some((status, drops))
        }
        None => None,
    };

    // The runtime sources (Docker, containerd), forwarded to the loop.
    let (events_tx, mut events_rx) = mpsc::channel::<RuntimeEvent>(4096);
    tokio::spawn(docker::run(config.docker_socket.clone(), events_tx.clone()));
    tokio::spawn(containerd::run(config.containerd_socket.clone(), events_tx));
    let forward = inputs_tx.clone();
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if forward.send(Input::Runtime(event)).is_err() {
                return;
            }
        }
    });

    tokio::spawn(policy_watch::run(
        policy_dir,
        POLICY_POLL,
        inputs_tx.clone(),
        files_tx,
    ));

    // The HTTP proxy (L7 policy): its sk_lookup program on the shared pins,
    // links an earlier daemon pinned moved onto it; it follows the snapshots.
    let proxy_stats = match bpfwall_datapath::steering::Steering::load(&config.pin_root) {
        Ok((steering, adopted)) => {
            for e in &adopted.failed {
                tracing::error!(error = %error_chain(e), "a pinned netns link keeps an older program");
            }
            tracing::info!(
                moved = adopted.moved,
                defunct = adopted.defunct,
                "http proxy steering loaded"
            );
            let drops = steering
                .drop_reader()
                .map_err(|e| tracing::error!(error = %error_chain(&e), "cannot open the L7 drop counters"))
                .ok();
            let stats = Arc::new(proxy::ProxyStats::new(drops));
            // Decided requests go to `monitor` like the datapath's events,
            // limited by the same interval.
            let flows = proxy::RequestFlows::new(
                flow_hub.as_ref().map(|hub| hub.records.clone()),
                Duration::from_nanos(config.observe.events.interval_ns),
            );
            let proxy =
                proxy::Proxy::new(steering, snapshots_rx.clone(), Arc::clone(&stats), flows)
                    .context("cannot start the http proxy")?;
            tokio::spawn(proxy.run());
            Some(stats)
        }
        Err(e) => {
            // Steered ports stay closed (their connections are dropped).
            tracing::error!(error = %error_chain(&e), "cannot load the http proxy's steering: http-policed ports stay closed");
            None
        }
    };

    // Flow events: read, described, streamed and learned on a task of
    // their own; metrics on another.
    if let (Some(reader), Some(hub)) = (events, &flow_hub) {
        tokio::spawn(flows::run(
            reader,
            datapath_metrics.clone(),
            snapshots_rx.clone(),
            hub.clone(),
        ));
    }
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(
            listener,
            metrics::MetricsSource {
                snapshots: snapshots_rx.clone(),
                counters: counters.clone(),
                datapath: datapath_metrics,
                reconcile: reconcile_stats,
                per_container: config.observe.metrics_per_container,
                proxy: proxy_stats.clone(),
            },
        ));
    }

    let server = api_server::Server {
        pin_root: config.pin_root.display().to_string(),
        snapshots: snapshots_rx,
        policy_files: files_rx,
        counters,
        inputs: inputs_tx,
        network_plugin,
        proxy: proxy_stats,
        flows: flow_hub.clone(),
        events_enabled: config.observe.events.enabled,
    };
    tokio::spawn(server.serve(listener));

    tracing::info!(pin_root = %config.pin_root.display(), api = %config.api_socket.display(), docker = config.docker_socket, containerd = config.containerd_socket,
        policy_dir = %config.policy_dir.display(), state_dir = %config.state_dir.display(), "bpfwall daemon running");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    tracing::info!("stopping; pinned programs keep enforcing");
    let _ = std::fs::remove_file(&config.api_socket);
    if let Some(plugin) = &config.network_plugin {
        // Docker retries a missing plugin; the networks stay as they are.
        let _ = std::fs::remove_file(plugin.socket_dir.join(format!("{}.sock", plugin.name)));
    }
    if let Some(hub) = &flow_hub {
        if let Ok(Err(e)) = hub.edges.lock().map(|mut e| e.save_if_changed()) {
            tracing::warn!(error = %error_chain(&e), "cannot save the edge record");
        }
    }
    // Held to here: the socket is gone before another daemon may start.
    drop(lock);
    // The loop ends when its inputs do; the runtime's shutdown drops the
    // tasks holding the senders.
    drop(reconcile_thread);
    Ok(())
}
