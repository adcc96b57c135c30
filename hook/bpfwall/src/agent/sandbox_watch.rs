//! Binding a network plugin endpoint without the runtime wrapper, usually
//! before the container's first instruction.
//!
//! At Join Docker gives the endpoint's sandbox key
//! (`/var/run/docker/netns/<id>`); libnetwork's prestart hook mounts the
//! container's network namespace there while runc's init waits, in the
//! container's cgroup, for the container to be started. For each newly
//! joined endpoint a task polls the key (every millisecond, for at most
//! [`WATCH_FOR`]; never in the plugin's handler, where Docker holds the
//! container's lock) until it is a network namespace; then finds the one
//! container whose processes are in it (the container id from their cgroup
//! path), reads that container's labels from Docker's files on disk (never
//! Docker's API), and asks the reconcile loop to police it exactly as the
//! OCI hook does: the loop binds the endpoints whose sandbox is that
//! namespace and answers once their gates are open.
//!
//! Anything unexpected (no process, processes of two containers, a
//! container Docker has no files for, a refusal) ends the task: the gate
//! stays closed until Docker's events bind the endpoint, as without it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use bpfwall_plugin::NetworkDefaults;
use tokio::sync::oneshot;

use super::reconcile_loop::Input;

/// How long a joined endpoint's sandbox key is watched.
pub const WATCH_FOR: Duration = Duration::from_secs(10);
/// How often it is looked at.
const POLL: Duration = Duration::from_millis(1);

/// Starts a watch for each endpoint the plugin newly joined.
#[derive(Debug)]
pub struct SandboxWatch {
    docker_root: PathBuf,
    inputs: Sender<Input>,
    watched: BTreeSet<String>,
}

impl SandboxWatch {
    /// Watches for containers whose config is under `docker_root`.
    pub fn new(docker_root: PathBuf, inputs: Sender<Input>) -> Self {
        SandboxWatch {
            docker_root,
            inputs,
            watched: BTreeSet::new(),
        }
    }

    /// Takes the plugin's latest word: watches the endpoints joined since.
    pub fn saw(&mut self, defaults: &NetworkDefaults) {
        self.watched
            .retain(|e| defaults.sandbox_keys.contains_key(e));
        for (endpoint, key) in &defaults.sandbox_keys {
            if self.watched.insert(endpoint.clone()) {
                let addresses = defaults
                    .sandbox_addresses
                    .get(endpoint)
                    .cloned()
                    .unwrap_or_default();
                tokio::spawn(watch(
                    endpoint.clone(),
                    PathBuf::from(key),
                    addresses,
                    self.docker_root.clone(),
                    self.inputs.clone(),
                ));
            }
        }
    }
}

/// The (device, inode) of the namespace at `path`, if it is one other than
/// the host's.
fn namespace_at(path: &Path, nsfs: (u64, u64)) -> Option<(u64, u64)> {
    match bpfwall_sys::netns::netns_at(path) {
        Ok(at) if at.0 == nsfs.0 && at != nsfs => Some(at),
        _ => None,
    }
}

/// A Docker container id from a process's cgroup path (`/docker/<id>`, or
/// `.../docker-<id>.scope` under systemd).
pub fn docker_id_of_cgroup(cgroup: &str) -> Option<String> {
    let last = cgroup.trim_end().rsplit('/').next()?;
    let id = last
        .strip_prefix("docker-")
        .and_then(|l| l.strip_suffix(".scope"))
        .unwrap_or(last);
    (id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| id.to_string())
}

/// The container whose processes are in namespace `ns`, and one of them
/// (the lowest pid: its init): None unless exactly one container's are.
fn container_in(ns: (u64, u64)) -> Option<(String, u32)> {
    let mut found: Option<(String, u32)> = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let proc_ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if bpfwall_sys::netns::netns_at(&proc_ns).ok() != Some(ns) {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue; // gone meanwhile
        };
        let id = cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .or_else(|| cgroup.lines().find_map(|l| l.split(':').nth(2)))
            .and_then(docker_id_of_cgroup)?;
        match &found {
            Some((other, _)) if *other != id => return None,
            Some((_, low)) if *low <= pid => {}
            _ => found = Some((id, pid)),
        }
    }
    found
}

async fn watch(
    endpoint: String,
    key: PathBuf,
    addresses: Vec<IpAddr>,
    docker_root: PathBuf,
    inputs: Sender<Input>,
) {
    let Ok(nsfs) = bpfwall_sys::netns::netns_at(Path::new("/proc/self/ns/net")) else {
        return;
    };
    let since = Instant::now();
    let ns = loop {
        if let Some(ns) = namespace_at(&key, nsfs) {
            break ns;
        }
        if since.elapsed() > WATCH_FOR {
            tracing::debug!(endpoint = %endpoint, sandbox = %key.display(), "the sandbox never became a namespace: left to Docker's events");
            return;
        }
        tokio::time::sleep(POLL).await;
    };
    let namespace_ms = since.elapsed().as_millis() as u64;
    let Some((id, pid)) = tokio::task::spawn_blocking(move || container_in(ns))
        .await
        .ok()
        .flatten()
    else {
        tracing::debug!(endpoint = %endpoint, sandbox = %key.display(), "no one container's process in the sandbox: left to Docker's events");
        return;
    };
    // Docker mounts the namespace first, then moves the interface in and
    // gives it its addresses: the container is policed with the addresses
    // it sends from (read from its namespace), so only once they are there.
    if addresses.is_empty() {
        return;
    }
    loop {
        let have = tokio::task::spawn_blocking(move || bpfwall_sys::netns::addresses_of_pid(pid))
            .await
            .ok()
            .and_then(Result::ok);
        match have {
            Some(have) if addresses.iter().all(|a| have.contains(a)) => break,
            Some(_) if since.elapsed() <= WATCH_FOR => tokio::time::sleep(POLL).await,
            _ => {
                tracing::debug!(endpoint = %endpoint, pid, "the sandbox never got the endpoint's addresses: left to Docker's events");
                return;
            }
        }
    }
    let start_time = bpfwall_sys::process::start_time(pid).ok();
    let request = match crate::runtime::oci_hook::docker_request(&docker_root, &id, pid, start_time)
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::debug!(endpoint = %endpoint, container = %id, "Docker has no files for the sandbox's container: left to Docker's events");
            return;
        }
        Err(e) => {
            tracing::warn!(endpoint = %endpoint, container = %id, error = %format!("{e:#}"), "cannot read the sandbox's container: left to Docker's events");
            return;
        }
    };
    // Still the process whose namespace and cgroup were read.
    if start_time.is_none() || bpfwall_sys::process::start_time(pid).ok() != start_time {
        return;
    }
    let name = request.name.clone();
    let asked_ms = since.elapsed().as_millis() as u64;
    let (reply, answer) = oneshot::channel();
    if inputs.send(Input::Enforce { request, reply }).is_err() {
        return;
    }
    match answer.await {
        Ok(Ok(message)) => tracing::info!(endpoint = %endpoint, container = %name, pid,
            namespace_ms, asked_ms, bound_ms = since.elapsed().as_millis() as u64, %message, "bound from its sandbox"),
        Ok(Err(e)) => tracing::info!(endpoint = %endpoint, container = %name, error = %e,
            "not bound from its sandbox: left to Docker's events"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::docker_id_of_cgroup;

    const ID: &str = "4c9217d7772479e2c67af18ac67c2a00cf732341fa86090d7c314bfe95530477";

    #[test]
    fn a_docker_id_is_read_from_either_cgroup_driver_and_nothing_else() {
        assert_eq!(
            docker_id_of_cgroup(&format!("/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            docker_id_of_cgroup(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some(ID)
        );
        for other in [
            "/",
            "/system.slice/docker.service",
            "/docker/abc",
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/user.slice/podman-{ID}.scope"),
        ] {
            assert_eq!(docker_id_of_cgroup(other), None, "{other}");
        }
    }
}
