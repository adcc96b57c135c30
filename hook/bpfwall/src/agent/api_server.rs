//! The local API's server side: accepts connections on the daemon's unix
//! socket (mode 0600) and answers each request. Status, check and explain
//! are answered from the reconciler's last [`Snapshot`]; an OCI hook's
//! enforce request goes to the reconcile loop and waits for its answer.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use bpfwall_datapath::CounterReader;
use bpfwall_sys::{io_error, IoError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};

use super::policy_watch::PolicyDirStatus;
use super::reconcile_loop::Input;
use super::snapshot::Snapshot;
use crate::api::{Answer, DaemonError, Request};

/// Binds the socket (replacing a stale one) with mode 0600. A socket that
/// answers is not stale: it belongs to a running daemon and stays.
pub fn bind(path: &Path) -> Result<UnixListener, IoError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("create the directory of", path))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io_error("bind", path)(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process (a running bpfwall daemon?) answers on this socket",
        )));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("remove the stale socket", path)(e))
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(io_error("bind", path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("chmod", path))?;
    Ok(listener)
}

/// What every connection is answered from.
#[derive(Debug, Clone)]
pub struct Server {
    /// Shown in `status`.
    pub pin_root: String,
    /// The reconciler's last snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The policy files' state.
    pub policy_files: watch::Receiver<PolicyDirStatus>,
    /// The counters, read on the side.
    pub counters: Option<Arc<dyn CounterReader>>,
    /// The reconcile loop.
    pub inputs: Sender<Input>,
    /// The HTTP proxy's counters and state, when it runs.
    pub proxy: Option<Arc<super::proxy::ProxyStats>>,
}

impl Server {
    /// Accepts connections forever.
    pub async fn serve(self, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.answer_one(stream).await {
                    tracing::debug!(error = %e, "api connection failed");
                }
            });
        }
    }

    async fn answer_one(&self, stream: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => Answer::error(DaemonError::BadRequest {
                reason: e.to_string(),
            }),
            Ok(request) => self.answer(request).await,
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_else(|e| {
            format!("{{\"answer\":\"error\",\"error\":{{\"kind\":\"internal\",\"reason\":\"cannot encode the answer\"}},\"message\":\"{e}\"}}")
        });
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        write.shutdown().await
    }

    async fn answer(&self, request: Request) -> Answer {
        let snapshot = self.snapshots.borrow().clone();
        let result = match request {
            Request::Status => {
                let mut status = snapshot.status(
                    &self.pin_root,
                    self.counters.as_deref(),
                    self.policy_files.borrow().clone(),
                );
                if let Some(proxy) = &self.proxy {
                    proxy.fill(&mut status);
                }
                Ok(Answer::Status(status))
            }
            Request::Check {
                from,
                to,
                protocol,
                port,
                http,
            } => snapshot
                .check(&from, &to, protocol, port, http.as_ref())
                .map(Answer::Check),
            Request::Explain { container } => snapshot.explain(&container).map(Answer::Explain),
            Request::Enforce(request) => {
                let (reply, answer) = oneshot::channel();
                let busy = || DaemonError::DaemonBusy {
                    reason: "it is shutting down".into(),
                };
                if self.inputs.send(Input::Enforce { request, reply }).is_err() {
                    Err(busy())
                } else {
                    match answer.await {
                        Ok(result) => result.map(|message| Answer::Enforced { message }),
                        Err(_) => Err(busy()),
                    }
                }
            }
        };
        result.unwrap_or_else(Answer::error)
    }
}
