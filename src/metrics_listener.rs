//! The separate metrics listener (`server.metrics_listen`): the metrics
//! router served over HTTP/1.1, one task per connection.
//!
//! hyper's own `date` field is turned off: its formatter panics on a wall
//! clock before 1970 or past year 9999, which would leave every probe
//! unanswered. The field is written from the gateway's clock reading,
//! which holds the second within those years, as the main listener's is.

use crate::app::metrics_router;
use crate::coarse_clock;
use crate::server::response_head::http_date;
use crate::state::AppState;
use axum::Router;
use axum::response::Response;
use http::{HeaderValue, header};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves the metrics router on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, state: AppState) {
    let router = metrics_router(state).layer(axum::middleware::map_response(with_date));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors: handled as the main listener handles it
            // (idle provider connections closed, one line a second at most).
            Err(err) => {
                if crate::server::accept_failed(err, "metrics") {
                    tokio::time::sleep(crate::server::ACCEPT_PAUSE).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, router.clone()));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, router: Router) {
    // The timer gives hyper its 30 s limit on a request head, so a silent
    // connection is not kept for ever.
    let _ = http1::Builder::new()
        .auto_date_header(false)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await;
}

async fn with_date(mut response: Response) -> Response {
    if let Ok(date) = HeaderValue::try_from(http_date(coarse_clock::unix_seconds())) {
        response.headers_mut().insert(header::DATE, date);
    }
    response
}
