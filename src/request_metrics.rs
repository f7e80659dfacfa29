//! Per-request metrics, recorded once when the request ends (streams: when
//! the stream ends or the client leaves), from the same record the access
//! log writes.

use crate::access_log::AccessRecord;
use crate::metrics::{Metrics, NONE, UNKNOWN_ROUTE};

pub fn observe(record: &AccessRecord, metrics: &Metrics) {
    let route = match (&record.route, &record.model) {
        (Some(route), _) => &*route.0,
        (None, Some(_)) => UNKNOWN_ROUTE,
        (None, None) => NONE,
    };
    let upstream = record.upstream.as_ref();
    let provider = upstream.map_or(NONE, |u| &*u.provider);
    let stream = upstream.and_then(|u| u.stream.as_ref());
    let stream_error = stream.and_then(|s| match s.end() {
        Some(crate::proxy::stream_stats::StreamEnd::Failed(err)) => Some(err.error_type),
        _ => None,
    });
    let error_type = stream_error
        .or(record.error.as_ref().map(|e| e.error_type))
        .map_or(NONE, |t| t.as_str());
    metrics
        .requests
        .with_label_values(&[route, provider, record.status.as_str(), error_type])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[
            route,
            provider,
            if stream.is_some() { "true" } else { "false" },
        ])
        .observe(record.started.elapsed().as_secs_f64());

    let usage = upstream
        .and_then(|u| u.usage)
        .or_else(|| stream.and_then(|s| s.usage()).map(|(u, _)| u));
    if let Some(usage) = usage {
        let key = record.key.as_deref().unwrap_or("anonymous");
        for (kind, count) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
        ] {
            metrics
                .tokens
                .with_label_values(&[route, provider, key, kind])
                .inc_by(count);
        }
    }
    if let Some(stream) = stream {
        metrics
            .stream_chunks
            .with_label_values(&[route, provider])
            .inc_by(stream.reads());
        if let Some(duration) = stream.streaming_for() {
            metrics
                .stream_duration
                .with_label_values(&[route, provider])
                .observe(duration.as_secs_f64());
        }
    }
}
