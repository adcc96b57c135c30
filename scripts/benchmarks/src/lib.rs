//! bpfwall's benchmark programs (run by `scripts/bench`; not part of the
//! product). This library holds what they share: a `bpfwall daemon`
//! process of their own, with its own pin root, socket,
//! policy directory and manage label, stopped and torn down on drop (also
//! when the benchmark fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfwall::api::{self, Answer, ApiError, Request, Status};

/// Errors of the benchmark daemon.
#[derive(Debug, thiserror::Error)]
pub enum BenchDaemonError {
    /// Spawning the daemon or a runtime failed.
    #[error("cannot {what}")]
    Spawn {
        /// What was tried.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The daemon answered something else.
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(String),
    /// The daemon did not come up in time.
    #[error("the daemon did not come up on {0}")]
    NotReady(PathBuf),
}

/// A running `bpfwall daemon` of a benchmark's own.
#[derive(Debug)]
pub struct BenchDaemon {
    pins: PathBuf,
    socket: PathBuf,
    policy_dir: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
}

impl BenchDaemon {
    /// Starts `bpfwall daemon` managing containers labelled `label=1`, and
    /// waits until it has listed Docker's containers.
    pub fn start(bpfwall: &Path, name: &str, label: &str) -> Result<BenchDaemon, BenchDaemonError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| BenchDaemonError::Spawn { what, source }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build a tokio runtime"))?;
        let policy_dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&policy_dir).map_err(io("create a policy directory"))?;
        let mut daemon = BenchDaemon {
            pins: PathBuf::from(format!("/sys/fs/bpf/bpfwall_v1_{}", name.replace('-', "_"))),
            socket: PathBuf::from(format!("/run/{name}.sock")),
            policy_dir,
            child: None,
            rt,
        };
        let child = Command::new(bpfwall)
            .arg("daemon")
            .arg("--bpffs-root")
            .arg(&daemon.pins)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--policy-dir")
            .arg(&daemon.policy_dir)
            .args(["--manage-label", &format!("{label}=1")])
            // The plugin socket is one per host: a benchmark's daemon
            // leaves it to the host's daemon.
            .arg("--no-network-plugin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start the daemon"))?;
        daemon.child = Some(child);
        let t0 = Instant::now();
        while daemon.status().map_or(true, |s| !s.docker_synced) {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(BenchDaemonError::NotReady(daemon.socket.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// One API call.
    pub fn call(&self, request: &Request) -> Result<Answer, BenchDaemonError> {
        Ok(self.rt.block_on(api::call(&self.socket, request))?)
    }

    /// The daemon's status.
    pub fn status(&self) -> Result<Status, BenchDaemonError> {
        match self.call(&Request::Status)? {
            Answer::Status(s) => Ok(s),
            other => Err(BenchDaemonError::Unexpected(format!("{other:?}"))),
        }
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = bpfwall_datapath::remove_pins(&self.pins);
        let _ = std::fs::remove_dir_all(&self.policy_dir);
        let _ = std::fs::remove_file(&self.socket);
    }
}
