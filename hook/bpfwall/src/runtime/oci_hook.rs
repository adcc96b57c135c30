//! `bpfwall oci-hook`: a createRuntime hook. It reads the OCI state on
//! stdin, asks the running daemon to enforce the container, and returns
//! only once the programs are attached and the maps hold its policy.
//!
//! Where the labels come from, by runtime:
//! - Docker: its config.v2.json on disk. Never the Docker API: Docker holds
//!   the container's lock during start, so that would deadlock.
//! - containerd (`--containerd-namespace`, added by `bpfwall-runc` when a
//!   containerd shim runs it): containerd's containers service, asked by
//!   the hook itself. containerd holds no lock on the container while its
//!   task is created (the record was committed before, and reads never wait
//!   for the task), and the daemon's reconcile loop never waits on a runtime.
//! - podman (`--podman`, from the hooks.d file): podman gives the runtime
//!   none of its `--label`s, so they are read from podman's database file,
//!   read-only (`runtime::podman`). Never the podman command: podman holds
//!   the container's lock while the runtime creates it.
//! - anything else: the OCI annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::Runtime;
use crate::api::{self, Answer, EnforceRequest, Request};

/// How long the hook waits for its state, for containerd and for the daemon.
const STDIN_TIMEOUT: Duration = Duration::from_secs(5);
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(10);
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// The OCI state a runtime passes to hooks.
#[derive(Debug, Deserialize)]
struct OciState {
    id: String,
    pid: Option<u32>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Where the hook finds a container's labels (the hook's flags).
#[derive(Debug, Clone, Default)]
pub struct LabelSources {
    /// Docker's data root (config.v2.json).
    pub docker_root: PathBuf,
    /// The containerd that creates the container: its socket and the
    /// container's namespace (from `bpfwall-runc`).
    pub containerd: Option<(String, String)>,
    /// podman's storage (its database and image store), when podman runs
    /// the hook.
    pub podman: Option<super::podman::PodmanStore>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerConfigV2 {
    name: Option<String>,
    image: Option<String>,
    config: Option<DockerConfig>,
    network_settings: Option<DockerNetworkSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerNetworkSettings {
    networks: Option<BTreeMap<String, DockerEndpointSettings>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEndpointSettings {
    #[serde(rename = "EndpointID")]
    endpoint_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerConfig {
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerHostConfig {
    network_mode: Option<String>,
}

/// An image's config in Docker's image store (only its labels matter).
#[derive(Debug, Deserialize)]
struct ImageConfig {
    config: Option<DockerConfig>,
}

/// What the hook reads of a container before it runs.
#[derive(Debug, Default)]
struct Facts {
    runtime: Runtime,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    image_labels: BTreeMap<String, String>,
    joins: Option<String>,
    endpoint_ids: Vec<String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The labels of an image ("sha256:HEX") from Docker's image store, under
/// whichever storage driver holds it.
fn image_labels(docker_root: &Path, image: &str) -> BTreeMap<String, String> {
    let Some(hex) = image.strip_prefix("sha256:") else {
        return BTreeMap::new();
    };
    let Ok(drivers) = std::fs::read_dir(docker_root.join("image")) else {
        return BTreeMap::new();
    };
    for driver in drivers.flatten() {
        let path = driver.path().join("imagedb/content/sha256").join(hex);
        if let Ok(Some(config)) = read_json::<ImageConfig>(&path) {
            return config.config.and_then(|c| c.labels).unwrap_or_default();
        }
    }
    BTreeMap::new()
}

/// Name, labels, image labels and network of a container: Docker's files
/// (config.v2.json, hostconfig.json, the image store) if it has them, else
/// containerd's record, podman's database, or the OCI annotations.
async fn facts(sources: &LabelSources, state: &OciState, pid: u32) -> anyhow::Result<Facts> {
    let dir = sources.docker_root.join("containers").join(&state.id);
    let docker = read_json::<DockerConfigV2>(&dir.join("config.v2.json"))?;
    let c = match docker {
        Some(c) => c,
        None => {
            if let Some((socket, namespace)) = &sources.containerd {
                if namespace != super::DOCKER_NAMESPACE {
                    return tokio::time::timeout(
                        CONTAINERD_TIMEOUT,
                        containerd_facts(socket, namespace, &state.id, pid),
                    )
                    .await
                    .with_context(|| {
                        format!("containerd at {socket} did not answer within 10 s")
                    })?;
                }
            }
            if let Some(store) = &sources.podman {
                let c = store.container(&state.id)?;
                return Ok(Facts {
                    runtime: Runtime::Podman,
                    namespace: String::new(),
                    // Apart from Docker's names, which never hold a '/'.
                    name: format!("podman/{}", c.name),
                    labels: c.labels,
                    image_labels: c.image_labels,
                    joins: None,
                    endpoint_ids: Vec::new(),
                });
            }
            return Ok(Facts {
                runtime: Runtime::Oci,
                name: state.id.clone(),
                labels: state.annotations.clone(),
                ..Facts::default()
            });
        }
    };
    let docker_root = sources.docker_root.as_path();
    let host = read_json::<DockerHostConfig>(&dir.join("hostconfig.json"))?;
    Ok(Facts {
        runtime: Runtime::Docker,
        namespace: super::DOCKER_NAMESPACE.to_string(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
        image_labels: c
            .image
            .as_deref()
            .map(|i| image_labels(docker_root, i))
            .unwrap_or_default(),
        joins: host
            .and_then(|h| h.network_mode)
            .and_then(|m| m.strip_prefix("container:").map(str::to_string)),
        endpoint_ids: c
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|n| n.into_values())
            .filter_map(|e| e.endpoint_id.filter(|id| !id.is_empty()))
            .collect(),
    })
}

/// A containerd container's labels, from containerd (whose task is being
/// created: its record is there, and reading it waits for nothing).
async fn containerd_facts(
    socket: &str,
    namespace: &str,
    id: &str,
    pid: u32,
) -> anyhow::Result<Facts> {
    let channel = super::containerd::connect(socket).await?;
    let mut images = super::containerd::ImageLabels::default();
    let record = super::containerd::container_record(&channel, &mut images, namespace, id, pid)
        .await?
        .with_context(|| {
            format!("containerd at {socket} has no container '{id}' in namespace '{namespace}'")
        })?;
    Ok(Facts {
        runtime: Runtime::Containerd,
        namespace: namespace.to_string(),
        name: record.name,
        labels: record.labels.into_iter().collect(),
        image_labels: record.image_labels.into_iter().collect(),
        joins: None,
        endpoint_ids: Vec::new(),
    })
}

async fn enforce(socket: &Path, sources: &LabelSources) -> anyhow::Result<String> {
    let mut input = String::new();
    tokio::time::timeout(STDIN_TIMEOUT, tokio::io::stdin().read_to_string(&mut input))
        .await
        .context("no OCI state on stdin within 5 s")?
        .context("cannot read the OCI state from stdin")?;
    let state: OciState = serde_json::from_str(&input).context("stdin is not an OCI state")?;
    let pid = state.pid.context("the OCI state has no pid")?;
    // Read now: with the pid, it names this process for good.
    let pid_start_time = bpfwall_sys::process::start_time(pid).ok();
    let Facts {
        runtime,
        namespace,
        name,
        labels,
        image_labels,
        joins,
        endpoint_ids,
    } = facts(sources, &state, pid).await?;
    let request = Request::Enforce(EnforceRequest {
        id: state.id.clone(),
        name: name.clone(),
        pid,
        labels,
        pid_start_time,
        image_labels,
        joins,
        endpoint_ids,
        runtime: Some(runtime),
        namespace,
    });
    let answer = tokio::time::timeout(DAEMON_TIMEOUT, api::call(socket, &request))
        .await
        .with_context(|| {
            format!(
                "the bpfwall daemon at {} did not answer within 20 s",
                socket.display()
            )
        })?
        .with_context(|| {
            format!(
                "the bpfwall daemon is unreachable (is it running? socket {})",
                socket.display()
            )
        })?;
    match answer {
        Answer::Enforced { message } => Ok(message),
        // Every kind refuses the start (fail closed); the kind's words say why.
        Answer::Error { error, .. } => anyhow::bail!("container '{name}' refused: {error}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// Runs the hook. Exit 0 lets the container start; anything else makes the
/// runtime (and `docker run`) fail with our message on stderr.
pub async fn run(socket: &Path, sources: &LabelSources, fail_open: bool) -> std::process::ExitCode {
    match enforce(socket, sources).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) if fail_open => {
            eprintln!("bpfwall: {e:#} (fail-open: starting anyway)");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpfwall: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
