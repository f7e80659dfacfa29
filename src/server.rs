//! `run(listener, state, shutdown)`: serves on an already bound listener (so
//! tests bind port 0) until `shutdown` resolves, then drains in-flight requests.

use crate::app::build_router;
use crate::state::AppState;
use axum::serve::ListenerExt;
use std::future::Future;
use tokio::net::TcpListener;

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Nagle's algorithm plus delayed ACKs stalls small responses by ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, build_router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
