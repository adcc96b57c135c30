//! One client connection through the proxy: its L3/L4 verdict again (the
//! policy may have changed since the sk_lookup program let it through),
//! then either a plain tunnel to the server (no HTTP rule restricts it) or
//! HTTP/1.x, every request decided: a denied one gets 403 and the
//! connection stays usable; an allowed one goes to the server over the
//! namespace's loopback, with the client's address in X-Forwarded-For,
//! its body streamed; `Upgrade` is tunnelled once its request is allowed.
//! HTTP/2 prior knowledge and anything else that is not HTTP/1.x is closed
//! unanswered; a malformed request gets 400 and a head above the bound 431,
//! and the connection is closed.

use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfwall_sys::error_chain;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use labels_policy::compile::Network;
use labels_policy::datapath_abi::{EndpointKey, L7DropReason};
use labels_policy::decision::{decide, ipcache_identity, l7_steered, CtState, Decision, Packet};
use labels_policy::http::HttpRequest;
use labels_policy::http_decision::{ConnectionRules, RequestVerdict};
use labels_policy::Direction;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::netns_sockets::{NetnsSockets, SocketKind};
use super::request_flows::{Decided, RequestFlows};
use super::stats::{Closed, ProxyStats};
use super::upstream::{self, Answer, BoxError, ExchangeError, Upstream};
use crate::agent::snapshot::Snapshot;

/// The most a request line and headers may take (then 431).
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have (then 431).
pub const MAX_HEADERS: usize = 100;
/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a denied request's body read (and dropped) to keep its
/// connection usable; past it the connection is closed after the 403.
const DRAIN_LIMIT: usize = 1 << 20;

type Body = BoxBody<Bytes, BoxError>;

/// A container the proxy serves.
#[derive(Debug)]
pub struct Served {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its network namespace.
    pub netns: Arc<File>,
    /// That namespace's inode.
    pub inode: u64,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The reconciler's snapshots: the policy in force.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Makes the sockets to the servers.
    pub sockets: NetnsSockets,
    /// Counters.
    pub stats: Arc<ProxyStats>,
    /// Records of decided requests, for `bpfwall monitor`.
    pub flows: RequestFlows,
}

/// Why a connection is refused before any request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The container is not served (any more), or the port is not steered.
    NotSteered,
    /// L3/L4 policy does not let it through (any more).
    Denied(Decision),
}

/// One connection's policy, as of one snapshot.
#[derive(Debug, Clone)]
struct Policy {
    snapshot: Arc<Snapshot>,
    server: u32,
    client: u32,
    port: u16,
    /// The client, if it is a container of the snapshot.
    client_container: Option<String>,
}

impl Policy {
    fn rules(&self) -> ConnectionRules<'_> {
        ConnectionRules::of(&self.snapshot.compiled, self.client, self.server, self.port)
    }
}

/// The connection's verdict under one snapshot.
fn evaluate(
    snapshot: &Arc<Snapshot>,
    served: &Served,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Policy, Refusal> {
    let index = snapshot
        .input_ids
        .iter()
        .position(|id| *id == served.id)
        .ok_or(Refusal::NotSteered)?;
    let input = &snapshot.inputs[index];
    let report = &snapshot.compiled.containers[index];
    let attachment = input.attachment.ok_or(Refusal::NotSteered)?;
    let endpoint = snapshot
        .compiled
        .endpoints
        .get(&EndpointKey {
            cgroup_id: attachment.cgroup_id,
        })
        .ok_or(Refusal::NotSteered)?;
    if input.network != Network::Own
        || !input.addresses.contains(&local.ip())
        || !l7_steered(&snapshot.compiled, report.identity, local.port())
    {
        return Err(Refusal::NotSteered);
    }
    let packet = Packet {
        direction: Direction::Ingress,
        local: local.ip(),
        remote: peer.ip(),
        protocol: labels_policy::datapath_abi::IPPROTO_TCP,
        dport: local.port(),
        tcp_syn: true,
        loopback: false,
    };
    // The container's own program would drop a steered connection as one
    // that went around the proxy: here it is the proxy's.
    match decide(&snapshot.compiled, endpoint, &packet, CtState::None) {
        Decision::Pass | Decision::DropL7(L7DropReason::Bypass) => {}
        other => return Err(Refusal::Denied(other)),
    }
    let client_container = snapshot
        .inputs
        .iter()
        .zip(snapshot.input_ids.iter())
        .find(|(c, _)| c.network == Network::Own && c.addresses.contains(&peer.ip()))
        .map(|(_, id)| id.clone());
    Ok(Policy {
        snapshot: Arc::clone(snapshot),
        server: report.identity,
        client: ipcache_identity(&snapshot.compiled, peer.ip()),
        port: local.port(),
        client_container,
    })
}

/// Serves one accepted connection to its end.
pub async fn serve(shared: Arc<Shared>, served: Arc<Served>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let snapshot = shared.snapshots.borrow().clone();
    let policy = match evaluate(&snapshot, &served, local, peer) {
        Ok(p) => p,
        Err(refusal) => {
            let closed = match refusal {
                Refusal::NotSteered => Closed::NotSteered,
                Refusal::Denied(_) => Closed::Revoked,
            };
            tracing::debug!(container = %served.name, %peer, %local, ?refusal, "connection refused by the proxy");
            shared.stats.closed(closed);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    if !policy.rules().restricts() {
        tunnel(&shared, &served, stream, local, peer, None).await;
        return;
    }
    match first_bytes(&stream).await {
        Some(First::Http) => {}
        Some(First::Http2) => {
            tracing::info!(container = %served.name, %peer, "closed an HTTP/2 connection on an http-policed port");
            shared.stats.closed(Closed::Http2);
            return;
        }
        Some(First::Other) => {
            tracing::info!(container = %served.name, %peer, "closed a connection that is not HTTP/1.x on an http-policed port");
            shared.stats.closed(Closed::NotHttp);
            return;
        }
        None => return,
    }
    let conn = Arc::new(Conn {
        shared: Arc::clone(&shared),
        served: Arc::clone(&served),
        local,
        peer,
        upstream: upstream::Slot::default(),
        policy: Mutex::new(policy),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(Lingering(Some(stream))), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        if e.is_parse_too_large() {
            shared.stats.closed(Closed::Oversized);
        } else if e.is_parse() {
            shared.stats.closed(Closed::Malformed);
        }
        tracing::debug!(container = %served.name, %peer, error = %e, "http connection ended");
    }
}

/// A client connection that, when dropped, first says it is done writing
/// and reads what the client still sends for a moment: closing with
/// unread data would reset the connection and the client could lose the
/// 400 or 431 just written (a "lingering close").
#[derive(Debug)]
struct Lingering(Option<TcpStream>);

/// How long a closed connection's late bytes are read.
const LINGER: Duration = Duration::from_secs(2);

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.0.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            None => std::task::Poll::Ready(Ok(0)),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// What a connection's first bytes look like.
#[derive(Debug, PartialEq, Eq)]
enum First {
    Http,
    Http2,
    Other,
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Peeks at the first bytes: enough to tell HTTP/2's preface and what is
/// not an HTTP/1 request line (a method token, then a space) from HTTP/1.
async fn first_bytes(stream: &TcpStream) -> Option<First> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        if let Some(space) = seen.iter().position(|b| *b == b' ') {
            if space == 0 || !seen[..space].iter().all(|b| is_token_byte(*b)) {
                return Some(First::Other);
            }
            if PREFACE.starts_with(seen) || seen.starts_with(PREFACE) {
                if n >= PREFACE.len() {
                    return Some(First::Http2);
                }
            } else {
                return Some(First::Http);
            }
        } else if !seen.iter().all(|b| is_token_byte(*b)) {
            return Some(First::Other);
        }
        if n == buf.len() {
            // A "method" of 24 token bytes and no space: not HTTP/1.
            return Some(First::Other);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One HTTP connection's state.
#[derive(Debug)]
struct Conn {
    shared: Arc<Shared>,
    served: Arc<Served>,
    local: SocketAddr,
    peer: SocketAddr,
    /// The connection to the server, made at the first allowed request,
    /// back here after each answer the server lets it carry another.
    upstream: upstream::Slot,
    /// The connection's policy under the last snapshot seen: evaluated
    /// again only when a new snapshot is in force.
    policy: Mutex<Policy>,
}

fn text(status: StatusCode, body: &'static str, close: bool) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Headers that concern one hop only (RFC 9110 7.6.1), and those the
/// Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Reads and drops a denied request's body, up to `DRAIN_LIMIT`. True when
/// it was read whole (the connection can go on).
async fn drain(body: Incoming) -> bool {
    let mut body = body;
    let mut read = 0usize;
    loop {
        match tokio::time::timeout(HEAD_TIMEOUT, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    if read > DRAIN_LIMIT {
                        return false;
                    }
                }
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

impl Conn {
    /// The connection's policy under the snapshot in force.
    fn policy(&self) -> Result<Policy, Refusal> {
        let snapshot = self.shared.snapshots.borrow().clone();
        let Ok(mut cached) = self.policy.lock() else {
            return evaluate(&snapshot, &self.served, self.local, self.peer);
        };
        if !Arc::ptr_eq(&cached.snapshot, &snapshot) {
            *cached = evaluate(&snapshot, &self.served, self.local, self.peer)?;
        }
        Ok(cached.clone())
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let policy = match self.policy() {
            Ok(p) => p,
            Err(refusal) => {
                tracing::info!(container = %self.served.name, peer = %self.peer, ?refusal, "policy no longer admits this connection: closed");
                self.shared.stats.closed(Closed::Revoked);
                return text(
                    StatusCode::FORBIDDEN,
                    "Forbidden: bpfwall policy no longer admits this connection\n",
                    true,
                );
            }
        };
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().to_string());
        let target = match (req.uri().scheme_str(), req.uri().authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{target}"),
            _ => target,
        };
        let request = match HttpRequest::from_parts(
            req.method().as_str(),
            &target,
            req.headers()
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(container = %self.served.name, peer = %self.peer, error = %e, "malformed request: 400");
                self.shared.stats.closed(Closed::Malformed);
                return text(StatusCode::BAD_REQUEST, "Bad Request\n", true);
            }
        };
        let (egress, ingress) = policy.rules().decide(&request);
        self.count(&policy, &request, Direction::Egress, egress.as_ref());
        self.count(&policy, &request, Direction::Ingress, ingress.as_ref());
        let denied = [
            (Direction::Egress, egress.as_ref()),
            (Direction::Ingress, ingress.as_ref()),
        ]
        .into_iter()
        .find_map(|(d, v)| v.filter(|v| !v.allowed()).map(|v| (d, v.clone())));
        if let Some((direction, verdict)) = denied {
            let whose = match direction {
                Direction::Ingress => self.served.name.clone(),
                Direction::Egress => policy
                    .client_container
                    .as_deref()
                    .and_then(|id| policy.snapshot.containers.iter().find(|c| c.id == id))
                    .map_or_else(|| self.peer.ip().to_string(), |c| c.record.name.clone()),
            };
            tracing::warn!(
                container = %self.served.name,
                peer = %self.peer.ip(),
                method = %request.method,
                path = %request.target,
                rule = %verdict.describe(),
                side = %format!("{direction} of {whose}"),
                "http request denied"
            );
            let complete = drain(req.into_body()).await;
            return text(
                StatusCode::FORBIDDEN,
                "Forbidden: denied by bpfwall policy\n",
                !complete,
            );
        }
        // Allowed: to the server, in normal form, with the client's address.
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        match Uri::try_from(request.target.as_str()) {
            Ok(uri) => parts.uri = uri,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Bad Request\n", true),
        }
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(before) => format!("{before}, {}", self.peer.ip()),
            None => self.peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            parts.headers.insert("x-forwarded-for", v);
        }
        let mut body = body;
        let (head, answer) = match self
            .exchange(&parts.method, &request.target, &parts.headers, &mut body)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(container = %self.served.name, error = %error_chain(&e), "cannot reach the server");
                return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n", true);
            }
        };
        let (mut parts, ()) = head.into_parts();
        match answer {
            Answer::Upgraded(up) => {
                // The server's connection now carries the new protocol.
                let Some(client_upgrade) = client_upgrade else {
                    tracing::warn!(container = %self.served.name, "the server switched protocols unasked");
                    return text(StatusCode::BAD_GATEWAY, "Bad Gateway\n", true);
                };
                let shared = Arc::clone(&self.shared);
                let served = Arc::clone(&self.served);
                let (local, peer) = (self.local, self.peer);
                tokio::spawn(async move {
                    let Ok(client) = client_upgrade.await else {
                        return;
                    };
                    let mut client = TokioIo::new(client);
                    let (server, ahead) = upstream::into_upgraded(up);
                    if !ahead.is_empty() {
                        use tokio::io::AsyncWriteExt as _;
                        if client.write_all(&ahead).await.is_err() {
                            return;
                        }
                    }
                    splice(&shared, &served, client, server, local, peer, Some(request)).await;
                });
                Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
            }
            Answer::Body {
                upstream,
                framing,
                keep,
            } => {
                strip_hop_by_hop(&mut parts.headers, false);
                let body = upstream::body(upstream, framing, keep, Arc::clone(&self.upstream));
                Response::from_parts(parts, body.boxed())
            }
        }
    }

    /// Counts one side's verdict on a request and reports it to monitors.
    fn count(
        &self,
        policy: &Policy,
        request: &HttpRequest,
        direction: Direction,
        verdict: Option<&RequestVerdict>,
    ) {
        let Some(verdict) = verdict else { return };
        let container = match direction {
            Direction::Ingress => Some(self.served.id.as_str()),
            Direction::Egress => policy.client_container.as_deref(),
        };
        self.shared
            .stats
            .request(container, direction, verdict.allowed());
        self.shared.flows.report(&Decided {
            snapshot: &policy.snapshot,
            server: (&self.served.id, &self.served.name),
            identities: (policy.server, policy.client),
            local: self.local,
            peer: self.peer,
            direction,
            verdict,
            request,
        });
    }

    /// Carries a request to the server and reads its answer's head, on
    /// the kept connection when it is still usable (again on a new one
    /// when the server had closed it unseen and nothing was consumed).
    async fn exchange(
        &self,
        method: &http::Method,
        target: &str,
        headers: &HeaderMap,
        body: &mut Incoming,
    ) -> Result<(Response<()>, Answer), UpstreamError> {
        let kept = self
            .upstream
            .lock()
            .ok()
            .and_then(|mut u| u.take())
            .filter(Upstream::idle_usable);
        let first = match kept {
            Some(up) => up,
            None => self.connect().await?,
        };
        match upstream::exchange(first, method, target, headers, body).await {
            Ok(r) => Ok(r),
            Err((_, true)) => {
                let fresh = self.connect().await?;
                upstream::exchange(fresh, method, target, headers, body)
                    .await
                    .map_err(|(e, _)| UpstreamError::Exchange(e))
            }
            Err((e, false)) => Err(UpstreamError::Exchange(e)),
        }
    }

    async fn connect(&self) -> Result<Upstream, UpstreamError> {
        let stream = connect_server(&self.shared.sockets, &self.served, self.local).await?;
        Ok(Upstream::new(stream))
    }
}

/// Why the server could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No socket in the container's namespace.
    #[error(transparent)]
    Socket(#[from] super::netns_sockets::NetnsSocketError),
    /// The connection failed.
    #[error("connect to {addr}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP with the server failed.
    #[error("http with the server")]
    Exchange(#[source] ExchangeError),
}

/// A connection to the server: from inside the container's namespace, to
/// the address the client asked for (over the loopback device, where
/// nothing steers or polices it).
async fn connect_server(
    sockets: &NetnsSockets,
    served: &Served,
    addr: SocketAddr,
) -> Result<TcpStream, UpstreamError> {
    let fd = sockets
        .make(
            &served.netns,
            served.inode,
            SocketKind::Stream { v6: addr.is_ipv6() },
        )
        .await?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    socket
        .connect(addr)
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })
}

/// A connection no HTTP rule restricts: bytes both ways, until either
/// side closes or the policy no longer admits it (or starts restricting
/// it, when it is closed so the next one is decided request by request).
async fn tunnel(
    shared: &Arc<Shared>,
    served: &Arc<Served>,
    mut client: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    request: Option<HttpRequest>,
) {
    let server = match connect_server(&shared.sockets, served, local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(container = %served.name, error = %e, "cannot reach the server");
            return;
        }
    };
    let mut server = server;
    let mut snapshots = shared.snapshots.clone();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = still_admitted(&mut snapshots, served, local, peer, request) => {
            shared.stats.closed(Closed::Revoked);
        }
    }
}

/// Bytes both ways between an upgraded client and server connection,
/// while the policy admits the request that upgraded them.
async fn splice<A, B>(
    shared: &Arc<Shared>,
    served: &Arc<Served>,
    mut client: A,
    mut server: B,
    local: SocketAddr,
    peer: SocketAddr,
    request: Option<HttpRequest>,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut snapshots = shared.snapshots.clone();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = still_admitted(&mut snapshots, served, local, peer, request) => {
            shared.stats.closed(Closed::Revoked);
        }
    }
}

/// Returns when a new policy no longer admits the connection (or the
/// request that upgraded it); pending while it does.
async fn still_admitted(
    snapshots: &mut watch::Receiver<Arc<Snapshot>>,
    served: &Served,
    local: SocketAddr,
    peer: SocketAddr,
    request: Option<HttpRequest>,
) {
    loop {
        if snapshots.changed().await.is_err() {
            return std::future::pending().await;
        }
        let snapshot = snapshots.borrow_and_update().clone();
        let admitted = match evaluate(&snapshot, served, local, peer) {
            Err(_) => false,
            Ok(policy) => {
                let rules = policy.rules();
                match &request {
                    None => !rules.restricts(),
                    Some(r) => {
                        let (egress, ingress) = rules.decide(r);
                        egress.is_none_or(|v| v.allowed()) && ingress.is_none_or(|v| v.allowed())
                    }
                }
            }
        };
        if !admitted {
            tracing::info!(container = %served.name, %peer, "policy changed and no longer admits a tunnelled connection: closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[tokio::test]
    async fn first_bytes_tell_http1_from_the_rest() {
        async fn classify(bytes: &'static [u8]) -> Option<First> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(bytes).await.unwrap();
                s.shutdown().await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
            let (server, _) = listener.accept().await.unwrap();
            let got = first_bytes(&server).await;
            client.await.unwrap();
            got
        }
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n").await, Some(First::Http));
        assert_eq!(
            classify(b"PRI /x HTTP/1.1\r\n\r\n").await,
            Some(First::Http)
        );
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await,
            Some(First::Http2)
        );
        assert_eq!(classify(b"\x16\x03\x01\x02\x00").await, Some(First::Other));
        assert_eq!(
            classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
            Some(First::Other)
        );
        assert_eq!(classify(b"").await, None);
    }
}
