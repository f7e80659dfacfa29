//! What every request goes through, outermost first: panic catching ->
//! request context (request id, client key, access log) -> the handler
//! (chat completions directly, the rest through the router). The key is
//! checked inside the access log's scope, so refused requests are logged too.

use crate::error::{ErrorType, GatewayError};
use crate::proxy::headers::X_REQUEST_ID;
use crate::request_context::{Handled, RequestScope, request_context};
use crate::request_progress::RequestProgress;
use crate::routes::{chat_completions, health, metrics, models};
use crate::state::AppState;
use crate::wire_fields::WireFields;
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::FutureExt;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tower::ServiceExt;

/// The gateway's request handling, shared by every connection.
pub struct Gateway {
    state: AppState,
    /// Everything but `POST /v1/chat/completions`.
    router: Router,
}

impl Gateway {
    pub fn new(state: AppState) -> Arc<Gateway> {
        Arc::new(Gateway {
            router: api_router(state.clone()),
            state,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// One request, start to end. The pieces are plain function calls, not
    /// tower layers: each layer (axum's router, `from_fn`, catch-panic)
    /// cloned and boxed a service or a future per request.
    ///
    /// A panicking handler answers 500 and is logged and counted like any
    /// other request; a panic outside it still answers 500, unlogged and
    /// left in `in_flight_requests` (its decrement is the log record's; no
    /// input is known to reach such a panic).
    /// Besides the response: its header fields in wire form, written after
    /// the header map's. `id` is the request's [`request_id`], which every
    /// answer carries.
    ///
    /// The request's head is borrowed, not moved: passed by value, its
    /// ~250 bytes would be copied at every layer down to the body reader.
    ///
    /// `progress` is where a handler dropped before it answers (the drain
    /// deadline) leaves the provider it had reached, for the caller's
    /// answer in its place.
    ///
    /// [`request_id`]: crate::request_id::request_id
    pub async fn handle<B>(
        self: Arc<Self>,
        head: &Parts,
        body: B,
        id: HeaderValue,
        progress: &RequestProgress,
    ) -> (Response, WireFields)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let handled = request_context(&self.state, head, id.clone(), progress, |scope| {
            AssertUnwindSafe(self.dispatch(head, body, scope))
                .catch_unwind()
                .map(|handled| {
                    handled.unwrap_or_else(|_panic| (internal_error(), Handled::default()))
                })
        });
        AssertUnwindSafe(handled)
            .catch_unwind()
            .await
            .unwrap_or_else(|_panic| {
                let mut fields = WireFields::default();
                fields.push(&X_REQUEST_ID, &id);
                (internal_error(), fields)
            })
    }

    /// `POST /v1/chat/completions` straight to its handler, everything else
    /// through the router. Nearly every request is a chat completion, and
    /// the router's dispatch (path match, parameter map, a boxed service
    /// clone and boxed futures) cost it ~2k instructions and four allocations.
    /// The chat handler reads the body as the server hands it over; only
    /// the router's requests have it boxed into axum's `Body`, with a
    /// clone of the head (the router takes its request whole).
    async fn dispatch<B>(
        &self,
        head: &Parts,
        body: B,
        scope: RequestScope<'_>,
    ) -> (Response, Handled)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        #[cfg(test)]
        if head.headers.contains_key(tests::PANIC_FIELD) {
            panic!("a test asked the handler to panic");
        }
        if head.method == Method::POST && head.uri.path() == CHAT_PATH {
            chat_completions::chat_completions(&self.state, &head.headers, body, scope).await
        } else {
            let mut request = http::Request::from_parts(head.clone(), Body::new(body));
            // The model list is filtered by what the caller's key may use.
            request.extensions_mut().insert(scope.caller);
            let routed = self.router.clone().oneshot(request).await;
            (
                routed.unwrap_or_else(|never| match never {}),
                Handled::default(),
            )
        }
    }
}

pub const CHAT_PATH: &str = "/v1/chat/completions";

fn api_router(state: AppState) -> Router {
    let mut router = Router::new();
    // With a separate metrics address, /metrics and readiness's details
    // stay off the public side.
    if state.config().server.metrics_listen.is_none() {
        router = router
            .route("/metrics", get(metrics::metrics))
            .route("/readyz", get(health::readyz));
    } else {
        router = router.route("/readyz", get(health::readyz_brief));
    }
    router
        // POST never gets here (see `dispatch`): the route answers 405 to
        // the other methods.
        .route(CHAT_PATH, any(chat_method_not_allowed))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/healthz", get(health::healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: http::Uri) -> Response {
    let message = if slashes_astray(uri.path()) {
        // A base URL that ends in `/` joined with a path that starts with
        // one, by hand-written clients and some frameworks.
        "no such endpoint: the path has a doubled or trailing slash (check the client's \
         base URL); this gateway serves /v1/chat/completions and /v1/models"
    } else {
        "no such endpoint; this gateway serves /v1/chat/completions and /v1/models"
    };
    GatewayError::new(
        StatusCode::NOT_FOUND,
        ErrorType::ResourceNotFoundError,
        message,
    )
    .into_response()
}

/// Whether `path` names a served endpoint but for a doubled or trailing
/// slash.
fn slashes_astray(path: &str) -> bool {
    let mut tidy = String::with_capacity(path.len());
    for part in path.split('/').filter(|part| !part.is_empty()) {
        tidy.push('/');
        tidy.push_str(part);
    }
    tidy != path && (tidy == CHAT_PATH || tidy == "/v1/models" || tidy.starts_with("/v1/models/"))
}

async fn method_not_allowed() -> Response {
    GatewayError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorType::InvalidRequestError,
        "method not allowed on this endpoint",
    )
    .into_response()
}

/// Any method but POST on the chat endpoint: 405 with the `Allow` field
/// RFC 9110 asks for (axum adds it itself on the routes it dispatches).
async fn chat_method_not_allowed() -> Response {
    let mut response = method_not_allowed().await;
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

fn internal_error() -> Response {
    GatewayError::server(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error in the gateway; the request was not completed",
    )
    .into_response()
}

/// The router of the separate metrics listener (`server.metrics_listen`):
/// metrics, and the health probes too, which there are answered even while
/// the main listener is at `server.max_connections`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(metrics_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The metrics listener's 404: it serves the probes and the scrape only.
async fn metrics_not_found() -> Response {
    GatewayError::new(
        StatusCode::NOT_FOUND,
        ErrorType::ResourceNotFoundError,
        "no such endpoint; this listener serves /metrics, /healthz and /readyz (the API is on the main listener)",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::Gateway;
    use crate::request_progress::RequestProgress;
    use axum::body::Body;

    #[test]
    fn a_served_path_but_for_its_slashes_is_told() {
        for path in [
            "//v1/chat/completions",
            "/v1/chat/completions/",
            "/v1//models",
            "/v1/models/",
            "//v1/models/kimi-k2.6",
        ] {
            assert!(super::slashes_astray(path), "{path}");
        }
        for path in [
            "/",
            "/v1/chat/completions",
            "/v1/models",
            "/v2/models/",
            "//v1/chat",
        ] {
            assert!(!super::slashes_astray(path), "{path}");
        }
    }

    /// A request with this field makes the handler panic: no request
    /// can, so a test stands in for the bug that would.
    pub(super) const PANIC_FIELD: &str = "x-test-panic";

    /// A panicking handler: the client gets an OpenAI-shaped 500 with its
    /// request id, the request is counted, and the gateway serves the next
    /// request (on the same client's connection pool) as before.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_gateway_serves_on() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = crate::mock::spawn(listener, crate::mock::MockOptions::default()).await;
        let base_url = mock.base_url(crate::mock::Flavour::Moonshot);
        let lookup = move |name: &str| match name {
            "MOONSHOT_API_KEY" => Some("mock-key".to_string()),
            "MOONSHOT_BASE_URL" => Some(base_url.clone()),
            _ => None,
        };
        let config = crate::config::resolve("", &lookup).unwrap();
        let state = crate::state::AppState::with_env(config, std::sync::Arc::new(lookup));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::run(listener, state, std::future::pending()));

        let client = reqwest::Client::new();
        let chat = || {
            client
                .post(format!("http://{addr}/v1/chat/completions"))
                .json(&serde_json::json!({
                    "model": "kimi-k2-turbo-preview",
                    "messages": [{"role": "user", "content": "hi"}],
                }))
        };
        let panicked = chat().header(PANIC_FIELD, "1").send().await.unwrap();
        assert_eq!(panicked.status(), 500);
        assert!(panicked.headers().contains_key("x-request-id"));
        let body: serde_json::Value = panicked.json().await.unwrap();
        assert_eq!(body["error"]["type"], "server_error", "{body}");
        assert_eq!(
            body["error"]["message"],
            "internal error in the gateway; the request was not completed"
        );

        assert_eq!(chat().send().await.unwrap().status(), 200);
        let metrics = client.get(format!("http://{addr}/metrics")).send().await;
        let metrics = metrics.unwrap().text().await.unwrap();
        let counted = metrics
            .lines()
            .filter(|line| line.starts_with("kimi_gateway_requests_total{"))
            .filter(|line| line.contains(r#"status="500""#))
            .collect::<Vec<_>>();
        assert_eq!(counted.len(), 1, "{metrics}");
        assert!(counted[0].ends_with(" 1"), "{metrics}");
    }

    /// Each connection (`server/conn/`) holds this future inline in its own
    /// state for as long as the connection is open, busy or idle, and pins
    /// each request's future there: its size is guarded.
    #[test]
    fn the_request_future_stays_small() {
        let gateway = Gateway::new(crate::state::AppState::new(
            crate::config::load(None).unwrap(),
        ));
        let (head, body) = http::Request::new(Body::empty()).into_parts();
        let progress = RequestProgress::default();
        let handling = gateway.handle(&head, body, crate::request_id::generate_id(), &progress);
        assert!(size_of_val(&handling) <= 6144, "{}", size_of_val(&handling));
    }
}
