//! The gateway's HTTP/1.1 connection as a client sees it on the wire: body
//! framing both ways, keep-alive and pipelining, HTTP/1.0, `HEAD`, refused
//! heads and bodies, and when the connection is closed.

use crate::helpers::*;
use crate::raw_client::*;
use kimi_gateway::mock::Flavour;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "kimi-k2-turbo-preview";

/// A stream is answered with `transfer-encoding: chunked` (its length is
/// not known in advance), its chunks decode to the SSE events ending in
/// `data: [DONE]`, the terminating `0` chunk ends it, and the connection
/// stays open for the next request.
#[tokio::test]
async fn a_stream_is_chunked_and_the_connection_is_kept_after_it() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let stream_body = chat_body(MODEL, "stream it", true).to_string();
    client.send(chat_request(&stream_body)).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "{}",
        reply.head
    );
    assert_eq!(reply.header("content-length"), None, "{}", reply.head);
    assert_eq!(reply.header("connection"), None, "{}", reply.head);
    assert!(
        reply.raw.ends_with(b"\r\n0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&reply.raw)
    );
    let events = reply.text();
    assert!(events.starts_with("data: {"), "{events}");
    assert!(events.ends_with("data: [DONE]\n\n"), "{events}");

    let plain_body = chat_body(MODEL, "and now at once", false).to_string();
    client.send(chat_request(&plain_body)).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(reply.header("content-length").is_some(), "{}", reply.head);
    assert_eq!(reply.json()["object"], "chat.completion");
    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 2);
}

/// Requests pipelined in one write are each answered, in the order they
/// were sent, on the one connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let chat = chat_body(MODEL, "second in line", false).to_string();
    let pipelined = format!(
        "{HEALTHZ}{}GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n",
        chat_request(&chat)
    );
    client.send(pipelined).await;

    let health = client.response().await;
    assert_eq!(health.status, 200, "{}", health.head);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let completion = client.response().await;
    assert_eq!(completion.status, 200, "{}", completion.head);
    assert_eq!(completion.json()["object"], "chat.completion");
    let models = client.response().await;
    assert_eq!(models.status, 200, "{}", models.head);
    assert_eq!(models.json()["object"], "list");

    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, chat.as_bytes());
    // Still open and serving after all three.
    client.send(HEALTHZ).await;
    assert_eq!(client.response().await.status, 200);
}

/// A request whose handler does not read its body (`GET /healthz`, or a
/// chat request refused before its body is wanted) keeps the connection
/// when the rest of a chunked body is already in hand, as it does for a
/// small `Content-Length` body: the request pipelined behind it is
/// answered. A chunked body still on its way closes the connection.
#[tokio::test]
async fn an_unread_chunked_body_already_in_hand_keeps_the_connection() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let chunked_get = "GET /healthz HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\ntrailer: 1\r\n\r\n";
    let chunked_post = "POST /v1/chat/completions/ HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    client
        .send(format!("{chunked_get}{chunked_post}{HEALTHZ}"))
        .await;
    for status in [200, 404, 200] {
        let answer = client.response().await;
        assert_eq!(answer.status, status, "{}", answer.head);
        assert!(
            !answer
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            answer.head
        );
    }

    // The body's end not in hand: answered, then closed.
    let mut client = Client::connect(app.addr).await;
    client
        .send(
            "GET /healthz HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        )
        .await;
    let answer = client.response().await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
}

/// Request heads that come a few bytes at a time (a long field in each)
/// are searched for their end in the new bytes only, not parsed again from
/// their start on every read: each is still read whole, at every cut, and
/// answered in order.
#[tokio::test]
async fn heads_trickled_in_are_read_whole() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let pad = "p".repeat(3000);
    let chat = chat_body(MODEL, "trickled", false).to_string();
    let wire = format!(
        "GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-pad: {pad}\r\n\r\n{}",
        chat_request(&chat).replacen("\r\n", &format!("\r\nx-pad: {pad}\r\n"), 1)
    );
    for piece in wire.as_bytes().chunks(7) {
        client.stream.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let health = client.response().await;
    assert_eq!(health.status, 200, "{}", health.head);
    let completion = client.response().await;
    assert_eq!(completion.status, 200, "{}", completion.head);
    assert_eq!(completion.json()["object"], "chat.completion");
    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, chat.as_bytes());
}

/// A head the gateway will not serve is answered with an OpenAI-shaped
/// `invalid_request_error` and its status (400 malformed or ambiguous
/// framing, a last transfer coding other than chunked included, 501 a
/// transfer coding before chunked, 431 a head over
/// 64 KiB, 505 an HTTP version other than 1.x), says
/// `connection: close` and an `x-request-id` (the one its log line has),
/// and the gateway closes the connection after it; other connections are
/// served as before. Each is counted in the requests metric.
#[tokio::test]
async fn refused_heads_get_an_error_and_the_connection_closed() {
    let app = spawn_app().await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-huge: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases = [
        ("garbage request line", "{not http}\r\n\r\n".to_string(), 400),
        (
            "chunked and a content-length",
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
            400,
        ),
        (
            "two content-lengths",
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_string(),
            400,
        ),
        (
            "gzip transfer coding before chunked",
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_string(),
            501,
        ),
        (
            "a last transfer coding that is not chunked",
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: gzip\r\n\r\n".to_string(),
            400,
        ),
        ("a head over 64 KiB", huge, 431),
        (
            "a head just over 64 KiB, complete in the read that crosses it",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-huge: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
            431,
        ),
        (
            "HTTP/2.0",
            "GET /healthz HTTP/2.0\r\nhost: gateway\r\n\r\n".to_string(),
            505,
        ),
    ];
    for (what, request, status) in cases {
        let mut client = Client::connect(app.addr).await;
        client.send(&request).await;
        let reply = client.response().await;
        assert_eq!(reply.status, status, "{what}: {}", reply.head);
        assert_eq!(
            reply.header("connection"),
            Some("close"),
            "{what}: {}",
            reply.head
        );
        reply.assert_invalid_request_error();
        assert!(
            reply
                .header("x-request-id")
                .is_some_and(|id| id.starts_with("req_")),
            "{what}: {}",
            reply.head
        );
        client.assert_closed().await;
        assert_still_serving(app.addr).await;
    }
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    // Counted, with no route or provider: an operator sees clients that
    // send what cannot be served.
    let metrics = scrape(&app).await;
    for (status, count) in [(400, 4), (431, 2), (501, 1), (505, 1)] {
        let line = format!(
            "kimi_gateway_requests_total{{error_type=\"invalid_request_error\",provider=\"none\",route=\"none\",status=\"{status}\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

/// A later HTTP/1.x minor version is served as HTTP/1.1 (RFC 9110
/// section 2.5), keep-alive included, and the answer says HTTP/1.1.
#[tokio::test]
async fn a_later_http_1_minor_version_is_served_as_1_1() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    client
        .send("GET /v1/models HTTP/1.2\r\nhost: gateway\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(reply.head.starts_with("HTTP/1.1 200"), "{}", reply.head);
    assert_eq!(reply.json()["object"], "list");
    client.send(HEALTHZ).await;
    assert_eq!(client.response().await.status, 200);
}

/// A chunked request body, sent chunk by chunk in separate writes, is
/// decoded and forwarded whole: the provider receives exactly its bytes.
#[tokio::test]
async fn a_chunked_request_body_is_forwarded_whole() {
    let app = spawn_app().await;
    let body = chat_body(MODEL, "sent in chunks of odd sizes", false).to_string();
    let mut client = Client::connect(app.addr).await;
    client
        .send("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let cuts = [0, 1, 17, body.len() / 2, body.len() - 3, body.len()];
    for (i, piece) in cuts.windows(2).map(|w| &body[w[0]..w[1]]).enumerate() {
        // Pacing a slow client, so each chunk arrives on its own; upper
        // and lower case hexadecimal, one size line with an extension.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let chunk = match i {
            0 => format!("{:x};note=first\r\n{piece}\r\n", piece.len()),
            _ => format!("{:X}\r\n{piece}\r\n", piece.len()),
        };
        client.send(chunk).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send("0\r\n\r\n").await;

    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    assert_eq!(reply.json()["object"], "chat.completion");
    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        body,
        "the body forwarded"
    );
    // The whole body was read: the connection takes the next request.
    client.send(HEALTHZ).await;
    assert_eq!(client.response().await.status, 200);
}

/// A chunked body that cannot be decoded (a size line that is not
/// hexadecimal) is answered 400 `invalid_request_error`, nothing is
/// forwarded, and the connection is closed (the rest of the stream
/// cannot be framed).
#[tokio::test]
async fn a_malformed_chunked_body_is_400_and_the_connection_closed() {
    let app = spawn_app().await;
    let body = chat_body(MODEL, "never whole", false).to_string();
    let mut client = Client::connect(app.addr).await;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\nzz\r\nmore\r\n0\r\n\r\n",
        10,
        &body[..10]
    );
    client.send(request).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 400, "{}: {}", reply.head, reply.text());
    reply.assert_invalid_request_error();
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    client.assert_closed().await;
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    assert_still_serving(app.addr).await;
}

/// A request the tests below hide after a malformed part of a chunked
/// body: answered, it would show as a second response.
const HIDDEN: &str = "GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n";

/// Sends a chunked chat request whose body is `chunks` (everything after
/// the head) and asserts that the one answer is a 400 saying
/// `connection: close` and that nothing follows it before the close.
/// Returns the answer's error message.
async fn assert_refused_alone(addr: SocketAddr, what: &str, chunks: &str) -> String {
    let mut client = Client::connect(addr).await;
    client
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{chunks}"
        ))
        .await;
    let reply = client.response().await;
    assert_eq!(
        reply.status,
        400,
        "{what}: {}: {}",
        reply.head,
        reply.text()
    );
    reply.assert_invalid_request_error();
    assert_eq!(
        reply.header("connection"),
        Some("close"),
        "{what}: {}",
        reply.head
    );
    client.assert_closed().await;
    reply.json()["error"]["message"]
        .as_str()
        .expect("a message")
        .to_owned()
}

/// A chunked body whose trailer section is not CRLF-ended field lines is
/// answered 400 and the connection closed: the bytes after it are never
/// read as a request. A front end that ends lines at a bare LF would see
/// the trailer section end there and the bytes after it as a request of
/// its own, so the gateway taking them as trailers (or as its next
/// request) would let a request through unseen.
#[tokio::test]
async fn a_request_hidden_after_a_malformed_trailer_section_is_not_answered() {
    let app = spawn_app().await;
    let body = chat_body(MODEL, "trailers", false).to_string();
    let last_chunk = format!("{:x}\r\n{body}\r\n0\r\n", body.len());
    let cases = [
        (
            "an empty line ended by a bare LF",
            format!(
                "\nPOST /v1/models HTTP/1.1\r\nhost: gateway\r\ncontent-length: {}\r\n\r\n{HIDDEN}",
                HIDDEN.len()
            ),
        ),
        ("a request line for a field line", HIDDEN.to_string()),
        (
            "a field ended by a bare LF",
            format!("x-a: 1\n\r\n{HIDDEN}"),
        ),
        (
            "a folded field",
            format!("x-a: 1\r\n folded\r\n\r\n{HIDDEN}"),
        ),
    ];
    for (what, trailers) in cases {
        let message =
            assert_refused_alone(app.addr, what, &format!("{last_chunk}{trailers}")).await;
        if what.contains("bare LF") {
            assert!(message.contains("bare LF"), "{what}: {message}");
        }
    }
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    assert_still_serving(app.addr).await;
}

/// A chunk-size line the grammar does not allow (a bare LF inside an
/// extension or at its end, whitespace after the size, no size at all) is
/// answered 400 and the connection closed. A peer that reads such a line
/// differently (ends it at the LF, or takes the empty line for the last
/// chunk) frames the rest of the body differently, and what one side reads
/// as body data the other would read as the next request.
#[tokio::test]
async fn a_request_hidden_after_a_malformed_chunk_size_line_is_not_answered() {
    let app = spawn_app().await;
    let body = chat_body(MODEL, "size lines", false).to_string();
    let first = format!("{:x}\r\n{body}\r\n", body.len());
    // Read up to the bare LF, "2;\nXX" is a size line whose extension
    // holds "XX"; the next chunk's data is then its own size digits, and
    // the last chunk and the request inside that chunk come next.
    let in_chunk = format!("0\r\n\r\n{HIDDEN}");
    let cases = [
        (
            "a bare LF in an extension",
            format!(
                "{first}2;\nXX\r\n{:02x}\r\n{in_chunk}\r\n0\r\n\r\n",
                in_chunk.len()
            ),
        ),
        (
            "a size line ended by a bare LF",
            format!("{first}0\n\r\n{HIDDEN}"),
        ),
        (
            "whitespace after the size",
            format!("{:x} \r\n{body}\r\n0\r\n\r\n{HIDDEN}", body.len()),
        ),
        ("an empty size line", format!("{first}\r\n\r\n{HIDDEN}")),
    ];
    for (what, chunks) in cases {
        let message = assert_refused_alone(app.addr, what, &chunks).await;
        if what.contains("bare LF") {
            assert!(message.contains("bare LF"), "{what}: {message}");
        }
    }
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    assert_still_serving(app.addr).await;
}

/// An HTTP/1.0 request without `Connection: keep-alive` is answered with
/// `connection: close` and the connection closed after it.
#[tokio::test]
async fn an_http_1_0_request_closes_the_connection_by_default() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    client.send("GET /healthz HTTP/1.0\r\n\r\n").await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    assert_eq!(reply.json()["status"], "ok");
    client.assert_closed().await;
}

/// An HTTP/1.0 request with `Connection: keep-alive` is answered with
/// `connection: keep-alive`, and the connection serves the next request.
#[tokio::test]
async fn an_http_1_0_keep_alive_request_keeps_the_connection() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let body = chat_body(MODEL, "an old client", false).to_string();
    let chat = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nconnection: keep-alive\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    for request in [
        "GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        &chat,
    ] {
        client.send(request).await;
        let reply = client.response().await;
        assert_eq!(reply.status, 200, "{request}: {}", reply.head);
        assert_eq!(
            reply.header("connection"),
            Some("keep-alive"),
            "{request}: {}",
            reply.head
        );
        assert!(reply.header("content-length").is_some(), "{}", reply.head);
    }
    assert_eq!(app.mock.requests_for(Flavour::Moonshot).len(), 1);
}

/// `HEAD` is answered with the head `GET` would get (status and
/// `content-length`) and no body: the next bytes on the connection are the
/// next response's.
#[tokio::test]
async fn a_head_request_gets_the_head_and_no_body() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    client.send(HEALTHZ).await;
    let get = client.response().await;
    assert_eq!(get.status, 200, "{}", get.head);
    let get_length = get.header("content-length").expect("a length").to_owned();
    assert_eq!(get_length, get.body.len().to_string());

    client
        .send(format!(
            "HEAD /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n{HEALTHZ}"
        ))
        .await;
    let (status, head) = client.head().await;
    assert_eq!(status, 200, "{head}");
    let next = client.take(12).await;
    assert_eq!(
        String::from_utf8_lossy(&next),
        "HTTP/1.1 200",
        "bytes between the HEAD response and the next one"
    );
    // RFC 9110 section 8.6: a HEAD response's content-length, if sent, is
    // the length GET's body would have.
    assert_eq!(
        header_of(&head, "content-length"),
        Some(get_length.as_str()),
        "HEAD says the length GET's body has: {head}"
    );
}

/// `Connection: close` from an HTTP/1.1 client: the response says
/// `connection: close` and the gateway closes the connection after it.
#[tokio::test]
async fn connection_close_from_the_client_closes_after_the_response() {
    let app = spawn_app().await;
    let mut client = Client::connect(app.addr).await;
    let body = chat_body(MODEL, "last one", false).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    assert_eq!(reply.json()["object"], "chat.completion");
    client.assert_closed().await;
}

/// Bytes a client sends after a request it asked to be the last (an
/// HTTP/1.0 client's stray line break after a POST body, RFC 9112 §2.2)
/// do not cut the answer: the gateway reads and drops them while it
/// closes. Closed outright, the socket would answer them with a reset,
/// and the reset throws away the end of the answer not yet delivered.
#[tokio::test]
async fn bytes_sent_after_a_closing_request_do_not_cut_its_answer() {
    // The kernel's own send buffer, which grows to hold the whole answer
    // (a capped one would keep its end in the gateway).
    let app = spawn_app_with("[server]\nclient_send_buffer_bytes = 0\n", &[]).await;
    let body = chat_body(MODEL, "long [mock chunks=20 chunk_bytes=100000]", true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(request.as_bytes()).await.unwrap();
    let (began, answer_began) = tokio::sync::oneshot::channel();
    let (read_on, go_on) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        let mut answer = vec![0; 64 * 1024];
        let first = reader.read(&mut answer).await.unwrap();
        answer.truncate(first);
        let _ = began.send(());
        // The rest waits in the sockets' buffers until the stray bytes
        // have gone.
        go_on.await.unwrap();
        let read = reader.read_to_end(&mut answer).await;
        (read.map(|_| ()), answer)
    });
    // The answer under way, then written whole into the buffers, the
    // gateway closes; then the stray bytes.
    answer_began.await.unwrap();
    let in_flight = &app.state.metrics.in_flight;
    wait_until("the answer is written", async || in_flight.get() == 0).await;
    writer.write_all(b"\r\n").await.unwrap();
    read_on.send(()).unwrap();
    let (read, answer) = tokio::time::timeout(READ_WAIT, reading)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "{read:?} after {} bytes", answer.len());
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
        "{} bytes, ending {:?}",
        answer.len(),
        &text[text.len().saturating_sub(80)..]
    );
    assert!(answer.len() > 2_000_000, "{}", answer.len());
}

/// A client declaring a body over the limit and sending it gets the whole
/// 413 answer: the gateway answers without reading the body, and keeps
/// reading and dropping it while closing, so the connection is not reset
/// under the response.
#[tokio::test]
async fn a_declared_body_over_the_limit_gets_the_whole_413() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1024\n", &[]).await;
    let mut client = Client::connect(app.addr).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n";
    let mut request = head.as_bytes().to_vec();
    request.extend(std::iter::repeat_n(b'x', 64 * 1024));
    client.send(&request).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 413, "{}: {}", reply.head, reply.text());
    reply.assert_invalid_request_error();
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    client.assert_closed().await;
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    assert_still_serving(app.addr).await;
}

/// A chunked body whose chunk announces more than the limit is refused as
/// soon as the size line arrives, not waited for while it trickles in: the
/// client sends the size line and a few bytes of the chunk, then stalls
/// (with a 60 s idle limit, an answer that waited for the stall would not
/// come in the test's time).
#[tokio::test]
async fn a_chunk_announced_over_the_limit_is_413_at_once() {
    let app = spawn_app_with(
        "[server]\nmax_body_bytes = 1024\nclient_idle_secs = 60\n",
        &[],
    )
    .await;
    let mut client = Client::connect(app.addr).await;
    // A first small chunk, then one that would pass the limit.
    client
        .send("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{\"model\":\"kimi-k\r\n400\r\n2.6\"")
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), client.response())
        .await
        .expect("answered before the rest of the chunk came");
    assert_eq!(reply.status, 413, "{}: {}", reply.head, reply.text());
    reply.assert_invalid_request_error();
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    assert!(app.mock.requests().is_empty(), "nothing was forwarded");
    assert_still_serving(app.addr).await;
}

/// A size past what 64 bits hold, declared or announced by a chunk, is a
/// body over any limit: 413, like any other, not a malformed request; nor
/// a refusal for room when the gateway has keys, whose bodies are counted
/// against their key's share.
#[tokio::test]
async fn sizes_past_64_bits_are_413() {
    let open = spawn_app().await;
    let keyed = spawn_app_with(
        "[keys.team]\nsecret_env = \"TEAM_KEY\"\n",
        &[("TEAM_KEY", Some("sk-team"))],
    )
    .await;
    for (app, key) in [(&open, ""), (&keyed, "authorization: Bearer sk-team\r\n")] {
        for framing in [
            "content-length: 184467440737095516160\r\n\r\n{",
            "content-length: 184467440737095516160\r\nexpect: 100-continue\r\n\r\n",
            "transfer-encoding: chunked\r\n\r\n1\r\n{\r\n10000000000000000\r\n\"",
        ] {
            let mut client = Client::connect(app.addr).await;
            client
                .send(&format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n{key}{framing}"))
                .await;
            let reply = client.response().await;
            assert_eq!(
                reply.status,
                413,
                "{key}{framing}: {}: {}",
                reply.head,
                reply.text()
            );
            reply.assert_invalid_request_error();
            assert_eq!(reply.json()["error"]["code"], "request_too_large");
            assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
        }
        assert!(app.mock.requests().is_empty(), "nothing was forwarded");
        assert_still_serving(app.addr).await;
    }
    let metrics = scrape(&keyed).await;
    assert!(
        !metrics.lines().any(|line| line
            .starts_with("kimi_gateway_rate_limited_total{scope=\"key\"}")
            && !line.ends_with(" 0")),
        "no refusal counted as the key's: {metrics}"
    );
}

/// A client that sends a whole body over the limit before it reads (as a
/// reverse proxy that buffers requests does) still gets the 413, however
/// large the body: the gateway reads and drops the rest while the client
/// keeps sending, rather than closing on unread bytes (a reset, which
/// such a proxy turns into its own 502).
#[tokio::test]
async fn a_body_sent_whole_before_reading_gets_its_413_however_large() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1024\n", &[]).await;
    let length = 24 << 20;
    let mut client = Client::connect(app.addr).await;
    client
        .send(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"))
        .await;
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..24 {
        client
            .stream
            .write_all(&piece)
            .await
            .expect("the body is taken while it comes");
    }
    let reply = client.response().await;
    assert_eq!(reply.status, 413, "{}: {}", reply.head, reply.text());
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    client.assert_closed().await;
}

/// A chunk that ends exactly at the limit is read and forwarded.
#[tokio::test]
async fn chunks_up_to_the_limit_are_read() {
    let body = chat_body(MODEL, "fits", false).to_string();
    let limit = body.len();
    let app = spawn_app_with(&format!("[server]\nmax_body_bytes = {limit}\n"), &[]).await;
    let (first, rest) = body.split_at(10);
    let mut client = Client::connect(app.addr).await;
    client
        .send(&format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
            first.len(),
            rest.len()
        ))
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
}

/// Every response carries a `date` header in the HTTP date format, close
/// to the current time: plain, chunked, the router's errors and refused
/// heads alike.
#[tokio::test]
async fn every_response_has_a_date() {
    let app = spawn_app().await;
    let stream_body = chat_body(MODEL, "dated", true).to_string();
    let cases = [
        HEALTHZ.to_string(),
        chat_request(&stream_body),
        "GET /no/such/path HTTP/1.1\r\nhost: gateway\r\n\r\n".to_string(),
        "GET /healthz HTTP/1.0\r\n\r\n".to_string(),
        "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_string(),
    ];
    for request in cases {
        let mut client = Client::connect(app.addr).await;
        client.send(&request).await;
        let reply = client.response().await;
        let date = reply
            .header("date")
            .unwrap_or_else(|| panic!("no date: {}", reply.head));
        let when = httpdate::parse_http_date(date)
            .unwrap_or_else(|err| panic!("{date:?} is not an HTTP date ({err})"));
        let now = SystemTime::now();
        let apart = now
            .duration_since(when)
            .unwrap_or_else(|ahead| ahead.duration());
        assert!(
            apart < Duration::from_secs(60),
            "{date} is far from now ({request:?})"
        );
    }
}

/// A connection with no complete request head for `server.client_idle_secs`
/// is closed: idle after a response, and also while a head trickles in a
/// byte at a time (the limit counts from when the wait began, not from the
/// last byte). A connection used within the limit keeps working, for longer
/// than the limit in all.
#[tokio::test]
async fn connections_without_a_request_head_in_time_are_closed() {
    let app = spawn_app_with("[server]\nclient_idle_secs = 1\n", &[]).await;

    let mut idle = Client::connect(app.addr).await;
    // From before the request: the limit runs from after its answer.
    let waited = std::time::Instant::now();
    idle.send("GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await;
    assert_eq!(idle.response().await.status, 200);
    idle.assert_closed().await;
    assert!(
        waited.elapsed() >= Duration::from_secs(1),
        "closed after {:?}, before the limit",
        waited.elapsed()
    );

    let mut slow = Client::connect(app.addr).await;
    let started = std::time::Instant::now();
    let mut closed = false;
    let head_start = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-slow: ";
    for byte in head_start.iter().chain(std::iter::repeat(&b'a')) {
        // A client pacing its bytes, each well inside the limit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        assert!(
            started.elapsed() < READ_WAIT,
            "a head trickled for {READ_WAIT:?} was never cut off"
        );
    }
    assert!(closed);

    // Over twice the limit, in waits far shorter than it: the connection's
    // one timer comes due during some wait that began after it was armed.
    let mut busy = Client::connect(app.addr).await;
    for _ in 0..8 {
        busy.send("GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
            .await;
        assert_eq!(busy.response().await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A request body that stops arriving, or arrives a byte at a time, is
/// answered 408 once it has taken `server.client_idle_secs` without at
/// least 8 KiB coming (so stalled bodies cannot pile up connections), and
/// the connection is closed; a large body sent in pieces, each inside the
/// limit, is served, and nothing was forwarded for the slow ones.
#[tokio::test]
async fn request_bodies_that_stop_arriving_are_answered_408() {
    let app = spawn_app_with("[server]\nclient_idle_secs = 1\n", &[]).await;
    let body = chat_body(MODEL, "hello", false).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );

    let mut stalled = Client::connect(app.addr).await;
    stalled.send(format!("{head}{}", &body[..10])).await;
    let reply = stalled.response().await;
    assert_eq!(reply.status, 408, "{}", reply.head);
    reply.assert_invalid_request_error();
    let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout");
    stalled.assert_closed().await;

    let mut trickling = Client::connect(app.addr).await;
    trickling.send(&head).await;
    let started = std::time::Instant::now();
    let mut answered = None;
    for byte in body.bytes() {
        // Each byte well inside the limit, the body as a whole not.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if trickling.stream.write_all(&[byte]).await.is_err() {
            break;
        }
        if started.elapsed() > Duration::from_secs(2) {
            answered = Some(trickling.response().await);
            break;
        }
    }
    let reply = answered.expect("the trickled body was cut off before it ended");
    assert_eq!(reply.status, 408, "{}", reply.head);

    // 40 KiB in five pieces, 300 ms apart: longer than the limit in all,
    // but each wait well inside it and each piece at least 8 KiB.
    let large = chat_body(MODEL, &"a".repeat(40 * 1024), false).to_string();
    let mut paced = Client::connect(app.addr).await;
    paced
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            large.len()
        ))
        .await;
    for piece in large.as_bytes().chunks(large.len() / 5 + 1) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        paced.send(piece).await;
    }
    assert_eq!(paced.response().await.status, 200);
    assert_eq!(
        app.mock.requests().len(),
        1,
        "only the paced body was forwarded"
    );
}

/// A client that stops reading its answer is cut off once the gateway has
/// been unable to write to it for `server.client_idle_secs`: the response
/// is dropped, which ends the provider request and gives back its
/// concurrency slot, and the connection is closed. Without a bound it
/// would hold all three for as long as it stayed connected.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_idle_limit() {
    let app = spawn_app_with(
        "[server]\nclient_idle_secs = 0.5\n[limits.providers.moonshot]\nconcurrent_requests = 1\n",
        &[],
    )
    .await;
    let provider_in_flight = || {
        app.state.config().limits.providers["moonshot"]
            .local
            .in_flight()
    };
    // A stream of 16 MiB: more than every socket buffer between the mock
    // and the client holds, so the gateway's writes stop.
    let body = chat_body(MODEL, "[mock chunks=64 chunk_bytes=262144]", true).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    wait_until("the stream is open", async || {
        app.state.metrics.open_streams.get() == 1
    })
    .await;
    wait_until("the stream is dropped", async || {
        app.state.metrics.open_streams.get() == 0
            && app.state.metrics.in_flight.get() == 0
            && provider_in_flight() == 0
    })
    .await;

    // What the gateway had written, then the end: cut off, not finished.
    let mut read = Vec::new();
    let ended = tokio::time::timeout(READ_WAIT, async {
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(read.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        read.len() < 16 << 20,
        "{} bytes: the whole answer",
        read.len()
    );
    assert!(!read.ends_with(b"\r\n0\r\n\r\n"), "the answer ended");

    // The slot is free: the next request is served, not refused.
    let next = app.chat(chat_body(MODEL, "after", false)).await;
    assert_eq!(next.status(), 200);
}

/// A client that stops reading is cut off after the idle limit, not
/// twice it: what its kernel takes into its receive buffer as the
/// gateway's send buffer fills is acknowledged, but is no reading, and
/// counted as taken it restarted the wait once (measured: 4.0 s for a
/// 2 s limit).
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_limit_not_twice_it() {
    let app = spawn_app_with("[server]\nclient_idle_secs = 2\n", &[]).await;
    let body = chat_body(MODEL, "[mock chunks=64 chunk_bytes=262144]", true).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 100];
    stream.read_exact(&mut head).await.unwrap();
    let stopped = std::time::Instant::now();
    wait_until("the stream is dropped", async || {
        app.state.metrics.open_streams.get() == 0
    })
    .await;
    let cut_after = stopped.elapsed();
    assert!(
        cut_after >= Duration::from_millis(1900),
        "cut after {cut_after:?}, before the limit"
    );
    assert!(
        cut_after < Duration::from_millis(3300),
        "cut after {cut_after:?}: nearer twice the limit than once"
    );
}

/// A client that reads its answer steadily, if slowly, is not taken for
/// one that stopped: the kernel grows the gateway's send buffer to
/// megabytes and reports room to write only once much of it has drained,
/// which takes longer than the idle limit at this pace; what the client
/// acknowledged meanwhile counts as taken.
#[tokio::test]
async fn a_client_reading_slowly_but_steadily_gets_its_whole_answer() {
    let app = spawn_app_with("[server]\nclient_idle_secs = 1\n", &[]).await;
    // 16 MiB: more than the sockets between the gateway and the client
    // hold, so the gateway waits on the client's pace.
    let body = chat_body(MODEL, "[mock chunks=64 chunk_bytes=262144]", true).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    let mut read = Vec::new();
    let mut buffer = vec![0u8; 1 << 20];
    // ~800 KB a second for 4 s, four times the idle limit: the socket's
    // megabytes drain in more than the limit.
    let slow_until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while tokio::time::Instant::now() < slow_until {
        pace.tick().await;
        match stream.read(&mut buffer[..16 * 1024]).await {
            Ok(0) | Err(_) => panic!("cut off after {} bytes", read.len()),
            Ok(n) => read.extend_from_slice(&buffer[..n]),
        }
    }
    // Then the rest at full speed, to the answer's end.
    tokio::time::timeout(READ_WAIT, async {
        while !read.ends_with(b"\r\n0\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => panic!("cut off after {} bytes", read.len()),
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("the answer ends");
    assert!(read.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(read.len() > 16 << 20, "{} bytes", read.len());
    let text = String::from_utf8_lossy(&read[read.len() - 200..]).into_owned();
    assert!(text.contains("data: [DONE]"), "{text}");
}
