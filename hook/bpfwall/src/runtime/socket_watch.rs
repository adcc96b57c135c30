//! Waiting for a runtime's socket without sleeping out a backoff: a
//! connect() every 50 ms, so a source is back within 50 ms of its runtime
//! answering. The first failure says, once, that the source is off (in the
//! log and as [`RuntimeEvent::Unavailable`], so that the daemon's first
//! reconcile does not wait for a runtime that is not there).

use std::time::Duration;

use tokio::sync::mpsc;

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
