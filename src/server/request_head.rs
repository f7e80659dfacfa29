//! A client's request head, parsed out of the connection's read buffer with
//! `httparse` into the `http` request parts the handlers take (header
//! values are slices of the head's bytes), with how its body is framed
//! (RFC 9112 section 6) and whether the connection may carry another
//! request afterwards.
//!
//! The OpenAI SDKs' telemetry fields (`x-stainless-lang`, `-os`, `-arch`,
//! `-runtime`, `-retry-count`, ..., nine on every request from the Python
//! SDK) are not kept in the parts: the gateway neither reads nor forwards
//! them, and each would cost a heap-allocated name and a map insert
//! (~6k instructions per request for the nine).

use crate::client::Framing;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// Header fields in one request head, at most (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A request head larger than this is refused with 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A complete request head.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: http::request::Parts,
    /// How the body is framed; `Length(0)` when there is none.
    pub body: Framing,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a head is refused; answered with the status and message, and the
/// connection closed (what follows the head cannot be trusted).
#[derive(Debug, PartialEq, Eq)]
pub struct BadHead {
    pub status: StatusCode,
    pub message: &'static str,
}

impl BadHead {
    fn new(status: StatusCode, message: &'static str) -> BadHead {
        BadHead { status, message }
    }

    fn bad(message: &'static str) -> BadHead {
        BadHead::new(StatusCode::BAD_REQUEST, message)
    }

    /// A long head part-way in found no room under
    /// `server.max_body_bytes_total`: the gateway's want, not the client's
    /// fault (503 `gateway_out_of_resources`, retried after a second).
    pub fn no_room() -> BadHead {
        BadHead::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is holding as many request bytes as it may \
             (server.max_body_bytes_total), and this request head is long; retry shortly",
        )
    }
}

/// Where the request line's version is: its last word, after any empty
/// lines before the line (which httparse skips too).
fn version_span(buf: &[u8]) -> std::ops::Range<usize> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line_end = memchr::memchr(b'\n', &buf[start..]).map_or(buf.len(), |at| start + at);
    let line = &buf[start..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = start + line.len();
    let version_start = memchr::memrchr(b' ', line).map_or(start, |at| start + at + 1);
    version_start..end
}

/// What to do with a request line whose version httparse refused.
enum OtherVersion {
    /// `HTTP/1.x` with x above 1: RFC 9110 section 2.5 has it served as
    /// the highest 1.x spoken here, so the minor digit at this offset is
    /// rewritten to 1 and the head parsed again.
    LaterMinor(usize),
    /// 505 for a well-formed `HTTP/d.d` of another major version, 400 for
    /// anything else (`http/1.1`, `HTTP/1`, no version at all: no version,
    /// but a bad line).
    Refused(BadHead),
}

fn other_version(buf: &[u8]) -> OtherVersion {
    let span = version_span(buf);
    match &buf[span.clone()] {
        // Only 2 to 9: a minor of 0 or 1 refused is some other fault of
        // the line, and rewriting it again would never end.
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            OtherVersion::LaterMinor(span.end - 1)
        }
        // A version spoken here, refused: the fault is elsewhere in the
        // line (two spaces before it, say).
        [b'H', b'T', b'T', b'P', b'/', b'1', ..] => {
            OtherVersion::Refused(BadHead::bad("malformed request line"))
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            OtherVersion::Refused(BadHead::new(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.x is served (as HTTP/1.1)",
            ))
        }
        _ => OtherVersion::Refused(BadHead::bad(
            "malformed request line: its version is not HTTP/1.x",
        )),
    }
}

/// The methods RFC 9110 (and RFC 5789's PATCH) define: another is answered
/// 501 (section 9.1), not 405, which says the method is known.
fn is_known_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
            | Method::PATCH
    )
}

/// Whether a target is in absolute-form: `http://` or `https://` (any
/// case), then an authority checked as `Host` is.
fn is_absolute_form(target: &str) -> bool {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    });
    let Some(rest) = rest else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    is_valid_host(authority.as_bytes())
}

/// Parses the head at the start of `buf` and removes it from there.
/// `Ok(None)`: the head is not complete yet. The fields go into `spare`
/// (taken, left empty), a map the connection emptied after its previous
/// request: its room is reused, where a new map would be two allocations.
// Not inlined: a large function run once per request, its code is better
// shared than copied into the request's state machine.
#[inline(never)]
pub fn parse(buf: &mut BytesMut, spare: &mut HeaderMap) -> Result<Option<RequestHead>, BadHead> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut slots) {
        // A read can complete a head past the limit as well as cross it
        // unfinished: both are too large, however the bytes arrived.
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        // No line end in the first 64 KiB: the request line itself is too
        // long, and its target with it (RFC 9112 section 3: 414).
        Ok(httparse::Status::Complete(_) | httparse::Status::Partial)
            if memchr::memchr(b'\n', &buf[..MAX_HEAD_BYTES.min(buf.len())]).is_none() =>
        {
            return Err(BadHead::new(
                StatusCode::URI_TOO_LONG,
                "request target too long (the request line is at most 64 KiB)",
            ));
        }
        Ok(httparse::Status::Complete(_) | httparse::Status::Partial)
        | Err(httparse::Error::TooManyHeaders) => {
            return Err(BadHead::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large (at most 64 KiB and 100 header fields)",
            ));
        }
        Err(httparse::Error::Version) => {
            return match other_version(buf) {
                OtherVersion::LaterMinor(minor_at) => {
                    buf[minor_at] = b'1';
                    parse(buf, spare)
                }
                OtherVersion::Refused(refusal) => Err(refusal),
            };
        }
        Err(_) => return Err(BadHead::bad("malformed request head")),
    };
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| BadHead::bad("invalid method"))?;
    if !is_known_method(&method) {
        return Err(BadHead::new(
            StatusCode::NOT_IMPLEMENTED,
            "method not implemented (the API is POST /v1/chat/completions and GET /v1/models)",
        ));
    }
    let path = request.path.unwrap_or_default();
    // Origin-form (`/...`) or absolute-form (`http://host/...`) only:
    // asterisk-form is OPTIONS's alone and authority-form CONNECT's, and
    // neither names a resource served here (RFC 9112 section 3.2).
    if !path.starts_with('/') && !is_absolute_form(path) {
        return Err(BadHead::bad(
            "invalid request target: give a path such as /v1/chat/completions",
        ));
    }

    let start = buf.as_ptr() as usize;
    let offset = |part: &[u8]| part.as_ptr() as usize - start;
    let path_at = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    // The fields' places in the head, recorded before the head is split
    // off the buffer (the parser's slices borrow it); the fields that
    // decide framing and keep-alive are read on the same pass.
    let mut fields = smallvec::SmallVec::<[(HeaderName, usize, usize); 16]>::new();
    let mut framing = FramingFields::default();
    // httparse takes a bare LF for a line end (RFC 9112 allows it); a
    // front end that ends lines only at CRLF would read `X: a\nContent-
    // Length: 5` as one field, and frame the body otherwise than here. Each
    // line's end is checked where the parser left it, not found by a scan:
    // empty lines before the request line, the request line (one space and
    // `HTTP/1.x` after the target), each field (its value, trimmed of
    // trailing blanks, or empty at its line end), the final empty line.
    // httparse has checked that a CR there is followed by a LF.
    let crlf_at = |at: usize| buf.get(at) == Some(&b'\r');
    let method_at = offset(request.method.unwrap_or_default().as_bytes());
    let mut crlf_lines = buf[..method_at].chunks(2).all(|pair| pair == b"\r\n")
        && crlf_at(path_at.end + " HTTP/1.1".len())
        && crlf_at(head_len - 2);
    for header in request.headers.iter() {
        let mut line_end = offset(header.value) + header.value.len();
        while matches!(buf.get(line_end), Some(b' ' | b'\t')) {
            line_end += 1;
        }
        crlf_lines &= crlf_at(line_end);
        if is_sdk_telemetry(header.name.as_bytes()) {
            continue;
        }
        let name = match lowercase_common_name(header.name.as_bytes()) {
            Some(name) => name,
            None => HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| BadHead::bad("invalid header name"))?,
        };
        framing.read(&name, header.value)?;
        let at = offset(header.value);
        fields.push((name, at, at + header.value.len()));
    }
    if !crlf_lines {
        return Err(BadHead::bad(
            "malformed request head: a line ends with a bare LF, not CRLF",
        ));
    }
    let head: Bytes = buf.split_to(head_len).freeze();

    let uri = if &head[path_at.clone()] == CHAT_TARGET.as_bytes() {
        chat_target_uri()
    } else {
        // A fragment is the client's own; origin-form has none (RFC 9112
        // section 3.2.1), and `http::Uri` would drop it unseen.
        if memchr::memchr(b'#', &head[path_at.clone()]).is_some() {
            return Err(BadHead::bad(
                "invalid request target: a fragment (#...) is not sent in a request",
            ));
        }
        Uri::from_maybe_shared(head.slice(path_at))
            .map_err(|_| BadHead::bad("invalid request target"))?
    };
    let mut headers = std::mem::take(spare);
    if !headers.is_empty() {
        headers.clear();
    }
    headers.reserve(fields.len());
    // Drained, not moved: the inline array is ~750 bytes.
    for (name, from, to) in fields.drain(..) {
        let bytes = head.slice(from..to);
        let value = if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8, the one condition of the
            // unchecked constructor; and httparse has already refused
            // every control character but tab in a field value, which is
            // all the checked one would look for.
            unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
        } else {
            HeaderValue::from_maybe_shared(bytes)
                .map_err(|_| BadHead::bad("invalid header value"))?
        };
        headers.append(name, value);
    }

    // RFC 9112 section 3.2: an HTTP/1.1 request names its host once.
    if version == Version::HTTP_11 && framing.hosts != 1 {
        return Err(BadHead::bad(
            "an HTTP/1.1 request needs exactly one host header field",
        ));
    }
    let body = framing.body(version)?;
    let keep_alive = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
    let expect_continue =
        version == Version::HTTP_11 && body != Framing::Length(0) && framing.expect_continue;

    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// The fields nearly every request has, when their names come in lowercase
/// (as HTTP/2 requires, and most HTTP/1.1 clients send them): one
/// comparison instead of `HeaderName::from_bytes`'s general parse.
fn lowercase_common_name(name: &[u8]) -> Option<HeaderName> {
    use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
    match name {
        b"host" => Some(HOST),
        b"content-type" => Some(CONTENT_TYPE),
        b"content-length" => Some(CONTENT_LENGTH),
        b"authorization" => Some(AUTHORIZATION),
        b"accept" => Some(ACCEPT),
        b"accept-encoding" => Some(ACCEPT_ENCODING),
        b"user-agent" => Some(USER_AGENT),
        b"connection" => Some(CONNECTION),
        _ => None,
    }
}

/// The target of nearly every request.
const CHAT_TARGET: &str = "/v1/chat/completions";

/// [`CHAT_TARGET`] as a `Uri`, parsed once: a clone of it shares the
/// static text (~330 instructions per request saved over parsing it).
fn chat_target_uri() -> Uri {
    static URI: std::sync::LazyLock<Uri> =
        std::sync::LazyLock::new(|| Uri::from_static(CHAT_TARGET));
    URI.clone()
}

/// `x-stainless-*`, in any case.
fn is_sdk_telemetry(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-stainless-";
    name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

/// What the head's fields say about its body and the connection.
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    /// Transfer codings listed, over every such field.
    codings: usize,
    /// Of them, chunked.
    chunked: usize,
    /// The last coding listed is chunked.
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// `Host` fields seen.
    hosts: u8,
}

impl FramingFields {
    fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), BadHead> {
        if name == CONTENT_LENGTH {
            // A list of equal values ("42, 42") is allowed; anything else
            // is not.
            for part in value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or(BadHead::bad("invalid content-length"))?;
                if self.content_length.is_some_and(|seen| seen != n) {
                    return Err(BadHead::bad("conflicting content-length values"));
                }
                self.content_length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            for coding in value.split(|b| *b == b',') {
                self.chunked_last = coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
                self.chunked += usize::from(self.chunked_last);
                self.codings += 1;
            }
        } else if name == CONNECTION {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == EXPECT {
            // A list ("100-continue, foo") still asks for the 100: the
            // expectations the gateway does not know are ignored.
            self.expect_continue |= value
                .split(|b| *b == b',')
                .any(|member| member.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
        } else if name == HOST {
            self.hosts = self.hosts.saturating_add(1);
            // RFC 9112 section 3.2: an invalid value is refused like a
            // missing one; a proxy in front may read it differently.
            if !is_valid_host(value.trim_ascii()) {
                return Err(BadHead::bad("invalid host header field"));
            }
        }
        Ok(())
    }

    /// RFC 9112 section 6.3 for requests: chunked when the (only) transfer
    /// coding is chunked, else `Content-Length`, else no body. A request
    /// with both, or with a coding the gateway does not decode, is refused:
    /// the two disagreeing is how requests are smuggled past proxies.
    fn body(&self, version: Version) -> Result<Framing, BadHead> {
        if self.codings == 0 {
            return Ok(Framing::Length(self.content_length.unwrap_or(0)));
        }
        if version == Version::HTTP_10 {
            return Err(BadHead::bad("transfer-encoding in an HTTP/1.0 request"));
        }
        if self.content_length.is_some() {
            return Err(BadHead::bad(
                "both transfer-encoding and content-length in one request",
            ));
        }
        // Section 6.3: a request whose last coding is not chunked has no
        // length the server can know, and chunked twice is not a framing.
        if !self.chunked_last {
            return Err(BadHead::bad(
                "the last transfer coding of a request must be chunked",
            ));
        }
        if self.chunked > 1 {
            return Err(BadHead::bad(
                "transfer-encoding lists chunked more than once",
            ));
        }
        if self.codings == 1 {
            Ok(Framing::chunked())
        } else {
            Err(BadHead::new(
                StatusCode::NOT_IMPLEMENTED,
                "transfer codings other than chunked are not accepted",
            ))
        }
    }
}

/// `uri-host [":" port]` (RFC 3986): a name, an IPv4 address or a
/// bracketed IP literal, and digits after a colon. Empty is valid.
fn is_valid_host(value: &[u8]) -> bool {
    let port = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(close) = memchr::memchr(b']', literal) else {
                return false;
            };
            let (address, after) = (&literal[..close], &literal[close + 1..]);
            let port = match after {
                [] => &[][..],
                [b':', port @ ..] => port,
                _ => return false,
            };
            let in_literal = |b: &u8| HOST_NAME_BYTE[usize::from(*b)] || *b == b':';
            if address.is_empty() || !address.iter().all(in_literal) {
                return false;
            }
            port
        }
        None => match value.iter().position(|b| !HOST_NAME_BYTE[usize::from(*b)]) {
            None => return true,
            Some(at) if value[at] == b':' => &value[at + 1..],
            Some(_) => return false,
        },
    };
    port.iter().all(u8::is_ascii_digit)
}

/// RFC 3986's reg-name bytes: unreserved characters, sub-delimiters and
/// `%`, as a table (every request's `Host` is checked).
static HOST_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// A `Content-Length` value: decimal digits. One past what a `u64` holds
/// is read as `u64::MAX`: a body larger than any limit (413), not a
/// malformed field.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(wire: &str) -> Result<Option<RequestHead>, BadHead> {
        parse(&mut BytesMut::from(wire.as_bytes()), &mut HeaderMap::new())
    }

    /// A map kept from an earlier request gives the next head exactly its
    /// own fields, and keeps its room.
    #[test]
    fn a_reused_map_holds_only_the_new_heads_fields() {
        let mut spare = HeaderMap::new();
        let first = "POST /a HTTP/1.1\r\nhost: x\r\nx-one: 1\r\nx-two: 2\r\nx-two: 3\r\n\r\n";
        let head = parse(&mut BytesMut::from(first), &mut spare)
            .unwrap()
            .unwrap();
        assert_eq!(head.parts.headers.len(), 4);
        let mut kept = head.parts.headers;
        let room = kept.capacity();
        kept.clear();
        spare = kept;
        let second = "GET /b HTTP/1.1\r\nhost: y\r\nx-two: 4\r\n\r\n";
        let head = parse(&mut BytesMut::from(second), &mut spare)
            .unwrap()
            .unwrap();
        let fresh = parse(&mut BytesMut::from(second), &mut HeaderMap::new());
        assert_eq!(head.parts.headers, fresh.unwrap().unwrap().parts.headers);
        assert_eq!(head.parts.headers.capacity(), room);
        assert!(head.parts.headers.get("x-one").is_none());
        let twos: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["4"]);
    }

    /// `wire` with a `Host` field after its request line when it has none
    /// (an HTTP/1.1 request needs one; these tests are about the rest).
    fn with_host(wire: &str) -> String {
        if wire.to_ascii_lowercase().contains("\r\nhost:") {
            return wire.to_string();
        }
        match wire.split_once("\r\n") {
            Some((line, rest)) => format!("{line}\r\nHost: t\r\n{rest}"),
            None => wire.to_string(),
        }
    }

    fn head(wire: &str) -> RequestHead {
        parse_all(&with_host(wire))
            .unwrap()
            .expect("a complete head")
    }

    fn refused(wire: &str) -> StatusCode {
        parse_all(&with_host(wire)).expect_err(wire).status
    }

    #[test]
    fn a_host_value_must_be_a_host_and_port() {
        for host in [
            "gw",
            "gw:8080",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "a.b-c_d~e",
            "",
            "gw:",
        ] {
            let wire = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(parse_all(&wire).unwrap().is_some(), "{host:?}");
        }
        for host in [
            "a b", "a@b", "a/b", "gw:80x", "[::1", "[::1]x", "[]", "a:b:80", "\"gw\"", "gw\\",
        ] {
            let wire = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let refused = parse_all(&wire).expect_err(host);
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{host:?}");
        }
    }

    #[test]
    fn an_http_1_1_request_names_its_host_once() {
        for wire in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
        ] {
            let refused = parse_all(wire).expect_err(wire);
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{wire:?}");
        }
        assert!(parse_all("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        assert!(
            parse_all("GET / HTTP/1.1\r\nHOST: a\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_head_becomes_request_parts_and_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nX-Two: a\r\nx-two: b\r\nContent-Length: 4\r\n\r\nbody"[..],
        );
        let head = parse(&mut buf, &mut HeaderMap::new()).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/v1/chat/completions");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "gw");
        let twos: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
        assert_eq!(head.body, Framing::Length(4));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"body");
    }

    #[test]
    fn an_incomplete_head_waits_at_every_cut() {
        let wire = "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";
        for cut in 0..wire.len() {
            assert!(parse_all(&wire[..cut]).unwrap().is_none(), "cut {cut}");
        }
        assert!(parse_all(wire).unwrap().is_some());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert_eq!(
            head("GET / HTTP/1.0\r\n\r\n").parts.version,
            Version::HTTP_10
        );
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").body, Framing::Length(0));
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").body,
            Framing::chunked()
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n").body,
            Framing::Length(7)
        );
        // Leading zeros are allowed; a length past what a `u64` holds is
        // larger than any limit (the body is then refused with 413).
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0000000000000000000000007\r\n\r\n").body,
            Framing::Length(7)
        );
        for huge in ["18446744073709551616", "99999999999999999999999"] {
            let wire = format!("POST / HTTP/1.1\r\nContent-Length: {huge}\r\n\r\n");
            assert_eq!(head(&wire).body, Framing::Length(u64::MAX), "{huge}");
        }
        assert!(
            head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        // In a list, or beside another field, the 100 is still asked for.
        for expect in [
            "foo, 100-continue",
            "100-continue,foo",
            "100-continue\r\nExpect: foo",
        ] {
            let wire = format!("POST / HTTP/1.1\r\nExpect: {expect}\r\nContent-Length: 1\r\n\r\n");
            assert!(head(&wire).expect_continue, "{expect:?}");
        }
        assert!(
            !head("POST / HTTP/1.1\r\nExpect: foo\r\nContent-Length: 1\r\n\r\n").expect_continue
        );
        // Nothing to wait for without a body, nor from an HTTP/1.0 client.
        assert!(!head("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(
            !head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (wire, status) in [
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: , chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ] {
            assert_eq!(refused(wire).as_u16(), status, "{wire:?}");
        }
    }

    /// Lines end with CRLF: a bare LF could be read as part of a field by
    /// a front end and as a line end here (a hidden `Transfer-Encoding`).
    #[test]
    fn a_bare_lf_line_end_is_refused() {
        for wire in [
            "POST / HTTP/1.1\r\nHost: a\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\nHost: a\nContent-Length: 5\n\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\nhello",
            "\nPOST / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(refused(wire).as_u16(), 400, "{wire:?}");
        }
        assert!(parse_all("\r\nPOST / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert_eq!(
            refused("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            refused("GET /\x01 HTTP/1.1\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refused("G(T / HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            refused(&endless),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        // Complete, but over the limit: refused as well, not only a head
        // still arriving when it crosses the limit.
        let whole = format!(
            "GET / HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(refused(&whole), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // A request line with no end in 64 KiB: its target is too long.
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused(&long_target), StatusCode::URI_TOO_LONG);
    }

    /// 505 is for a well-formed version of another major version; a later
    /// 1.x minor is served as 1.1 (RFC 9110 section 2.5); a line with no
    /// well-formed version at all is a bad request.
    #[test]
    fn a_malformed_version_is_a_bad_request_and_another_one_unsupported() {
        for version in ["HTTP/2.0", "HTTP/0.9", "HTTP/3.1"] {
            let wire = format!("GET / {version}\r\nHost: a\r\n\r\n");
            assert_eq!(
                refused(&wire),
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "{version}"
            );
        }
        for version in [
            "http/1.1",
            "FOO",
            "XTTP/1.1",
            "HTTP/1",
            "HTTP/1.",
            "HTTP/01.1",
            "HTTP/1.x",
            "HTTP/1.22",
        ] {
            let wire = format!("GET / {version}\r\nHost: a\r\n\r\n");
            assert_eq!(refused(&wire), StatusCode::BAD_REQUEST, "{version}");
        }
        // Two spaces before a later minor: the rewrite is tried once, and
        // the line is still refused, not parsed for ever.
        assert_eq!(
            refused("GET /  HTTP/1.2\r\nHost: a\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_later_minor_version_is_served_as_http_1_1() {
        for wire in [
            "GET /v1/models HTTP/1.2\r\nHost: a\r\n\r\n",
            "\r\nGET /v1/models HTTP/1.9\r\nHost: a\r\n\r\n",
        ] {
            let head = head(wire);
            assert_eq!(head.parts.version, Version::HTTP_11, "{wire:?}");
            assert_eq!(head.parts.uri.path(), "/v1/models");
            assert!(head.keep_alive);
        }
    }

    /// Only origin-form and absolute-form targets name a resource here,
    /// and an absolute-form authority is checked as a `Host` value is; a
    /// method RFC 9110 does not define is not implemented.
    #[test]
    fn targets_in_another_form_and_unknown_methods_are_refused() {
        for target in [
            "*",
            "a:80",
            "http:healthz",
            "http://a:xx/healthz",
            "http://a@b@c/healthz",
            "/healthz#x",
            "http://a/healthz#x",
        ] {
            let wire = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(refused(&wire), StatusCode::BAD_REQUEST, "{target}");
        }
        for target in ["/healthz", "http://a/healthz", "HTTPS://a:8080/healthz?x=1"] {
            let wire = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(parse_all(&wire).is_ok(), "{target}");
        }
        for method in ["FOO", "get", "M-SEARCH"] {
            let wire = format!("{method} /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(refused(&wire), StatusCode::NOT_IMPLEMENTED, "{method}");
        }
    }

    /// Any byte anywhere in a head (or a byte taken out) gives a head, a
    /// refusal with an error status, or a wait for more that takes nothing
    /// from the buffer; never a panic. A head taken has only CRLF line
    /// ends.
    #[test]
    fn every_mutation_of_a_head_is_parsed_or_refused() {
        let wire = b"\r\nPOST /v1/chat/completions?a=b HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nX-Empty:\r\nConnection: keep-alive, close \r\nExpect: 100-continue\r\n\r\n{}";
        let mut mutations = Vec::new();
        for at in 0..wire.len() {
            for byte in [
                0u8, b'\t', b'\n', b'\r', b' ', b',', b':', b'0', b'9', b'a', b'/', b'?', 0x7f,
                0x80, 0xff,
            ] {
                let mut mutated = wire.to_vec();
                mutated[at] = byte;
                mutations.push(mutated);
            }
            let mut shorter = wire.to_vec();
            shorter.remove(at);
            mutations.push(shorter);
        }
        for mutated in mutations {
            let mut buf = BytesMut::from(&mutated[..]);
            match parse(&mut buf, &mut HeaderMap::new()) {
                Ok(Some(head)) => {
                    let taken = &mutated[..mutated.len() - buf.len()];
                    let bare_lf = (0..taken.len())
                        .any(|at| taken[at] == b'\n' && (at == 0 || taken[at - 1] != b'\r'));
                    assert!(
                        !bare_lf,
                        "{:?} gave {head:?}",
                        String::from_utf8_lossy(taken)
                    );
                }
                Ok(None) => assert_eq!(buf.len(), mutated.len(), "nothing taken yet"),
                Err(bad) => assert!(
                    bad.status.is_client_error() || bad.status.is_server_error(),
                    "{bad:?}"
                ),
            }
        }
    }

    #[test]
    fn header_values_share_the_heads_bytes() {
        let mut buf =
            BytesMut::from(&b"GET / HTTP/1.1\r\nHost: t\r\nx-long: 0123456789\r\n\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let head = parse(&mut buf, &mut HeaderMap::new()).unwrap().unwrap();
        let value = head.parts.headers["x-long"].as_bytes();
        assert_eq!(value.as_ptr() as usize, start + 33, "no copy");
    }

    /// Values are taken without `http`'s check when they are ASCII: every
    /// byte a value may hold gives the value the checked constructor would,
    /// and every byte it refuses, the parser refuses too.
    #[test]
    fn every_value_byte_is_taken_as_the_checked_constructor_would() {
        for byte in 0..=255u8 {
            let value = [b'a', byte, b'z'];
            let mut wire = b"GET / HTTP/1.1\r\nHost: t\r\nx-v: ".to_vec();
            wire.extend_from_slice(&value);
            wire.extend_from_slice(b"\r\n\r\n");
            let checked = HeaderValue::from_bytes(&value);
            match parse(&mut BytesMut::from(&wire[..]), &mut HeaderMap::new()) {
                Ok(Some(head)) => {
                    let parsed = &head.parts.headers["x-v"];
                    assert_eq!(Some(parsed), checked.as_ref().ok(), "byte {byte:#04x}");
                    assert_eq!(parsed.as_bytes(), value);
                }
                refused => assert!(checked.is_err(), "byte {byte:#04x}: {refused:?}"),
            }
        }
    }

    /// Names in lowercase are recognised without the general parse, and
    /// come out as that parse gives them; other spellings take the parse.
    #[test]
    fn common_names_are_the_names_the_general_parse_gives() {
        for name in [
            "host",
            "content-type",
            "content-length",
            "authorization",
            "accept",
            "accept-encoding",
            "user-agent",
            "connection",
        ] {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(lowercase_common_name(name.as_bytes()), Some(parsed));
            let capitalised = name.replacen(&name[..1], &name[..1].to_uppercase(), 1);
            assert_eq!(lowercase_common_name(capitalised.as_bytes()), None);
            let wire = format!("GET / HTTP/1.1\r\n{capitalised}: 1\r\n\r\n");
            let head = parse_all(&with_host(&wire)).unwrap().unwrap();
            assert!(head.parts.headers.contains_key(name), "{capitalised}");
        }
    }

    /// The chat target is taken from one parsed once; any other target,
    /// even one it begins, is parsed from the head.
    #[test]
    fn the_chat_target_is_the_one_parsed_once() {
        for target in [
            "/v1/chat/completions",
            "/v1/chat/completions?stream=1",
            "/v1/chat/completions/",
            "/v1/chat/completion",
            "/v1/models",
        ] {
            let wire = format!("POST {target} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n");
            let head = parse_all(&wire).unwrap().unwrap();
            assert_eq!(head.parts.uri, Uri::try_from(target).unwrap());
            assert_eq!(head.parts.uri.to_string(), target);
        }
    }

    #[test]
    fn sdk_telemetry_fields_are_not_kept() {
        let mut buf = BytesMut::from(
            &b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Stainless-Lang: python\r\n\
               x-stainless-retry-count: 0\r\nUser-Agent: OpenAI/Python 1.99.0\r\n\
               x-stainless: kept\r\nx-stainless-helper-: odd\r\ncontent-length: 0\r\n\r\n"[..],
        );
        let head = parse(&mut buf, &mut HeaderMap::new()).unwrap().unwrap();
        let mut names: Vec<&str> = head.parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["content-length", "host", "user-agent", "x-stainless"]
        );
        assert!(buf.is_empty());
    }
}
