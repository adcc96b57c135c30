//! Serving the driver: HTTP/1.1 on `/run/docker/plugins/<name>.sock`, and
//! the one task that owns the [`Driver`] (calls are answered one at a time,
//! so two containers starting at once never race on the host). Docker
//! waits as long as a handler takes and never calls twice: every answer is
//! bounded ([`CALL_TIMEOUT`]), and a request that cannot be read is
//! answered with an error that names the call and the position, the
//! daemon carrying on.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpfwall_plugin_protocol::{Method, Response, CONTENT_TYPE};
use bpfwall_sys::{io_error, IoError};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::binding::{Bindings, OpenGates};
use crate::driver::{Driver, DriverError, NetworkDefaults};
use crate::host::{HostError, NetworkHost};
use crate::status::PluginStatus;
use crate::store::{StateStore, StoreError};
use crate::system::SystemHost;

/// The longest a call may take before it is answered with an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request body taken.
const MAX_BODY: usize = 1 << 20;
/// The firewall's jumps are put first again this often.
const UPKEEP: Duration = Duration::from_secs(10);

/// Why the plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file operation on the socket failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Another process answers on the socket.
    #[error("{} answers already (another bpfwall daemon serving plugin {name}?)", socket.display())]
    SocketInUse {
        /// The socket.
        socket: PathBuf,
        /// The plugin name.
        name: String,
    },
    /// The host could not be reached.
    #[error("the network plugin cannot reach the host")]
    Host(#[from] HostError),
    /// The saved state could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state could not be brought back.
    #[error("the network plugin cannot start")]
    Driver(#[from] DriverError),
}

/// How the plugin runs.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The driver name (`docker network create -d NAME`).
    pub name: String,
    /// Docker's plugin directory (`/run/docker/plugins`).
    pub socket_dir: PathBuf,
    /// The daemon's state directory.
    pub state_dir: PathBuf,
    /// The daemon's pin root (the gate's maps are there).
    pub pin_root: PathBuf,
}

impl PluginConfig {
    /// The socket Docker calls.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join(format!("{}.sock", self.name))
    }
}

/// What the plugin and the daemon tell each other.
#[derive(Debug)]
pub struct PluginLink {
    /// Which container holds each endpoint and whether it is policed.
    pub bindings: watch::Receiver<Bindings>,
    /// Which endpoints are on default-deny networks (sent on every change,
    /// before the call that made it is answered).
    pub defaults: mpsc::UnboundedSender<NetworkDefaults>,
    /// The plugin's status.
    pub status: watch::Sender<PluginStatus>,
    /// The endpoints whose gate is open, as last written.
    pub open_gates: OpenGates,
}

/// Binds the socket, replacing a stale one (a socket that answers is not
/// stale: another daemon serves it).
pub fn bind(socket: &Path, name: &str) -> Result<UnixListener, ServeError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(ServeError::SocketInUse {
            socket: socket.to_path_buf(),
            name: name.to_string(),
        });
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("remove the stale socket", socket)(e).into())
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(io_error("bind", socket))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("chmod", socket))?;
    Ok(listener)
}

type Call = (Method, Bytes, oneshot::Sender<Response>);

fn reply(status: u16, body: Vec<u8>) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn serve_one(
    req: hyper::Request<Incoming>,
    calls: mpsc::Sender<Call>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = match Method::from_path(req.uri().path()) {
        Ok(m) => m,
        Err(e) => return Ok(reply(404, Response::Error(e.to_string()).to_json())),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                400,
                Response::Error(format!("{method}: cannot read the request body: {e}")).to_json(),
            ))
        }
    };
    let (tx, rx) = oneshot::channel();
    if calls.send((method, body, tx)).await.is_err() {
        return Ok(reply(
            503,
            Response::Error("the bpfwall daemon is shutting down".into()).to_json(),
        ));
    }
    let answer = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Response::Error(format!("{method}: the bpfwall daemon dropped the call")),
        Err(_) => Response::Error(format!(
            "{method}: the bpfwall daemon did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    };
    Ok(reply(200, answer.to_json()))
}

/// Accepts connections forever, handing each call to `calls`.
pub async fn accept(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "plugin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| serve_one(req, calls.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "plugin connection ended");
            }
        });
    }
}

/// Owns the driver: answers calls one at a time, applies the daemon's
/// bindings as they change, and publishes status.
pub async fn drive<H: NetworkHost>(
    mut driver: Driver<H>,
    mut calls: mpsc::Receiver<Call>,
    mut link: PluginLink,
    socket: String,
) {
    driver.set_open_gates(link.open_gates.clone());
    let mut defaults = driver.defaults();
    let _ = link.defaults.send(defaults.clone());
    link.status.send_replace(driver.status(&socket));
    let mut upkeep = tokio::time::interval(UPKEEP);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            call = calls.recv() => {
                let Some((method, body, reply)) = call else { return };
                let answer = driver.call(method, &body).await;
                driver.sync_gate();
                // The loop learns of a default-deny endpoint before Docker
                // learns it exists, so before any event about its container.
                let now = driver.defaults();
                if now != defaults {
                    defaults = now;
                    let _ = link.defaults.send(defaults.clone());
                }
                let _ = reply.send(answer);
                link.status.send_replace(driver.status(&socket));
            }
            changed = link.bindings.changed() => {
                if changed.is_err() {
                    return;
                }
                let bindings = link.bindings.borrow_and_update().clone();
                driver.apply_bindings(bindings).await;
                let now = driver.defaults();
                if now != defaults {
                    defaults = now;
                    let _ = link.defaults.send(defaults.clone());
                }
                link.status.send_replace(driver.status(&socket));
            }
            _ = upkeep.tick() => {
                driver.upkeep().await;
                link.status.send_replace(driver.status(&socket));
            }
        }
    }
}

/// Starts the plugin: brings the saved state back onto the host, then
/// serves the socket. Returns once it serves (the work goes on in tasks).
pub async fn start(config: PluginConfig, link: PluginLink) -> Result<PathBuf, ServeError> {
    let socket = config.socket();
    let host = SystemHost::new(&config.pin_root, &config.name)?;
    let store = StateStore::open(&config.state_dir, &config.name)?;
    let mut driver = Driver::new(&config.name, host, store)?;
    driver.start().await?;
    let listener = bind(&socket, &config.name)?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept(listener, tx));
    tokio::spawn(drive(driver, rx, link, socket.display().to_string()));
    Ok(socket)
}
