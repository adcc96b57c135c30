//! The daemon's local API, both sides: one JSON request line in, one JSON
//! answer line out, over a unix socket only root can reach (`monitor` is
//! the one stream: its answer is followed by one [`flow::MonitorRecord`] a
//! line until the client goes away). The CLI, the
//! OCI hook, the benchmarks and the tests are its clients; errors travel as
//! a [`DaemonError`] with a kind, so clients match on the kind and never on
//! the text.

pub mod flow;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bpfwall_sys::{io_error, IoError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use status::{
    DirectionStatus, EndpointStatus, FileStatus, MapStatus, ProxyState, SourceStatus, Status,
    VersionInForce,
};

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
        /// An HTTP request the connection carries (TCP only): answered
        /// with the HTTP rule that decides it.
        #[serde(default)]
        http: Option<HttpCheck>,
    },
    /// A container's effective policy.
    Explain {
        /// Its name or id.
        container: String,
    },
    /// From the OCI hook: police this container before it runs; answer
    /// once its programs are attached and its policy is in the maps.
    Enforce(EnforceRequest),
    /// Stream flow records: answered with `monitoring` (or an error), then
    /// one [`flow::MonitorRecord`] a line until the client goes away.
    Monitor(flow::MonitorFilter),
    /// The least allow policy for what a container was seen doing.
    Advise {
        /// Its name or id.
        container: String,
    },
    /// Every learned edge (`bpfwall map`).
    Edges,
}

/// What the OCI hook knows of a container being created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforceRequest {
    /// The container id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its init process.
    pub pid: u32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When its init process started (`/proc/PID/stat` field 22), read by
    /// the hook: the daemon refuses a pid that is now another process.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    /// The labels its image carries (left out of its identity by default).
    #[serde(default)]
    pub image_labels: BTreeMap<String, String>,
    /// The container whose network namespace it joined, if any.
    #[serde(default)]
    pub joins: Option<String>,
    /// Docker's endpoint ids of its networks, as its config.v2.json has
    /// them when the hook runs (binds bpfwall networks' endpoints to it).
    #[serde(default)]
    pub endpoint_ids: Vec<String>,
    /// Which runtime runs it (None from a hook of an older bpfwall: oci).
    #[serde(default)]
    pub runtime: Option<crate::runtime::Runtime>,
    /// Its containerd namespace (`moby` for Docker's).
    #[serde(default)]
    pub namespace: String,
}

/// An HTTP request to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    /// The method.
    pub method: String,
    /// The request target as a client sends it (`/path?query`).
    pub target: String,
    /// Headers, as a client sends them (a `Host` header sets the host).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
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
    /// The request failed.
    Error {
        /// What failed, with its kind.
        error: DaemonError,
        /// The same in words.
        message: String,
    },
    /// A monitor is on: flow records follow, one a line.
    Monitoring {
        /// Whether the datapath sends events (`--no-flow-events` turns them off).
        events_enabled: bool,
    },
    /// See [`flow::Advice`].
    Advice(flow::Advice),
    /// See [`flow::EdgeList`].
    Edges(flow::EdgeList),
}

impl Answer {
    /// An error answer.
    pub fn error(error: DaemonError) -> Answer {
        Answer::Error {
            message: error.to_string(),
            error,
        }
    }
}

/// One label of a container that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelProblem {
    /// The label key.
    pub label: String,
    /// Column in the label's value, from 1.
    pub column: usize,
    /// The parser's message, naming label and column.
    pub message: String,
}

/// Why the daemon could not do what was asked. The kind (`kind` in JSON)
/// is what clients act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DaemonError {
    /// A container's policy labels do not parse: it must not start.
    #[error("{}", problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))]
    PolicyInvalid {
        /// The container.
        container: String,
        /// Each label that does not parse.
        problems: Vec<LabelProblem>,
    },
    /// The daemon cannot answer yet (it has not listed the runtime's
    /// containers, or it is shutting down): retry in a moment.
    #[error("the bpfwall daemon is busy: {reason}; retry in a moment")]
    DaemonBusy {
        /// Why.
        reason: String,
    },
    /// No running container has that name or id.
    #[error("no running container is named '{container}'")]
    NotFound {
        /// The name asked for.
        container: String,
    },
    /// An id prefix matches several containers.
    #[error("'{prefix}' is the start of several container ids")]
    Ambiguous {
        /// The prefix asked for.
        prefix: String,
    },
    /// The container could not be policed (its cgroup, its addresses, or
    /// the attach failed).
    #[error("{reason}")]
    NotPoliced {
        /// The container.
        container: String,
        /// Why, naming what failed.
        reason: String,
    },
    /// The maps could not be brought in line with the policy.
    #[error("policy could not be applied: {reason}")]
    ApplyFailed {
        /// Why, naming the map.
        reason: String,
    },
    /// The request did not parse.
    #[error("bad request: {reason}")]
    BadRequest {
        /// Why.
        reason: String,
    },
    /// The daemon disagrees with itself (a bug): said, never hidden.
    #[error("internal error: {reason}")]
    Internal {
        /// What disagreed.
        reason: String,
    },
}

/// Errors of talking to the daemon, on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Socket I/O failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The answer was not JSON of the expected shape.
    #[error("bad answer from the daemon at {}", path.display())]
    Decode {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one request and waits for the answer.
pub async fn call(path: &Path, request: &Request) -> Result<Answer, ApiError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(io_error("connect to the bpfwall daemon at", path))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(|source| ApiError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(io_error("write to", path))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io_error("read from", path))?;
    serde_json::from_str(&line).map_err(|source| ApiError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_kind_and_their_words() {
        let answer = Answer::error(DaemonError::NotFound {
            container: "web".into(),
        });
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["answer"], "error");
        assert_eq!(json["error"]["kind"], "not_found");
        assert_eq!(json["error"]["container"], "web");
        assert_eq!(json["message"], "no running container is named 'web'");
        let back: Answer = serde_json::from_value(json).unwrap();
        assert!(matches!(
            back,
            Answer::Error {
                error: DaemonError::NotFound { .. },
                ..
            }
        ));
    }

    #[test]
    fn an_enforce_request_reads_as_before() {
        let line =
            r#"{"request":"enforce","id":"abc","name":"web","pid":42,"labels":{"id":"web"}}"#;
        let r: Request = serde_json::from_str(line).unwrap();
        assert!(matches!(
            r,
            Request::Enforce(EnforceRequest { pid: 42, .. })
        ));
    }
}
