//! A response head as it goes on the wire: the status line, the handler's
//! header fields (names lowercase, as `http` keeps them: its header map's,
//! then those it gave already encoded), `date`, the framing the connection
//! chose, and `connection` when it says something the client would not
//! assume.

use crate::coarse_clock;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, StatusCode};
use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body may follow (1xx, 204, 304), so no length either.
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client without a length: the close ends the body.
    UntilClose,
}

/// What the connection says about itself in the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing: the client's default holds.
    Default,
    /// `connection: close`: no request after this one.
    Close,
    /// `connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAlive,
}

/// Writes the head into `out`.
pub fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    encoded: &[u8],
    framing: BodyFraming,
    connection: ConnectionHeader,
    out: &mut Vec<u8>,
) {
    // The fields' bytes plus room for the status line, framing and date.
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    out.reserve(fields + encoded.len() + 128);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // Framing and the connection's fate are the connection's to say.
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == CONNECTION
            || name == KEEP_ALIVE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(encoded);
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    match connection {
        ConnectionHeader::Default => {}
        ConnectionHeader::Close => out.extend_from_slice(b"connection: close\r\n"),
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
    }
    write_date(out);
    out.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>\r\n`, formatted once a second per thread, the
/// second read from the coarse clock (whole seconds are all it shows).
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let second = coarse_clock::unix_seconds();
    DATE.with_borrow_mut(|(cached_second, line)| {
        if *cached_second != second {
            *cached_second = second;
            line.clear();
            push_date_line(line, second);
        }
        out.extend_from_slice(line);
    });
}

/// `date: <IMF-fixdate>\r\n` for `second` since the epoch.
fn push_date_line(line: &mut Vec<u8>, second: u64) {
    line.extend_from_slice(b"date: ");
    line.extend_from_slice(http_date(second).as_bytes());
    line.extend_from_slice(b"\r\n");
}

/// The IMF-fixdate of `second` since the epoch, which must be at most
/// [`coarse_clock::LATEST_UNIX_SECOND`] (the formatter panics past year
/// 9999).
pub(crate) fn http_date(second: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn encoded(
        status: StatusCode,
        headers: &HeaderMap,
        framing: BodyFraming,
        connection: ConnectionHeader,
    ) -> String {
        let mut out = Vec::new();
        encode(status, headers, b"", framing, connection, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_head_reads_back_as_written() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-two", HeaderValue::from_static("a"));
        headers.append("x-two", HeaderValue::from_static("b"));
        let wire = encoded(
            StatusCode::OK,
            &headers,
            BodyFraming::Length(42),
            ConnectionHeader::Default,
        );
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut fields);
        let parsed = response.parse(wire.as_bytes()).unwrap();
        assert_eq!(parsed, httparse::Status::Complete(wire.len()));
        assert_eq!((response.code, response.reason), (Some(200), Some("OK")));
        let fields: Vec<(&str, &[u8])> =
            response.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            fields[..4],
            [
                ("content-type", &b"application/json"[..]),
                ("x-two", b"a"),
                ("x-two", b"b"),
                ("content-length", b"42"),
            ]
        );
        assert_eq!(fields[4].0, "date");
        let date = std::str::from_utf8(fields[4].1).unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn the_connection_decides_framing_and_its_own_fate() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let chunked = encoded(
            StatusCode::OK,
            &headers,
            BodyFraming::Chunked,
            ConnectionHeader::Close,
        );
        assert!(
            chunked.starts_with(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: "
            ),
            "{chunked}"
        );
        assert!(chunked.ends_with("\r\n\r\n"));
        let none = encoded(
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            BodyFraming::None,
            ConnectionHeader::KeepAlive,
        );
        assert!(
            none.starts_with("HTTP/1.1 204 No Content\r\nconnection: keep-alive\r\ndate: "),
            "{none}"
        );
        let odd = encoded(
            StatusCode::from_u16(599).unwrap(),
            &HeaderMap::new(),
            BodyFraming::UntilClose,
            ConnectionHeader::Default,
        );
        assert!(odd.starts_with("HTTP/1.1 599 \r\ndate: "), "{odd}");
    }

    #[test]
    fn encoded_fields_follow_the_maps() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut out = Vec::new();
        encode(
            StatusCode::OK,
            &headers,
            b"x-request-id: req_1\r\nx-ratelimit-limit-requests: 60\r\n",
            BodyFraming::Length(0),
            ConnectionHeader::Default,
            &mut out,
        );
        let wire = String::from_utf8(out).unwrap();
        assert!(
            wire.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-request-id: req_1\r\n\
                 x-ratelimit-limit-requests: 60\r\ncontent-length: 0\r\ndate: "
            ),
            "{wire}"
        );
    }

    #[test]
    fn the_date_line_reaches_the_last_second_the_clock_is_read_as() {
        let mut line = Vec::new();
        push_date_line(&mut line, coarse_clock::LATEST_UNIX_SECOND);
        assert_eq!(line, b"date: Fri, 31 Dec 9999 23:59:59 GMT\r\n");
        line.clear();
        push_date_line(&mut line, 0);
        assert_eq!(line, b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n");
    }
}
