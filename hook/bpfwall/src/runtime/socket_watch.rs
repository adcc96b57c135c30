//! Waiting for a runtime's socket without sleeping out a backoff: a
//! connect() every 50 ms, so a source is back within 50 ms of its runtime
//! answering. The first failure says, once, that the source is off (in the
//! log and as [`RuntimeEvent::Unavailable`], so that the daemon's first
//! reconcile does not wait for a runtime that is not there).

use std::time::Duration;

use tokio::sync::mpsc;

use bpfwall_sys::error_chain;

use super::{RuntimeEvent, Source};

/// While a runtime is away, its socket is tried this often.
pub const SOCKET_POLL: Duration = Duration::from_millis(50);

/// Returns once a connect() to `socket` succeeds; false when the receiver
/// of `tx` is gone (the daemon stops). Reports the source off once, on the
/// first failure.
pub async fn wait_for_socket(
    source: Source,
    socket: &str,
    tx: &mpsc::Sender<RuntimeEvent>,
) -> bool {
    let mut said = false;
    loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(_) => return true,
            Err(e) if !said => {
                let reason = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("no socket at {socket}")
                } else {
                    format!("nothing answers on {socket} ({e})")
                };
                tracing::info!(%source, socket, reason, "runtime source off: watching for its socket");
                if tx
                    .send(RuntimeEvent::Unavailable(source, reason))
                    .await
                    .is_err()
                {
                    return false;
                }
                said = true;
            }
            Err(_) => {}
        }
        if tx.is_closed() {
            return false;
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
}

/// After a failure of a runtime's API (its socket answered), the first wait...
const API_RETRY_FIRST: Duration = Duration::from_millis(50);
/// ...doubling up to this.
const API_RETRY_MAX: Duration = Duration::from_secs(1);
/// A session that listed and lasted this long ended because the runtime
/// went away, not because its API fails: reconnect as soon as the socket
/// answers.
const HEALTHY_SESSION: Duration = Duration::from_secs(1);

/// Follows a runtime forever, the same way for each source: wait for its
/// socket, run one session (`follow`: connect, list, stream events; it
/// sets `listed` once the list went out), and on its end report the
/// source `Disconnected`, or `Unavailable` when the session never listed
/// (the runtime answers, but not as it should: the first reconcile does
/// not wait for it), then start over, backing off while the API fails.
/// Returns when the receiver of `tx` is gone. Never panics.
pub async fn supervise<E: std::error::Error>(
    source: Source,
    socket: &str,
    tx: &mpsc::Sender<RuntimeEvent>,
    mut follow: impl AsyncFnMut(&str, &mpsc::Sender<RuntimeEvent>, &mut bool) -> Result<(), E>,
) {
    let mut api_retry = API_RETRY_FIRST;
    loop {
        if !wait_for_socket(source, socket, tx).await {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut listed = false;
        let result = follow(socket, tx, &mut listed).await;
        match &result {
            Ok(()) => tracing::warn!(%source, socket, "event stream ended"),
            Err(e) => tracing::warn!(%source, socket, error = %error_chain(e), "lost the runtime"),
        }
        if tx.is_closed() {
            return;
        }
        let event = match (&result, listed) {
            (Err(e), false) => RuntimeEvent::Unavailable(source, error_chain(e)),
            _ => RuntimeEvent::Disconnected(source),
        };
        if tx.send(event).await.is_err() {
            return;
        }
        if listed && started.elapsed() >= HEALTHY_SESSION {
            api_retry = API_RETRY_FIRST;
        } else {
            tokio::time::sleep(api_retry).await;
            api_retry = (api_retry * 2).min(API_RETRY_MAX);
        }
    }
}
