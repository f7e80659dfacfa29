//! `run(listener, state, shutdown)`: serves on an already bound listener (so
//! tests bind port 0) until `shutdown` resolves, then drains: readiness turns
//! false, the listener stops accepting, requests in flight get until the
//! drain deadline, and streams still open then end with an error event.

use crate::app::build_router;
use crate::state::AppState;
use axum::serve::ListenerExt;
use std::future::{Future, IntoFuture};
use std::time::Duration;
use tokio::net::TcpListener;

/// After the drain deadline, how long ended streams get to flush their error
/// event before the server stops waiting for connections.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Nagle's algorithm plus delayed ACKs stalls small responses by ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (signalled_tx, mut signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = state.drain.clone();
    let graceful = async move {
        shutdown.await;
        drain.begin();
        let _ = signalled_tx.send(());
    };
    let serve = axum::serve(listener, build_router(state.clone()))
        .with_graceful_shutdown(graceful)
        .into_future();
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
    let deadline = state.config().drain;
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
