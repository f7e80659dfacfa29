//! A provider's response head, parsed out of the connection's read buffer
//! with `httparse`: the status, the header fields as received (no map: the
//! gateway reads a few and copies the rest once, into the client's
//! response), how the body is framed and whether the connection can carry
//! another request afterwards.

use super::UpstreamError;
use super::framing::Framing;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use smallvec::SmallVec;
use std::mem::MaybeUninit;

/// Headers in one response head, at most (hyper's client default too).
const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused. At most 64 KiB, so every
/// offset into a head fits in a `u16` (see [`Field`]).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A complete response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: Headers,
    pub framing: Framing,
    /// The provider lets the connection carry another request.
    pub keep_alive: bool,
}

/// A response's header fields in the order received: names as sent (any
/// case), values, all slices of the head's bytes.
#[derive(Debug, Default)]
pub struct Headers {
    head: Bytes,
    fields: SmallVec<[Field; 12]>,
}

/// Where one field's name and value are in the head: 8 bytes, not the 32 of
/// two `Range<usize>`. The head moves with the response through every stage
/// of a request, so its size is copied several times per request.
#[derive(Debug, Clone, Copy)]
struct Field {
    name_start: u16,
    name_len: u16,
    value_start: u16,
    value_len: u16,
}

impl Field {
    fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        let start = usize::from(self.name_start);
        &head[start..start + usize::from(self.name_len)]
    }

    fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        let start = usize::from(self.value_start);
        &head[start..start + usize::from(self.value_len)]
    }
}

impl Headers {
    /// Each field's name (as sent) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|field| (field.name(&self.head), field.value(&self.head)))
    }

    /// The first value of `name` (lowercase), compared without case.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// `value`, a slice from [`Headers::iter`] or [`Headers::get`], as a
    /// header value sharing these bytes (`None` if `http` refuses it).
    pub fn shared_value(&self, value: &[u8]) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.head.slice_ref(value)).ok()
    }

    /// The fields of a whole response head given as text (tests, tools).
    pub fn from_head(wire: &str) -> Result<Headers, UpstreamError> {
        parse(&mut BytesMut::from(wire.as_bytes()))?
            .map(|head| head.headers)
            .ok_or(UpstreamError::ClosedBeforeHead)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// The size of the head the fields came from: room enough to copy them.
    pub fn wire_len(&self) -> usize {
        self.head.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// What a connection header says about keep-alive.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
}

/// Parses the head at the start of `buf` and removes it from there.
/// `Ok(None)`: the head is not complete yet. Interim (1xx) responses are
/// returned like any other; the caller skips them.
// Not inlined: a large function run once per request, its code is better
// shared than copied into the request's state machine.
#[inline(never)]
pub fn parse(buf: &mut BytesMut) -> Result<Option<ResponseHead>, UpstreamError> {
    // Left uninitialised: httparse writes only the slots it fills, and
    // zeroing all of them (3.2 KB) cost as much as parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) => return Err(UpstreamError::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(UpstreamError::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::HeadTooLarge),
        Err(err) => return Err(UpstreamError::InvalidHead(err.to_string())),
    };
    let code = response.code.expect("a complete head has a status");
    // RFC 9110 section 15 defines the classes 1xx to 5xx only; `http`
    // takes any three digits.
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|_| code <= 599)
        .ok_or_else(|| UpstreamError::InvalidHead(format!("status {code}")))?;
    let http_11 = response.version == Some(1);

    // Both fit in a u16: the whole head is at most MAX_HEAD_BYTES and a
    // part ends before the head's final CRLF.
    let start = buf.as_ptr() as usize;
    let offset = |part: &[u8]| ((part.as_ptr() as usize - start) as u16, part.len() as u16);
    let mut fields = SmallVec::new();
    let mut tokens = ConnectionTokens::default();
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None; // Some(ends with chunked)
    for header in response.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(UpstreamError::InvalidHead(
                    "conflicting content-length values".into(),
                ));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding listed (over every such header) decides.
            if let Some(last) = value.rsplit(|b| *b == b',').next() {
                transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                tokens.close |= token.eq_ignore_ascii_case(b"close");
                tokens.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let ((name_start, name_len), (value_start, value_len)) = (offset(name), offset(value));
        fields.push(Field {
            name_start,
            name_len,
            value_start,
            value_len,
        });
    }
    let headers = Headers {
        head: buf.split_to(head_len).freeze(),
        fields,
    };

    let mut keep_alive = if http_11 {
        !tokens.close
    } else {
        tokens.keep_alive && !tokens.close
    };
    let framing = if status.is_informational() {
        Framing::Length(0)
    } else if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // Never a body; but a provider whose head announces one may send
        // it yet, where the next response would be read.
        keep_alive &= content_length.unwrap_or(0) == 0 && transfer_encoding.is_none();
        Framing::Length(0)
    } else if let Some(chunked) = transfer_encoding {
        // With both, the length is not to be trusted, nor the connection
        // after this response; nor is framing an HTTP/1.0 message cannot
        // have (RFC 9112 section 6.1: read it, then close).
        keep_alive &= content_length.is_none() && http_11;
        if chunked {
            Framing::chunked()
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

fn parse_length(value: &[u8]) -> Result<u64, UpstreamError> {
    let invalid = || UpstreamError::InvalidHead("invalid content-length".into());
    // A list of equal values ("42, 42") is allowed; anything else is not.
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let n: u64 = std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(invalid)?;
        if length.is_some_and(|seen| seen != n) {
            return Err(invalid());
        }
        length = Some(n);
    }
    length.ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(wire: &str) -> Result<Option<ResponseHead>, UpstreamError> {
        parse(&mut BytesMut::from(wire.as_bytes()))
    }

    fn head(wire: &str) -> ResponseHead {
        parse_all(wire).unwrap().expect("complete")
    }

    #[test]
    fn a_head_is_parsed_and_removed_from_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMsh-Request-Id: r1\r\ncontent-length: 2\r\n\r\n{}"[..],
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.headers.get("content-type").unwrap(),
            b"application/json"
        );
        assert_eq!(head.headers.get("msh-request-id").unwrap(), b"r1");
        let names: Vec<&[u8]> = head.headers.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [&b"Content-Type"[..], b"Msh-Request-Id", b"content-length"]
        );
        let value = head.headers.get("msh-request-id").unwrap();
        assert_eq!(head.headers.shared_value(value).unwrap(), "r1");
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn an_incomplete_head_waits_at_every_cut() {
        let wire = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire.as_bytes()[..cut]);
            assert!(parse(&mut buf).unwrap().is_none(), "cut {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::chunked(),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Framing::chunked(),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                Framing::chunked(),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Length(0), true),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Framing::Length(0),
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
                Framing::Length(0),
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Length(0),
                false,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", Framing::Length(0), true),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                true,
            ),
            // An HTTP/1.0 message cannot be chunked: read as sent, then
            // the connection closed (RFC 9112 section 6.1).
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::chunked(),
                false,
            ),
        ];
        for (wire, framing, keep_alive) in cases {
            let head = head(wire);
            assert_eq!(head.framing, framing, "{wire:?}");
            assert_eq!(head.keep_alive, keep_alive, "{wire:?}");
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 600 Beyond\r\n\r\n",
            "HTTP/1.1 999 Beyond\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse_all(wire).is_err(), "{wire:?}");
        }
        let many: String = (0..=MAX_HEADERS)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect();
        let err = parse_all(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err();
        assert!(matches!(err, UpstreamError::HeadTooLarge));
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD_BYTES));
        assert!(matches!(
            parse_all(&endless),
            Err(UpstreamError::HeadTooLarge)
        ));
        // A complete head over the limit that arrived in one read is
        // refused too, not only one still waiting for its end.
        let filler = MAX_HEAD_BYTES - "HTTP/1.1 200 OK\r\nx: \r\n\r\n".len() + 1;
        let over = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "v".repeat(filler));
        assert_eq!(over.len(), MAX_HEAD_BYTES + 1);
        assert!(matches!(parse_all(&over), Err(UpstreamError::HeadTooLarge)));
    }

    #[test]
    fn a_head_of_the_largest_size_keeps_every_field() {
        // The last field ends two bytes before the limit: its offsets are
        // the largest a head can have.
        let tail = "\r\nlast: end\r\n\r\n";
        let filler = MAX_HEAD_BYTES - "HTTP/1.1 200 OK\r\nbig: ".len() - tail.len();
        let wire = format!("HTTP/1.1 200 OK\r\nbig: {}{tail}", "v".repeat(filler));
        assert_eq!(wire.len(), MAX_HEAD_BYTES);
        let head = head(&wire);
        let fields: Vec<(&[u8], &[u8])> = head.headers.iter().collect();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].0, b"big");
        assert_eq!(fields[0].1.len(), filler);
        assert_eq!(fields[1], (&b"last"[..], &b"end"[..]));
    }

    #[test]
    fn repeated_headers_are_all_kept() {
        let head = head("HTTP/1.1 429 Too Many\r\nx-a: 1\r\nX-A: 2\r\ncontent-length: 0\r\n\r\n");
        let values: Vec<&[u8]> = head.headers.iter().map(|(_, value)| value).collect();
        assert_eq!(values, [&b"1"[..], b"2", b"0"]);
        assert_eq!(head.headers.get("x-a").unwrap(), b"1");
        assert_eq!(head.status, 429);
    }
}
