//! The Docker source: lists running containers, then follows events and
//! tells the agent what changed. It never blocks a handler of Docker's: it
//! only reads Docker's API.
//!
//! When dockerd goes away it says so (`Disconnected`) and watches for
//! dockerd's socket, trying a connect() every 50 ms; as soon as one
//! succeeds it negotiates (`Connected`), lists (`Resync`) and follows
//! events again. It never sleeps out a backoff while the socket answers,
//! except after a failure of dockerd's API itself (then 50 ms, doubling to
//! 1 s), so it is in sync again within a list of dockerd answering.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::socket_watch::supervise;
use super::{ContainerRecord, Runtime, RuntimeEvent, Source, DOCKER_NAMESPACE};

/// Errors talking to dockerd.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The API call failed.
    #[error("docker API call {call} failed")]
    Api {
        /// What was called.
        call: &'static str,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
}

fn api(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| DockerError::Api { call, source }
}

/// Inspects one container; None when it is not running (any more).
pub async fn inspect(docker: &Docker, id: &str) -> Result<Option<ContainerRecord>, DockerError> {
    let info = match docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(info) => info,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(e) => return Err(api("inspect_container")(e)),
    };
    let state = info.state.unwrap_or_default();
    let pid = state.pid.unwrap_or(0);
    if state.running != Some(true) || pid <= 0 {
        return Ok(None);
    }
    // Read now: with the pid, it names this process for good.
    let pid_start_time = bpfwall_sys::process::start_time(pid as u32).ok();
    let labels = info
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let image_labels = match &info.image {
        Some(image) => image_labels(docker, image).await?,
        None => Default::default(),
    };
    let joins = info
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .and_then(|mode| mode.strip_prefix("container:"))
        .map(str::to_string);
    let mut addresses = Vec::new();
    let mut endpoint_ids = Vec::new();
    if let Some(networks) = info.network_settings.and_then(|n| n.networks) {
        for settings in networks.values() {
            if let Some(id) = settings.endpoint_id.as_deref().filter(|id| !id.is_empty()) {
                endpoint_ids.push(id.to_string());
            }
            for text in [&settings.ip_address, &settings.global_ipv6_address]
                .into_iter()
                .flatten()
            {
                if let Ok(addr) = text.parse::<IpAddr>() {
                    addresses.push(addr);
                }
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    let id = info.id.unwrap_or_else(|| id.to_string());
    Ok(Some(ContainerRecord {
        runtime: Runtime::Docker,
        namespace: DOCKER_NAMESPACE.to_string(),
        runtime_id: id.clone(),
        id,
        name: info
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels,
        addresses,
        pid: pid as u32,
        pid_start_time,
        image_labels,
        joins,
        endpoint_ids,
    }))
}

/// The labels an image carries (the container has them unless it set
/// another value): none when the image is gone.
async fn image_labels(
    docker: &Docker,
    image: &str,
) -> Result<labels_policy::LabelSet, DockerError> {
    match docker.inspect_image(image).await {
        Ok(info) => Ok(info
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(Default::default()),
        Err(e) => Err(api("inspect_image")(e)),
    }
}

async fn list_running(docker: &Docker) -> Result<Vec<ContainerRecord>, DockerError> {
    let summaries = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
        .await
        .map_err(api("list_containers"))?;
    let mut out = Vec::new();
    for s in summaries {
        let Some(id) = s.id else { continue };
        if let Some(record) = inspect(docker, &id).await? {
            out.push(record);
        }
    }
    Ok(out)
}

/// What a Docker event means for bpfwall: re-inspect, or remove, a container.
fn classify(event: &bollard::models::EventMessage) -> Option<(bool, String)> {
    use bollard::models::EventMessageTypeEnum as T;
    let action = event.action.as_deref()?;
    let actor = event.actor.as_ref()?;
    match event.typ? {
        T::CONTAINER => {
            let id = actor.id.clone()?;
            match action {
                "start" | "unpause" | "rename" | "restart" => Some((true, id)),
                "die" | "destroy" => Some((false, id)),
                _ => None,
            }
        }
        T::NETWORK => {
            let id = actor.attributes.as_ref()?.get("container")?.clone();
            match action {
                "connect" | "disconnect" => Some((true, id)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Follows dockerd forever: wait for its socket, connect, list, stream
/// events; on any failure, report `Disconnected` and start over. Never
/// panics.
pub async fn run(socket: String, tx: mpsc::Sender<RuntimeEvent>) {
    supervise(Source::Docker, &socket, &tx, follow).await;
}

async fn follow(
    socket: &str,
    tx: &mpsc::Sender<RuntimeEvent>,
    listed: &mut bool,
) -> Result<(), DockerError> {
    let docker = Docker::connect_with_unix(socket, 30, bollard::API_DEFAULT_VERSION)
        .map_err(api("connect"))?;
    let docker = docker.negotiate_version().await.map_err(api("version"))?;
    if tx
        .send(RuntimeEvent::Connected(Source::Docker))
        .await
        .is_err()
    {
        return Ok(());
    }
    // Subscribe from a moment before the list, so nothing between the two is missed.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_sub(1));
    let containers = list_running(&docker).await?;
    tracing::info!(socket, containers = containers.len(), "connected to docker");
    if tx
        .send(RuntimeEvent::Resync(Source::Docker, containers))
        .await
        .is_err()
    {
        return Ok(());
    }
    *listed = true;
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("type", vec!["container", "network"])]);
    let options = EventsOptionsBuilder::new()
        .since(&since.to_string())
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));
    while let Some(event) = events.next().await {
        let event = event.map_err(api("events"))?;
        let Some((running, id)) = classify(&event) else {
            continue;
        };
        let message = if running {
            match inspect(&docker, &id).await? {
                Some(record) => RuntimeEvent::Upsert(Source::Docker, record),
                None => RuntimeEvent::Remove(Source::Docker, id),
            }
        } else {
            RuntimeEvent::Remove(Source::Docker, id)
        };
        if tx.send(message).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
