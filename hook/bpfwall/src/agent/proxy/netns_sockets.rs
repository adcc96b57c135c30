//! Sockets made inside containers' network namespaces.
//!
//! A socket belongs to the network namespace of the thread that creates
//! it, for life. The proxy's listening sockets must live in the served
//! container's namespace (the sk_lookup program hands them connections
//! that arrive there), and so must its connections to the server (over the
//! namespace's loopback). One thread of its own switches namespaces
//! (`setns`) and makes them; no other thread of the daemon ever leaves the
//! host's namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

/// What a socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// A listening TCP socket on the namespace's loopback (an ephemeral
    /// port): the sk_lookup program hands it connections whatever their
    /// address.
    Listener {
        /// IPv6 (bound to ::1, IPv6 only) rather than IPv4 (127.0.0.1).
        v6: bool,
    },
    /// An unconnected TCP socket bound to the namespace's loopback
    /// address, to connect to the server.
    Stream {
        /// IPv6 rather than IPv4.
        v6: bool,
    },
}

/// Why a socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsSocketError {
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {netns}")]
    Enter {
        /// The namespace's inode.
        netns: u64,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A socket call failed.
    #[error("{call} in network namespace {netns}")]
    Socket {
        /// The call.
        call: &'static str,
        /// The namespace's inode.
        netns: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread that makes sockets is gone.
    #[error("the thread that makes sockets in namespaces is gone")]
    Gone,
}

struct Order {
    netns: Arc<File>,
    inode: u64,
    kind: SocketKind,
    reply: oneshot::Sender<Result<OwnedFd, NetnsSocketError>>,
}

/// A handle on the thread that makes sockets in namespaces.
#[derive(Debug, Clone)]
pub struct NetnsSockets {
    orders: mpsc::Sender<Order>,
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Order")
            .field("inode", &self.inode)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn make(kind: SocketKind, netns: u64) -> Result<OwnedFd, NetnsSocketError> {
    let err = |call| {
        move |source| NetnsSocketError::Socket {
            call,
            netns,
            source,
        }
    };
    match kind {
        SocketKind::Listener { v6 } => {
            let (domain, addr) = if v6 {
                (
                    socket2::Domain::IPV6,
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
                )
            } else {
                (
                    socket2::Domain::IPV4,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                )
            };
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
                    .map_err(err("socket"))?;
            if v6 {
                s.set_only_v6(true).map_err(err("IPV6_V6ONLY"))?;
            }
            s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
            s.bind(&addr.into()).map_err(err("bind"))?;
            s.listen(1024).map_err(err("listen"))?;
            Ok(s.into())
        }
        SocketKind::Stream { v6 } => {
            // From the loopback address: the sk_lookup program never steers
            // a connection from there (nothing outside the namespace sends
            // from it), so the proxy's own hop reaches the server.
            let (domain, from) = if v6 {
                (
                    socket2::Domain::IPV6,
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
                )
            } else {
                (
                    socket2::Domain::IPV4,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                )
            };
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
                    .map_err(err("socket"))?;
            s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
            s.set_tcp_nodelay(true).map_err(err("TCP_NODELAY"))?;
            s.bind(&from.into()).map_err(err("bind"))?;
            Ok(s.into())
        }
    }
}

impl NetnsSockets {
    /// Starts the thread.
    pub fn start() -> std::io::Result<NetnsSockets> {
        let (orders, rx) = mpsc::channel::<Order>();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                let mut current: Option<u64> = None;
                while let Ok(order) = rx.recv() {
                    let result = if current == Some(order.inode) {
                        make(order.kind, order.inode)
                    } else {
                        match nix::sched::setns(
                            order.netns.as_fd(),
                            nix::sched::CloneFlags::CLONE_NEWNET,
                        ) {
                            Ok(()) => {
                                current = Some(order.inode);
                                make(order.kind, order.inode)
                            }
                            Err(source) => {
                                current = None;
                                Err(NetnsSocketError::Enter {
                                    netns: order.inode,
                                    source,
                                })
                            }
                        }
                    };
                    let _ = order.reply.send(result);
                }
            })?;
        Ok(NetnsSockets { orders })
    }

    /// A socket of `kind` in the namespace `netns` (whose inode is `inode`).
    pub async fn make(
        &self,
        netns: &Arc<File>,
        inode: u64,
        kind: SocketKind,
    ) -> Result<OwnedFd, NetnsSocketError> {
        let (reply, answer) = oneshot::channel();
        self.orders
            .send(Order {
                netns: Arc::clone(netns),
                inode,
                kind,
                reply,
            })
            .map_err(|_| NetnsSocketError::Gone)?;
        answer.await.map_err(|_| NetnsSocketError::Gone)?
    }
}
