//! The request head sent to a provider: the lines fixed for one of its
//! keys (request line, host, configured headers, the key, content type,
//! identity encoding, user agent), encoded once when the configuration is
//! built, then each request's own (length, accept, request id).

use super::headers::X_REQUEST_ID;
use crate::client::{header_line, request_line};
use http::{HeaderValue, header};

/// The head's lines that change with each request (its length, what it
/// accepts, its id) after the key's fixed ones, and the blank line.
pub(super) fn per_request_head(
    head: &mut Vec<u8>,
    length: u64,
    accept: &str,
    request_id: &HeaderValue,
) {
    let mut digits = itoa::Buffer::new();
    header_line(
        head,
        &header::CONTENT_LENGTH,
        digits.format(length).as_bytes(),
    );
    header_line(head, &header::ACCEPT, accept.as_bytes());
    header_line(head, &X_REQUEST_ID, request_id.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// The start of every chat request to a provider with one of its keys,
/// encoded once: the request line, `Host`, the provider's configured
/// headers, the key, the content type, identity encoding and the
/// gateway's user agent. [`per_request_head`] ends it.
pub fn fixed_request_head(
    path: &http::Uri,
    host: &HeaderValue,
    configured: &http::HeaderMap,
    authorization: &HeaderValue,
) -> bytes::Bytes {
    let mut head = Vec::with_capacity(256);
    let target = path.path_and_query().map_or("/", |p| p.as_str());
    request_line(&mut head, &http::Method::POST, target);
    header_line(&mut head, &header::HOST, host.as_bytes());
    for (name, value) in configured {
        header_line(&mut head, name, value.as_bytes());
    }
    header_line(&mut head, &header::AUTHORIZATION, authorization.as_bytes());
    header_line(&mut head, &header::CONTENT_TYPE, b"application/json");
    header_line(&mut head, &header::ACCEPT_ENCODING, b"identity");
    header_line(&mut head, &header::USER_AGENT, USER_AGENT.as_bytes());
    head.into()
}

/// The `User-Agent` of every request to a provider.
pub const USER_AGENT: &str = concat!("kimi-gateway/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_is_the_fixed_lines_then_this_requests_own() {
        let mut configured = http::HeaderMap::new();
        configured.insert("x-project", HeaderValue::from_static("p1"));
        let fixed = fixed_request_head(
            &http::Uri::from_static("/v1/chat/completions"),
            &HeaderValue::from_static("api.example:8443"),
            &configured,
            &HeaderValue::from_static("Bearer sk-1"),
        );
        let mut head = fixed.to_vec();
        per_request_head(
            &mut head,
            42,
            "text/event-stream",
            &HeaderValue::from_static("req_1"),
        );
        let expected = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: api.example:8443\r\nx-project: p1\r\n\
             authorization: Bearer sk-1\r\ncontent-type: application/json\r\n\
             accept-encoding: identity\r\nuser-agent: {USER_AGENT}\r\ncontent-length: 42\r\n\
             accept: text/event-stream\r\nx-request-id: req_1\r\n\r\n"
        );
        assert_eq!(String::from_utf8(head).unwrap(), expected);
        // What the provider parses is what was meant.
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut slots);
        let bytes = expected.as_bytes();
        assert_eq!(
            request.parse(bytes).unwrap(),
            httparse::Status::Complete(bytes.len())
        );
        assert_eq!(request.headers.len(), 9);
    }
}
