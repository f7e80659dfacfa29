//! `run(listener, state, shutdown)`: serves on an already bound listener (so
//! tests bind port 0) until `shutdown` resolves, then drains: readiness turns
//! false, the listener stops accepting, requests in flight get until the
//! drain deadline, and streams still open then end with an error event.
//!
//! Each connection is served by the gateway's own HTTP/1.1 connection
//! (`conn/`) in a task of its own: every request goes to
//! [`Gateway::handle`], with no tower layers in between.

mod conn;
mod connection_cap;
mod output;
mod request_body;
mod request_head;
pub(crate) mod response_head;

pub use request_body::{BodyError, RequestBody};

use crate::app::Gateway;
use crate::state::AppState;
use connection_cap::ConnectionCap;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After the drain deadline, how long ended streams get to flush their error
/// event before the server stops waiting for connections.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = state.drain.clone();
    let graceful = async move {
        shutdown.await;
        drain.begin();
        let _ = signalled_tx.send(());
    };
    let serve = serve(listener, Gateway::new(state.clone()), graceful);
    tokio::pin!(serve);

    tokio::select! {
        biased;
        Ok(()) = &mut signalled_rx => {}
        result = &mut serve => {
            // An idle server ends as soon as the signal lands, which can be
            // while it is being polled here (the signal runs on another
            // worker): the drain is then already over.
            if signalled_rx.try_recv().is_ok() {
                tracing::info!("drained: no request was in flight");
            }
            return result;
        }
    }
    let deadline = state.config().server.drain;
    tracing::info!(
        drain_secs = deadline.as_secs_f64(),
        "draining: no new connections; waiting for requests in flight"
    );
    tokio::select! {
        result = &mut serve => {
            tracing::info!("drained: every request finished");
            return result;
        }
        _ = tokio::time::sleep(deadline) => {}
    }
    tracing::warn!("drain deadline passed: ending the streams still open");
    state.drain.end_streams();
    match tokio::time::timeout(FLUSH_GRACE, &mut serve).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("requests still in flight after the drain deadline were cut off");
            Ok(())
        }
    }
}

/// Accepts connections until `shutdown` resolves, then closes each one once
/// its request in flight (if any) has been answered, and returns when all
/// are closed.
async fn serve(
    listener: TcpListener,
    gateway: std::sync::Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let state = gateway.state();
    let fits = crate::fd_limit::default_max_connections();
    let max = state.config().effective_max_connections();
    if max > fits {
        tracing::warn!(
            max_connections = max,
            fits,
            "server.max_connections is more than the open-file limit has descriptors for \
             (two per stream): past that, requests fail with gateway_out_of_resources"
        );
    }
    tracing::info!(max_connections = max, "client connections capped");
    let mut cap = ConnectionCap::new(max, &closing, &state.metrics);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if accept_failed(err, "main") {
                        // A stop meanwhile is not kept waiting.
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap, this one connection waits accepted (its request
        // unread) and the rest in the listen backlog.
        let room = tokio::select! {
            room = cap.room() => room,
            () = &mut shutdown => break,
        };
        connections.spawn(connection_task(tcp, peer.ip(), &gateway, &cap, room));
    }
    drop(listener);
    // Idle connections close now, busy ones after their response.
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// What serves one accepted connection, as spawned: the connection's own
/// future, which holds its place under the cap. tokio keeps it for the
/// connection's life, so its size is memory per open stream; an async
/// block around it that awaited it would hold room for it twice (~6 KB
/// more per connection, measured), hence no wrapper.
fn connection_task(
    tcp: tokio::net::TcpStream,
    client: std::net::IpAddr,
    gateway: &std::sync::Arc<Gateway>,
    cap: &ConnectionCap,
    place: connection_cap::OpenConnection,
) -> impl Future<Output = ()> + Send + 'static {
    // Nagle's algorithm plus delayed ACKs stalls small responses by ~40 ms.
    let _ = tcp.set_nodelay(true);
    let idle = gateway.state().config().server.client_idle;
    conn::serve(tcp, client, gateway.clone(), cap.close_token(), idle, place)
}

/// How long accepting pauses after it failed for want of descriptors.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// A failed accept: a peer that left before it was accepted is nothing; a
/// full descriptor table (EMFILE) first closes the idle provider
/// connections, and accepting goes on at once if that freed any; otherwise
/// it is logged, and accepting pauses (`true`) so open connections can end
/// and free descriptors. `listener` names it in the log: `main` or
/// `metrics`, whose accept loops share this.
pub(crate) fn accept_failed(err: std::io::Error, listener: &'static str) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return false;
    }
    if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        let closed = crate::client::close_idle_everywhere();
        if closed > 0 {
            tracing::warn!(
                closed,
                listener,
                "out of descriptors: closed the idle provider connections to accept a client"
            );
            return false;
        }
    }
    tracing::error!(error = %err, listener, "accepting a connection failed; retrying in 1 s");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection keeps its task's future for its whole life,
    /// a stream's included: its size is memory per open stream, guarded.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let state = AppState::new(crate::config::load(None).unwrap());
        let metrics = state.metrics.clone();
        let gateway = Gateway::new(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let closing = CancellationToken::new();
        let mut cap = ConnectionCap::new(4, &closing, &metrics);
        let place = cap.room().await;
        let (tcp, peer) = accepted.unwrap();
        let task = connection_task(tcp, peer.ip(), &gateway, &cap, place);
        let size = size_of_val(&task);
        drop((task, client));
        assert!(size <= 8192, "{size}");
    }
}
