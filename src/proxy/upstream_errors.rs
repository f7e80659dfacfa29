//! How an exchange with a provider fails, in the gateway's vocabulary: a
//! timeout, a connection that could not be made or broke, an answer that
//! is not HTTP or is compressed, one too large, a stream cut or silent.
//! Each names the provider, never its key.

use super::headers::provider_request_id;
use crate::client::{ClientError, UpstreamError};
use crate::config::Provider;
use crate::error::{GatewayError, code};
use http::StatusCode;
use std::time::Duration;
use tokio::time::Instant;

pub(super) fn timeout(provider: &Provider, phase: &str, started: Instant) -> GatewayError {
    GatewayError::server(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "timed out after {:.1?} waiting for {phase} from provider {}",
            started.elapsed(),
            provider.name
        ),
    )
    .with_code(code::UPSTREAM_TIMEOUT)
}

/// A plain answer that found no room under `server.max_answer_bytes_total`
/// before the provider's deadline: the gateway's fault, and asking another
/// provider would make another answer to hold, so the request ends here.
pub(super) fn no_room_for_answer(provider: &Provider, started: Instant) -> GatewayError {
    let mut err = GatewayError::server(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "provider {} answered, but after {:.1?} the gateway still held \
             server.max_answer_bytes_total of other answers (being read, or \
             not yet taken by their clients), so it could not keep this one",
            provider.name,
            started.elapsed(),
        ),
    )
    .with_code(code::GATEWAY_OUT_OF_RESOURCES)
    .with_retry_after(Some(http::HeaderValue::from_static("1")));
    err.details_mut().no_room_for_answer = true;
    err
}

pub(super) fn transport_error(provider: &Provider, err: &ClientError) -> GatewayError {
    if err.is_local_exhaustion() {
        return GatewayError::server(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the gateway could not open a connection to provider {}: {err}",
                provider.name
            ),
        )
        .with_code(code::GATEWAY_OUT_OF_RESOURCES)
        .with_retry_after(Some(http::HeaderValue::from_static("1")));
    }
    if let ClientError::Exchange(
        err @ (UpstreamError::InvalidHead(_) | UpstreamError::HeadTooLarge),
    ) = err
    {
        return bad_response(provider, err);
    }
    let (status, what, error_code) = if err.is_timeout() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "timed out connecting to",
            code::UPSTREAM_TIMEOUT,
        )
    } else if err.is_connect() {
        (
            StatusCode::BAD_GATEWAY,
            "could not connect to",
            code::UPSTREAM_UNREACHABLE,
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "connection failed to",
            code::UPSTREAM_UNREACHABLE,
        )
    };
    GatewayError::server(status, format!("{what} provider {}: {err}", provider.name))
        .with_code(error_code)
}

/// A provider's answer that could not be read as HTTP: reached, but broken.
pub(super) fn bad_response(provider: &Provider, err: &UpstreamError) -> GatewayError {
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} sent a response that is not valid HTTP: {}",
            provider.name,
            crate::client::describe(err)
        ),
    )
    .with_code(code::UPSTREAM_BAD_RESPONSE)
}

/// A 2xx answer compressed though the request asked for `identity`: its
/// events and usage cannot be read, nor can it be passed on as the JSON or
/// event stream it says it is. The coding is named when it is one (a short
/// token; the value is the provider's, and could quote anything).
pub(super) fn compressed_answer(
    provider: &Provider,
    status: StatusCode,
    field: &str,
    coding: &[u8],
) -> GatewayError {
    let token = coding.len() <= 32
        && coding
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(b));
    let named = match token {
        true => format!(" ({field}: {})", String::from_utf8_lossy(coding)),
        false => format!(" ({field})"),
    };
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} answered HTTP {} with a compressed body{named}, though asked for none",
            provider.name,
            status.as_u16()
        ),
    )
    .with_code(code::UPSTREAM_BAD_RESPONSE)
}

pub(super) fn body_error(provider: &Provider, err: &UpstreamError) -> GatewayError {
    if let UpstreamError::InvalidBody(_) = err {
        return bad_response(provider, err);
    }
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "connection to provider {} failed while reading the response: {}",
            provider.name,
            crate::client::describe(err)
        ),
    )
    .with_code(code::UPSTREAM_UNREACHABLE)
}

/// A provider's answer, or one of its stream events, over
/// `server.max_response_bytes`.
pub(super) fn too_large(provider: &Provider, limit: usize) -> GatewayError {
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} sent more than {limit} bytes in one answer or stream event (server.max_response_bytes)",
            provider.name
        ),
    )
    .with_code(code::UPSTREAM_RESPONSE_TOO_LARGE)
}

/// `err`, a failed attempt's, naming the provider's request id from its
/// response head, when there is one: a header's id wins over one the body
/// gave (AI/ML API's `requestId`), and it never carries the key.
pub(super) fn with_provider_request_id(
    mut err: GatewayError,
    headers: &crate::client::Headers,
    provider: &Provider,
) -> GatewayError {
    if let Some(id) = provider_request_id(headers).and_then(|id| headers.shared_value(id)) {
        let id = super::key_redaction::redacted_value(id, provider);
        err.details_mut().upstream_request_id = Some(id);
    }
    err
}

/// A 2xx plain body that is not the answer asked for: not JSON, or no
/// event stream to a stream request.
pub(super) fn not_the_answer_asked(
    provider: &Provider,
    status: StatusCode,
    stream_asked: bool,
) -> GatewayError {
    let what = if stream_asked {
        "a non-stream body to a stream request"
    } else {
        "a body that is not JSON"
    };
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} answered HTTP {} with {what}",
            provider.name,
            status.as_u16()
        ),
    )
    .with_code(code::UPSTREAM_BAD_RESPONSE)
}

/// A stream that failed on its connection after its head.
pub(super) fn stream_cut(provider: &Provider, err: &UpstreamError) -> GatewayError {
    if let UpstreamError::InvalidBody(_) = err {
        // Framing that cannot be read (a chunk size that is not one): the
        // provider's answer, not the connection, failed.
        return bad_response(provider, err);
    }
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "connection to provider {} failed mid-stream: {}",
            provider.name,
            crate::client::describe(err)
        ),
    )
    .with_code(code::UPSTREAM_UNREACHABLE)
}

/// A stream whose body ended before its first whole event (`inside_one`:
/// part of one had come; `after_opening`: only opening prompt-filter
/// chunks had): a stream, but not an answer.
pub(super) fn no_event(provider: &Provider, inside_one: bool, after_opening: bool) -> GatewayError {
    let partial = if inside_one {
        " (inside its first)"
    } else {
        ""
    };
    let message = if after_opening {
        format!(
            "provider {} ended the stream after its prompt filter chunks, before any chunk of an answer{partial}",
            provider.name
        )
    } else {
        format!(
            "provider {} ended the stream before sending any event{partial}",
            provider.name
        )
    };
    GatewayError::server(StatusCode::BAD_GATEWAY, message).with_code(code::UPSTREAM_BAD_RESPONSE)
}

/// A stream whose body ended short of `[DONE]` (`inside_one`: part-way
/// through an event): cut, as a plain answer's body closed short is.
pub(super) fn stream_closed_short(provider: &Provider, inside_one: bool) -> GatewayError {
    let partial = if inside_one { " (inside an event)" } else { "" };
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} closed the stream before it was complete{partial}",
            provider.name
        ),
    )
    .with_code(code::UPSTREAM_UNREACHABLE)
}

/// A provider that sent only opening prompt-filter chunks, more than
/// `limit` bytes of them, and no answer.
pub(super) fn endless_opening(provider: &Provider, limit: usize) -> GatewayError {
    GatewayError::server(
        StatusCode::BAD_GATEWAY,
        format!(
            "provider {} sent over {} KiB of prompt filter chunks and no answer",
            provider.name,
            limit / 1024
        ),
    )
    .with_code(code::UPSTREAM_BAD_RESPONSE)
}

/// What a stream was silent before.
#[derive(Clone, Copy)]
pub(super) enum Awaited {
    FirstEvent,
    /// The answer's first chunk, after opening prompt-filter chunks.
    AnswerAfterOpening,
    /// The next event, `idle` after the last.
    NextEvent,
}

/// A stream silent for too long: the first-byte deadline before its first
/// event (or the answer's, after opening chunks), `idle` between events.
pub(super) fn stream_idle(provider: &Provider, idle: Duration, awaited: Awaited) -> GatewayError {
    let message = match awaited {
        Awaited::NextEvent => format!(
            "timed out waiting for provider {} (no complete stream event for {idle:?})",
            provider.name
        ),
        Awaited::FirstEvent => format!(
            "timed out waiting for the first event from provider {}",
            provider.name
        ),
        Awaited::AnswerAfterOpening => format!(
            "timed out waiting for the first event of an answer from provider {} (after its prompt filter chunks)",
            provider.name
        ),
    };
    GatewayError::server(StatusCode::GATEWAY_TIMEOUT, message).with_code(code::UPSTREAM_TIMEOUT)
}
