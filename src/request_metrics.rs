//! Per-request metrics, recorded once when the request ends (streams: when
//! the stream ends or the client leaves), from the same record the access
//! log writes.

use crate::access_log::AccessRecord;
use crate::metrics::{Metrics, NONE, UNKNOWN_ROUTE};
use crate::proxy::stream_stats::StreamEnd;
use http::StatusCode;
use std::time::Duration;

/// A request head refused before it could be read as a request (malformed,
/// too large, …): counted with no route or provider, as the client's
/// mistake. Not timed: nothing was served.
pub fn observe_refused_head(status: StatusCode, metrics: &Metrics) {
    // A 503 is the gateway's want of room, not the client's fault.
    let error_type = if status == StatusCode::SERVICE_UNAVAILABLE {
        crate::error::ErrorType::ServerError
    } else {
        crate::error::ErrorType::InvalidRequestError
    };
    metrics
        .requests
        .with_label_values(&[NONE, NONE, status.as_str(), error_type.as_str()])
        .inc();
}

/// The `error_type` label of a request that ended in `error`: its type,
/// but `gateway_shutdown` for one the drain deadline cut. That answer's
/// type is `server_error` (what clients are told), but the provider was
/// not at fault: counted under its type, every rolling restart that ends
/// long streams would count against the provider's error ratio.
fn error_label(error: &crate::error::GatewayError) -> &'static str {
    match error.code.as_deref() {
        Some(crate::error::code::GATEWAY_SHUTDOWN) => crate::error::code::GATEWAY_SHUTDOWN,
        _ => error.error_type.as_str(),
    }
}

/// `end`: how the request's stream ended, when it had one and it ended.
pub fn observe(
    record: &AccessRecord,
    end: Option<&StreamEnd>,
    duration: Duration,
    metrics: &Metrics,
) {
    let route = match (&record.route, &record.model) {
        (Some(route), _) => &*route.0,
        (None, Some(_)) => UNKNOWN_ROUTE,
        (None, None) => NONE,
    };
    let upstream = record.upstream.as_ref();
    let provider = upstream.map_or(NONE, |u| &*u.provider);
    let stream = upstream.and_then(|u| u.stream.as_ref());
    let error_type = record.error_given(end).map(error_label);
    let duration = duration.as_secs_f64();
    let series = upstream.and_then(|u| u.series.as_ref());
    // What the client asked for: a stream that failed before its first
    // event is still a stream's latency.
    let streamed = stream.is_some() || record.model.as_ref().is_some_and(|m| m.stream);

    match series {
        // The common case: series resolved once for this route and provider.
        Some(series) if record.status == StatusCode::OK && error_type.is_none() => {
            series.requests_ok.inc();
        }
        _ => {
            let error_type = error_type.unwrap_or(NONE);
            metrics
                .requests
                .with_label_values(&[route, provider, record.status.as_str(), error_type])
                .inc();
        }
    }
    match series {
        Some(series) => series.duration[usize::from(streamed)].observe(duration),
        None => metrics
            .request_duration
            .with_label_values(&[route, provider, if streamed { "true" } else { "false" }])
            .observe(duration),
    }

    if let (Some(usage), Some(series)) = (record.usage(), series) {
        // Off, the `key` label is left empty, which Prometheus reads as no
        // label: one series per route, provider and kind.
        let key = match metrics
            .tokens_by_key
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            true => record.key.as_deref().unwrap_or(crate::auth::ANONYMOUS),
            false => "",
        };
        let [prompt, completion, cached] = &*series.tokens(key);
        prompt.inc_by(usage.prompt_tokens);
        completion.inc_by(usage.completion_tokens);
        cached.inc_by(usage.cached_tokens);
    }
    if let (Some(stream), Some(series)) = (stream, series) {
        series.stream_chunks.inc_by(stream.reads());
        if let Some(duration) = stream.streaming_for() {
            series.stream_duration.observe(duration.as_secs_f64());
        }
    }
}
