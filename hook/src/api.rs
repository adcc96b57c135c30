//! The daemon's local API: one JSON request line in, one JSON answer out,
//! over a unix socket only root can reach.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::status::Status;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bpfwall/bpfwall.sock";

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's state.
    Status,
    /// Would a new connection pass, and which rule decides?
    Check {
        /// The sender.
        from: FlowEndArg,
        /// The receiver.
        to: FlowEndArg,
        /// IP protocol number.
        protocol: u8,
        /// Destination port (ICMP: type).
        port: u16,
    },
    /// A container's effective policy.
    Explain {
        /// Its name or id.
        container: String,
    },
    /// From the OCI hook: police this container before it runs; answer
    /// once its programs are attached and its policy is in the maps.
    Enforce {
        /// The container id.
        id: String,
        /// Its name.
        name: String,
        /// Its init process.
        pid: u32,
        /// Its labels.
        labels: std::collections::BTreeMap<String, String>,
    },
}

/// One end of a flow in a check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowEndArg {
    /// A container, by name or id.
    Container(String),
    /// An address.
    Address(std::net::IpAddr),
}

/// An answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// See [`Status`].
    Status(Status),
    /// See [`labels_policy::query::CheckResult`].
    Check(labels_policy::query::CheckResult),
    /// See [`labels_policy::query::Explanation`].
    Explain(labels_policy::query::Explanation),
    /// The container is policed (or not managed by this daemon).
    Enforced {
        /// What was done.
        message: String,
    },
    /// The request was not understood.
    Error {
        /// Why.
        message: String,
    },
}

/// A request handed to the daemon's loop, with where to answer.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// The answer goes here.
    pub reply: oneshot::Sender<Answer>,
}

/// Errors of the API, both sides.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Socket I/O failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not JSON of the expected shape.
    #[error("bad answer from the daemon at {path}")]
    Decode {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |op| {
        move |source| ApiError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove stale")(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod"))?;
    Ok(listener)
}

/// Accepts connections forever, passing each request to the daemon's loop.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "api accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = answer_one(stream, calls).await {
                tracing::debug!(error = %e, "api connection failed");
            }
        });
    }
}

async fn answer_one(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => Answer::Error {
            message: format!("bad request: {e}"),
        },
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if calls.send(Call { request, reply: tx }).await.is_err() {
                Answer::Error {
                    message: "daemon is shutting down".into(),
                }
            } else {
                rx.await.unwrap_or(Answer::Error {
                    message: "daemon dropped the request".into(),
                })
            }
        }
    };
    let mut text = serde_json::to_string(&answer)
        .unwrap_or_else(|e| format!("{{\"answer\":\"error\",\"message\":\"{e}\"}}"));
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Sends one request and waits for the answer.
pub async fn call(path: &Path, request: &Request) -> Result<Answer, ApiError> {
    let io = |op| {
        move |source| ApiError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(io("connect to the bpfwall daemon at"))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(|source| ApiError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(io("write to"))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io("read from"))?;
    serde_json::from_str(&line).map_err(|source| ApiError::Decode {
        path: path.to_path_buf(),
        source,
    })
}
