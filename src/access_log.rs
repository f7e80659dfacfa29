//! The access log: one event per request, written when the
//! response body ends (for streams, when the stream ends or the client
//! leaves). The log reads errors from the response's extensions and the
//! upstream side from what the handler hands back, so errors are logged
//! exactly once, here.

use crate::access_line::AccessLine;
use crate::error::GatewayError;
use crate::log_format::JsonLine;
use crate::metrics::Metrics;
use crate::proxy::stream_stats::StreamEnd;
use crate::proxy::upstream::UpstreamInfo;
use crate::proxy::usage::Usage;
use crate::request_progress::{LeftAt, RequestProgress};
use crate::state::AppState;
use http::{HeaderValue, Method, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// The model name the client asked for, recorded by the chat handler, and
/// whether it asked for a stream (a stream that failed before its first
/// event is still timed as a stream).
#[derive(Debug, Clone)]
pub struct RequestedModel {
    pub name: Arc<str>,
    pub stream: bool,
}

/// The configured route the model matched (a bounded metric label).
#[derive(Debug, Clone)]
pub struct RouteName(pub Arc<str>);

/// The longest path written to the access line whole: a client's 60 KB
/// path, even one refused for want of a key, would otherwise be copied
/// into the log whole.
const SHOWN_PATH_BYTES: usize = 256;

/// Everything known about a request when it ends.
pub struct AccessRecord {
    pub id: HeaderValue,
    /// The connection's peer: the client, or the proxy in front of it.
    pub client: IpAddr,
    pub method: Method,
    /// The request's target; its path is logged.
    pub uri: http::Uri,
    pub status: StatusCode,
    pub started: Instant,
    pub model: Option<RequestedModel>,
    pub route: Option<RouteName>,
    /// The client key's name (`anonymous` when the gateway is open).
    pub key: Option<Arc<str>>,
    pub upstream: Option<UpstreamInfo>,
    pub error: Option<GatewayError>,
    /// Set for requests that are counted (all but probes and scrapes).
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl AccessRecord {
    /// The tokens the request used, as the log and the metrics count them:
    /// the provider's usage, else the usage its stream reported.
    pub fn usage(&self) -> Option<Usage> {
        let upstream = self.upstream.as_ref()?;
        upstream
            .usage
            .or_else(|| upstream.stream.as_ref()?.usage().map(|(u, _)| u))
            .map(Usage::counted)
    }

    /// The error the request ended with: its stream's error event (sent
    /// after the 200), else the error it was answered with.
    pub fn error_given<'a>(&'a self, end: Option<&'a StreamEnd>) -> Option<&'a GatewayError> {
        match end {
            Some(StreamEnd::Failed(err)) => Some(err),
            _ => self.error.as_ref(),
        }
    }

    pub(crate) fn emit(self) {
        // One clock reading for the metrics and the log line, and one look
        // at how the stream ended.
        let duration = self.started.elapsed();
        let stream = self.upstream.as_ref().and_then(|u| u.stream.as_ref());
        let stream_end = stream.map(|s| s.end());
        let end = stream_end.as_ref().and_then(Option::as_ref);
        if let Some(metrics) = &self.metrics {
            crate::request_metrics::observe(&self, end, duration, metrics);
            metrics.in_flight.dec();
        }
        // Requests at `info`, health probes and scrapes at `debug`.
        let is_api = self.metrics.is_some();
        let enabled = if is_api {
            tracing::enabled!(target: "access", tracing::Level::INFO)
        } else {
            tracing::enabled!(target: "access", tracing::Level::DEBUG)
        };
        if !enabled {
            return;
        }
        let upstream = self.upstream.as_ref();
        let usage = self.usage();
        let error = self.error_given(end);
        let stream_end = match &stream_end {
            None => "",
            Some(None) => "client_closed",
            Some(Some(StreamEnd::Complete)) => "complete",
            Some(Some(StreamEnd::Failed(_))) => "error_event",
        };
        let path = crate::shown::cut_with_length(self.uri.path(), SHOWN_PATH_BYTES);
        let line = AccessLine {
            request_id: self.id.to_str().unwrap_or(""),
            client_addr: self.client,
            method: self.method.as_str(),
            path: &path,
            status: self.status.as_u16(),
            key: self.key.as_deref().unwrap_or(""),
            model: self.model.as_ref().map_or("", |m| &*m.name),
            provider: upstream.map_or("", |u| &*u.provider),
            upstream_model: upstream.map_or("", |u| &*u.upstream_model),
            attempts: upstream.map_or(0, |u| u.attempts),
            time_to_head_us: upstream.and_then(|u| u.time_to_head).map_or(0, micros),
            time_to_first_token_us: stream.and_then(|s| s.first_event_after()).map_or(0, micros),
            error_type: error.as_ref().map_or("", |e| e.error_type.as_str()),
            error_code: error.as_ref().and_then(|e| e.code.as_deref()).unwrap_or(""),
            error: error.as_ref().map_or("", |e| &*e.message),
            stream_end,
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
            completion_tokens: usage.map_or(0, |u| u.completion_tokens),
            duration_us: micros(duration),
        };
        match crate::telemetry::json_sink() {
            Some(sink) => {
                let level = if is_api {
                    tracing::Level::INFO
                } else {
                    tracing::Level::DEBUG
                };
                crate::log_format::with_line_buffer(|buffer| {
                    let mut json = JsonLine::start(buffer, &level, "access", "request");
                    line.write_json(&mut json);
                    sink.append(json.finish().as_bytes());
                });
            }
            None => line.event(is_api),
        }
    }
}

/// Logs and counts a request whose handler is dropped before it answers:
/// the client left (499, nginx's number for it), or the drain deadline
/// passed (503, `gateway_shutdown`, which the connection answers), with
/// the model, route and provider the handler had reached. Borrows what it
/// needs from the request context, so a request that is answered pays for
/// nothing but the guard.
pub(crate) struct Unanswered<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) id: &'a HeaderValue,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a http::Uri,
    pub(crate) started: Instant,
    pub(crate) key: &'a Arc<str>,
    pub(crate) counted: bool,
    /// Filled by the handler's own guard, dropped just before this one.
    pub(crate) progress: &'a RequestProgress,
}

/// The status logged for a request whose client left before the answer.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Unanswered<'_> {
    pub(crate) fn answered(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let (status, error) = if self.state.drain.deadline_has_passed() {
            let error = crate::drain::unanswered_at_deadline();
            (error.status, Some(error))
        } else {
            let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("a valid status");
            (status, None)
        };
        let (model, route, upstream) = match self.progress.take() {
            Some(left) => {
                let LeftAt {
                    model,
                    route,
                    upstream,
                } = *left;
                (Some(model), route, upstream)
            }
            None => (None, None, None),
        };
        if let Some(upstream) = &upstream {
            self.progress.keep_last_attempt(upstream);
        }
        AccessRecord {
            id: self.id.clone(),
            client: self.progress.client(),
            method: self.method.clone(),
            uri: self.uri.clone(),
            status,
            started: self.started,
            model,
            route,
            key: Some(self.key.clone()),
            upstream,
            error,
            metrics: self.counted.then(|| self.state.metrics.clone()),
        }
        .emit();
    }
}

/// Writes the access record when dropped: after a streamed body's last
/// frame, or when the client goes away mid-stream.
pub(crate) struct EmitOnDrop(pub(crate) Option<AccessRecord>);

impl Drop for EmitOnDrop {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.emit();
        }
    }
}

/// Whole microseconds: the log writes them as milliseconds (`12.345`).
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
