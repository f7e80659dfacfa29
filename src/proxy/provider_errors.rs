//! Each provider's error body, whatever its shape, to the documented
//! `error.type` and status. Moonshot's typed errors keep their type; AI/ML
//! API's `{message,statusCode,…}` and Agentsflare's `{statusCode,message}`
//! are classified by status and wording.

use super::key_redaction::redact;
use super::provider_wait::{self, AskedWait};
use crate::config::Provider;
use crate::error::code;
use crate::error::{ErrorType, GatewayError};
use http::{HeaderValue, StatusCode};

/// Largest upstream error body read; the rest is not needed to classify it.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long an error's body may take after its status line: the status
/// already says the attempt failed, so fail-over waits no longer than this
/// for the provider's message (what arrived by then is read).
pub const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a provider's error body says, whatever its shape, each member
/// read on its own: Moonshot's `{"error":{"message","type","code","param"}}`,
/// AI/ML API's and Agentsflare's top-level `message` (a string, or a list)
/// with `statusCode`, and a web framework's `"error": "Not Found"` beside
/// them (a status text, not an error object). Without an error object,
/// `type`, `code` and `param` are read beside the message, where the
/// official SDKs read them too. A member of an unexpected type is left
/// out, not the whole body.
#[derive(Default)]
struct ProviderSays {
    /// Whether the body had an `error` object (an error event, in a stream).
    error_object: bool,
    /// That object had no members: the Python SDK does not raise on it in
    /// a stream (an empty dict is false to it), the Node one does.
    error_empty: bool,
    /// A non-empty `error` string: in a stream, the SDKs raise on it as on
    /// an object (over HTTP it is a status text beside the message).
    error_text: Option<String>,
    message: Option<String>,
    error_type: Option<String>,
    code: Option<String>,
    /// The provider's `code` was a JSON number: it is passed on as one.
    code_is_number: bool,
    param: Option<String>,
    /// AI/ML API's id for the request, in the body only.
    request_id: Option<String>,
}

/// How much of a document serde_json refuses may be mended away.
#[derive(Clone, Copy, PartialEq)]
enum Mending {
    /// An HTTP error body, read up to [`MAX_ERROR_BODY`]: one cut short
    /// keeps its whole members.
    CutAllowed,
    /// An error event, or a 2xx body read whole: only lone surrogates are
    /// mended; one cut short is not an error that can be read (mended, a
    /// string left open would lose its `error` member, and the event
    /// would pass for a chunk).
    WholeOnly,
}

impl ProviderSays {
    fn read(json: &[u8], mending: Mending) -> Option<ProviderSays> {
        let value = first_value(json).or_else(|| match mending {
            Mending::CutAllowed => first_value(&super::json_mend::mended(json)),
            Mending::WholeOnly => first_value(&super::json_mend::surrogates_mended(json)?),
        });
        let serde_json::Value::Object(mut body) = value? else {
            return None;
        };
        let mut says = ProviderSays {
            request_id: body.remove("requestId").and_then(string),
            ..ProviderSays::default()
        };
        let fields = match body.remove("error") {
            Some(serde_json::Value::Object(error)) => {
                says.error_object = true;
                says.error_empty = error.is_empty();
                error
            }
            Some(serde_json::Value::String(text)) if !text.trim().is_empty() => {
                says.error_text = Some(text);
                body
            }
            // A list: the SDKs raise on a non-empty one (Node's on an empty
            // one too), with no message of its own; its texts are it.
            Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                says.error_text = Some(message_text(serde_json::Value::Array(items)));
                body
            }
            // Truthy to one SDK or both, with nothing to say: the gateway
            // sends its own error event in its place (as for `{}`).
            Some(serde_json::Value::Array(_) | serde_json::Value::Bool(true)) => {
                says.error_object = true;
                says.error_empty = true;
                body
            }
            Some(serde_json::Value::Number(n)) if n.as_f64() != Some(0.0) => {
                says.error_object = true;
                says.error_empty = true;
                body
            }
            _ => body,
        };
        says.read_fields(fields);
        Some(says)
    }

    /// The error's own members: the error object's, or the body's.
    fn read_fields(&mut self, mut fields: serde_json::Map<String, serde_json::Value>) {
        self.message = fields.remove("message").map(message_text);
        // FastAPI's shape (`{"detail":"..."}`, or a list of `{"msg":...}`
        // for a request it refused), for a message that is not there.
        if self.message.as_deref().is_none_or(str::is_empty)
            && let Some(detail) = fields.remove("detail")
        {
            self.message = Some(detail_text(detail));
        }
        self.error_type = fields.remove("type").and_then(string);
        self.code = fields.remove("code").and_then(|code| match code {
            serde_json::Value::Number(n) => {
                self.code_is_number = true;
                Some(n.to_string())
            }
            other => string(other),
        });
        self.param = fields.remove("param").and_then(string);
    }

    /// Every text a client or the log will see, without the provider's key.
    fn redacted(mut self, provider: &Provider) -> Self {
        for text in [
            &mut self.message,
            &mut self.code,
            &mut self.param,
            &mut self.request_id,
        ]
        .into_iter()
        .flatten()
        {
            redact(text, provider);
        }
        self
    }
}

/// The JSON value `json` begins with; what follows it (a provider's stray
/// newline or second document) is not the error's.
fn first_value(json: &[u8]) -> Option<serde_json::Value> {
    serde_json::Deserializer::from_slice(json)
        .into_iter()
        .next()?
        .ok()
}

fn string(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Whether `member` (an object's text from its first member's opening
/// quote) names a member of AI/ML API's and Agentsflare's error document
/// (`{"message","path","requestId","statusCode","timestamp"}`), which may
/// come first: a completion or a chunk begins with another (`"id"`,
/// `"choices"`, `"object"`). Decided by its first letter for nearly every
/// answer.
pub fn opens_status_document(member: &[u8]) -> bool {
    let named = |name: &[u8]| member.starts_with(name);
    match member.get(1) {
        Some(b'm') => named(b"\"message\""),
        Some(b'p') => named(b"\"path\""),
        Some(b'r') => named(b"\"requestId\""),
        Some(b's') => named(b"\"statusCode\""),
        Some(b't') => named(b"\"timestamp\""),
        _ => false,
    }
}

/// The status an error document under a 2xx states in AI/ML API's and
/// Agentsflare's shape: a top-level `statusCode` from 400 to 599 and no
/// `choices`. `None` for anything else, a completion included.
pub fn status_in_success_body(body: &[u8]) -> Option<StatusCode> {
    let serde_json::Value::Object(document) = first_value(body)? else {
        return None;
    };
    if document.contains_key("choices") {
        return None;
    }
    let code = document.get("statusCode")?.as_u64()?;
    let status = StatusCode::from_u16(u16::try_from(code).ok()?).ok()?;
    (status.is_client_error() || status.is_server_error()).then_some(status)
}

/// Translates a non-2xx upstream answer into the gateway's error.
pub fn translate(
    provider: &Provider,
    status: StatusCode,
    asked: AskedWait,
    body: &[u8],
) -> GatewayError {
    let mut says = ProviderSays::read(error_json(body), Mending::CutAllowed).unwrap_or_default();
    // Beside a message, an `error` text is a web framework's status text
    // ("Not Found"); alone (Express's `{"error":"..."}`), it is the
    // message, and what says whether a 429 is a spent balance.
    if says.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
        says.message = says.error_text.take().or(says.message);
    }
    error_from(provider, status, asked, says, None)
}

/// Where a provider's error document came: an event of a stream, or the
/// whole body of a 2xx answer, which says it succeeded.
#[derive(Clone, Copy)]
enum Carrier {
    StreamEvent,
    SuccessBody(StatusCode),
}

impl Carrier {
    /// "provider P {in_stream} an error event that {what}", or for a body
    /// "provider P answered HTTP N with an error that {what}".
    fn error_that(self, provider: &Provider, in_stream: &str, what: &str) -> String {
        match self {
            Carrier::StreamEvent => {
                format!(
                    "provider {} {in_stream} an error event that {what}",
                    provider.name
                )
            }
            Carrier::SuccessBody(status) => format!(
                "provider {} answered HTTP {} with an error that {what}",
                provider.name,
                status.as_u16()
            ),
        }
    }
}

/// A provider's error event inside a stream (`data: {"error":{...}}`): the
/// error the stream ended with. When it is the stream's first event,
/// nothing was sent yet and it fails the attempt as an HTTP error with
/// the type's status would (key refused, the provider's wait, its code);
/// later, it is what the log and the metrics record. `{"error": "text"}`
/// is one too: the official SDKs raise on any `error` member they find
/// truthy, and the text is its message. `None` for anything else (a chunk
/// whose text merely mentions `"error"`).
pub fn stream_error(data: &[u8], provider: &Provider) -> Option<StreamError> {
    document_error(data, provider, Carrier::StreamEvent)
}

/// A 2xx body that is an error document (`{"error":{...}}`, read as a
/// stream's error event is): the official SDKs do not look for one in a
/// plain answer and would hand their caller a completion with no
/// choices, so the attempt fails as the error says instead. `None` for a
/// body whose `error` says nothing (`null`, `false`, `""`).
pub fn success_body_error(
    body: &[u8],
    status: StatusCode,
    provider: &Provider,
) -> Option<GatewayError> {
    document_error(body, provider, Carrier::SuccessBody(status)).map(|found| found.error)
}

fn document_error(data: &[u8], provider: &Provider, carrier: Carrier) -> Option<StreamError> {
    let Some(mut says) = ProviderSays::read(data, Mending::WholeOnly) else {
        // No JSON even once mended, yet naming `error`: the SDKs fail on
        // it, and what it holds can be neither read nor searched for the
        // key. The gateway's own error event goes in its place.
        let unreadable = memchr::memmem::find(data, b"\"error\"").is_some()
            && super::json_mend::surrogates_mended(data)
                .is_none_or(|whole| first_value(&whole).is_none());
        let message = carrier.error_that(provider, "sent", "is not valid JSON");
        return unreadable.then(|| StreamError {
            error: GatewayError::server(StatusCode::BAD_GATEWAY, message)
                .with_code(code::UPSTREAM_BAD_RESPONSE),
            send_own: true,
        });
    };
    if !says.error_object {
        let text = says.error_text.take()?;
        // AI/ML API's and Agentsflare's document, with a web framework's
        // status text as its `error` (`{"statusCode":429,"message":…,
        // "error":"Too Many Requests"}`): its status says more than the
        // text.
        if let Some(found) = status_document_event(data, provider) {
            return Some(found);
        }
        says.message = says.message.or(Some(text));
    }
    let send_own = says.error_empty;
    let error = error_said(says, provider, carrier);
    Some(StreamError { error, send_own })
}

/// An event the provider named `error` (`event: error`) whose data has no
/// `error` member (`{"message":"internal failure","code":500}`): an error
/// all the same, read from the data's own members. The SDKs would take it
/// for a chunk, so it is always sent as the gateway's own error event.
pub fn named_error_event(data: &[u8], provider: &Provider) -> StreamError {
    if let Some(found) = status_document_event(data, provider) {
        return found;
    }
    let says = ProviderSays::read(data, Mending::WholeOnly).unwrap_or_default();
    StreamError {
        error: error_said(says, provider, Carrier::StreamEvent),
        send_own: true,
    }
}

/// An event whose data is AI/ML API's or Agentsflare's error document
/// (`{"statusCode":429,"message":"Insufficient balance"}`): read as the
/// same body under that status would be, as a 2xx body in that shape is.
/// Always sent as the gateway's own error event: without an `error`
/// member the SDKs would take it for a chunk, and with a status text as
/// its `error` they would raise on that text instead of the type its
/// status gives. `None` for data in no such shape.
pub fn status_document_event(data: &[u8], provider: &Provider) -> Option<StreamError> {
    let status = status_in_success_body(data)?;
    Some(StreamError {
        error: translate(provider, status, AskedWait::default(), data),
        send_own: true,
    })
}

/// The error a 2xx body or a stream event says: its type's status; without
/// a type, the HTTP error status a numeric `code` states; a server error
/// with neither a 502 (the HTTP status said 2xx).
fn error_said(mut says: ProviderSays, provider: &Provider, carrier: Carrier) -> GatewayError {
    // Without a message the HTTP fallback ("answered HTTP 502") would be
    // wrong: the status said 200.
    if says.message.as_deref().is_none_or(|m| m.trim().is_empty()) {
        says.message =
            Some(carrier.error_that(provider, "ended the stream with", "gave no message"));
    }
    let typed = says.error_type.as_deref().and_then(ErrorType::from_name);
    // No type to go by: a numeric `code` from 400 to 599 is the HTTP
    // status the provider would have answered with (`{"error":
    // {"code":429,"message":"Insufficient balance"}}`), read as that
    // status would be.
    let status_in_code = typed.is_none().then(|| status_of_code(&says)).flatten();
    let status = match (typed, status_in_code) {
        (Some(typed), _) => typed.default_status(),
        (None, Some(status)) => status,
        (None, None) => StatusCode::BAD_GATEWAY,
    };
    let mut error = error_from(provider, status, AskedWait::default(), says, Some(carrier));
    if error.error_type == ErrorType::ServerError && status_in_code.is_none() {
        // The status said 2xx; the error carries no status of its own to
        // keep.
        error.status = StatusCode::BAD_GATEWAY;
    }
    error
}

/// The HTTP error status a numeric `code` states, if it is one.
fn status_of_code(says: &ProviderSays) -> Option<StatusCode> {
    if !says.code_is_number {
        return None;
    }
    let code = says.code.as_deref()?.parse::<u16>().ok()?;
    let status = StatusCode::from_u16(code).ok()?;
    (status.is_client_error() || status.is_server_error()).then_some(status)
}

/// A provider's error event, read.
pub struct StreamError {
    pub error: GatewayError,
    /// Passed on, an SDK might not raise on it, and its user would take the
    /// stream for a complete answer, so the gateway sends its own error
    /// event instead: its `error` says nothing (`{}`, `[]`, `true`, a
    /// number; Python's SDK does not raise on `{}` or `[]`), it has no
    /// `error` member at all (an event named `error`, a `statusCode`
    /// document), which the SDKs take for a chunk, or its type comes from
    /// a `statusCode` beside a status text (see [`status_document_event`]).
    pub send_own: bool,
}

/// `carrier`: where a 2xx answer said the error (`status` then comes
/// from what it said); `None` for an HTTP error status.
fn error_from(
    provider: &Provider,
    status: StatusCode,
    asked: AskedWait,
    says: ProviderSays,
    carrier: Option<Carrier>,
) -> GatewayError {
    let says = says.redacted(provider);
    let request_id = says
        .request_id
        .filter(|id| crate::request_id::is_usable_id(id.as_bytes()))
        .and_then(|id| HeaderValue::try_from(id).ok());
    let redirected = carrier.is_none() && status.is_redirection();
    let message = if redirected {
        // Whatever its body says, the provider is not at the configured
        // address: name the setting to check.
        format!(
            "provider {} answered HTTP {}, a redirect, which the gateway does not follow \
             (check providers.{}.base_url)",
            provider.name,
            status.as_u16(),
            provider.name
        )
    } else {
        says.message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| {
                format!(
                    "provider {} answered HTTP {}",
                    provider.name,
                    status.as_u16()
                )
            })
    };
    let lower = message.to_ascii_lowercase();
    let typed = says.error_type;
    let says_code = says.code.clone();
    let status_sent = status;

    if key_refused(status, typed.as_deref(), &lower) {
        // Where the refusal came: the HTTP status, or an error said with
        // a 2xx (its type, not a status, made it a refusal).
        let said = match carrier {
            None => format!("HTTP {}", status.as_u16()),
            Some(Carrier::StreamEvent) => "in an error event".to_string(),
            Some(Carrier::SuccessBody(sent)) => format!("in an HTTP {} body", sent.as_u16()),
        };
        return GatewayError::server(
            StatusCode::BAD_GATEWAY,
            format!(
                "provider {} rejected the gateway's API key ({said}); check {}",
                provider.name, provider.api_key_env
            ),
        )
        .with_code(code::UPSTREAM_KEY_REJECTED)
        .with_upstream_request_id(request_id);
    }

    let error_type = match typed.as_deref().and_then(ErrorType::from_name) {
        // A redirect, which the gateway never follows: the provider is not
        // where it is configured, whatever the body says.
        _ if redirected => ErrorType::ServerError,
        // OpenAI's own shape for a model it does not have, which servers
        // that copy it send too: a 404 typed `invalid_request_error`
        // (code `model_not_found`). Not found, not the request's fault.
        Some(ErrorType::InvalidRequestError) if status == StatusCode::NOT_FOUND => {
            ErrorType::ResourceNotFoundError
        }
        // A 5xx says the provider failed, whatever its body calls the
        // error: a type that blames the request, or what the account may
        // reach, would stop fail-over and keep the failure off the circuit
        // (resellers and proxies in front of a provider type their own
        // outages so). Types of capacity (a rate limit, overload, quota)
        // still name the cause.
        Some(
            ErrorType::InvalidRequestError
            | ErrorType::ContentFilter
            | ErrorType::PermissionDeniedError
            | ErrorType::ResourceNotFoundError,
        ) if carrier.is_none() && status.is_server_error() => ErrorType::ServerError,
        Some(typed) => typed,
        None => classify(
            status,
            &lower,
            passes_by_itself(says_code.as_deref(), typed.as_deref(), &lower),
        ),
    };
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
        GatewayError::new(status, error_type, message).with_upstream_request_id(request_id);
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
    if asked.retry_after_unreadable && err.retry_after.is_none() && err.retry_after_ms.is_none() {
        // A wait was asked for and none could be read, not even from the
        // message: fail-over skips the target rather than asking again.
        err.details_mut().unreadable_wait = true;
    }
    if error_type == ErrorType::ServerError
        && matches!(
            status_sent,
            StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED
        )
    {
        err.details_mut().not_implemented_here = true;
    }
    if let Some(code) = says.code {
        err = err.with_code(code);
        if says.code_is_number {
            err.details_mut().code_is_number = true;
        }
    }
    if let Some(param) = says.param {
        err = err.with_param(param);
    }
    err
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

/// Whether an untyped refusal says, in terms a spent balance would not
/// use, that it ends by itself: OpenAI's rate-limit code or types
/// (`rate_limit_exceeded`; `requests`, `tokens`), or a stated wait.
fn passes_by_itself(code: Option<&str>, typed: Option<&str>, lower: &str) -> bool {
    let code = code.map(str::to_ascii_lowercase);
    matches!(code.as_deref(), Some(c) if c.starts_with("rate_limit"))
        || matches!(typed, Some("requests" | "tokens"))
        || provider_wait::stated_in(lower).is_some()
}

/// `passing`: the refusal says it ends by itself (see
/// [`passes_by_itself`]).
fn classify(status: StatusCode, lower: &str, passing: bool) -> ErrorType {
    let says = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    // Providers serving China may answer in Chinese: 余额 balance, 额度
    // quota, 欠费 in arrears, 充值 top up; 繁忙 busy, 过载 overloaded.
    let spent = says(&[
        "credit",
        "balance",
        "quota",
        "insufficient",
        "余额",
        "额度",
        "欠费",
        "充值",
    ]);
    // Words of paying alone do not make a 429 that says it passes a spent
    // balance: OpenAI's rate-limit text ends "...by adding a payment
    // method to your account at .../billing".
    let paying = says(&["billing", "payment"]) && !(passing && status.as_u16() == 429);
    let quota = spent || paying;
    let overload = says(&["overload", "busy", "capacity", "繁忙", "过载"]);
    let filtered = says(&[
        "content filter",
        "content_filter",
        "high risk",
        "content management",
        "safety",
    ]);
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

/// FastAPI's `detail` as text: a string, or the `msg` of a refusal, or of
/// each in a list (any other item as a message is).
fn detail_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(mut refusal) if refusal.contains_key("msg") => {
            message_text(refusal.remove("msg").unwrap_or_default())
        }
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::Object(mut refusal) if refusal.contains_key("msg") => {
                    message_text(refusal.remove("msg").unwrap_or_default())
                }
                other => message_text(other),
            })
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        other => message_text(other),
    }
}

/// A message as text: a list's texts joined, `null` none (the gateway's
/// own message stands in for an empty one), any other value its JSON.
fn message_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(message_text)
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_provider;
    use crate::proxy::key_redaction::redact_secrets;

    /// A message given as an object or a list is shown as its JSON text,
    /// where a key holding `"` or `\` is escaped: masked all the same.

    #[test]
    fn a_resellers_error_shape_under_a_2xx_states_its_status() {
        for (body, status) in [
            (
                &br#"{"statusCode":429,"message":"Too many requests"}"#[..],
                Some(429),
            ),
            (
                br#"{"message":"x","path":"/v1","requestId":"r","statusCode":403,"timestamp":"t"}"#,
                Some(403),
            ),
            (br#"{"statusCode":200,"message":"ok"}"#, None),
            (br#"{"statusCode":429,"choices":[]}"#, None),
            (br#"{"statusCode":"429","message":"x"}"#, None),
            (br#"{"statusCode":70000}"#, None),
            (br#"{"message":"hello"}"#, None),
            (b"not json", None),
        ] {
            assert_eq!(
                status_in_success_body(body).map(|s| s.as_u16()),
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
    #[test]
    fn a_key_escaped_in_a_message_given_as_json_is_masked() {
        let key = r#"sk-q"ot\e-SECRET"#;
        let config = crate::config::resolve("", &|v: &str| {
            v.ends_with("_API_KEY").then(|| key.to_string())
        })
        .unwrap();
        let provider = &config.providers[0];
        let quoted = serde_json::to_string(&format!("bad key {key}")).unwrap();
        for message in [
            format!(r#"{{"detail":{quoted}}}"#),
            format!(r#"["x",{{"detail":{quoted}}}]"#),
        ] {
            let body = format!(r#"{{"error":{{"message":{message},"type":"server_error"}}}}"#);
            let err = translate(
                provider,
                StatusCode::INTERNAL_SERVER_ERROR,
                AskedWait::default(),
                body.as_bytes(),
            );
            assert!(!err.message.contains("SECRET"), "{body}: {}", err.message);
            assert!(err.message.contains("***"), "{body}: {}", err.message);
        }
    }

    #[test]
    fn only_501_and_505_say_the_provider_does_not_implement_the_request() {
        let body = br#"{"error":{"message":"n > 1 is not supported","type":"server_error"}}"#;
        let marked = |status: StatusCode| {
            let err = translate(&test_provider(), status, AskedWait::default(), body);
            err.details.is_some_and(|d| d.not_implemented_here)
        };
        assert!(marked(StatusCode::NOT_IMPLEMENTED));
        assert!(marked(StatusCode::HTTP_VERSION_NOT_SUPPORTED));
        for status in [500, 502, 507, 599] {
            assert!(!marked(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

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

    /// Without an error object the error's members are the body's: its
    /// `code`, `param` and `type` are kept, as the SDKs would read them
    /// from the provider directly, and a numeric `code` stays a number.
    #[test]
    fn a_flat_errors_code_param_and_type_are_kept() {
        let provider = test_provider();
        for body in [
            &br#"{"message":"top msg","code":"E42","param":"p1","type":"invalid_request_error"}"#[..],
            br#"{"error":"Bad Request","message":"top msg","code":"E42","param":"p1"}"#,
        ] {
            let err = translate(
                &provider,
                StatusCode::BAD_REQUEST,
                AskedWait::default(),
                body,
            );
            assert_eq!(err.error_type, ErrorType::InvalidRequestError);
            assert_eq!(&*err.message, "top msg");
            assert_eq!(err.code.as_deref(), Some("E42"));
            assert_eq!(err.param.as_deref(), Some("p1"));
            let json: serde_json::Value = serde_json::from_slice(&err.body_json()).unwrap();
            assert_eq!(json["error"]["code"], "E42");
        }
        let body = br#"{"message":"slow down","type":"engine_overloaded_error"}"#;
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.error_type, ErrorType::EngineOverloadedError);

        for (body, code) in [
            (
                &br#"{"error":{"message":"m","code":1234}}"#[..],
                serde_json::json!(1234),
            ),
            (br#"{"message":"m","code":-1.5}"#, serde_json::json!(-1.5)),
            (
                br#"{"error":{"message":"m","code":"1234"}}"#,
                serde_json::json!("1234"),
            ),
        ] {
            let err = translate(
                &provider,
                StatusCode::BAD_REQUEST,
                AskedWait::default(),
                body,
            );
            let json: serde_json::Value = serde_json::from_slice(&err.body_json()).unwrap();
            assert_eq!(
                json["error"]["code"],
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                err.code.as_deref(),
                Some(code.to_string().trim_matches('"'))
            );
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
            ..AskedWait::default()
        };
        let err = translate(&test_provider(), StatusCode::TOO_MANY_REQUESTS, asked, body);
        assert_eq!(err.retry_after.unwrap(), "7");
        assert_eq!(err.retry_after_ms, None);

        // A `Retry-After` nobody can read: the message's wait stands in for
        // it; without one, fail-over is told to skip the target.
        let unreadable = || AskedWait {
            retry_after_unreadable: true,
            ..AskedWait::default()
        };
        let err = translate(
            &test_provider(),
            StatusCode::TOO_MANY_REQUESTS,
            unreadable(),
            body,
        );
        assert_eq!(err.retry_after.unwrap(), "2");
        assert!(err.details.is_none_or(|d| !d.unreadable_wait));
        let silent = br#"{"error":{"message":"slow down","type":"rate_limit_reached_error"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::TOO_MANY_REQUESTS,
            unreadable(),
            silent,
        );
        assert_eq!((err.retry_after, err.retry_after_ms), (None, None));
        assert!(err.details.unwrap().unreadable_wait);

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

    /// OpenAI's rate-limit text (which servers copying it send too) speaks
    /// of a payment method and billing: its code, its type or its stated
    /// wait says it passes, so it is a rate limit, waited for; a spent
    /// balance in OpenAI's words stays one.
    #[test]
    fn a_rate_limit_that_mentions_billing_is_not_a_spent_balance() {
        let text = "Rate limit reached for gpt-4o in organization org-abc on requests per min (RPM): \
Limit 3, Used 3, Requested 1. Please try again in 20s. You can increase your rate limit by \
adding a payment method to your account at https://platform.openai.com/account/billing.";
        let without_wait = text.replace("Please try again in 20s. ", "");
        for (body, wait) in [
            (
                format!(
                    r#"{{"error":{{"message":"{text}","type":"requests","param":null,"code":"rate_limit_exceeded"}}}}"#
                ),
                Some(20),
            ),
            (
                format!(
                    r#"{{"error":{{"message":"{without_wait}","type":"tokens","code":null}}}}"#
                ),
                None,
            ),
            (
                format!(
                    r#"{{"error":{{"message":"{without_wait}","code":"rate_limit_exceeded"}}}}"#
                ),
                None,
            ),
            (
                format!(r#"{{"statusCode":429,"message":"{text}"}}"#),
                Some(20),
            ),
        ] {
            let err = translate(
                &test_provider(),
                StatusCode::TOO_MANY_REQUESTS,
                AskedWait::default(),
                body.as_bytes(),
            );
            assert_eq!(err.error_type, ErrorType::RateLimitReachedError, "{body}");
            assert!(err.should_retry(), "{body}");
            let stated = wait.map(|secs: u64| HeaderValue::from(secs));
            assert_eq!(err.retry_after, stated, "{body}");
        }
        // A spent balance stays one, whatever wait or code it gives; and
        // a 403 is a refusal of the account, however it passes.
        for (status, body) in [
            (429, &br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}"#[..]),
            (429, br#"{"error":{"message":"Insufficient balance. Please recharge your account and try again in 5 minutes."}}"#),
            (429, br#"{"statusCode":429,"message":"Insufficient balance, please recharge and try again in 30s"}"#),
            (429, br#"{"error":{"message":"Insufficient account balance","code":"rate_limit_exceeded"}}"#),
            (403, br#"{"error":{"message":"Rate limit reached. Add a payment method at /billing","code":"rate_limit_exceeded"}}"#),
        ] {
            let err = translate(
                &test_provider(),
                StatusCode::from_u16(status).unwrap(),
                AskedWait::default(),
                body,
            );
            let body = String::from_utf8_lossy(body);
            assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError, "{body}");
            assert!(!err.should_retry(), "{body}");
        }
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
    fn a_5xx_is_a_server_error_whatever_its_body_calls_it() {
        let read = |status: u16, body: &[u8]| {
            translate(
                &test_provider(),
                StatusCode::from_u16(status).unwrap(),
                AskedWait::default(),
                body,
            )
        };
        for (status, sent_as) in [(500, 500), (503, 503), (504, 504), (520, 502)] {
            for typed in [
                "invalid_request_error",
                "content_filter",
                "permission_denied_error",
                "resource_not_found_error",
            ] {
                let body = format!(r#"{{"error":{{"message":"upstream down","type":"{typed}"}}}}"#);
                let err = read(status, body.as_bytes());
                assert_eq!(err.error_type, ErrorType::ServerError, "{status} {typed}");
                assert_eq!(err.status.as_u16(), sent_as, "{status} {typed}");
                assert_eq!(err.message, "upstream down");
                assert_eq!(
                    crate::proxy::failover::classify(&err),
                    crate::proxy::failover::Verdict::Retry { unhealthy: true }
                );
            }
        }
        // Capacity types keep naming the cause.
        let busy = read(
            503,
            br#"{"error":{"message":"busy","type":"engine_overloaded_error"}}"#,
        );
        assert_eq!(busy.error_type, ErrorType::EngineOverloadedError);
        // A 4xx typed as the request's fault stays that.
        let bad = read(
            400,
            br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
        );
        assert_eq!(bad.error_type, ErrorType::InvalidRequestError);
    }

    #[test]
    fn a_redirect_is_a_502_server_error_whatever_its_body_says() {
        for status in [301, 302, 307, 308] {
            for body in [
                &br#"{"error":{"message":"moved","type":"invalid_request_error"}}"#[..],
                br#"{"error":{"message":"slow down","type":"rate_limit_reached_error"}}"#,
                b"<html>moved</html>",
            ] {
                let err = translate(
                    &test_provider(),
                    StatusCode::from_u16(status).unwrap(),
                    AskedWait::default(),
                    body,
                );
                assert_eq!(err.error_type, ErrorType::ServerError, "{status}");
                assert_eq!(err.status, StatusCode::BAD_GATEWAY, "{status}");
                assert_eq!(
                    &*err.message,
                    format!(
                        "provider moonshot answered HTTP {status}, a redirect, which the gateway \
                         does not follow (check providers.moonshot.base_url)"
                    )
                );
                assert_eq!(
                    crate::proxy::failover::classify(&err),
                    crate::proxy::failover::Verdict::Retry { unhealthy: true }
                );
            }
        }
    }

    #[test]
    fn a_404_typed_invalid_request_is_not_found() {
        let body = br#"{"error":{"message":"The model m does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::NOT_FOUND,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        assert_eq!(err.error_type, ErrorType::ResourceNotFoundError);
        assert_eq!(err.code.as_deref(), Some(code::MODEL_NOT_FOUND));
        // The same type under a 400 stays the request's fault.
        let err = translate(
            &test_provider(),
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.error_type, ErrorType::InvalidRequestError);
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
        // As sent, and upper-cased (which still gives most of a key away).
        for quoted in ["secret-key-123", "SECRET-KEY-123"] {
            let body = format!(r#"{{"message":"bad request for key {quoted}","statusCode":400}}"#);
            let err = translate(
                &test_provider(),
                StatusCode::BAD_REQUEST,
                AskedWait::default(),
                body.as_bytes(),
            );
            assert!(
                err.message.contains("key ***") && !err.message.contains(quoted),
                "{}",
                err.message
            );
        }
        let event = redact_secrets(b"data: {\"message\":\"Secret-Key-123\"}", &test_provider());
        assert_eq!(event.as_deref(), Some(&b"data: {\"message\":\"***\"}"[..]));
    }

    /// However short the key, it is masked: a key is a secret whatever its
    /// length, and a mangled error message costs less than a leaked key.
    #[test]
    fn a_short_key_is_masked_too() {
        let config =
            crate::config::resolve("", &|v| v.ends_with("_API_KEY").then(|| "k9Z".to_string()))
                .unwrap();
        let provider = &config.providers[0];
        let body = br#"{"error":{"message":"key k9Z is revoked","code":"k9Z"}}"#;
        let err = translate(
            provider,
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert!(!format!("{err:?}").contains("k9Z"), "{err:?}");
        assert!(
            err.message.contains("key *** is revoked"),
            "{}",
            err.message
        );
        let event = redact_secrets(b"data: {\"error\":{\"message\":\"k9Z\"}}\n\n", provider);
        assert_eq!(
            event.as_deref(),
            Some(&b"data: {\"error\":{\"message\":\"***\"}}\n\n"[..])
        );
    }

    #[test]
    fn a_status_text_named_error_beside_the_message_is_not_an_error_object() {
        let provider = test_provider();
        let asked = AskedWait::default;
        let err = translate(
            &provider,
            StatusCode::NOT_FOUND,
            asked(),
            br#"{"statusCode":404,"message":"Key not found","error":"Not Found"}"#,
        );
        assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_KEY_REJECTED));
        assert!(
            err.message.contains("API key (HTTP 404)"),
            "{}",
            err.message
        );
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            asked(),
            br#"{"statusCode":429,"message":"Insufficient balance","error":"Too Many Requests"}"#,
        );
        assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
        assert!(!err.should_retry());
        // The same in Chinese ("insufficient balance"), and "server busy".
        for (message, expected) in [
            ("余额不足", ErrorType::ExceededCurrentQuotaError),
            ("服务器繁忙", ErrorType::EngineOverloadedError),
        ] {
            let body = format!(r#"{{"statusCode":429,"message":"{message}"}}"#);
            let err = translate(
                &provider,
                StatusCode::TOO_MANY_REQUESTS,
                asked(),
                body.as_bytes(),
            );
            assert_eq!(err.error_type, expected, "{message}");
        }
        let err = translate(
            &provider,
            StatusCode::FORBIDDEN,
            asked(),
            br#"{"message":"You are out of credits","statusCode":403,"error":"Forbidden","requestId":"r-1"}"#,
        );
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(&*err.message, "You are out of credits");
        assert_eq!(err.upstream_request_id().unwrap(), "r-1");
        // An id that is not visible ASCII of at most 128 bytes is left out
        // (as a header's is): clients and logs get it as a field.
        for id in ["r".repeat(129), "r 1".to_string(), String::new()] {
            let body = format!(r#"{{"message":"x","statusCode":500,"requestId":"{id}"}}"#);
            let err = translate(
                &provider,
                StatusCode::INTERNAL_SERVER_ERROR,
                asked(),
                body.as_bytes(),
            );
            assert!(err.upstream_request_id().is_none(), "{id:?}");
        }
        // A member of an unexpected type is left out, not the whole body.
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            asked(),
            br#"{"error":{"message":"slow down","type":7,"code":["x"]}}"#,
        );
        assert_eq!(&*err.message, "slow down");
        assert_eq!(err.error_type, ErrorType::RateLimitReachedError);
        assert_eq!(err.code, None);
        // A `null` message is no message: the gateway's own stands in.
        for body in [
            &br#"{"error":{"message":null,"type":null,"code":null}}"#[..],
            br#"{"error":{"message":[null,""]}}"#,
        ] {
            let err = translate(&provider, StatusCode::BAD_REQUEST, asked(), body);
            assert_eq!(&*err.message, "provider moonshot answered HTTP 400");
        }
    }

    /// A 2xx body that is an error document fails as its error says; one
    /// whose `error` says nothing is an answer.
    #[test]
    fn a_success_body_with_an_error_is_that_error() {
        let provider = test_provider();
        let body =
            br#"{"error":{"message":"no secret-key-123 here","type":"rate_limit_reached_error"}}"#;
        let err = success_body_error(body, StatusCode::OK, &provider).unwrap();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(&*err.message, "no *** here");
        let err = success_body_error(br#"{"error":{}}"#, StatusCode::OK, &provider).unwrap();
        assert_eq!(err.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            &*err.message,
            "provider moonshot answered HTTP 200 with an error that gave no message"
        );
        let err = success_body_error(br#"{"error": nope}"#, StatusCode::OK, &provider).unwrap();
        assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_BAD_RESPONSE));
        for nothing in [
            &br#"{"error":null,"id":"c1"}"#[..],
            br#"{"error":"","id":"c1"}"#,
            br#"{"error":false}"#,
        ] {
            assert!(
                success_body_error(nothing, StatusCode::OK, &provider).is_none(),
                "{}",
                String::from_utf8_lossy(nothing)
            );
        }
    }

    #[test]
    fn the_providers_code_and_param_are_kept_and_never_carry_its_key() {
        let body = br#"{"error":{"message":"bad tool","type":"invalid_request_error","code":"c-secret-key-123","param":"tools[3].function.name"}}"#;
        let err = translate(
            &test_provider(),
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.code.as_deref(), Some("c-***"));
        assert_eq!(err.param.as_deref(), Some("tools[3].function.name"));
        let body = br#"{"message":"bad","requestId":"r-secret-key-123"}"#;
        let err = translate(
            &test_provider(),
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            body,
        );
        assert_eq!(err.upstream_request_id().unwrap(), "r-***");
    }

    #[test]
    fn an_error_event_reads_as_the_same_error_sent_with_its_status() {
        let provider = test_provider();
        let event = br#"{"error":{"message":"please try again after 1 seconds","type":"rate_limit_reached_error","code":"c1"}}"#;
        let err = stream_error(event, &provider).unwrap().error;
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code.as_deref(), Some("c1"));
        assert_eq!(err.retry_after_ms.map(|ms| ms.get()), Some(1000));
        let event = br#"{"error":{"message":"Invalid Authentication","type":"invalid_authentication_error"}}"#;
        let err = stream_error(event, &provider).unwrap().error;
        assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_KEY_REJECTED));
        assert_eq!(err.status, StatusCode::BAD_GATEWAY);
        // The provider said no HTTP 401: its event's type did.
        assert!(
            err.message
                .contains("rejected the gateway's API key (in an error event)"),
            "{}",
            err.message
        );
        let err = stream_error(br#"{"error":{"message":"boom"}}"#, &provider)
            .unwrap()
            .error;
        assert_eq!(err.status, StatusCode::BAD_GATEWAY);
        assert_eq!(err.error_type, ErrorType::ServerError);
        // Not an error event: text that mentions an error, an empty text.
        assert!(
            stream_error(
                br#"{"choices":[{"delta":{"content":"\"error\""}}]}"#,
                &provider
            )
            .is_none()
        );
        assert!(stream_error(br#"{"error":" "}"#, &provider).is_none());
        // An error as text is one (the SDKs raise on it), its text the
        // message unless a message is given beside it.
        let err = stream_error(br#"{"error":"Not Found"}"#, &provider)
            .unwrap()
            .error;
        assert_eq!(err.message, "Not Found");
        let err = stream_error(
            br#"{"error":"Not Found","message":"no such model"}"#,
            &provider,
        );
        assert_eq!(err.unwrap().error.message, "no such model");
    }

    #[test]
    fn an_empty_error_event_is_one_and_says_so() {
        let provider = test_provider();
        let read = stream_error(br#"{"error":{}}"#, &provider).unwrap();
        assert!(read.send_own);
        assert_eq!(read.error.error_type, ErrorType::ServerError);
        assert!(
            read.error.message.contains("gave no message"),
            "{}",
            read.error
        );
        let read = stream_error(br#"{"error":{"code":"x"}}"#, &provider).unwrap();
        assert!(!read.send_own);
    }

    /// A body cut at the read limit, or one with a lone surrogate escape
    /// in any member, keeps the members that can be read: a quota error
    /// must not turn into a retryable rate limit because of its padding.
    #[test]
    fn a_cut_or_oddly_escaped_body_keeps_its_readable_members() {
        let provider = test_provider();
        let whole = format!(
            r#"{{"error":{{"message":"out of credit","type":"exceeded_current_quota_error","code":"q1","detail":"{}"}}}}"#,
            "x".repeat(2 * MAX_ERROR_BODY)
        );
        let cut = &whole.as_bytes()[..MAX_ERROR_BODY];
        let surrogate = br#"{"error":{"message":"out of credit \ud800","type":"exceeded_current_quota_error","code":"q1"}}"#;
        for body in [cut, &surrogate[..]] {
            let err = translate(
                &provider,
                StatusCode::TOO_MANY_REQUESTS,
                AskedWait::default(),
                body,
            );
            assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
            assert!(!err.should_retry());
            assert!(err.message.starts_with("out of credit"), "{}", err.message);
            assert_eq!(err.code.as_deref(), Some("q1"));
        }
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            surrogate,
        );
        assert_eq!(err.message, "out of credit \u{fffd}");
        // A document followed by something else is read too.
        let err = translate(
            &provider,
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            b"{\"message\":\"bad tool\"}\n{}",
        );
        assert_eq!(err.message, "bad tool");
    }

    /// A body without a message says it in another way web frameworks
    /// use: an `error` text (Express), a `detail` (FastAPI). Read, it is
    /// what tells a spent balance (not retried) from a rate limit.
    #[test]
    fn an_error_text_or_a_detail_alone_is_the_message() {
        let provider = test_provider();
        for (body, message) in [
            (
                &br#"{"error":"quota exhausted: please recharge your balance"}"#[..],
                "quota exhausted: please recharge your balance",
            ),
            (
                br#"{"detail":"Insufficient balance"}"#,
                "Insufficient balance",
            ),
            (br#"{"error":["credit", "exhausted"]}"#, "credit; exhausted"),
        ] {
            let err = translate(
                &provider,
                StatusCode::TOO_MANY_REQUESTS,
                AskedWait::default(),
                body,
            );
            assert_eq!(err.message, message);
            assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
            assert!(!err.should_retry());
        }
        let err = translate(
            &provider,
            StatusCode::UNPROCESSABLE_ENTITY,
            AskedWait::default(),
            br#"{"detail":[{"loc":["body","messages"],"msg":"field required","type":"missing"},{"msg":"bad role"}]}"#,
        );
        assert_eq!(err.message, "field required; bad role");
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            br#"{"detail":{"msg":"insufficient balance"}}"#,
        );
        assert_eq!(err.message, "insufficient balance");
        // Beside a message, an `error` text is only a status text.
        let err = translate(
            &provider,
            StatusCode::TOO_MANY_REQUESTS,
            AskedWait::default(),
            br#"{"message":"slow down","error":"Too Many Requests"}"#,
        );
        assert_eq!(err.message, "slow down");
        assert_eq!(err.error_type, ErrorType::RateLimitReachedError);
        // The provider's key in the text is masked as in any message.
        let err = translate(
            &provider,
            StatusCode::BAD_REQUEST,
            AskedWait::default(),
            br#"{"error":"bad key secret-key-123"}"#,
        );
        assert_eq!(err.message, "bad key ***");
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

    /// An error event in AI/ML API's or Agentsflare's shape, named `error`
    /// or not, or with a status text as its `error`, is read as the same
    /// body under its `statusCode` would be: a balance 429 is a quota
    /// error (not retried), not a server error.
    #[test]
    fn a_status_code_document_is_read_by_its_status() {
        let provider = test_provider();
        let balance = br#"{"statusCode":429,"message":"Insufficient balance"}"#;
        for read in [
            named_error_event(balance, &provider),
            status_document_event(balance, &provider).unwrap(),
            stream_error(
                br#"{"statusCode":429,"message":"Insufficient balance","error":"Too Many Requests"}"#,
                &provider,
            )
            .unwrap(),
        ] {
            assert!(read.send_own);
            assert_eq!(read.error.error_type, ErrorType::ExceededCurrentQuotaError);
            assert_eq!(read.error.message, "Insufficient balance");
        }
        let busy = named_error_event(br#"{"statusCode":429,"message":"slow down"}"#, &provider);
        assert_eq!(busy.error.error_type, ErrorType::RateLimitReachedError);
        // Not that shape: a chunk, or a status out of the error range.
        assert!(status_document_event(br#"{"statusCode":429,"choices":[]}"#, &provider).is_none());
        assert!(
            status_document_event(br#"{"statusCode":200,"message":"ok"}"#, &provider).is_none()
        );
    }

    /// An error object with no type and a numeric `code` in the HTTP error
    /// range is read as that status; another code leaves a server error.
    #[test]
    fn a_numeric_code_without_a_type_is_the_status() {
        let provider = test_provider();
        let read = stream_error(
            br#"{"error":{"message":"Insufficient balance","code":429}}"#,
            &provider,
        )
        .unwrap();
        assert_eq!(read.error.error_type, ErrorType::ExceededCurrentQuotaError);
        assert_eq!(read.error.status, StatusCode::TOO_MANY_REQUESTS);
        let read =
            stream_error(br#"{"error":{"message":"too long","code":400}}"#, &provider).unwrap();
        assert_eq!(read.error.error_type, ErrorType::InvalidRequestError);
        for code in ["200", "1001", "\"429\""] {
            let data = format!(r#"{{"error":{{"message":"broke","code":{code}}}}}"#);
            let read = stream_error(data.as_bytes(), &provider).unwrap();
            assert_eq!(read.error.status, StatusCode::BAD_GATEWAY, "{code}");
            assert_eq!(read.error.error_type, ErrorType::ServerError, "{code}");
        }
        // A server error keeps the status its code states.
        let read = stream_error(br#"{"error":{"message":"busy","code":503}}"#, &provider).unwrap();
        assert_eq!(read.error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(read.error.error_type, ErrorType::ServerError);
        // A type wins over the code.
        let read = stream_error(
            br#"{"error":{"message":"x","type":"engine_overloaded_error","code":500}}"#,
            &provider,
        )
        .unwrap();
        assert_eq!(read.error.error_type, ErrorType::EngineOverloadedError);
    }
}
