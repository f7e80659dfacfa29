//! One exchange with one provider: send the request (its head from
//! [`super::upstream_head`], the spliced body) under the provider's
//! timeouts, and turn the answer into the client's response or a
//! [`GatewayError`] ([`super::upstream_errors`]); a 2xx that carries an
//! error instead of an answer is that error.

use super::headers::{X_ACCEL_BUFFERING, copy_response_headers};
use super::normalize::mirror_cached_tokens_in_body;
use super::provider_errors::{self, ERROR_BODY_WAIT, MAX_ERROR_BODY};
use super::provider_wait::AskedWait;
use super::request::ChatRequest;
use super::route::Target;
use super::sse::{RelaySettings, SseRelay};
use super::stream_stats::StreamStats;
use super::upstream_errors::{
    body_error, compressed_answer, no_room_for_answer, not_the_answer_asked, timeout, too_large,
    transport_error, with_provider_request_id,
};
use super::upstream_head::per_request_head;
use super::usage::{Usage, find_body_usage};
use crate::answer_budget::{AnswerBudget, AnswerHold};
use crate::client::{PooledBody, UpstreamError};
use crate::error::GatewayError;
use crate::error::code;
use crate::metric_series::TargetSeries;
use crate::metrics::Metrics;
use crate::wire_fields::WireFields;
use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyDataStream;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::{Instant, timeout_at};

// The answer's fixed field values, made when compiling: `from_static`
// called at run time checks every byte again (~185 instructions each).
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const NO: HeaderValue = HeaderValue::from_static("no");

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
    /// The last attempt's time to its response head, in microseconds (0:
    /// none came), for the access line of a request that ends in an error.
    pub last_time_to_head_us: AtomicU64,
    /// Largest plain answer or single stream event read from a provider.
    pub max_response_bytes: usize,
    /// The bytes held by plain answers (`server.max_answer_bytes_total`).
    pub answer_budget: &'a Arc<AnswerBudget>,
}

impl ForwardContext<'_> {
    /// The last attempt's time to its response head, if one came.
    pub fn last_time_to_head(&self) -> Option<std::time::Duration> {
        match self.last_time_to_head_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }
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
    /// Status 200 and the body; every header field is in `fields`.
    pub response: Response,
    pub fields: WireFields,
    pub info: UpstreamInfo,
}

/// Sends `request` to `target` and builds the client's response.
/// `own_time_since` is when the gateway's own work on this attempt began,
/// for the `before_upstream` overhead.
pub async fn forward(
    target: &Target,
    request: &ChatRequest,
    ctx: &ForwardContext<'_>,
    own_time_since: Instant,
) -> Result<Forwarded, GatewayError> {
    let provider = &target.provider;
    let Some(key) = target.key() else {
        return Err(GatewayError::server(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("provider {} has no API key", provider.name),
        )
        .with_code(code::PROVIDER_NOT_CONFIGURED));
    };
    // A provider that reports a stream's usage only when asked is asked,
    // so the stream's tokens can be settled and counted; the client that
    // did not ask does not get the extra chunk.
    let asking_usage = target
        .model_json_asking_usage
        .as_ref()
        .filter(|_| request.needs_usage_asked());
    let body = match asking_usage {
        Some(model_then_options) => request.upstream_body_asking_usage(model_then_options),
        None => request.upstream_body(&target.upstream_model, &target.model_json),
    };
    let accept = if request.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let body = body.into_outgoing();
    let length = body.len();
    let write_head = |head: &mut Vec<u8>| {
        head.extend_from_slice(&key.request_head);
        per_request_head(head, length, accept, ctx.request_id);
    };

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
        .observe(sent.saturating_duration_since(own_time_since).as_secs_f64());
    // Resolved (made at 0, the first time) before the provider is asked:
    // a provider down from the start still gets its route's series, the
    // baseline its error ratio is read against.
    let target_series = target.series(ctx.metrics, ctx.route);
    let response = match provider.client.send(write_head, body, deadline).await {
        Err(err) if err.is_past_deadline() => {
            // Counted with the time it waited: a provider that hangs
            // must show in the head-time tail, not vanish from it.
            target_series
                .upstream_head
                .observe(sent.elapsed().as_secs_f64());
            return Err(timeout(provider, "the response head", sent));
        }
        Err(err) => return Err(transport_error(provider, &err)),
        Ok(response) => response,
    };
    let status = response.status;
    let time_to_head = sent.elapsed();
    let series = target_series.clone();
    series.upstream_head.observe(time_to_head.as_secs_f64());
    let mut info = UpstreamInfo::new(target);
    info.time_to_head = Some(time_to_head);
    let head_us = u64::try_from(time_to_head.as_micros()).unwrap_or(u64::MAX);
    ctx.last_time_to_head_us
        .store(head_us.max(1), Ordering::Relaxed);

    if !status.is_success() {
        let asked = AskedWait::in_head(&response.headers);
        // The status is known: a body that does not follow promptly is not
        // worth the rest of the first-byte deadline before failing over.
        let body_deadline = deadline.min(Instant::now() + ERROR_BODY_WAIT);
        let body = read_limited(response.body, body_deadline, MAX_ERROR_BODY).await;
        let err = provider_errors::translate(provider, status, asked, &body);
        return Err(with_provider_request_id(err, &response.headers, provider));
    }

    let is_event_stream = response
        .headers
        .get("content-type")
        .and_then(|v| v.get(..17))
        .is_some_and(|start| start.eq_ignore_ascii_case(b"text/event-stream"));
    let mut fields = WireFields::default();
    // Room for the provider's fields and the ~12 the gateway adds (ids,
    // content type, rate limits), so the buffer is sized once.
    fields.reserve(response.headers.wire_len() + 512);
    if let Some((field, coding)) = copy_response_headers(&response.headers, &mut fields, provider) {
        let err = compressed_answer(provider, status, field, coding);
        return Err(with_provider_request_id(err, &response.headers, provider));
    }

    if request.stream && is_event_stream {
        let stats = Arc::new(StreamStats::new(ctx.arrived));
        let relay = SseRelay::start(
            Box::pin(BodyDataStream::new(response.body)),
            RelaySettings {
                provider: provider.clone(),
                include_usage: request.include_usage,
                hide_usage_chunk: asking_usage.is_some(),
                first_byte_deadline: deadline,
                idle: provider.timeouts.idle,
                keepalive: ctx.keepalive,
                max_event_bytes: ctx.max_response_bytes,
                shutdown: ctx.drain.stream_token(),
                chunk_gap: series.chunk_gap.clone(),
                open_streams: ctx.metrics.open_streams.clone(),
                breaker: target.breaker.clone(),
            },
            stats.clone(),
        )
        .await
        .map_err(|err| with_provider_request_id(err, &response.headers, provider))?;
        let first_event = stats.first_event().expect("marked by the relay's start");
        series
            .time_to_first_token
            .observe((first_event - ctx.arrived).as_secs_f64());
        fields.push(&header::CONTENT_TYPE, &EVENT_STREAM);
        fields.push(&header::CACHE_CONTROL, &NO_CACHE);
        fields.push(&X_ACCEL_BUFFERING, &NO);
        info.stream = Some(stats);
        info.series = Some(series);
        let response = Response::new(Body::from_stream(relay));
        observe_after_head(ctx.metrics, first_event);
        return Ok(Forwarded {
            response,
            fields,
            info,
        });
    }

    // A body that fails after a good head still names the provider's
    // request id, for the provider's support.
    let named = |err| with_provider_request_id(err, &response.headers, provider);
    let mut hold = AnswerHold::new(ctx.answer_budget);
    let deadline = pin!(tokio::time::sleep_until(deadline));
    let read = response
        .body
        .into_bytes(ctx.max_response_bytes, &mut hold, deadline);
    let body = match read.await {
        Err(UpstreamError::NoRoom) => return Err(named(no_room_for_answer(provider, sent))),
        Err(UpstreamError::BodyTimedOut) => {
            return Err(named(timeout(provider, "the response body", sent)));
        }
        Err(UpstreamError::BodyTooLarge(limit)) => return Err(named(too_large(provider, limit))),
        Err(err) => return Err(named(body_error(provider, &err))),
        Ok(body) => body,
    };
    let body_read = Instant::now();
    let json = looks_like_json_object(&body);
    // An error document under a 2xx is that error, for a stream request
    // too (a provider that refused it before streaming).
    if json && let Some(err) = error_under_success(&body, status, provider) {
        return Err(named(err));
    }
    if !json || request.stream {
        return Err(named(not_the_answer_asked(
            provider,
            status,
            request.stream,
        )));
    }
    let found = find_body_usage(&body);
    // `{}` reports nothing: the request keeps its estimate, as without usage.
    info.usage = found.as_ref().filter(|f| f.counted).map(|f| f.usage);
    info.series = Some(series);
    let body = hold.keep(mirror_cached_tokens_in_body(body, found.as_ref()));
    fields.push(&header::CONTENT_TYPE, &APPLICATION_JSON);
    let response = Response::new(Body::from(body));
    observe_after_head(ctx.metrics, body_read);
    Ok(Forwarded {
        response,
        fields,
        info,
    })
}

/// The gateway's own time between having the upstream's answer and handing
/// the response to the server.
fn observe_after_head(metrics: &Metrics, since: Instant) {
    metrics
        .overhead_after_head
        .observe(since.elapsed().as_secs_f64());
}

/// Begins with `{` and ends with `}`: catches an HTML page, a gzip body
/// and a body cut short (a provider's `Content-Length` shorter than what
/// it meant to send), without parsing every answer.
fn looks_like_json_object(body: &[u8]) -> bool {
    let body = body.trim_ascii();
    body.first() == Some(&b'{') && body.last() == Some(&b'}')
}

/// The error a 2xx JSON body carries instead of an answer: a first member
/// `error` (Moonshot's shape), or AI/ML API's and Agentsflare's shape
/// (`{"message": …, "statusCode": 429}`), which no completion begins with.
fn error_under_success(
    body: &[u8],
    status: StatusCode,
    provider: &crate::config::Provider,
) -> Option<GatewayError> {
    match first_member(body) {
        None => late_error(body, status, provider),
        Some(FirstMember::Error) => provider_errors::success_body_error(body, status, provider),
        Some(FirstMember::StatusDocument) => {
            let sent = provider_errors::status_in_success_body(body)?;
            Some(provider_errors::translate(
                provider,
                sent,
                AskedWait::default(),
                body,
            ))
        }
    }
}

/// An `error` member after others (`{"id":…,"error":{…}}`) in a body
/// with no choice to answer with: the SDKs would hand their caller a
/// completion without choices. Looked for only in a body that names
/// `"error"` at all (a completion's text holds it escaped, `\"error\"`).
fn late_error(
    body: &[u8],
    status: StatusCode,
    provider: &crate::config::Provider,
) -> Option<GatewayError> {
    // A completion's `choices` come early in its body: found there, the
    // search for `"error"` through the rest is not made.
    if !super::sse_events::carries_no_choice(body) {
        return None;
    }
    memchr::memmem::find(body, b"\"error\"")?;
    let mut choices = None;
    super::json_scan::scan_object(body, |key, span| {
        if key == b"choices" {
            choices = Some(span);
        }
    })
    .ok()?;
    let answered = choices.is_some_and(|span| {
        let list = body[span].trim_ascii();
        let inside = list.strip_prefix(b"[").and_then(|l| l.strip_suffix(b"]"));
        inside.is_none_or(|items| !items.trim_ascii().is_empty())
    });
    if answered {
        return None;
    }
    provider_errors::success_body_error(body, status, provider)
}

/// The first members an error document under a 2xx begins with.
#[derive(Debug, PartialEq)]
enum FirstMember {
    Error,
    /// One of AI/ML API's and Agentsflare's error document.
    StatusDocument,
}

/// Which error document's first member `body` begins with, if any: read
/// from its first bytes, not parsed (every plain answer is looked at, and
/// a completion begins with `"id"`).
fn first_member(body: &[u8]) -> Option<FirstMember> {
    let rest = body.trim_ascii_start().get(1..)?.trim_ascii_start();
    let starts = |name: &[u8]| rest.starts_with(name);
    match rest.get(1)? {
        b'e' if starts(b"\"error\"") => Some(FirstMember::Error),
        _ if provider_errors::opens_status_document(rest) => Some(FirstMember::StatusDocument),
        _ => None,
    }
}

/// Reads at most `limit` bytes of a body before `deadline`; what could not be
/// read is simply left out (it only feeds an error message).
async fn read_limited(response: PooledBody, deadline: Instant, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = BodyDataStream::new(response);
    while let Ok(Some(Ok(chunk))) = timeout_at(deadline, stream.next()).await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_answer_must_begin_and_end_as_an_object() {
        for (body, ok) in [
            (&b"{\"id\":\"x\"}"[..], true),
            (b" \n{\"id\":\"x\"}\n", true),
            (b"{\"id\":\"x\",\"usage\":{\"total_tokens\":3", false),
            (b"<html></html>", false),
            (b"", false),
            (b"{", false),
        ] {
            assert_eq!(
                looks_like_json_object(body),
                ok,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_error_after_other_members_is_read_when_no_choice_answers() {
        let provider = crate::config::test_provider();
        let error = |body: &str| error_under_success(body.as_bytes(), StatusCode::OK, &provider);
        for body in [
            r#"{"id":"x","object":"chat.completion","error":{"message":"upstream failed","type":"server_error"}}"#,
            r#"{"id":"x","choices":[ ],"error":{"message":"upstream failed"}}"#,
            r#"{"id":"x","error":"upstream failed"}"#,
        ] {
            let err = error(body).unwrap_or_else(|| panic!("{body}"));
            assert!(err.message.contains("upstream failed"), "{}", err.message);
        }
        for body in [
            r#"{"id":"x","choices":[{"index":0}],"error":{"message":"ignored"}}"#,
            r#"{"id":"x","object":"chat.completion","error":null}"#,
            r#"{"id":"x","choices":[{"message":{"content":"\"error\""}}]}"#,
            r#"{"id":"x","choices":[{"finish_reason":"error"}]}"#,
        ] {
            assert!(error(body).is_none(), "{body}");
        }
    }

    #[test]
    fn the_first_members_name_is_read_without_parsing() {
        use FirstMember::{Error, StatusDocument};
        for (body, first) in [
            (&b"{\"error\":{\"message\":\"x\"}}"[..], Some(Error)),
            (b" \n{ \n \"error\" : \"x\"}", Some(Error)),
            (
                b"{\"statusCode\":429,\"message\":\"x\"}",
                Some(StatusDocument),
            ),
            (
                b"{\"message\":\"x\",\"statusCode\":429}",
                Some(StatusDocument),
            ),
            (
                b"{\"requestId\":\"r\",\"statusCode\":500,\"message\":\"x\"}",
                Some(StatusDocument),
            ),
            (
                b"{\"path\":\"/v1\",\"statusCode\":500}",
                Some(StatusDocument),
            ),
            (
                b"{\"timestamp\":1,\"statusCode\":500}",
                Some(StatusDocument),
            ),
            (b"{\"id\":\"x\",\"error\":{}}", None),
            (b"{\"paths\":[]}", None),
            (b"{\"errors\":[]}", None),
            (b"{\"messages\":[]}", None),
            (b"{}", None),
            (b"{\"e", None),
            (b"", None),
        ] {
            assert_eq!(
                first_member(body),
                first,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
