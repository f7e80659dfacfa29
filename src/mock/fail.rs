//! Error answers in each provider's own shape: Moonshot's typed
//! `{"error":{…}}`, AI/ML API's `{message,path,requestId,statusCode,timestamp}`
//! and Agentsflare's `{statusCode,message}` (whose wrong key is a 404).

use super::Flavour;
use super::scenario::{MockError, Scenario};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// The mock's answer for `error` as `flavour` would send it.
pub fn error_response(flavour: Flavour, error: MockError, scenario: &Scenario) -> Response {
    if error == MockError::NonJson {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response();
    }
    let (status, moonshot_type, message) = describe(flavour, error);

    // Moonshot names an answer in a header field, AI/ML API in the body.
    let request_id = match flavour {
        Flavour::Moonshot => "mock-error-request",
        _ => "aiml-req-1",
    };
    let (message, request_id) = match &scenario.echoed_key {
        Some(key) => (
            format!("{message} (key {key})"),
            format!("{request_id}-{key}"),
        ),
        None => (message.to_string(), request_id.to_string()),
    };
    let body = match flavour {
        Flavour::Moonshot => json!({"error": {"message": message, "type": moonshot_type}}),
        Flavour::Aimlapi => json!({
            "message": message,
            "path": "/v1/chat/completions",
            "requestId": request_id,
            "statusCode": status.as_u16(),
            "timestamp": "2026-01-01T00:00:00.000Z",
        }),
        Flavour::Agentsflare => json!({"statusCode": status.as_u16(), "message": message}),
    };
    let sent_status = if scenario.error_status_ok {
        StatusCode::OK
    } else {
        status
    };
    let mut response = (sent_status, axum::Json(body)).into_response();
    if flavour == Flavour::Moonshot {
        // Moonshot names every answer, errors too.
        response.headers_mut().insert(
            "msh-request-id",
            HeaderValue::from_str(&request_id).expect("a key is a valid value"),
        );
    }
    if let Some(secs) = scenario.retry_after {
        let value = if scenario.retry_after_as_date {
            let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
            HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("a date is a valid value")
        } else if let Some(key) = &scenario.echoed_key {
            // Free text after the number, as a careless provider might.
            HeaderValue::from_str(&format!("{secs} (key {key})")).expect("a key is a valid value")
        } else {
            HeaderValue::from(secs)
        };
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    if let Some(text) = &scenario.retry_after_text {
        if let Ok(value) = HeaderValue::from_str(text) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    if let Some(text) = &scenario.retry_after_ms {
        if let Ok(value) = HeaderValue::from_str(text) {
            response.headers_mut().insert("retry-after-ms", value);
        }
    }
    response
}

fn describe(flavour: Flavour, error: MockError) -> (StatusCode, &'static str, &'static str) {
    use MockError::*;
    let code = |n: u16| StatusCode::from_u16(n).expect("valid status");
    match (flavour, error) {
        (Flavour::Agentsflare, Auth) => (code(404), "", "Key not found"),
        (Flavour::Aimlapi, Quota) => (
            code(403),
            "",
            "You are out of credits. Please top up your balance to continue.",
        ),
        (Flavour::Agentsflare, Quota) => (code(429), "", "Insufficient balance, please recharge"),
        (_, InvalidRequest) => (
            code(400),
            "invalid_request_error",
            "Invalid request: messages must not be empty",
        ),
        (_, ContentFilter) => (
            code(400),
            "content_filter",
            "The request was rejected because it was considered high risk by content filter",
        ),
        (_, Auth) => (
            code(401),
            "invalid_authentication_error",
            "Invalid Authentication",
        ),
        (_, Permission) => (
            code(403),
            "permission_denied_error",
            "The API you are accessing is not open",
        ),
        (_, NotFound) => (
            code(404),
            "resource_not_found_error",
            "Not found the model or Permission denied",
        ),
        (_, RateLimit) => (
            code(429),
            "rate_limit_reached_error",
            "Your account reached max request rate limit, please try again after 1 seconds",
        ),
        (_, Overloaded) => (
            code(429),
            "engine_overloaded_error",
            "The engine is currently overloaded, please try again later",
        ),
        (_, Quota) => (
            code(429),
            "exceeded_current_quota_error",
            "Your account is suspended due to insufficient balance",
        ),
        (_, Server) => (code(500), "server_error", "Internal server error"),
        (_, BadGateway) => (code(502), "server_error", "Bad gateway"),
        (_, Unavailable) => (code(503), "server_error", "Service temporarily unavailable"),
        (_, NotImplemented) => (code(501), "server_error", "n > 1 is not supported"),
        (_, Overloaded529) => (
            code(529),
            "engine_overloaded_error",
            "Upstream model overloaded",
        ),
        (_, GenerationTimeout) => (code(504), "server_error", "Generation timeout"),
        (_, NonJson) => unreachable!("handled above"),
    }
}
