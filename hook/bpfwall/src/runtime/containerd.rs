//! The containerd source: containers that containerd runs itself (`ctr`,
//! nerdctl, build systems), in every namespace but Docker's own (`moby`
//! and `plugins.moby` are the Docker source's, so no container is managed
//! twice). It lists every namespace's tasks, then follows the task and
//! container events, and tells the agent what changed; it only reads
//! containerd's API.
//!
//! A container's labels come from containerd's container record (with its
//! image's labels, read from the image's config in the content store, so
//! that identities leave them out as they do for Docker); its pid from the
//! task. Its addresses are read by the reconciler inside its network
//! namespace: such a container may have no network any runtime knows of.
//!
//! Reconnects as the Docker source does: while containerd is away its
//! socket is tried every 50 ms (`socket_watch`), and as soon as it answers
//! the source subscribes, lists (`Resync`) and follows events again.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    events_client::EventsClient, images_client::ImagesClient, namespaces_client::NamespacesClient,
    tasks_client::TasksClient, GetContainerRequest, GetImageRequest, GetRequest,
    ListNamespacesRequest, ListTasksRequest, ReadContentRequest, SubscribeRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Code};
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::mpsc;

use super::socket_watch::supervise;
use super::{container_key, ContainerRecord, Runtime, RuntimeEvent, Source, DOCKER_NAMESPACE};

/// Where containerd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// containerd namespaces that are Docker's (the Docker source has them).
const DOCKER_NAMESPACES: [&str; 2] = [DOCKER_NAMESPACE, "plugins.moby"];

/// The event topics the source follows.
const TOPICS: [&str; 5] = [
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/containers/update",
    "/containers/delete",
];

/// Manifests and image configs are small; anything larger is refused.
const MAX_BLOB: usize = 4 << 20;

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be connected.
    #[error("cannot connect to containerd at {socket}")]
    Connect {
        /// The socket.
        socket: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// An API call failed.
    #[error("containerd API call {call} failed (namespace '{namespace}')")]
    Api {
        /// What was called.
        call: &'static str,
        /// The namespace it was called in.
        namespace: String,
        /// The cause.
        #[source]
        source: Box<tonic::Status>,
    },
    /// An image's manifest or config is not what containerd says it is.
    #[error("image {image} in namespace '{namespace}': {what}")]
    Image {
        /// The image reference.
        image: String,
        /// The namespace.
        namespace: String,
        /// What is wrong.
        what: String,
    },
}

fn api(call: &'static str, namespace: &str) -> impl FnOnce(tonic::Status) -> ContainerdError {
    let namespace = namespace.to_string();
    move |source| ContainerdError::Api {
        call,
        namespace,
        source: Box::new(source),
    }
}

/// A request in a containerd namespace.
fn in_namespace<T>(message: T, namespace: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert("containerd-namespace", value);
    }
    request
}

/// Connects to containerd's socket.
pub async fn connect(socket: &str) -> Result<Channel, ContainerdError> {
    containerd_client::connect(socket)
        .await
        .map_err(|source| ContainerdError::Connect {
            socket: socket.to_string(),
            source,
        })
}

/// What is known of an image's labels, by the digest its name points at.
#[derive(Debug, Default)]
pub struct ImageLabels {
    by_digest: HashMap<String, BTreeMap<String, String>>,
}

impl ImageLabels {
    /// The labels of the image `name` in `namespace` (its config's
    /// `config.Labels`); empty when the image is gone.
    pub async fn get(
        &mut self,
        channel: &Channel,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, ContainerdError> {
        if name.is_empty() {
            return Ok(BTreeMap::new());
        }
        let image = match ImagesClient::new(channel.clone())
            .get(in_namespace(
                GetImageRequest {
                    name: name.to_string(),
                },
                namespace,
            ))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(api("images.get", namespace)(s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(BTreeMap::new());
        };
        if let Some(labels) = self.by_digest.get(&target.digest) {
            return Ok(labels.clone());
        }
        let bad = |what: String| ContainerdError::Image {
            image: name.to_string(),
            namespace: namespace.to_string(),
            what,
        };
        let mut blob = read_blob(channel, namespace, &target.digest).await?;
        let mut doc: serde_json::Value = serde_json::from_slice(&blob)
            .map_err(|e| bad(format!("{} is not JSON: {e}", target.digest)))?;
        // An index (multi-platform): the manifest for this machine.
        if let Some(manifests) = doc.get("manifests").and_then(|m| m.as_array()) {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let digest = manifests
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .or_else(|| manifests.first())
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| bad("its index has no manifest for this platform".into()))?
                .to_string();
            blob = read_blob(channel, namespace, &digest).await?;
            doc = serde_json::from_slice(&blob)
                .map_err(|e| bad(format!("manifest {digest} is not JSON: {e}")))?;
        }
        let config = doc["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("its manifest names no config".into()))?
            .to_string();
        let blob = read_blob(channel, namespace, &config).await?;
        let config: serde_json::Value = serde_json::from_slice(&blob)
            .map_err(|e| bad(format!("config {config} is not JSON: {e}")))?;
        let labels: BTreeMap<String, String> = config["config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.by_digest.insert(target.digest, labels.clone());
        Ok(labels)
    }
}

/// A blob of the content store, whole.
async fn read_blob(
    channel: &Channel,
    namespace: &str,
    digest: &str,
) -> Result<Vec<u8>, ContainerdError> {
    let mut stream = ContentClient::new(channel.clone())
        .read(in_namespace(
            ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            namespace,
        ))
        .await
        .map_err(api("content.read", namespace))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(api("content.read", namespace))?;
        out.extend_from_slice(&chunk.data);
        if out.len() > MAX_BLOB {
            return Err(ContainerdError::Image {
                image: digest.to_string(),
                namespace: namespace.to_string(),
                what: format!("blob larger than {MAX_BLOB} bytes"),
            });
        }
    }
    Ok(out)
}

/// A container of `namespace` whose task runs as `pid`, as bpfwall needs
/// it; None when containerd no longer has the container.
pub async fn container_record(
    channel: &Channel,
    images: &mut ImageLabels,
    namespace: &str,
    id: &str,
    pid: u32,
) -> Result<Option<ContainerRecord>, ContainerdError> {
    // Read first: with the pid, it names this process for good.
    let pid_start_time = bpfwall_sys::process::start_time(pid).ok();
    let container = match ContainersClient::new(channel.clone())
        .get(in_namespace(
            GetContainerRequest { id: id.to_string() },
            namespace,
        ))
        .await
    {
        Ok(r) => r.into_inner().container,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => return Err(api("containers.get", namespace)(s)),
    };
    let Some(container) = container else {
        return Ok(None);
    };
    let image_labels = images.get(channel, namespace, &container.image).await?;
    Ok(Some(ContainerRecord {
        id: container_key(Runtime::Containerd, namespace, id),
        name: format!("{namespace}/{id}"),
        runtime: Runtime::Containerd,
        namespace: namespace.to_string(),
        runtime_id: id.to_string(),
        labels: container.labels.into_iter().collect(),
        addresses: Vec::new(),
        pid,
        pid_start_time,
        image_labels: image_labels.into_iter().collect(),
        joins: None,
        endpoint_ids: Vec::new(),
    }))
}

/// The running task of a container: its pid, or None.
async fn task_pid(
    channel: &Channel,
    namespace: &str,
    id: &str,
) -> Result<Option<u32>, ContainerdError> {
    match TasksClient::new(channel.clone())
        .get(in_namespace(
            GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
            namespace,
        ))
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .process
            .filter(|p| alive(p.status) && p.pid > 0)
            .map(|p| p.pid)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(api("tasks.get", namespace)(s)),
    }
}

/// A task status whose process exists (created, running, paused, pausing).
fn alive(status: i32) -> bool {
    use containerd_client::types::v1::Status;
    [
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Pausing,
    ]
    .iter()
    .any(|s| *s as i32 == status)
}

/// Every namespace's live tasks, but Docker's.
async fn list_running(
    channel: &Channel,
    images: &mut ImageLabels,
) -> Result<Vec<ContainerRecord>, ContainerdError> {
    let namespaces = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest {
            filter: String::new(),
        })
        .await
        .map_err(api("namespaces.list", ""))?
        .into_inner()
        .namespaces;
    let mut out = Vec::new();
    for ns in namespaces {
        let ns = ns.name;
        if DOCKER_NAMESPACES.contains(&ns.as_str()) {
            continue;
        }
        let tasks = TasksClient::new(channel.clone())
            .list(in_namespace(
                ListTasksRequest {
                    filter: String::new(),
                },
                &ns,
            ))
            .await
            .map_err(api("tasks.list", &ns))?
            .into_inner()
            .tasks;
        for task in tasks {
            if !alive(task.status) || task.pid == 0 {
                continue;
            }
            let id = if task.container_id.is_empty() {
                task.id
            } else {
                task.container_id
            };
            if let Some(record) = container_record(channel, images, &ns, &id, task.pid).await? {
                out.push(record);
            }
        }
    }
    Ok(out)
}

/// Time for the subscription to reach containerd before the list.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(20);
/// The list is taken again this often, while events flow.
const RELIST: Duration = Duration::from_secs(30);

/// Follows containerd forever: wait for its socket, subscribe, list,
/// follow events; on any failure, report it and start over. Never panics.
pub async fn run(socket: String, tx: mpsc::Sender<RuntimeEvent>) {
    supervise(Source::Containerd, &socket, &tx, follow).await;
}

/// What one event means: the key of a container to look at again (with
/// its pid when the event says it), or to forget.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// A task started (with its pid) or a container changed (pid unknown).
    Refresh {
        namespace: String,
        id: String,
        pid: Option<u32>,
    },
    /// The task or container is gone.
    Gone { namespace: String, id: String },
}

/// Reads an event envelope; None for what the source does not follow
/// (other topics, Docker's namespaces, an exec's exit).
fn classify(namespace: &str, topic: &str, payload: &[u8]) -> Option<Change> {
    use containerd_client::events::{
        ContainerDelete, ContainerUpdate, TaskDelete, TaskExit, TaskStart,
    };
    if DOCKER_NAMESPACES.contains(&namespace) {
        return None;
    }
    let namespace = namespace.to_string();
    let gone = |id: String| {
        Some(Change::Gone {
            namespace: namespace.clone(),
            id,
        })
    };
    match topic {
        "/tasks/start" => {
            let e = TaskStart::decode(payload).ok()?;
            Some(Change::Refresh {
                namespace,
                id: e.container_id,
                pid: Some(e.pid),
            })
        }
        "/tasks/exit" => {
            let e = TaskExit::decode(payload).ok()?;
            // An exec's exit is not the container's.
            (e.id.is_empty() || e.id == e.container_id)
                .then_some(())
                .and_then(|()| gone(e.container_id))
        }
        "/tasks/delete" => {
            let e = TaskDelete::decode(payload).ok()?;
            (e.id.is_empty() || e.id == e.container_id)
                .then_some(())
                .and_then(|()| gone(e.container_id))
        }
        "/containers/update" => {
            let e = ContainerUpdate::decode(payload).ok()?;
            Some(Change::Refresh {
                namespace,
                id: e.id,
                pid: None,
            })
        }
        "/containers/delete" => {
            let e = ContainerDelete::decode(payload).ok()?;
            gone(e.id)
        }
        _ => None,
    }
}

async fn follow(
    socket: &str,
    tx: &mpsc::Sender<RuntimeEvent>,
    listed: &mut bool,
) -> Result<(), ContainerdError> {
    let channel = connect(socket).await?;
    if tx
        .send(RuntimeEvent::Connected(Source::Containerd))
        .await
        .is_err()
    {
        return Ok(());
    }
    // Subscribed before the list, so nothing between the two is missed
    // (what happened meanwhile is applied after the list, in order).
    // containerd answers a subscription only with its first event, so the
    // stream is read by a task of its own; the request is on the wire
    // before the list is asked for.
    let filters = TOPICS.iter().map(|t| format!("topic==\"{t}\"")).collect();
    let (events_tx, mut events) = mpsc::channel(1024);
    let subscription = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let stream = EventsClient::new(channel)
                .subscribe(SubscribeRequest { filters })
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = events_tx.send(Err(e)).await;
                    return;
                }
            };
            loop {
                let next = match stream.next().await {
                    Some(next) => next,
                    None => Err(tonic::Status::unavailable("the event stream ended")),
                };
                let end = next.is_err();
                if events_tx.send(next).await.is_err() || end {
                    return;
                }
            }
        })
    };
    // Stops the reader with the session, however it ends.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _subscription = AbortOnDrop(subscription);
    tokio::time::sleep(SUBSCRIBE_SETTLE).await;
    let mut images = ImageLabels::default();
    let containers = list_running(&channel, &mut images).await?;
    tracing::info!(
        socket,
        containers = containers.len(),
        "connected to containerd"
    );
    if tx
        .send(RuntimeEvent::Resync(Source::Containerd, containers))
        .await
        .is_err()
    {
        return Ok(());
    }
    *listed = true;
    let mut relist = tokio::time::interval(RELIST);
    relist.tick().await;
    loop {
        let envelope = tokio::select! {
            envelope = events.recv() => envelope,
            _ = relist.tick() => {
                // A safety net: the list again (a change between the list
                // and the subscription taking effect is not missed for long).
                let containers = list_running(&channel, &mut images).await?;
                if tx.send(RuntimeEvent::Resync(Source::Containerd, containers)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(envelope) = envelope else {
            return Ok(());
        };
        let envelope = envelope.map_err(api("events.subscribe", ""))?;
        let Some(event) = envelope.event else {
            continue;
        };
        let Some(change) = classify(&envelope.namespace, &envelope.topic, &event.value) else {
            continue;
        };
        let message = match change {
            Change::Gone { namespace, id } => RuntimeEvent::Remove(
                Source::Containerd,
                container_key(Runtime::Containerd, &namespace, &id),
            ),
            Change::Refresh { namespace, id, pid } => {
                let pid = match pid {
                    Some(pid) => Some(pid),
                    None => task_pid(&channel, &namespace, &id).await?,
                };
                let record = match pid {
                    Some(pid) => {
                        container_record(&channel, &mut images, &namespace, &id, pid).await?
                    }
                    None => None,
                };
                match record {
                    Some(record) => RuntimeEvent::Upsert(Source::Containerd, record),
                    // No task (an update of a stopped container), or gone.
                    None if pid.is_none() => continue,
                    None => RuntimeEvent::Remove(
                        Source::Containerd,
                        container_key(Runtime::Containerd, &namespace, &id),
                    ),
                }
            }
        };
        if tx.send(message).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::events::{TaskExit, TaskStart};

    #[test]
    fn reads_the_events_it_follows_and_leaves_dockers_alone() {
        let start = TaskStart {
            container_id: "web".into(),
            pid: 42,
        }
        .encode_to_vec();
        assert_eq!(
            classify("default", "/tasks/start", &start),
            Some(Change::Refresh {
                namespace: "default".into(),
                id: "web".into(),
                pid: Some(42)
            })
        );
        assert_eq!(classify("moby", "/tasks/start", &start), None);
        assert_eq!(classify("plugins.moby", "/tasks/start", &start), None);
        let exit = |id: &str| {
            TaskExit {
                container_id: "web".into(),
                id: id.into(),
                pid: 42,
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert_eq!(
            classify("k8s.io", "/tasks/exit", &exit("web")),
            Some(Change::Gone {
                namespace: "k8s.io".into(),
                id: "web".into()
            })
        );
        assert_eq!(
            classify("default", "/tasks/exit", &exit("exec-1")),
            None,
            "an exec's exit is not the container's"
        );
        assert_eq!(classify("default", "/images/create", &start), None);
    }

    #[test]
    fn keys_are_unique_per_namespace_and_pin_safe() {
        let a = container_key(Runtime::Containerd, "default", "web.1");
        let b = container_key(Runtime::Containerd, "k8s.io", "web.1");
        assert_ne!(a, b);
        assert_eq!(a, "containerd:default:web%2E1");
        assert!(!b.contains('.') && !b.contains('/'));
        assert_eq!(super::super::key_source(&a), Some(Source::Containerd));
    }
}
