//! The gateway's one error type: every failure becomes an OpenAI-shaped body
//! `{"error":{"message","type","code","param"}}` with a status and `type` from
//! Moonshot's documented vocabulary, so the official SDKs raise the right class.

use crate::proxy::headers::X_UPSTREAM_REQUEST_ID;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use std::borrow::Cow;

/// The `error.code` values the gateway itself sets (a provider's own code
/// is passed as it came). Compared by value in the code that decides what
/// an error means, so each is spelled once, here.
pub mod code {
    /// A provider refused the gateway's own API key.
    pub const UPSTREAM_KEY_REJECTED: &str = "upstream_key_rejected";
    /// A provider's answer is not what was asked: not HTTP, a head or
    /// framing that cannot be read one way only, a 2xx that is not the
    /// JSON object or the event stream asked for, a body compressed against
    /// the request's `Accept-Encoding: identity`.
    pub const UPSTREAM_BAD_RESPONSE: &str = "upstream_bad_response";
    /// No connection to the provider, or it closed before answering.
    pub const UPSTREAM_UNREACHABLE: &str = "upstream_unreachable";
    /// The provider took longer than a configured timeout.
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// A provider's buffered answer is over `max_response_bytes`.
    pub const UPSTREAM_RESPONSE_TOO_LARGE: &str = "upstream_response_too_large";
    /// The gateway lacked the resources (file descriptors, memory) to open
    /// a connection: not the provider's failure, so not counted against its
    /// circuit.
    pub const GATEWAY_OUT_OF_RESOURCES: &str = "gateway_out_of_resources";
    /// The gateway is draining and the request did not finish in time.
    pub const GATEWAY_SHUTDOWN: &str = "gateway_shutdown";
    /// Redis-backed limits cannot be checked and they fail closed.
    pub const RATE_LIMIT_STORE_UNAVAILABLE: &str = "rate_limit_store_unavailable";
    /// A web page's request to a gateway without client keys.
    pub const BROWSER_REQUEST_REFUSED: &str = "browser_request_refused";
    /// The client key may not use this model.
    pub const MODEL_NOT_ALLOWED: &str = "model_not_allowed";
    /// No route serves this model name.
    pub const MODEL_NOT_FOUND: &str = "model_not_found";
    /// No provider serving the model has a key.
    pub const PROVIDER_NOT_CONFIGURED: &str = "provider_not_configured";
    /// Every target's circuit breaker is open.
    pub const CIRCUIT_OPEN: &str = "circuit_open";
    /// A compressed request body.
    pub const UNSUPPORTED_CONTENT_ENCODING: &str = "unsupported_content_encoding";
    /// A request body over `max_body_bytes`.
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    /// A client key's requests hold as many request body bytes as one key
    /// may (`server.max_body_bytes_per_key`).
    pub const MAX_BODY_BYTES_PER_KEY: &str = "max_body_bytes_per_key";
    /// The client did not send its body in time.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
}

/// The documented `error.type` values (Moonshot's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    ContentFilter,
    InvalidRequestError,
    InvalidAuthenticationError,
    PermissionDeniedError,
    ResourceNotFoundError,
    RateLimitReachedError,
    EngineOverloadedError,
    ExceededCurrentQuotaError,
    ServerError,
}

impl ErrorType {
    pub const ALL: [ErrorType; 9] = [
        ErrorType::ContentFilter,
        ErrorType::InvalidRequestError,
        ErrorType::InvalidAuthenticationError,
        ErrorType::PermissionDeniedError,
        ErrorType::ResourceNotFoundError,
        ErrorType::RateLimitReachedError,
        ErrorType::EngineOverloadedError,
        ErrorType::ExceededCurrentQuotaError,
        ErrorType::ServerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::ContentFilter => "content_filter",
            ErrorType::InvalidRequestError => "invalid_request_error",
            ErrorType::InvalidAuthenticationError => "invalid_authentication_error",
            ErrorType::PermissionDeniedError => "permission_denied_error",
            ErrorType::ResourceNotFoundError => "resource_not_found_error",
            ErrorType::RateLimitReachedError => "rate_limit_reached_error",
            ErrorType::EngineOverloadedError => "engine_overloaded_error",
            ErrorType::ExceededCurrentQuotaError => "exceeded_current_quota_error",
            ErrorType::ServerError => "server_error",
        }
    }

    /// Parses a documented type name, as found in an upstream error body.
    pub fn from_name(name: &str) -> Option<Self> {
        ErrorType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The status the documented table pairs with this type.
    pub fn default_status(self) -> StatusCode {
        match self {
            ErrorType::ContentFilter | ErrorType::InvalidRequestError => StatusCode::BAD_REQUEST,
            ErrorType::InvalidAuthenticationError => StatusCode::UNAUTHORIZED,
            ErrorType::PermissionDeniedError => StatusCode::FORBIDDEN,
            ErrorType::ResourceNotFoundError => StatusCode::NOT_FOUND,
            ErrorType::RateLimitReachedError
            | ErrorType::EngineOverloadedError
            | ErrorType::ExceededCurrentQuotaError => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failure with everything needed to answer the client and to log it once.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub error_type: ErrorType,
    pub code: Option<Cow<'static, str>>,
    pub message: Cow<'static, str>,
    /// The request member at fault: one of the gateway's names, or what
    /// the provider's error named. (Boxed, not a `Cow`: errors travel in
    /// every attempt's `Result`, and a `Cow` would make them larger.)
    pub param: Option<Box<str>>,
    /// Forwarded from an upstream, or set by the gateway itself.
    pub retry_after: Option<HeaderValue>,
    /// The same wait in milliseconds (`retry-after-ms`, read by the OpenAI
    /// SDKs), when the gateway knows it that precisely.
    pub retry_after_ms: Option<RetryAfterMs>,
    /// Set when a rate-limit scope of the gateway refused the request
    /// (`key`, `key_model`, `provider`, `global`), for the metrics.
    pub limit_scope: Option<crate::limits::ScopeKind>,
    /// What only some errors carry. Boxed: rare, and errors travel in
    /// every attempt's `Result`.
    pub details: Option<Box<ErrorDetails>>,
}

/// The rarer parts of a [`GatewayError`].
#[derive(Debug, Clone, Default)]
pub struct ErrorDetails {
    /// The provider's id for the failed request (`x-upstream-request-id`),
    /// what its support asks for.
    pub upstream_request_id: Option<HeaderValue>,
    /// The refusing limit's headroom (none left, and when it will let the
    /// request through), for the `x-ratelimit-*` fields.
    pub limit_window: Option<crate::limits::Snapshot>,
    /// The headroom of the provider's own limits when the attempt that
    /// failed with this error was admitted: the error is that provider's
    /// answer, so its scope counts in the answer's `x-ratelimit-*` fields.
    pub attempt_window: Option<crate::limits::Snapshot>,
    /// `code` is a provider's, which it sent as a JSON number: clients get
    /// it as one.
    pub code_is_number: bool,
    /// The provider asked for a wait in a `Retry-After` the gateway cannot
    /// read: fail-over skips the target for this request.
    pub unreadable_wait: bool,
    /// The provider answered 501 or 505: it does not implement what was
    /// asked (or the HTTP version). Asking it again would get the same
    /// answer, another provider may not: fail-over skips the target.
    pub not_implemented_here: bool,
    /// A plain answer came, but the gateway had no room to hold it
    /// (`server.max_answer_bytes_total`): the request ends with this error,
    /// and the provider, which answered, is not blamed.
    pub no_room_for_answer: bool,
}

/// A `retry-after-ms` value: whole milliseconds, zero included (only a
/// provider says zero; it is passed on as it is, which an SDK reads as
/// "use your own backoff", where 1 would mean "at once"). Kept as the
/// value plus one in 32 bits, so that an `Option` of it is 4 bytes and
/// keeps the error type small; at most 49 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfterMs(std::num::NonZeroU32);

/// The longest wait after which an answer still says `x-should-retry: true`
/// (a minute, the longest the SDKs wait as asked before they use their own
/// backoff or give up): a longer one is the caller's to schedule.
pub const LONGEST_RETRY_WAIT_MS: u64 = 60_000;

impl RetryAfterMs {
    pub fn new(ms: u32) -> Self {
        RetryAfterMs(std::num::NonZeroU32::MIN.saturating_add(ms.min(u32::MAX - 1)))
    }

    pub fn get(self) -> u32 {
        self.0.get() - 1
    }
}

/// A wait as `retry-after-ms` says it: whole milliseconds, rounded up (a
/// client that waits exactly this long must not come back too early), at
/// least one.
pub fn wait_millis(wait: std::time::Duration) -> std::num::NonZeroU32 {
    let ms = u32::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX);
    std::num::NonZeroU32::new(ms).unwrap_or(std::num::NonZeroU32::MIN)
}

impl GatewayError {
    pub fn new(
        status: StatusCode,
        error_type: ErrorType,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        GatewayError {
            status,
            error_type,
            code: None,
            message: message.into(),
            param: None,
            retry_after: None,
            retry_after_ms: None,
            limit_scope: None,
            details: None,
        }
    }

    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            message,
        )
    }

    pub fn server(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(status, ErrorType::ServerError, message)
    }

    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<Box<str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, value: Option<HeaderValue>) -> Self {
        self.retry_after = value;
        self
    }

    pub fn with_upstream_request_id(mut self, id: Option<HeaderValue>) -> Self {
        if id.is_some() || self.details.is_some() {
            self.details_mut().upstream_request_id = id;
        }
        self
    }

    /// The rarer parts, made when first set.
    pub fn details_mut(&mut self) -> &mut ErrorDetails {
        self.details.get_or_insert_default()
    }

    pub fn upstream_request_id(&self) -> Option<&HeaderValue> {
        self.details.as_ref()?.upstream_request_id.as_ref()
    }

    pub fn limit_window(&self) -> Option<&crate::limits::Snapshot> {
        self.details.as_ref()?.limit_window.as_ref()
    }

    /// Sets `Retry-After` (whole seconds, rounded up) and `retry-after-ms`.
    pub fn with_retry_after_duration(mut self, wait: std::time::Duration) -> Self {
        let ms = wait_millis(wait);
        self.retry_after = Some(HeaderValue::from(ms.get().div_ceil(1000)));
        self.retry_after_ms = Some(RetryAfterMs::new(ms.get()));
        self
    }

    /// Whether a client retrying the same request could succeed soon. The
    /// gateway says `x-should-retry: false` where it cannot, so SDKs fail
    /// fast, and where the wait it gives is longer than
    /// [`LONGEST_RETRY_WAIT_MS`]: the Node SDK would sleep that long inside
    /// the call (no timeout covers the wait), so the caller decides.
    pub fn should_retry(&self) -> bool {
        if self
            .asked_wait_ms()
            .is_some_and(|ms| ms > LONGEST_RETRY_WAIT_MS)
        {
            return false;
        }
        match self.error_type {
            ErrorType::ExceededCurrentQuotaError => false,
            ErrorType::RateLimitReachedError | ErrorType::EngineOverloadedError => true,
            // A missing or refused provider key needs an operator, not a retry.
            // So does a request the providers do not implement (501, 505):
            // asked again, they would say the same.
            ErrorType::ServerError => {
                !matches!(
                    self.code.as_deref(),
                    Some("provider_not_configured" | "upstream_key_rejected")
                ) && !self
                    .details
                    .as_ref()
                    .is_some_and(|d| d.not_implemented_here)
            }
            _ => false,
        }
    }

    /// The wait the answer asks for, in milliseconds: `retry-after-ms`,
    /// else `Retry-After` in seconds.
    fn asked_wait_ms(&self) -> Option<u64> {
        if let Some(ms) = self.retry_after_ms {
            return Some(u64::from(ms.get()));
        }
        let value = self.retry_after.as_ref()?.as_bytes();
        let wait = crate::proxy::provider_wait::retry_after(value, std::time::SystemTime::now())?;
        Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    }

    /// The JSON body clients see.
    pub fn body_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            error_type: &'a str,
            code: Option<Code<'a>>,
            param: Option<&'a str>,
        }
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Code<'a> {
            Text(&'a str),
            Number(serde_json::Number),
        }
        let number = self.details.as_ref().is_some_and(|d| d.code_is_number);
        let code = self.code.as_deref().map(|code| match code.parse() {
            Ok(n) if number => Code::Number(n),
            _ => Code::Text(code),
        });
        serde_json::to_vec(&Body {
            error: Inner {
                message: &self.message,
                error_type: self.error_type.as_str(),
                code,
                param: self.param.as_deref(),
            },
        })
        .expect("error body serialises")
    }

    /// The same error as one SSE event, for failures after a stream has begun.
    pub fn sse_event(&self) -> bytes::Bytes {
        let mut event = Vec::with_capacity(64 + self.message.len());
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&self.body_json());
        event.extend_from_slice(b"\n\n");
        event.into()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error_type.as_str(),
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_json(),
        )
            .into_response();
        let headers = response.headers_mut();
        let retry = if self.should_retry() { "true" } else { "false" };
        headers.insert("x-should-retry", HeaderValue::from_static(retry));
        if let Some(value) = &self.retry_after {
            headers.insert(header::RETRY_AFTER, value.clone());
        }
        if let Some(ms) = self.retry_after_ms {
            headers.insert("retry-after-ms", HeaderValue::from(ms.get()));
        }
        if let Some(id) = self.upstream_request_id() {
            headers.insert(X_UPSTREAM_REQUEST_ID, id.clone());
        }
        // The access log reads the error from here, so it is logged exactly once.
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_type_is_listed_once_and_parses_back_from_its_name() {
        for (at, listed) in ErrorType::ALL.into_iter().enumerate() {
            // Exhaustive: a new variant fails to compile here until listed.
            let position = match listed {
                ErrorType::ContentFilter => 0,
                ErrorType::InvalidRequestError => 1,
                ErrorType::InvalidAuthenticationError => 2,
                ErrorType::PermissionDeniedError => 3,
                ErrorType::ResourceNotFoundError => 4,
                ErrorType::RateLimitReachedError => 5,
                ErrorType::EngineOverloadedError => 6,
                ErrorType::ExceededCurrentQuotaError => 7,
                ErrorType::ServerError => 8,
            };
            assert_eq!(at, position, "{listed:?}");
            assert_eq!(ErrorType::from_name(listed.as_str()), Some(listed));
        }
        assert_eq!(ErrorType::from_name("Server_Error"), None);
        assert_eq!(ErrorType::from_name(""), None);
    }

    #[test]
    fn a_wait_in_milliseconds_is_rounded_up() {
        let ms = |wait| wait_millis(wait).get();
        assert_eq!(ms(Duration::from_micros(83_150)), 84);
        assert_eq!(ms(Duration::from_millis(83)), 83);
        assert_eq!(ms(Duration::ZERO), 1);
        assert_eq!(ms(Duration::from_secs(u64::MAX / 2)), u32::MAX);
        let err = GatewayError::invalid_request("x")
            .with_retry_after_duration(Duration::from_micros(4_897_400));
        assert_eq!(err.retry_after_ms.map(|ms| ms.get()), Some(4898));
        assert_eq!(err.retry_after.unwrap(), "5");
    }

    #[test]
    fn body_has_all_four_fields() {
        let err = GatewayError::invalid_request("bad").with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&err.body_json()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn type_names_round_trip() {
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::from_name(t.as_str()), Some(t));
        }
    }
}
