//! Request ids and the access log: one event per request, written when the
//! response body ends (for streams, when the stream ends or the client
//! leaves). The log reads the outcome from response extensions, so errors are
//! logged exactly once, here.

use crate::auth::Caller;
use crate::error::GatewayError;
use crate::proxy::stream_stats::StreamEnd;
use crate::proxy::upstream::UpstreamInfo;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// The request id: the client's `x-request-id` when usable, else generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// The model name the client asked for, recorded by the chat handler.
#[derive(Debug, Clone)]
pub struct RequestedModel(pub Box<str>);

/// Middleware: assigns the request id, returns it, and logs the request.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .filter(|v| is_usable_id(v))
        .cloned()
        .unwrap_or_else(generate_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path: Box<str> = request.uri().path().into();

    let mut response = next.run(request).await;
    response.headers_mut().insert("x-request-id", id.clone());
    let record = AccessRecord {
        id,
        method,
        path,
        status: response.status(),
        started,
        key: response
            .extensions_mut()
            .remove::<Caller>()
            .map(|c| c.key_name),
        model: response.extensions_mut().remove::<RequestedModel>(),
        upstream: response.extensions_mut().remove::<UpstreamInfo>(),
        error: response.extensions().get::<GatewayError>().cloned(),
    };
    if record.upstream.as_ref().is_some_and(|u| u.stream.is_some()) {
        response.map(|inner| {
            Body::new(LoggedBody {
                inner,
                record: Some(record),
            })
        })
    } else {
        record.emit();
        response
    }
}

fn is_usable_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn generate_id() -> HeaderValue {
    let id = format!("req_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::try_from(id).expect("hex is a valid header value")
}

struct AccessRecord {
    id: HeaderValue,
    method: Method,
    path: Box<str>,
    status: StatusCode,
    started: Instant,
    /// The client key's name (`anonymous` when the gateway is open).
    key: Option<std::sync::Arc<str>>,
    model: Option<RequestedModel>,
    upstream: Option<UpstreamInfo>,
    error: Option<GatewayError>,
}

impl AccessRecord {
    fn emit(self) {
        let upstream = self.upstream.as_ref();
        let stream = upstream.and_then(|u| u.stream.as_ref());
        let usage = upstream
            .and_then(|u| u.usage)
            .or_else(|| stream.and_then(|s| s.usage()).map(|(u, _)| u));
        let (stream_end, mut error) = match stream.map(|s| s.end()) {
            None => ("", self.error),
            Some(None) => ("client_closed", self.error),
            Some(Some(StreamEnd::Complete)) => ("complete", self.error),
            Some(Some(StreamEnd::Failed(err))) => ("error_event", Some(err)),
        };
        let error_type = error.as_ref().map_or("", |e| e.error_type.as_str());
        let error_message = error.take().map(|e| e.message).unwrap_or_default();
        let is_api = self.path.starts_with("/v1/");
        macro_rules! access_event {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    request_id = self.id.to_str().unwrap_or(""),
                    method = %self.method,
                    path = &*self.path,
                    status = self.status.as_u16(),
                    key = self.key.as_deref().unwrap_or(""),
                    model = self.model.as_ref().map_or("", |m| &*m.0),
                    provider = upstream.map_or("", |u| &*u.provider),
                    upstream_model = upstream.map_or("", |u| &*u.upstream_model),
                    attempts = upstream.map_or(0, |u| u.attempts),
                    error_type,
                    error = &*error_message,
                    stream_end,
                    prompt_tokens = usage.map_or(0, |u| u.prompt_tokens),
                    completion_tokens = usage.map_or(0, |u| u.completion_tokens),
                    duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                    "request"
                )
            };
        }
        if is_api {
            access_event!(tracing::Level::INFO);
        } else {
            access_event!(tracing::Level::DEBUG);
        }
    }
}

/// A response body that writes the access record when it is dropped: after
/// its last frame, or when the client goes away mid-stream.
struct LoggedBody {
    inner: Body,
    record: Option<AccessRecord>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit();
        }
    }
}
