//! The router and its one layer order, outermost first:
//! catch-panic -> request context (request id, client key, access log) ->
//! route handler (chat completions directly, the rest through the router). The key is checked inside the access log's scope so
//! refused requests are logged too, with the caller's key name read from the
//! response. One middleware instead of two saves a boxed service clone and a
//! boxed future per request.

use crate::access_log::request_context;
use crate::error::{ErrorType, GatewayError};
use crate::routes::{chat_completions, health, metrics, models};
use crate::state::AppState;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::future::Either;
use http::{Method, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

pub fn build_router(state: AppState) -> Router {
    // The layers wrap the whole router once, as the fallback service of an
    // outer router. Added with `Router::layer` they would wrap each route
    // separately, and every request would clone and box a service per layer.
    let layered = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_panic| internal_error()))
        .layer(from_fn_with_state(state.clone(), request_context))
        .service(ChatFirst {
            router: routes(state.clone()),
            state,
        });
    Router::new().fallback_service(layered)
}

/// `POST /v1/chat/completions` straight to its handler, everything else
/// through the router. Nearly every request is a chat completion, and the
/// router's dispatch (path match, parameter map, a boxed service clone and
/// boxed futures) cost it ~2k instructions and four allocations.
#[derive(Clone)]
struct ChatFirst {
    router: Router,
    state: AppState,
}

impl Service<Request> for ChatFirst {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == Method::POST && request.uri().path() == CHAT_PATH {
            let state = self.state.clone();
            Either::Left(Box::pin(async move {
                Ok(chat_completions::chat_completions(State(state), request).await)
            }))
        } else {
            Either::Right(self.router.call(request))
        }
    }
}

const CHAT_PATH: &str = "/v1/chat/completions";

fn routes(state: AppState) -> Router {
    let mut router = Router::new();
    // With a separate metrics address, /metrics stays off the public side.
    if state.config().metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics::metrics));
    }
    router
        // Reached through `ChatFirst` for POST; kept for 405 on other methods.
        .route(CHAT_PATH, post(chat_completions::chat_completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Response {
    GatewayError::new(
        StatusCode::NOT_FOUND,
        ErrorType::ResourceNotFoundError,
        "no such endpoint; this gateway serves /v1/chat/completions and /v1/models",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    GatewayError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorType::InvalidRequestError,
        "method not allowed on this endpoint",
    )
    .into_response()
}

fn internal_error() -> Response {
    GatewayError::server(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error in the gateway; the request was not completed",
    )
    .into_response()
}

/// The router of the separate metrics listener (`server.metrics_listen`).
pub fn build_metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .with_state(state)
}
