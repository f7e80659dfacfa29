//! Each provider's error body, whatever its shape, to the documented
//! `error.type` and status. Moonshot's typed errors keep their type; AI/ML
//! API's `{message,statusCode,…}` and Agentsflare's `{statusCode,message}`
//! are classified by status and wording.

use super::provider_wait::{self, AskedWait};
use crate::config::Provider;
use crate::error::{ErrorType, GatewayError};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

/// Largest upstream error body read; the rest is not needed to classify it.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long an error's body may take after its status line: the status
/// already says the attempt failed, so fail-over waits no longer than this
/// for the provider's message (what arrived by then is read).
pub const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize, Default)]
struct AnyShape {
    /// Moonshot / OpenAI: `{"error":{"message","type","code"}}`.
    error: Option<ErrorObject>,
    /// AI/ML API and Agentsflare: top-level `message` (string, or a list).
    message: Option<serde_json::Value>,
    /// AI/ML API's id for the request, in the body only.
    #[serde(rename = "requestId")]
    request_id: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ErrorObject {
    message: Option<String>,
    #[serde(rename = "type")]
    error_type: Option<String>,
    code: Option<serde_json::Value>,
}

/// Translates a non-2xx upstream answer into the gateway's error.
pub fn translate(
    provider: &Provider,
    status: StatusCode,
    asked: AskedWait,
    body: &[u8],
) -> GatewayError {
    let shape: AnyShape = serde_json::from_slice(error_json(body)).unwrap_or_default();
    let body_request_id = match shape.request_id {
        Some(serde_json::Value::String(id)) => HeaderValue::try_from(id).ok(),
        _ => None,
    };
    let (message, typed, code) = match shape.error {
        Some(e) => (e.message, e.error_type, e.code),
        None => (shape.message.map(message_text), None, None),
    };
    let message = message
        .map(|m| redact(&m, provider))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| {
            format!(
                "provider {} answered HTTP {}",
                provider.name,
                status.as_u16()
            )
        });
    let lower = message.to_ascii_lowercase();

    if key_refused(status, typed.as_deref(), &lower) {
        return GatewayError::server(
            StatusCode::BAD_GATEWAY,
            format!(
                "provider {} rejected the gateway's API key (HTTP {}); check {}",
                provider.name,
                status.as_u16(),
                provider.api_key_env
            ),
        )
        .with_code("upstream_key_rejected")
        .with_upstream_request_id(body_request_id);
    }

    let error_type = typed
        .as_deref()
        .and_then(ErrorType::from_name)
        .unwrap_or_else(|| classify(status, &lower));
    let status = match error_type {
        // The type decides the status, so clients see the documented pairing
        // (e.g. a quota error that a provider sent as 403) -- except a body
        // too large, which keeps its own status.
        ErrorType::ServerError => server_status(status),
        // A body too large, or well-formed but refused (the SDKs raise a
        // distinct exception for 422), keeps its own status.
        ErrorType::InvalidRequestError
            if matches!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
            ) =>
        {
            status
        }
        other => other.default_status(),
    };
    let mut err =
        GatewayError::new(status, error_type, message).with_upstream_request_id(body_request_id);
    err.retry_after = asked.retry_after;
    err.retry_after_ms = asked.retry_after_ms;
    if err.retry_after.is_none()
        && err.retry_after_ms.is_none()
        && matches!(
            error_type,
            ErrorType::RateLimitReachedError | ErrorType::EngineOverloadedError
        )
    {
        // Moonshot states the wait in the message only.
        if let Some(wait) = provider_wait::stated_in(&lower) {
            err = err.with_retry_after_duration(wait);
        }
    }
    if let Some(code) = code.and_then(|c| match c {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }) {
        err = err.with_code(code);
    }
    err
}

/// A provider's error event inside a stream (`{"error":{"message","type",
/// "code"}}`, after the status was sent): the error the stream ended with,
/// for the log and the metrics. `None` for anything else (a chunk whose
/// text merely mentions `"error"`).
pub fn stream_error(data: &[u8], provider: &Provider) -> Option<GatewayError> {
    let shape: AnyShape = serde_json::from_slice(data).ok()?;
    let error = shape.error?;
    let error_type = error
        .error_type
        .as_deref()
        .and_then(ErrorType::from_name)
        .unwrap_or(ErrorType::ServerError);
    let message = error
        .message
        .map(|m| redact(&m, provider))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| "the provider ended the stream with an error event".to_owned());
    Some(GatewayError::new(
        StatusCode::BAD_GATEWAY,
        error_type,
        message,
    ))
}

/// The JSON of an error body: the body itself, or the data of its first
/// event when a provider answers a stream's error as SSE (`data: {...}`).
fn error_json(body: &[u8]) -> &[u8] {
    let trimmed = body.trim_ascii_start();
    if !trimmed.starts_with(b"data:") {
        return body;
    }
    super::sse_lines::lines(trimmed)
        .next()
        .and_then(|line| line.strip_prefix(b"data:"))
        .map_or(body, <[u8]>::trim_ascii)
}

/// A provider telling us that *our* key is bad: Moonshot and AI/ML API say
/// 401, Agentsflare answers 404 "Key not found".
fn key_refused(status: StatusCode, typed: Option<&str>, lower: &str) -> bool {
    status == StatusCode::UNAUTHORIZED
        || typed == Some("invalid_authentication_error")
        || (status == StatusCode::NOT_FOUND && lower.contains("key not found"))
}

fn classify(status: StatusCode, lower: &str) -> ErrorType {
    let quota = [
        "credit",
        "balance",
        "quota",
        "insufficient",
        "billing",
        "payment",
    ]
    .iter()
    .any(|w| lower.contains(w));
    let overload = ["overload", "busy", "capacity"]
        .iter()
        .any(|w| lower.contains(w));
    let filtered = [
        "content filter",
        "content_filter",
        "high risk",
        "content management",
        "safety",
    ]
    .iter()
    .any(|w| lower.contains(w));
    match status.as_u16() {
        402 => ErrorType::ExceededCurrentQuotaError,
        403 if quota => ErrorType::ExceededCurrentQuotaError,
        403 => ErrorType::PermissionDeniedError,
        404 => ErrorType::ResourceNotFoundError,
        429 if quota => ErrorType::ExceededCurrentQuotaError,
        429 if overload => ErrorType::EngineOverloadedError,
        429 => ErrorType::RateLimitReachedError,
        529 => ErrorType::EngineOverloadedError,
        // The provider timed out waiting for the request, or met a
        // conflict: the SDKs retry both, so they are not the client's
        // mistake to fix.
        408 | 409 => ErrorType::ServerError,
        400..=499 if filtered => ErrorType::ContentFilter,
        400..=499 => ErrorType::InvalidRequestError,
        _ => ErrorType::ServerError,
    }
}

/// Upstream 5xx statuses that mean something to a client keep their value;
/// anything odd becomes 502.
fn server_status(status: StatusCode) -> StatusCode {
    match status.as_u16() {
        500 | 502 | 503 | 504 => status,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn message_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(message_text)
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Some providers echo (part of) the key they were sent; never pass it on.
/// `bytes` with the provider's keys replaced by `***`, when one is in them
/// (an error event or a header value that quotes the key it was sent).
pub fn redact_secrets(bytes: &[u8], provider: &Provider) -> Option<Vec<u8>> {
    let mut redacted: Option<Vec<u8>> = None;
    for key in &provider.keys {
        let secret = key.secret.as_bytes();
        if secret.len() < 8 {
            continue;
        }
        let text = redacted.as_deref().unwrap_or(bytes);
        if memchr::memmem::find(text, secret).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"***");
            rest = &rest[at + secret.len()..];
        }
        out.extend_from_slice(rest);
        redacted = Some(out);
    }
    redacted
}

fn redact(message: &str, provider: &Provider) -> String {
    let mut message = message.to_string();
    for key in &provider.keys {
        if key.secret.len() >= 8 && message.contains(&key.secret) {
            message = message.replace(&key.secret, "***");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_provider;

    #[test]
    fn timeouts_and_conflicts_are_retryable_and_422_keeps_its_status() {
        let body = br#"{"message":"try later"}"#;
        for status in [StatusCode::REQUEST_TIMEOUT, StatusCode::CONFLICT] {
            let err = translate(&test_provider(), status, AskedWait::default(), body);
            assert_eq!(err.error_type, ErrorType::ServerError, "{status}");
            assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{status}");
            assert!(err.should_retry(), "{status}");
        }
        let err = translate(
            &test_provider(),
            StatusCode::UNPROCESSABLE_ENTITY,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.error_type, ErrorType::InvalidRequestError);
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn an_error_answered_as_an_event_stream_keeps_its_message_and_type() {
        for body in [
            &b"data: {\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_reached_error\"}}\n\n"[..],
            b"\r\ndata:{\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_reached_error\"}}\r\r",
        ] {
            let err = translate(
                &test_provider(),
                StatusCode::TOO_MANY_REQUESTS,
                AskedWait::default(),
                body,
            );
            assert_eq!(err.error_type, ErrorType::RateLimitReachedError);
            assert_eq!(&*err.message, "slow down");
        }
    }

    #[test]
    fn typed_moonshot_errors_keep_their_type() {
        let body = br#"{"error":{"message":"slow down","type":"engine_overloaded_error"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.error_type, ErrorType::EngineOverloadedError);
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn moonshots_stated_wait_becomes_retry_after_when_no_field_says_it() {
        let body = br#"{"error":{"message":"Your account org-x request reached max request: 3, please try again after 2 seconds","type":"rate_limit_reached_error"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.retry_after.unwrap(), "2");
        assert_eq!(err.retry_after_ms.map(|ms| ms.get()), Some(2000));

        let asked = AskedWait {
            retry_after: Some(http::HeaderValue::from_static("7")),
            retry_after_ms: None,
        };
        let err = translate(&test_provider(), StatusCode::TOO_MANY_REQUESTS, asked, body);
        assert_eq!(err.retry_after.unwrap(), "7");
        assert_eq!(err.retry_after_ms, None);

        // Only a rate-limit answer's words are read as a wait.
        let body = br#"{"error":{"message":"bad input, try again after 2 seconds","type":"invalid_request_error"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert!(err.retry_after.is_none());
    }

    #[test]
    fn a_quota_error_sent_as_403_gets_the_documented_429() {
        let body = br#"{"error":{"message":"no money","type":"exceeded_current_quota_error"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::FORBIDDEN,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn too_large_keeps_413() {
        let err = translate(
            &test_provider(),
            StatusCode::PAYLOAD_TOO_LARGE,
            AskedWait::default(),
            b"Payload Too Large",
        );
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.error_type, ErrorType::InvalidRequestError);
    }

    #[test]
    fn the_gateways_key_is_never_echoed() {
        let body = br#"{"message":"bad request for key secret-key-123","statusCode":400}"#;
        let err = translate(
            &test_provider(),
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert!(!err.message.contains("secret-key-123"), "{}", err.message);
    }

    #[test]
    fn non_json_error_bodies_get_a_generic_message() {
        let err = translate(
            &test_provider(),
            StatusCode::BAD_GATEWAY,
            AskedWait::default(),
            b"<html>oops</html>",
        );
        assert_eq!(err.error_type, ErrorType::ServerError);
        assert!(err.message.contains("HTTP 502"));
    }
}
