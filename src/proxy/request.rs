//! The client's request body, read once: the few fields the gateway needs are
//! peeked from it, and the original bytes are forwarded with only the `model`
//! value spliced when the upstream's id differs.

use super::body_pieces::{BodyPieces, Pieces};
use super::json_scan::{self, ObjectScan};
use crate::access_log::RequestedModel;
use crate::client::OutgoingBody;
use crate::error::GatewayError;
use crate::error::code;
use bytes::Bytes;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// The longest model name quoted back in an error or written to the log.
/// The name is the client's to choose: one of megabytes, quoted whole,
/// would be copied into the answer, the error message and the access line.
pub const SHOWN_MODEL_BYTES: usize = 256;

/// The longest `model` value (as sent, escapes and quotes included) that is
/// decoded and looked up; a longer one is not served whatever it says.
const MAX_MODEL_SPAN: usize = 64 * 1024;

/// A model name as errors and logs show it: whole when it is at most
/// [`SHOWN_MODEL_BYTES`], else its start (cut at a character boundary) and
/// its length.
pub fn shown_model(name: &str) -> Cow<'_, str> {
    crate::shown::cut_with_length(name, SHOWN_MODEL_BYTES)
}

/// A request body refused as it was read: the answer, and the model it
/// named when that was read before the refusal (a name too long for any
/// route is logged and counted all the same, cut as [`shown_model`] cuts it).
#[derive(Debug)]
pub struct Refused {
    pub error: GatewayError,
    pub model: Option<RequestedModel>,
}

/// Boxed: an error travels in the `Result`, and the model makes it larger.
impl From<GatewayError> for Box<Refused> {
    fn from(error: GatewayError) -> Self {
        Box::new(Refused { error, model: None })
    }
}

/// A chat completion request: the body as received plus what was peeked.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    body: BodyPieces,
    model_span: Range<usize>,
    /// Shared, not boxed: the access log keeps the same name (a reference
    /// count where a copy was an allocation per request).
    model: Arc<str>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// Whether the body has a `stream_options` member at all.
    pub has_stream_options: bool,
    /// The larger of `max_completion_tokens` and `max_tokens` given.
    pub max_tokens: Option<u64>,
    /// `n`, the choices asked for: each may use the cap (1 when absent).
    pub choices: u64,
}

/// The request body's members the gateway reads, located by a scan that is
/// fed the body frame by frame as it arrives.
#[derive(Debug, Default)]
pub struct RequestScan {
    scan: ObjectScan,
    fields: RequestFields,
}

/// Where each member the gateway reads is in the body.
#[derive(Debug, Default)]
struct RequestFields {
    model: Option<Range<usize>>,
    messages: Option<Range<usize>>,
    stream: Option<Range<usize>>,
    stream_options: Option<Range<usize>>,
    max_tokens: Option<Range<usize>>,
    max_completion_tokens: Option<Range<usize>>,
    n: Option<Range<usize>>,
    /// A member the gateway reads that came twice (once spelled with
    /// escapes counts): refused, since a provider whose parser keeps the
    /// other one would serve what the gateway did not check (a model the
    /// key may not use, a token cap the limits did not count).
    duplicate: Option<&'static str>,
}

impl RequestFields {
    fn record(&mut self, raw_key: &[u8], span: Range<usize>) {
        let escaped = raw_key.contains(&b'\\');
        let decoded;
        let key = if escaped {
            // Rare: `"mod\u0065l"` is `"model"` to any JSON parser.
            decoded = decoded_key(raw_key).unwrap_or_default();
            decoded.as_bytes()
        } else {
            raw_key
        };
        let (name, field) = match key {
            b"model" => ("model", &mut self.model),
            b"messages" => ("messages", &mut self.messages),
            b"stream" => ("stream", &mut self.stream),
            b"stream_options" => ("stream_options", &mut self.stream_options),
            b"max_tokens" => ("max_tokens", &mut self.max_tokens),
            b"max_completion_tokens" => ("max_completion_tokens", &mut self.max_completion_tokens),
            b"n" => ("n", &mut self.n),
            _ => {
                // `"MODEL"` beside `"model"`: a provider whose parser
                // matches names regardless of case (Go's does) could take
                // it for the member the gateway checked.
                if let Some(name) = name_in_other_case(key) {
                    self.duplicate.get_or_insert(name);
                }
                return;
            }
        };
        if field.is_some() || escaped {
            // Twice, or spelled with escapes (which the model splice and
            // the provider's own reading would not agree on).
            self.duplicate.get_or_insert(name);
        }
        *field = Some(span);
    }
}

/// The member the gateway reads that `key` names when letter case is
/// ignored as Unicode's simple case folding ignores it (so the Kelvin sign
/// is a `k` and the long s an `s`): what a lenient parser may take it for.
/// Only keys that are not already an exact name get here.
fn name_in_other_case(key: &[u8]) -> Option<&'static str> {
    if key == b"N" {
        return Some("n");
    }
    const NAMES: [&str; 6] = [
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
    ];
    // Every name starts with `m` or `s` (`ſ` is 0xC5 0xBF): most other
    // keys stop here.
    if key.len() < 5 || !matches!(key[0], b'm' | b'M' | b's' | b'S' | 0xC5) {
        return None;
    }
    let folded = folded(key)?;
    NAMES
        .into_iter()
        .find(|name| name.as_bytes() == &folded[..])
}

/// `key` with its letters' case folded as Unicode's simple case folding
/// folds them into the names the gateway reads (ASCII letters and `_`;
/// the Kelvin sign to `k`, the long s to `s`); `None` for a key with other
/// characters, or longer than any such name.
fn folded(key: &[u8]) -> Option<SmallVec<[u8; 21]>> {
    let mut folded = SmallVec::new();
    for ch in std::str::from_utf8(key).ok()?.chars() {
        let byte = match ch {
            'a'..='z' | '_' => ch as u8,
            'A'..='Z' => ch.to_ascii_lowercase() as u8,
            '\u{212A}' => b'k',
            '\u{17F}' => b's',
            _ => return None,
        };
        if folded.len() == 21 {
            return None;
        }
        folded.push(byte);
    }
    Some(folded)
}

/// A key written with escapes, as a JSON parser reads it.
fn decoded_key(raw_key: &[u8]) -> Option<String> {
    let quoted = [&b"\""[..], raw_key, b"\""].concat();
    serde_json::from_slice::<String>(&quoted).ok()
}

impl RequestScan {
    /// Scans the body's next frame.
    pub fn feed(&mut self, frame: &[u8]) {
        let fields = &mut self.fields;
        self.scan
            .feed(frame, &mut |key, span| fields.record(key, span));
    }
}

impl ChatRequest {
    /// Peeks `model`, `messages`, `stream`, `stream_options`, the token
    /// caps and `n` of a whole body in one call, for tests and benchmarks. The
    /// gateway itself scans each frame as it arrives
    /// ([`ChatRequest::from_scan`]); never scan a body twice.
    pub fn peek(body: impl Into<BodyPieces>) -> Result<Self, GatewayError> {
        let body = body.into();
        let mut scan = RequestScan::default();
        for piece in body.pieces() {
            scan.feed(piece);
        }
        Self::from_scan(body, scan).map_err(|refused| refused.error)
    }

    /// The request in `body`, which `scan` has been fed in full.
    pub fn from_scan(body: BodyPieces, scan: RequestScan) -> Result<Self, Box<Refused>> {
        let RequestScan { scan, fields } = scan;
        scan.finish().map_err(|err| {
            if err.in_value_of.as_deref() == Some(b"model") {
                return model_not_a_string();
            }
            if body.is_empty() {
                return GatewayError::invalid_request(
                    "request body is empty: send the chat request as a JSON object",
                );
            }
            if err.offset == 0 && body.span(0..3).starts_with(b"\xEF\xBB\xBF") {
                return GatewayError::invalid_request(
                    "request body is not valid JSON: it starts with a byte order mark \
                     (U+FEFF), which JSON sent over a network must not",
                );
            }
            GatewayError::invalid_request(format!(
                "request body is not valid JSON: {} at byte {}",
                err.reason, err.offset
            ))
        })?;
        if fields.duplicate == Some("model") {
            return Err(duplicated("model").into());
        }
        let model_span = fields.model.clone().ok_or_else(|| missing("model"))?;
        let stream_span = fields.stream.clone();
        let stream_sent_true = || stream_span.is_some_and(|s| *body.span(s) == *b"true");
        if model_span.len() > MAX_MODEL_SPAN {
            // No route has a name this long: not decoded (a copy of up to
            // the whole body) only to be looked up and not found. The
            // length told is the name's as written, without its quotes.
            let quoted = body.span(model_span.start..model_span.start + 1).first() == Some(&b'"');
            let written = model_span.len() - if quoted { 2 } else { 0 };
            let from = model_span.start + usize::from(quoted);
            let start = body.span(from..from + SHOWN_MODEL_BYTES);
            // Shown up to its first escape: an escaped key (`\u0073k-…`)
            // would pass the log's search for keys, which reads names as
            // they decode.
            let unescaped = memchr::memchr(b'\\', &start).unwrap_or(start.len());
            let start = String::from_utf8_lossy(&start[..unescaped]);
            let mut shown = start.as_ref();
            // A character cut at the end shows as a replacement: dropped.
            shown = shown.strip_suffix('\u{FFFD}').unwrap_or(shown);
            let model = RequestedModel {
                name: format!("{shown}... ({written} bytes)").into(),
                stream: stream_sent_true(),
            };
            let error = GatewayError::new(
                http::StatusCode::NOT_FOUND,
                crate::error::ErrorType::ResourceNotFoundError,
                format!(
                    "`model` is {written} bytes long: no model this gateway serves has a name that long (see GET /v1/models)"
                ),
            )
            .with_param("model")
            .with_code(code::MODEL_NOT_FOUND);
            return Err(Box::new(Refused {
                error,
                model: Some(model),
            }));
        }
        let raw_model = body.span(model_span.clone());
        let model = parse_string(&raw_model)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                // A string that does not decode is told apart from one of
                // another type: its writer needs to fix its escapes or
                // encoding, not its type.
                if raw_model.len() > 2 && raw_model.first() == Some(&b'"') {
                    model_not_a_string()
                } else {
                    GatewayError::invalid_request("`model` must be a non-empty string")
                        .with_param("model")
                }
            })?;
        let rest = match Self::checked_rest(&body, fields) {
            Ok(rest) => rest,
            // From here on a refusal is logged with the model it named.
            Err(error) => {
                let model = RequestedModel {
                    name: logged_name(&model),
                    stream: stream_sent_true(),
                };
                return Err(Box::new(Refused {
                    error,
                    model: Some(model),
                }));
            }
        };
        Ok(ChatRequest {
            model_span,
            model,
            stream: rest.stream,
            include_usage: rest.include_usage,
            has_stream_options: rest.has_stream_options,
            max_tokens: rest.max_tokens,
            choices: rest.choices,
            body,
        })
    }

    /// The members besides `model` checked.
    fn checked_rest(body: &BodyPieces, fields: RequestFields) -> Result<Rest, GatewayError> {
        let RequestFields {
            messages,
            stream,
            stream_options,
            max_tokens,
            max_completion_tokens,
            n,
            duplicate,
            ..
        } = fields;
        if let Some(name) = duplicate {
            return Err(duplicated(name));
        }
        let messages = messages.ok_or_else(|| missing("messages"))?;
        if body.span(messages.start..messages.start + 1).first() != Some(&b'[') {
            return Err(
                GatewayError::invalid_request("`messages` must be an array").with_param("messages")
            );
        }
        let stream = match stream.map(|s| body.span(s)).as_deref() {
            None | Some(b"false") | Some(b"null") => false,
            Some(b"true") => true,
            Some(_) => {
                return Err(GatewayError::invalid_request("`stream` must be a boolean")
                    .with_param("stream"));
            }
        };
        let has_stream_options = stream_options.is_some();
        // Checked with or without `stream`: a wrong type is refused either
        // way, though only a stream asks for usage.
        let include_usage = match stream_options.map(|s| body.span(s)) {
            Some(raw) => include_usage_asked(&raw)? && stream,
            None => false,
        };
        // Both are checked, and the larger counts: a provider honours the
        // one it knows, and the limits must not count the smaller.
        let completion_cap = token_cap(body, max_completion_tokens, "max_completion_tokens")?;
        let max_tokens = token_cap(body, max_tokens, "max_tokens")?.max(completion_cap);
        let choices = token_cap(body, n, "n")?.unwrap_or(1).max(1);
        Ok(Rest {
            stream,
            include_usage,
            has_stream_options,
            max_tokens,
            choices,
        })
    }

    /// The model name the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The name as the log and the access line keep it: shared when
    /// short, else cut as [`shown_model`] cuts it.
    pub fn logged_model(&self) -> Arc<str> {
        logged_name(&self.model)
    }

    /// The body's length as the client sent it.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The body for an upstream that calls the model `upstream_model`
    /// (`model_json` is the same id, JSON-encoded). When the id is unchanged
    /// the original buffers are sent; otherwise slices of them around the
    /// new id, so the body is never copied.
    pub fn upstream_body(&self, upstream_model: &str, model_json: &Bytes) -> UpstreamBody {
        UpstreamBody(if upstream_model == &*self.model {
            self.body.to_pieces()
        } else {
            self.body
                .spliced(self.model_span.clone(), model_json.clone())
        })
    }

    /// Whether a target whose provider reports a stream's usage only when
    /// asked must be asked for this request: a stream whose client sent no
    /// `stream_options` (one it sent, with or without `include_usage`, is
    /// left as it is: a second member of that name would be ambiguous).
    pub fn needs_usage_asked(&self) -> bool {
        self.stream && !self.has_stream_options
    }

    /// [`ChatRequest::upstream_body`] with the model's value replaced by
    /// `model_then_options` (the id, then a `stream_options` member).
    pub fn upstream_body_asking_usage(&self, model_then_options: &Bytes) -> UpstreamBody {
        UpstreamBody(
            self.body
                .spliced(self.model_span.clone(), model_then_options.clone()),
        )
    }
}

/// A body ready to send upstream, cheap to clone for another attempt.
#[derive(Debug, Clone)]
pub struct UpstreamBody(Pieces);

impl UpstreamBody {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All bytes in one buffer (tests and diagnostics; copies).
    pub fn to_bytes(&self) -> Bytes {
        self.0.concat().into()
    }

    /// The body as the client sends it: the buffers in order.
    pub fn into_outgoing(self) -> OutgoingBody {
        OutgoingBody::new(self.0)
    }
}

/// What [`ChatRequest::from_scan`] reads besides the model.
struct Rest {
    stream: bool,
    include_usage: bool,
    has_stream_options: bool,
    max_tokens: Option<u64>,
    choices: u64,
}

/// A model name as the log and the access line keep it: shared when
/// short, else cut as [`shown_model`] cuts it.
fn logged_name(model: &Arc<str>) -> Arc<str> {
    match shown_model(model) {
        Cow::Borrowed(_) => model.clone(),
        Cow::Owned(cut) => cut.into(),
    }
}

/// `stream_options.include_usage` in `raw`, the `stream_options` value (the
/// body's scan has found it valid JSON). Given twice, however spelled (a
/// second time with escapes or in another letter case, which some parser
/// could take for the member read here), it is refused; alone in another
/// letter case it is not this member, as to OpenAI.
fn include_usage_asked(raw: &[u8]) -> Result<bool, GatewayError> {
    let refused = |message| GatewayError::invalid_request(message).with_param("stream_options");
    match raw.first() {
        Some(b'{') => {}
        Some(b'n') => return Ok(false),
        _ => return Err(refused("`stream_options` must be an object")),
    }
    let mut value = None;
    let mut spellings = 0;
    let scanned = json_scan::scan_object(raw, |key, span| {
        let decoded;
        let key = if key.contains(&b'\\') {
            decoded = decoded_key(key).unwrap_or_default();
            decoded.as_bytes()
        } else {
            key
        };
        if key == b"include_usage" {
            value = Some(span);
            spellings += 1;
        } else if folded(key).as_deref() == Some(b"include_usage".as_slice()) {
            spellings += 1;
        }
    });
    debug_assert!(scanned.is_ok(), "checked with the body");
    if spellings > 1 {
        return Err(refused(
            "`stream_options.include_usage` is given more than once, or spelled with escapes or in \
                 another letter case: send it once, as `include_usage`",
        ));
    }
    match value.map(|span| &raw[span]) {
        None | Some(b"false" | b"null") => Ok(false),
        Some(b"true") => Ok(true),
        Some(_) => Err(refused("`stream_options.include_usage` must be a boolean")),
    }
}

/// A `model` string that does not decode: its writer needs to fix its
/// escapes or encoding, not its type.
fn model_not_a_string() -> GatewayError {
    GatewayError::invalid_request(
        "`model` is not a valid JSON string: it has an invalid escape (or a lone \
         surrogate), a raw control character or bytes that are not UTF-8",
    )
    .with_param("model")
}

fn duplicated(name: &'static str) -> GatewayError {
    GatewayError::invalid_request(format!(
        "`{name}` is given more than once in the request body, or spelled with escapes or in \
         another letter case: send it once, as `{name}`"
    ))
    .with_param(name)
}

fn missing(field: &'static str) -> GatewayError {
    GatewayError::invalid_request(format!("missing required field `{field}`")).with_param(field)
}

/// A JSON string value (quotes included) to its text; `None` if not a string.
fn parse_string(raw: &[u8]) -> Option<Arc<str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', inner).is_none() {
        // A raw control character is not allowed in a JSON string (the
        // structure scan does not look inside strings).
        if inner.iter().any(|&byte| byte < 0x20) {
            return None;
        }
        return std::str::from_utf8(inner).ok().map(Arc::from);
    }
    serde_json::from_slice::<String>(raw).ok().map(Arc::from)
}

/// A token cap as the limits count it: `None` when absent or `null`; any
/// JSON number, since a provider may read `1e6` or `1000000.0` as the
/// integer (rounded up, so a fraction is not counted low; a negative one,
/// which providers refuse, counts as none; one past `u64` as the largest);
/// anything else is refused here, as OpenAI refuses it, rather than
/// estimated as no cap while a lenient provider honours it. `n`, the
/// number of choices each of which may use the cap, is read the same way.
#[inline]
fn token_cap(
    body: &BodyPieces,
    span: Option<Range<usize>>,
    name: &'static str,
) -> Result<Option<u64>, GatewayError> {
    let Some(span) = span else {
        return Ok(None);
    };
    let raw = body.span(span);
    match raw.first() {
        Some(b'n') => Ok(None),
        // The scan checked the number's grammar; a cap below zero is none.
        Some(b'-' | b'0'..=b'9') => Ok(super::whole_count::whole_count(&raw)),
        _ => Err(
            GatewayError::invalid_request(format!("`{name}` must be a number or null"))
                .with_param(name),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek(body: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::peek(Bytes::copy_from_slice(body.as_bytes()))
    }

    #[test]
    fn long_model_names_are_shown_cut_at_a_character_boundary() {
        let short = "k".repeat(SHOWN_MODEL_BYTES);
        assert!(matches!(shown_model(&short), Cow::Borrowed(s) if s == short));
        let long = format!("{short}k");
        assert_eq!(shown_model(&long), format!("{short}... (257 bytes)"));
        // A three-byte character that would be cut is left out whole.
        let across = format!(
            "{}\u{20ac}{}",
            "k".repeat(SHOWN_MODEL_BYTES - 1),
            "k".repeat(10)
        );
        let shown = shown_model(&across);
        assert_eq!(
            shown,
            format!("{}... (268 bytes)", "k".repeat(SHOWN_MODEL_BYTES - 1))
        );
        let request = peek(&format!(r#"{{"model":"{across}","messages":[]}}"#)).unwrap();
        assert_eq!(*request.logged_model(), *shown);
        let request = peek(r#"{"model":"kimi","messages":[]}"#).unwrap();
        assert!(Arc::ptr_eq(&request.logged_model(), &request.model));
    }

    #[test]
    fn a_model_value_too_long_for_any_route_is_not_found_undecoded() {
        let at_most = "m".repeat(MAX_MODEL_SPAN - 2);
        let request = peek(&format!(r#"{{"model":"{at_most}","messages":[]}}"#)).unwrap();
        assert_eq!(request.model().len(), MAX_MODEL_SPAN - 2);
        let over = format!(r#"{{"model":"{at_most}m","messages":[]}}"#);
        let err = peek(&over).unwrap_err();
        assert_eq!(err.status, http::StatusCode::NOT_FOUND);
        assert_eq!(err.code.as_deref(), Some(code::MODEL_NOT_FOUND));
        // The name's length, not its JSON's with the quotes.
        assert!(err.message.contains("65535 bytes long"), "{err}");
    }

    /// A name too long to decode is shown up to its first escape, so a key
    /// written in escapes never reaches the log undecoded.
    #[test]
    fn a_model_value_too_long_is_shown_up_to_its_first_escape() {
        let tail = "x".repeat(MAX_MODEL_SPAN);
        let body = format!(r#"{{"model":"ab\u0073k-secret/{tail}","messages":[]}}"#);
        let mut scan = RequestScan::default();
        scan.feed(body.as_bytes());
        let Err(refused) = ChatRequest::from_scan(Bytes::from(body).into(), scan) else {
            panic!("accepted");
        };
        let shown = refused.model.expect("named").name;
        assert!(shown.starts_with("ab... ("), "{shown}");
    }

    /// A byte order mark is refused (JSON sent over a network must not
    /// have one) in words that say what it is.
    #[test]
    fn a_byte_order_mark_is_refused_by_name() {
        let err = peek("\u{FEFF}{\"model\":\"a\",\"messages\":[]}").unwrap_err();
        assert!(err.message.contains("byte order mark"), "{err}");
        let err = peek("x{}").unwrap_err();
        assert!(
            err.message.ends_with("expected a JSON object at byte 0"),
            "{err}"
        );
        let err = peek("").unwrap_err();
        assert_eq!(
            err.message,
            "request body is empty: send the chat request as a JSON object"
        );
    }

    #[test]
    fn a_model_string_that_does_not_decode_is_told_from_one_of_another_type() {
        let message = |body: &[u8]| {
            let Err(err) = ChatRequest::peek(Bytes::copy_from_slice(body)) else {
                panic!("accepted {}", String::from_utf8_lossy(body));
            };
            assert_eq!(err.param.as_deref(), Some("model"), "{err}");
            err.message.into_owned()
        };
        for body in [
            &br#"{"model":"kimi\x","messages":[]}"#[..],
            br#"{"model":"\ud800","messages":[]}"#,
            br#"{"messages":[],"model":"kimi\u12"}"#,
            b"{\"model\":\"ki\nmi\",\"messages\":[]}",
            b"{\"model\":\"kimi\x01\",\"messages\":[]}",
            b"{\"model\":\"kimi\xff\",\"messages\":[]}",
        ] {
            let text = message(body);
            assert!(
                text.starts_with("`model` is not a valid JSON string"),
                "{}: {text}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &br#"{"model":"","messages":[]}"#[..],
            br#"{"model":5,"messages":[]}"#,
            br#"{"model":null,"messages":[]}"#,
        ] {
            assert_eq!(message(body), "`model` must be a non-empty string");
        }
    }

    #[test]
    fn peeks_the_fields_it_needs() {
        let req = peek(
            r#"{"messages":[],"stream":true,"model":"kimi","stream_options":{"include_usage":true},"max_tokens":7}"#,
        )
        .unwrap();
        assert_eq!(req.model(), "kimi");
        assert!(req.stream && req.include_usage);
        assert_eq!(req.max_tokens, Some(7));
    }

    #[test]
    fn splices_only_the_model_value() {
        let body =
            r#"{ "model" : "kimi-k2.6", "messages":[{"role":"user","content":"model"}], "x":1 }"#;
        let req = peek(body).unwrap();
        let same = req.upstream_body("kimi-k2.6", &Bytes::from_static(b"\"kimi-k2.6\""));
        assert_eq!(same.to_bytes(), body.as_bytes());
        let spliced = req.upstream_body(
            "moonshot/kimi-k2-6",
            &Bytes::from_static(b"\"moonshot/kimi-k2-6\""),
        );
        assert_eq!(
            spliced.to_bytes(),
            body.replace("\"kimi-k2.6\"", "\"moonshot/kimi-k2-6\"")
                .as_bytes()
        );
        assert_eq!(spliced.len(), body.len() + 9);
    }

    #[test]
    fn stream_options_errors_say_what_is_wrong() {
        let message = |body: &str| peek(body).unwrap_err().message.into_owned();
        assert_eq!(
            message(
                r#"{"model":"a","messages":[],"stream":true,"stream_options":{"include_usage":"yes"}}"#
            ),
            "`stream_options.include_usage` must be a boolean"
        );
        // With or without a stream.
        for stream in ["true", "false"] {
            for options in ["[]", "[true]", "[null]", "true", "\"x\"", "5"] {
                let body = format!(
                    r#"{{"model":"a","messages":[],"stream":{stream},"stream_options":{options}}}"#
                );
                assert_eq!(
                    message(&body),
                    "`stream_options` must be an object",
                    "{body}"
                );
            }
        }
        for options in [
            r#"{"include_usage":true,"include_usage":true}"#,
            r#"{"include_usage":true,"include\u005fusage":false}"#,
            r#"{"include_usage":false,"INCLUDE_USAGE":true}"#,
            r#"{"include_u\u017fage":true,"include_usage":false}"#,
            r#"{"Include_Usage":true,"x":1,"include_usage":false}"#,
        ] {
            let body = format!(
                r#"{{"model":"a","messages":[],"stream":true,"stream_options":{options}}}"#
            );
            assert_eq!(
                message(&body),
                "`stream_options.include_usage` is given more than once, or spelled with escapes or in \
                 another letter case: send it once, as `include_usage`",
                "{body}"
            );
        }
        // Alone, an escaped spelling is the member; one in other letter
        // case is not (OpenAI reads names as written).
        for (options, asked) in [
            (r#"{"include\u005fusage":true}"#, true),
            (r#"{"INCLUDE_USAGE":true}"#, false),
            (
                r#"{"x":"\u00e9","include_usage":true,"y":{"include_usage":1}}"#,
                true,
            ),
        ] {
            let body = format!(
                r#"{{"model":"a","messages":[],"stream":true,"stream_options":{options}}}"#
            );
            assert_eq!(peek(&body).unwrap().include_usage, asked, "{body}");
        }
        // Whatever else is wrong inside is told as what it is.
        let body = r#"{"model":"a","messages":[],"stream":true,"stream_options":{"x":"\q"}}"#;
        assert!(
            message(body).starts_with("request body is not valid JSON: invalid escape in a string"),
            "{}",
            message(body)
        );
        let body = r#"{"model":"a","messages":[],"stream":true,"stream_options":null}"#;
        assert!(!peek(body).unwrap().include_usage);
        // Only a stream asks for usage.
        let body = r#"{"model":"a","messages":[],"stream_options":{"include_usage":true}}"#;
        assert!(!peek(body).unwrap().include_usage);
    }

    /// Any JSON number is a cap, as a lenient provider would read it; a
    /// string or another kind of value is refused, not counted as no cap.
    #[test]
    fn token_caps_are_read_in_every_number_form() {
        let cap = |value: &str| {
            peek(&format!(
                r#"{{"model":"a","messages":[],"max_tokens":{value}}}"#
            ))
            .map(|req| req.max_tokens)
        };
        for (value, read) in [
            ("7", Some(7)),
            ("1e6", Some(1_000_000)),
            ("1000000.0", Some(1_000_000)),
            ("2.5", Some(3)),
            ("0.0", Some(0)),
            ("-0", Some(0)),
            ("18446744073709551616", Some(u64::MAX)),
            ("1e400", Some(u64::MAX)),
            ("-5", None),
            ("null", None),
        ] {
            assert_eq!(cap(value).unwrap(), read, "{value}");
        }
        for value in [r#""900000""#, "true", "[1]", "{}"] {
            let err = cap(value).unwrap_err();
            assert_eq!(
                err.message, "`max_tokens` must be a number or null",
                "{value}"
            );
            assert_eq!(err.param.as_deref(), Some("max_tokens"));
        }
        // Both given: the larger counts, whichever it is; `null` or a
        // negative number there leaves the other. Each is checked.
        let both = |completion: &str, max: &str| {
            peek(&format!(
                r#"{{"model":"a","messages":[],"max_tokens":{max},"max_completion_tokens":{completion}}}"#
            ))
            .map(|req| req.max_tokens)
        };
        assert_eq!(both("1e6", "1").unwrap(), Some(1_000_000));
        assert_eq!(both("5", "5000").unwrap(), Some(5000));
        assert_eq!(both("null", "1").unwrap(), Some(1));
        assert_eq!(both("-1", "7").unwrap(), Some(7));
        assert_eq!(
            both("5", r#""100000""#).unwrap_err().param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            both(r#""5""#, "100000").unwrap_err().param.as_deref(),
            Some("max_completion_tokens")
        );
    }

    /// `n` choices may each use the cap: read like a cap, 1 when absent,
    /// `null`, zero or negative; anything but a number refused.
    #[test]
    fn the_number_of_choices_is_read_like_a_cap() {
        let choices = |value: &str| {
            peek(&format!(r#"{{"model":"a","messages":[],"n":{value}}}"#)).map(|req| req.choices)
        };
        for (value, read) in [
            ("3", 3),
            ("2.0", 2),
            ("1e1", 10),
            ("0", 1),
            ("-2", 1),
            ("null", 1),
            ("1e400", u64::MAX),
        ] {
            assert_eq!(choices(value).unwrap(), read, "{value}");
        }
        assert_eq!(peek(r#"{"model":"a","messages":[]}"#).unwrap().choices, 1);
        let err = choices(r#""4""#).unwrap_err();
        assert_eq!(err.message, "`n` must be a number or null");
        assert_eq!(err.param.as_deref(), Some("n"));
    }

    #[test]
    fn a_member_the_gateway_reads_is_refused_in_any_second_spelling() {
        let refused = |body: &str| {
            let err = peek(body).unwrap_err();
            assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{body}");
            err.param.expect("names the member").into_string()
        };
        let ok = r#""messages":[],"max_tokens":1"#;
        for (body, member) in [
            (format!(r#"{{"model":"a","model":"b",{ok}}}"#), "model"),
            (format!(r#"{{"model":"a","mod\u0065l":"b",{ok}}}"#), "model"),
            (format!(r#"{{"model":"a","MODEL":"b",{ok}}}"#), "model"),
            (format!(r#"{{"Model":"b","model":"a",{ok}}}"#), "model"),
            (format!(r#"{{"model":"a","mode\u004c":"b",{ok}}}"#), "model"),
            (
                format!(r#"{{"model":"a",{ok},"Max_Tokens":900000}}"#),
                "max_tokens",
            ),
            // U+212A KELVIN SIGN and U+017F LONG S fold to `k` and `s`,
            // escaped or not.
            (
                format!(r#"{{"model":"a",{ok},"max_to\u212aens":9}}"#),
                "max_tokens",
            ),
            (
                format!("{{\"model\":\"a\",{ok},\"max_to\u{212a}ens\":9}}"),
                "max_tokens",
            ),
            (
                format!("{{\"model\":\"a\",{ok},\"\u{17f}tream\":true}}"),
                "stream",
            ),
            (
                format!(r#"{{"model":"a",{ok},"STREAM_OPTIONS":{{}}}}"#),
                "stream_options",
            ),
            (
                format!(r#"{{"model":"a",{ok},"Max_Completion_Tokens":9}}"#),
                "max_completion_tokens",
            ),
            (format!(r#"{{"model":"a",{ok},"n":1,"N":64}}"#), "n"),
            (format!(r#"{{"model":"a",{ok},"n":1,"n":64}}"#), "n"),
            (format!(r#"{{"model":"a",{ok},"\u006e":64}}"#), "n"),
        ] {
            assert_eq!(refused(&body), member, "{body}");
        }
        // Alone in another letter case, it is not said to be given twice
        // only: the message names both ways it can be wrong.
        let err = peek(&format!(r#"{{"MODEL":"a",{ok}}}"#)).unwrap_err();
        assert_eq!(
            err.message,
            "`model` is given more than once in the request body, or spelled with escapes or in \
             another letter case: send it once, as `model`"
        );
        // Other members, however spelled, are the provider's business.
        let body =
            r#"{"model":"a","messages":[],"Temperature":1,"models":2,"sTreamer":3,"MAX":4,"m":5}"#;
        assert_eq!(peek(body).unwrap().model(), "a");
    }

    #[test]
    fn other_members_may_repeat_and_use_escapes() {
        let body = r#"{"x":1,"x":2,"mod\u0065lx":3,"model":"kimi","messages":[]}"#;
        assert_eq!(peek(body).unwrap().model(), "kimi");
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        assert_eq!(
            peek(r#"{"model":"kimi\u002dchat","messages":[]}"#)
                .unwrap()
                .model(),
            "kimi-chat"
        );
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        for (body, param) in [
            (r#"{"messages":[]}"#, "model"),
            (r#"{"model":"kimi"}"#, "messages"),
            (r#"{"model":5,"messages":[]}"#, "model"),
            (r#"{"model":"","messages":[]}"#, "model"),
            (r#"{"model":"kimi","messages":{}}"#, "messages"),
            (r#"{"model":"kimi","messages":[],"stream":"yes"}"#, "stream"),
            (r#"{"model":"a","messages":[],"model":"b"}"#, "model"),
            (r#"{"model":"a","messages":[],"mod\u0065l":"b"}"#, "model"),
            (r#"{"mod\u0065l":"a","messages":[]}"#, "model"),
            (r#"{"model":"a","messages":[],"messages":[]}"#, "messages"),
            (
                r#"{"model":"a","messages":[],"max_tokens":1,"max_tokens":9}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"a","messages":[],"stream":false,"stream":true}"#,
                "stream",
            ),
        ] {
            let err = peek(body).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        assert!(
            peek("{not json")
                .unwrap_err()
                .message
                .contains("not valid JSON")
        );
    }

    /// A request refused after its model was read is logged with it (and
    /// whether it asked for a stream); one whose model is missing, not a
    /// string or sent twice is logged without one.
    #[test]
    fn a_refusal_after_the_model_was_read_names_it() {
        let refused = |body: &str| {
            let body = BodyPieces::from(Bytes::copy_from_slice(body.as_bytes()));
            let mut scan = RequestScan::default();
            for piece in body.pieces() {
                scan.feed(piece);
            }
            let refused = ChatRequest::from_scan(body, scan).unwrap_err();
            refused.model.map(|m| (m.name.to_string(), m.stream))
        };
        for body in [
            r#"{"model":"kimi","messages":{}}"#,
            r#"{"model":"kimi"}"#,
            r#"{"model":"kimi","messages":[],"max_tokens":"5"}"#,
            r#"{"model":"kimi","messages":[],"stream_options":[true]}"#,
        ] {
            assert_eq!(refused(body), Some(("kimi".into(), false)), "{body}");
        }
        assert_eq!(
            refused(r#"{"model":"kimi","messages":[],"stream":true,"stream":true}"#),
            Some(("kimi".into(), true))
        );
        for body in [
            r#"{"messages":[]}"#,
            r#"{"model":5,"messages":[]}"#,
            r#"{"model":"a","messages":[],"model":"b"}"#,
            r#"{"model":"a","messages":[],"MODEL":"b"}"#,
        ] {
            assert_eq!(refused(body), None, "{body}");
        }
    }
}
