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

use super::flows::FlowHub;
use super::input::Input;
use super::policy_watch::PolicyDirStatus;
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
    /// The network plugin's status, when it runs, and its gate's drops
    /// (read at each request: they move all the time).
    pub network_plugin: Option<(
        watch::Receiver<bpfwall_plugin::PluginStatus>,
        Option<Arc<bpfwall_datapath::NetgateDropsReader>>,
    )>,
    /// The HTTP proxy's counters and state, when it runs.
    pub proxy: Option<Arc<super::proxy::ProxyStats>>,
    /// The flow stream and the edge record (None: the event ring could
    /// not be opened).
    pub flows: Option<FlowHub>,
    /// Whether the datapath sends flow events.
    pub events_enabled: bool,
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
        let mut reader = BufReader::new(read);
        reader.read_line(&mut line).await?;
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => Answer::error(DaemonError::BadRequest {
                reason: e.to_string(),
            }),
            Ok(Request::Monitor(filter)) => return self.monitor(filter, reader, write).await,
            Ok(request) => self.answer(request).await,
        };
        write_line(&mut write, &answer).await?;
        write.shutdown().await
    }

    /// Streams flow records that pass `filter` until the client goes away
    /// (a write fails). A client that reads too slowly loses records, and
    /// is told how many in a lost-events record of its own.
    async fn monitor(
        &self,
        filter: crate::api::flow::MonitorFilter,
        mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut write: tokio::net::unix::OwnedWriteHalf,
    ) -> std::io::Result<()> {
        use crate::api::flow::MonitorRecord;
        use tokio::sync::broadcast::error::RecvError;
        if let Err(reason) = filter.validate() {
            write_line(
                &mut write,
                &Answer::error(DaemonError::BadRequest { reason }),
            )
            .await?;
            return write.shutdown().await;
        }
        let Some(flows) = &self.flows else {
            let answer = Answer::error(DaemonError::Internal {
                reason: "the flow event ring could not be opened (see the daemon's log)".into(),
            });
            write_line(&mut write, &answer).await?;
            return write.shutdown().await;
        };
        let mut records = flows.records.subscribe();
        write_line(
            &mut write,
            &Answer::Monitoring {
                events_enabled: self.events_enabled,
            },
        )
        .await?;
        let mut ignored = String::new();
        loop {
            let received = tokio::select! {
                r = records.recv() => r,
                // The client never sends more: end of file (or an error)
                // means it went away.
                n = reader.read_line(&mut ignored) => match n {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {
                        ignored.clear();
                        continue;
                    }
                },
            };
            let record = match received {
                Ok(r) => r,
                Err(RecvError::Lagged(n)) => std::sync::Arc::new(MonitorRecord::LostEvents {
                    time_unix_ns: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    count: n,
                    source: "monitor".into(),
                }),
                Err(RecvError::Closed) => return write.shutdown().await,
            };
            if filter.admits(&record) {
                write_line(&mut write, record.as_ref()).await?;
            }
        }
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
                status.network_plugin = self.network_plugin.as_ref().map(|(p, drops)| {
                    let mut p = p.borrow().clone();
                    if let Some(d) = drops.as_ref().and_then(|d| d.read().ok()) {
                        p.drops = d
                            .into_iter()
                            .map(|(r, n)| (r.name().to_string(), n))
                            .collect();
                    }
                    Box::new(p)
                });
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
            Request::Monitor(_) => Err(DaemonError::BadRequest {
                reason: "monitor is a stream: it is answered on a connection of its own".into(),
            }),
            Request::Advise { container } => self.advise(&snapshot, &container),
            Request::Edges => match &self.flows {
                Some(f) => f
                    .edges
                    .lock()
                    .map(|e| Answer::Edges(e.list()))
                    .map_err(|_| DaemonError::Internal {
                        reason: "the edge record's lock is poisoned".into(),
                    }),
                None => Ok(Answer::Edges(Default::default())),
            },
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

    fn advise(&self, snapshot: &Snapshot, container: &str) -> Result<Answer, DaemonError> {
        let input = snapshot.container_input(container)?;
        let local = super::flows::describe::workload_labels(&input.labels);
        let edges = match &self.flows {
            Some(f) => {
                f.edges
                    .lock()
                    .map(|e| e.list().edges)
                    .map_err(|_| DaemonError::Internal {
                        reason: "the edge record's lock is poisoned".into(),
                    })?
            }
            None => Vec::new(),
        };
        Ok(Answer::Advice(super::flows::advise::advise(
            &input.name,
            &local,
            &edges,
        )))
    }
}

/// Writes one JSON value and a newline.
async fn write_line<T: serde::Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &T,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(value).unwrap_or_else(|e| {
        format!("{{\"answer\":\"error\",\"error\":{{\"kind\":\"internal\",\"reason\":\"cannot encode the answer\"}},\"message\":\"{e}\"}}")
    });
    text.push('\n');
    write.write_all(text.as_bytes()).await
}
