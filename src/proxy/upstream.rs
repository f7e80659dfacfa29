//! One exchange with one provider: build the upstream request (provider key,
//! spliced body, request id), send it under the provider's timeouts, and turn
//! the answer into the client's response or a [`GatewayError`].

use super::headers::{
    X_ACCEL_BUFFERING, X_REQUEST_ID, X_UPSTREAM_REQUEST_ID, copy_response_headers,
};
use super::normalize::mirror_cached_tokens_in_body;
use super::provider_errors::{self, MAX_ERROR_BODY};
use super::request::ChatRequest;
use super::request::UpstreamBody;
use super::route::Target;
use super::sse::{RelaySettings, SseRelay};
use super::stream_stats::StreamStats;
use super::usage::{Usage, find_body_usage};
use crate::client::{ClientError, OutgoingBody, PooledBody};
use crate::error::GatewayError;
use crate::metric_series::TargetSeries;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyDataStream, BodyExt};
use std::sync::Arc;
use tokio::time::{Instant, timeout_at};

/// What the access log needs to know about the upstream side of a request.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub provider: Arc<str>,
    pub upstream_model: Arc<str>,
    pub attempts: u32,
    /// Non-stream usage; streams report theirs through [`StreamStats`].
    pub usage: Option<Usage>,
    /// From sending the upstream request to its response head.
    pub time_to_head: Option<std::time::Duration>,
    pub stream: Option<Arc<StreamStats>>,
    /// The route and provider's series, when the provider answered.
    pub series: Option<Arc<TargetSeries>>,
}

/// Per-request facts every attempt needs, borrowed from the request's
/// handler: cloning them per request (reference counts, and a lock for the
/// drain's cancellation token) cost more than their use, which for the
/// token is only by streams.
#[derive(Clone, Copy)]
pub struct ForwardContext<'a> {
    pub request_id: &'a HeaderValue,
    /// When the client's request arrived.
    pub arrived: Instant,
    /// The route's name, a metric label.
    pub route: &'a Arc<str>,
    pub metrics: &'a Arc<Metrics>,
    /// Interval of `: keep-alive` comments on silent streams.
    pub keepalive: Option<std::time::Duration>,
    /// Its stream token is cancelled when the drain deadline passes: open
    /// streams end.
    pub drain: &'a crate::drain::Drain,
}

impl UpstreamInfo {
    pub fn new(target: &Target) -> Self {
        UpstreamInfo {
            provider: target.provider.name.clone(),
            upstream_model: target.upstream_model.clone(),
            attempts: 1,
            usage: None,
            time_to_head: None,
            stream: None,
            series: None,
        }
    }
}

/// A provider's answer, rebuilt for the client, and what the access log and
/// the limits need to know about it. Handed back beside the response rather
/// than in its extensions: each extension is a boxed insert into a map.
pub struct Forwarded {
    pub response: Response,
    pub info: UpstreamInfo,
}

/// Sends `request` to `target` and builds the client's response.
pub async fn forward(
    target: &Target,
    request: &ChatRequest,
    ctx: &ForwardContext<'_>,
) -> Result<Forwarded, GatewayError> {
    let provider = &target.provider;
    let Some(key) = target.key() else {
        return Err(GatewayError::server(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("provider {} has no API key", provider.name),
        ));
    };
    let body = request.upstream_body(&target.upstream_model, &target.model_json);
    let accept = if request.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let upstream = upstream_request(provider, key, body, accept, ctx);

    // One clock reading: building the request above takes microseconds.
    let sent = Instant::now();
    let deadline = sent
        + if request.stream {
            provider.timeouts.first_byte
        } else {
            provider.timeouts.total
        };
    ctx.metrics
        .overhead_before_upstream
        .observe((sent - ctx.arrived).as_secs_f64());
    let response = match timeout_at(deadline, provider.client.send(upstream)).await {
        Err(_) => return Err(timeout(provider, "the response head", sent)),
        Ok(Err(err)) => return Err(transport_error(provider, &err)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let time_to_head = sent.elapsed();
    let series = ctx.metrics.series(ctx.route, &provider.name);
    series.upstream_head.observe(time_to_head.as_secs_f64());
    let mut info = UpstreamInfo::new(target);
    info.time_to_head = Some(time_to_head);

    if !status.is_success() {
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = read_limited(response, deadline, MAX_ERROR_BODY).await;
        return Err(provider_errors::translate(
            provider,
            status,
            retry_after,
            &body,
        ));
    }

    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().get(..17))
        .is_some_and(|start| start.eq_ignore_ascii_case(b"text/event-stream"));
    let mut builder = Response::builder().status(StatusCode::OK);
    let headers = builder.headers_mut().expect("fresh builder");
    // Room for the provider's headers and the ~12 the gateway adds (ids,
    // content type, rate limits), so the map is sized once, not regrown.
    headers.reserve(response.headers().len() + 16);
    if let Some(id) = copy_response_headers(response.headers(), headers) {
        headers.insert(X_UPSTREAM_REQUEST_ID, id);
    }

    if request.stream && is_event_stream {
        let stats = Arc::new(StreamStats::new(ctx.arrived));
        let relay = SseRelay::start(
            Box::pin(BodyDataStream::new(response.into_body())),
            RelaySettings {
                provider: provider.name.clone(),
                include_usage: request.include_usage,
                first_byte_deadline: deadline,
                idle: provider.timeouts.idle,
                keepalive: ctx.keepalive,
                shutdown: ctx.drain.stream_token(),
                chunk_gap: series.chunk_gap.clone(),
                open_streams: ctx.metrics.open_streams.clone(),
            },
            stats.clone(),
        )
        .await?;
        let first_event = stats.first_event().expect("marked by the relay's start");
        series
            .time_to_first_token
            .observe((first_event - ctx.arrived).as_secs_f64());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        info.stream = Some(stats);
        info.series = Some(series);
        let response = builder
            .body(Body::from_stream(relay))
            .expect("valid response parts");
        observe_after_head(ctx.metrics, first_event);
        return Ok(Forwarded { response, info });
    }

    let body = match timeout_at(deadline, response.into_body().collect()).await {
        Err(_) => return Err(timeout(provider, "the response body", sent)),
        Ok(Err(err)) => return Err(body_error(provider, &err)),
        Ok(Ok(body)) => body.to_bytes(),
    };
    let body_read = Instant::now();
    if !looks_like_json_object(&body) || request.stream {
        let what = if request.stream {
            "a non-stream body to a stream request"
        } else {
            "a body that is not JSON"
        };
        return Err(GatewayError::server(
            StatusCode::BAD_GATEWAY,
            format!(
                "provider {} answered HTTP {} with {what}",
                provider.name,
                status.as_u16()
            ),
        ));
    }
    let found = find_body_usage(&body);
    info.usage = found.as_ref().map(|f| f.usage);
    info.series = Some(series);
    let body = mirror_cached_tokens_in_body(body, found.as_ref());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = builder
        .body(Body::from(body))
        .expect("valid response parts");
    observe_after_head(ctx.metrics, body_read);
    Ok(Forwarded { response, info })
}

/// The gateway's own time between having the upstream's answer and handing
/// the response to the server.
fn observe_after_head(metrics: &Metrics, since: Instant) {
    metrics
        .overhead_after_head
        .observe(since.elapsed().as_secs_f64());
}

fn looks_like_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Reads at most `limit` bytes of a body before `deadline`; what could not be
/// read is simply left out (it only feeds an error message).
async fn read_limited(
    response: http::Response<PooledBody>,
    deadline: Instant,
    limit: usize,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = BodyDataStream::new(response.into_body());
    while let Ok(Some(Ok(chunk))) = timeout_at(deadline, stream.next()).await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

fn timeout(provider: &crate::config::Provider, phase: &str, started: Instant) -> GatewayError {
    GatewayError::server(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "timed out after {:.1?} waiting for {phase} from provider {}",
            started.elapsed(),
            provider.name
        ),
    )
    .with_code("upstream_timeout")
}

fn transport_error(provider: &crate::config::Provider, err: &ClientError) -> GatewayError {
    let (status, what) = if err.is_timeout() {
        (StatusCode::GATEWAY_TIMEOUT, "timed out connecting to")
    } else if err.is_connect() {
        (StatusCode::BAD_GATEWAY, "could not connect to")
    } else {
        (StatusCode::BAD_GATEWAY, "connection failed to")
    };
    GatewayError::server(status, format!("{what} provider {}: {err}", provider.name))
        .with_code("upstream_unreachable")
}

fn body_error(
    provider: &crate::config::Provider,
    err: &crate::client::UpstreamError,
) -> GatewayError {
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "connection to provider {} failed while reading the response: {}",
            provider.name,
            crate::client::describe(err)
        ),
    )
    .with_code("upstream_unreachable")
}

/// The request as the provider receives it: the key's fixed headers (see
/// [`fixed_request_headers`]), then its framing, what it accepts and the
/// request id.
fn upstream_request(
    provider: &crate::config::Provider,
    key: &crate::config::ApiKey,
    body: UpstreamBody,
    accept: &'static str,
    ctx: &ForwardContext<'_>,
) -> http::Request<OutgoingBody> {
    let length = HeaderValue::from(body.len());
    let mut request = http::Request::new(body.into_outgoing());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = provider.chat_url.path.clone();
    let headers = request.headers_mut();
    *headers = key.request_headers.clone();
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    request
}

/// The headers that are the same on every chat request to a provider with
/// one of its keys: `Host`, the provider's configured headers, the key,
/// the content type, identity encoding and the gateway's user agent; and
/// the three set per request (length, accept, request id), with values
/// every request replaces: replacing a value leaves the cloned map as it
/// is, where adding an entry would regrow it.
pub fn fixed_request_headers(
    host: &HeaderValue,
    configured: &http::HeaderMap,
    authorization: &HeaderValue,
) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(configured.len() + 8);
    headers.insert(header::HOST, host.clone());
    for (name, value) in configured {
        headers.append(name, value.clone());
    }
    headers.insert(header::AUTHORIZATION, authorization.clone());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    for per_request in [header::CONTENT_LENGTH, header::ACCEPT, X_REQUEST_ID] {
        headers.insert(per_request, HeaderValue::from_static("0"));
    }
    headers
}

const USER_AGENT: &str = concat!("kimi-gateway/", env!("CARGO_PKG_VERSION"));
