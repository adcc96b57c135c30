//! `bpfwall oci-hook`: a createRuntime hook. It reads the OCI state on
//! stdin, asks the running daemon to enforce the container, and returns
//! only once the programs are attached and the maps hold its policy. It
//! never calls the Docker API (Docker holds the container's lock during
//! start): labels come from Docker's config.v2.json on disk, or from the
//! OCI annotations for other runtimes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use crate::api::{self, Answer, EnforceRequest, Request};

/// How long the hook waits for its state and for the daemon.
const STDIN_TIMEOUT: Duration = Duration::from_secs(5);
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// The OCI state a runtime passes to hooks.
#[derive(Debug, Deserialize)]
struct OciState {
    id: String,
    pid: Option<u32>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
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
/// the OCI annotations.
fn facts(docker_root: &Path, state: &OciState) -> anyhow::Result<Facts> {
    let dir = docker_root.join("containers").join(&state.id);
    let Some(c) = read_json::<DockerConfigV2>(&dir.join("config.v2.json"))? else {
        return Ok(Facts {
            name: state.id.clone(),
            labels: state.annotations.clone(),
            ..Facts::default()
        });
    };
    let host = read_json::<DockerHostConfig>(&dir.join("hostconfig.json"))?;
    Ok(Facts {
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

async fn enforce(socket: &Path, docker_root: &Path) -> anyhow::Result<String> {
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
        name,
        labels,
        image_labels,
        joins,
        endpoint_ids,
    } = facts(docker_root, &state)?;
    let request = Request::Enforce(EnforceRequest {
        id: state.id.clone(),
        name: name.clone(),
        pid,
        labels,
        pid_start_time,
        image_labels,
        joins,
        endpoint_ids,
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
pub async fn run(socket: &Path, docker_root: &Path, fail_open: bool) -> std::process::ExitCode {
    match enforce(socket, docker_root).await {
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
