//! The provider client's connection pool against a raw HTTP/1.1 server that
//! counts connections: keep-alive reuse, closed connections replaced,
//! abandoned bodies not reused, buffered stream frames handed over without
//! waiting for a wake-up, interim heads skipped, bodies that end with the
//! connection, malformed trailer sections failing their body, answers
//! given before a large body was read, and the same over TLS.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use kimi_gateway::answer_budget::{AnswerBudget, AnswerHold};
use kimi_gateway::client::{
    Client, OutgoingBody, PooledBody, UpstreamError, header_line, request_line,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the raw server answers each request.
#[derive(Clone, Copy)]
enum Answer {
    /// `content-length` body, connection kept.
    KeepAlive,
    /// Same, then the server closes the connection.
    ThenClose,
    /// `Connection: close` in the head.
    ConnectionClose,
    /// A chunked body of 50 events, written in one go.
    ChunkedEvents,
    /// An interim `103 Early Hints` head, then the response.
    Interim,
    /// No length and no chunks: the body ends when the server closes.
    UntilClose,
    /// The response, then a second one nobody asked for.
    Unsolicited,
    /// `204 No Content`: no body at all.
    NoContent,
    /// The request's body is a number of milliseconds to wait before
    /// answering as `KeepAlive` does.
    AfterBodyMillis,
    /// A chunked body whose trailer section ends at a bare LF, followed
    /// by what a lenient reader would take for the next response.
    BareLfTrailers,
    /// `Interim`'s heads, each with a long field and its lines ending in
    /// bare LFs on the final one, written a few bytes at a time.
    Trickled,
}

struct RawServer {
    origin: http::Uri,
    accepted: Arc<AtomicUsize>,
    /// One message per connection the server saw end.
    closed: mpsc::UnboundedReceiver<()>,
}

async fn raw_server(answer: Answer) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                serve(stream, answer).await;
                let _ = closed_tx.send(());
            });
        }
    });
    RawServer {
        origin,
        accepted,
        closed,
    }
}

/// Reads one request (head, then a `content-length` body) from `stream`,
/// past what `buf` already holds; its body, or `None` when the connection
/// ended first.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    buf.drain(..head_end + length);
    Some(body)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: Answer) {
    let mut buf = Vec::new();
    loop {
        let Some(body) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        if let Answer::AfterBodyMillis = answer {
            tokio::time::sleep(Duration::from_millis(body.parse().unwrap())).await;
        }
        let response = match answer {
            Answer::KeepAlive | Answer::ThenClose | Answer::AfterBodyMillis => {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_string()
            }
            Answer::ConnectionClose => {
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}".to_string()
            }
            Answer::ChunkedEvents => {
                let mut r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string();
                for i in 0..50 {
                    let event = format!("data: {i}\n\n");
                    r.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
                }
                r.push_str("0\r\n\r\n");
                r
            }
            Answer::Interim => {
                "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                    .to_string()
            }
            Answer::UntilClose => "HTTP/1.1 200 OK\r\n\r\n{\"until\":\"close\"}".to_string(),
            Answer::NoContent => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            Answer::Unsolicited => {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale"
                    .to_string()
            }
            Answer::BareLfTrailers => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale"
                    .to_string()
            }
            Answer::Trickled => {
                let pad = "p".repeat(3000);
                let response = format!(
                    "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\nx-pad: {pad}\r\n\r\nHTTP/1.1 200 OK\nx-pad: {pad}\ncontent-length: 2\n\n{{}}"
                );
                for piece in response.as_bytes().chunks(7) {
                    if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                continue;
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        if matches!(
            answer,
            Answer::ThenClose | Answer::ConnectionClose | Answer::UntilClose
        ) {
            return;
        }
    }
}

/// A request to send: the head's writer and the body.
fn request(body: &'static str) -> (impl Fn(&mut Vec<u8>), OutgoingBody) {
    let write_head = move |head: &mut Vec<u8>| {
        request_line(head, &http::Method::POST, "/v1/chat/completions");
        header_line(head, &http::header::HOST, b"provider.test");
        let length = body.len().to_string();
        header_line(head, &http::header::CONTENT_LENGTH, length.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    (
        write_head,
        OutgoingBody::from(Bytes::from_static(body.as_bytes())),
    )
}

async fn send(
    client: &Client,
    body: &'static str,
) -> Result<kimi_gateway::client::Response, kimi_gateway::client::ClientError> {
    send_within(client, body, Duration::from_secs(10)).await
}

/// [`send`] with the response head due within `limit`.
async fn send_within(
    client: &Client,
    body: &'static str,
    limit: Duration,
) -> Result<kimi_gateway::client::Response, kimi_gateway::client::ClientError> {
    let (write_head, body) = request(body);
    let deadline = tokio::time::Instant::now() + limit;
    client.send(write_head, body, deadline).await
}

async fn read_all(client: &Client) -> Bytes {
    let response = send(client, "{\"x\":1}").await.unwrap();
    assert_eq!(response.status, 200);
    response.body.collect().await.unwrap().to_bytes()
}

fn client(server: &RawServer) -> Client {
    Client::new(server.origin.clone(), Duration::from_secs(5))
}

#[tokio::test]
async fn a_keep_alive_connection_is_reused() {
    let server = raw_server(Answer::KeepAlive).await;
    let client = client(&server);
    for _ in 0..3 {
        assert_eq!(read_all(&client).await, "{}");
        assert_eq!(client.idle_connections(), 1);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A connection's deadline timer is made once and moved to each request's
/// deadline: a reused connection waits for its own request's deadline, not
/// the one before (which passes while it waits), and a late head is a
/// timeout that closes the connection.
#[tokio::test]
async fn a_reused_connection_keeps_its_own_requests_deadline() {
    let server = raw_server(Answer::AfterBodyMillis).await;
    let client = client(&server);
    // The first deadline must pass while the second request waits (from
    // 300 ms to 1.3 s); the others are far from the server's delays, so a
    // loaded machine cannot turn an answer in time into a timeout.
    let first = send_within(&client, "0", Duration::from_millis(800)).await;
    assert_eq!(
        first.unwrap().body.collect().await.unwrap().to_bytes(),
        "{}"
    );
    assert_eq!(client.idle_connections(), 1);
    // The first deadline passes while the second request waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send_within(&client, "1000", Duration::from_secs(5)).await;
    assert_eq!(
        second.unwrap().body.collect().await.unwrap().to_bytes(),
        "{}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    let started = std::time::Instant::now();
    let late = send_within(&client, "5000", Duration::from_millis(300)).await;
    assert!(late.unwrap_err().is_past_deadline());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(4000),
        "{waited:?}"
    );
    assert_eq!(client.idle_connections(), 0);
    // The next request has a connection of its own, and its own deadline.
    let next = send_within(&client, "0", Duration::from_secs(5)).await;
    assert_eq!(next.unwrap().body.collect().await.unwrap().to_bytes(), "{}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_chunked_body_read_to_its_end_frees_the_connection() {
    let server = raw_server(Answer::ChunkedEvents).await;
    let client = client(&server);
    for _ in 0..2 {
        let body = read_all(&client).await;
        assert!(body.starts_with(b"data: 0\n\n") && body.ends_with(b"data: 49\n\n"));
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A plain answer read whole: in one frame it is that frame; in many
/// (here 50 chunks) they are joined in order; either way the connection
/// goes back to the pool.
#[tokio::test]
async fn a_body_read_whole_is_every_frame_in_order() {
    let budget = Arc::new(AnswerBudget::new(1 << 20));
    for (answer, expected) in [(Answer::KeepAlive, None), (Answer::ChunkedEvents, Some(50))] {
        let mut hold = AnswerHold::new(&budget);
        let server = raw_server(answer).await;
        let client = client(&server);
        for _ in 0..2 {
            let body = send(&client, "{\"x\":1}").await.unwrap().body;
            let deadline = std::pin::pin!(far_off());
            let whole = body.into_bytes(1 << 20, &mut hold, deadline).await;
            let whole = whole.unwrap();
            let collected = read_all(&client).await;
            assert_eq!(whole, collected);
            if let Some(events) = expected {
                let last = format!("data: {}\n\n", events - 1);
                assert!(whole.starts_with(b"data: 0\n\n") && whole.ends_with(last.as_bytes()));
            }
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        // A byte less than the body is over the limit, declared or not.
        let whole = read_all(&client).await;
        let short = send(&client, "{\"x\":1}").await.unwrap().body;
        let err = short
            .into_bytes(whole.len() - 1, &mut hold, std::pin::pin!(far_off()))
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::BodyTooLarge(_)), "{err}");
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced() {
    let mut server = raw_server(Answer::ThenClose).await;
    let client = client(&server);
    assert_eq!(read_all(&client).await, "{}");
    server.closed.recv().await.unwrap();
    assert_eq!(read_all(&client).await, "{}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

/// A server that answers the first `answered` requests on each connection,
/// keeping it open, and resets the connection without a byte of answer
/// when the next request comes on it after `wait`: for that request, a
/// provider whose close of an idle connection crossed the request on the
/// wire (the gateway had not seen the close when it took the connection),
/// or, with a long wait, one that failed while working on it; with
/// `interim`, after sending a `102 Processing` head for it. Returns the
/// origin and the connections accepted.
async fn resetting_server(
    answered: usize,
    wait: Duration,
    interim: bool,
) -> (http::Uri, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..answered {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    if read_request(&mut stream, &mut buf).await.is_none()
                        || stream.write_all(answer).await.is_err()
                    {
                        return;
                    }
                }
                if read_request(&mut stream, &mut buf).await.is_none()
                    || (interim
                        && stream
                            .write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                            .await
                            .is_err())
                {
                    return;
                }
                tokio::time::sleep(wait).await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    (origin, accepted)
}

/// A pooled connection reset with no answer right after the request went
/// out on it was closed by the provider before the request came: the
/// request is sent once more on a new connection, and answered there.
#[tokio::test]
async fn a_request_on_a_connection_the_provider_had_just_closed_goes_out_on_a_new_one() {
    let (origin, accepted) = resetting_server(1, Duration::ZERO, false).await;
    let client = Client::new(origin, Duration::from_secs(5));
    for round in 1..=3 {
        assert_eq!(read_all(&client).await, "{}", "{round}");
        assert_eq!(client.idle_connections(), 1);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "the second and third requests each found the pooled connection reset"
    );
}

/// Not sent again: a reset that comes long after the request went out
/// (the provider may have begun to work on it), after an interim head, or
/// on a new connection.
#[tokio::test]
async fn a_reset_late_after_an_interim_head_or_on_a_new_connection_is_the_requests_failure() {
    let (origin, accepted) = resetting_server(1, Duration::from_millis(1500), false).await;
    let client = Client::new(origin, Duration::from_secs(5));
    assert_eq!(read_all(&client).await, "{}");
    assert_reset(send(&client, "{}").await);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let (origin, accepted) = resetting_server(0, Duration::ZERO, false).await;
    let client = Client::new(origin, Duration::from_secs(5));
    assert_reset(send(&client, "{}").await);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // An interim head came first: the provider had the request.
    let (origin, accepted) = resetting_server(1, Duration::from_millis(50), true).await;
    let client = Client::new(origin, Duration::from_secs(5));
    assert_eq!(read_all(&client).await, "{}");
    assert_reset(send(&client, "{}").await);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

fn assert_reset(sent: Result<kimi_gateway::client::Response, kimi_gateway::client::ClientError>) {
    let failed = sent.expect_err("a reset");
    assert!(
        matches!(
            &failed,
            kimi_gateway::client::ClientError::Exchange(
                UpstreamError::Io(_) | UpstreamError::ClosedBeforeHead
            )
        ),
        "{failed:?}"
    );
}

/// While no request comes, the pool lets go of a connection the server
/// closed (no socket left in CLOSE-WAIT) and, past the idle timeout, of one
/// the server keeps open.
#[tokio::test]
async fn idle_connections_are_let_go_while_no_request_comes() {
    let idle_for = Duration::from_millis(600);
    let mut server = raw_server(Answer::ThenClose).await;
    let closed_by_server = client(&server).with_idle_timeout(idle_for);
    read_all(&closed_by_server).await;
    server.closed.recv().await.unwrap();
    crate::helpers::wait_until("the closed connection is let go", async || {
        closed_by_server.idle_connections() == 0
    })
    .await;

    let mut server = raw_server(Answer::KeepAlive).await;
    let kept_by_server = client(&server).with_idle_timeout(idle_for);
    // From before the exchange: the idle time runs from after it.
    let started = tokio::time::Instant::now();
    read_all(&kept_by_server).await;
    assert_eq!(kept_by_server.idle_connections(), 1);
    tokio::time::timeout(Duration::from_secs(5), server.closed.recv())
        .await
        .expect("the idle connection is closed by the client");
    assert!(started.elapsed() >= idle_for);
    assert_eq!(kept_by_server.idle_connections(), 0);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let server = raw_server(Answer::ConnectionClose).await;
    let client = client(&server);
    assert_eq!(read_all(&client).await, "{}");
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(read_all(&client).await, "{}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_heads_are_skipped() {
    let server = raw_server(Answer::Interim).await;
    let client = client(&server);
    for _ in 0..2 {
        let response = send(&client, "{}").await.unwrap();
        assert_eq!(response.status, 200);
        assert!(response.headers.get("link").is_none());
        assert_eq!(response.body.collect().await.unwrap().to_bytes(), "{}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A head that comes a few bytes at a time is searched for its end in the
/// new bytes only (not parsed again from its start on every read): it is
/// still read whole, at every cut, interim head and bare-LF line ends
/// included, and the connection carries the next request.
#[tokio::test]
async fn heads_trickled_in_are_read_whole() {
    let server = raw_server(Answer::Trickled).await;
    let client = client(&server);
    for _ in 0..2 {
        let response = send(&client, "{}").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.headers.get("x-pad").unwrap().len(), 3000);
        assert_eq!(response.body.collect().await.unwrap().to_bytes(), "{}");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_without_length_ends_with_the_connection() {
    let server = raw_server(Answer::UntilClose).await;
    let client = client(&server);
    assert_eq!(read_all(&client).await, r#"{"until":"close"}"#);
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(read_all(&client).await, r#"{"until":"close"}"#);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_empty_body_ends_at_once_and_frees_its_connection() {
    let server = raw_server(Answer::NoContent).await;
    let client = client(&server);
    for _ in 0..2 {
        let response = send(&client, "{}").await.unwrap();
        assert_eq!(response.status, 204);
        assert!(response.body.collect().await.unwrap().to_bytes().is_empty());
        assert_eq!(client.idle_connections(), 1);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bytes_past_the_response_are_never_taken_for_the_next_one() {
    let server = raw_server(Answer::Unsolicited).await;
    let client = client(&server);
    for _ in 0..3 {
        assert_eq!(read_all(&client).await, "{}");
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        3,
        "a connection with bytes nobody asked for is not reused"
    );
}

/// A response body whose trailer section is malformed fails (it is not
/// ended at the next blank line found), and its connection is closed, not
/// pooled: where the next response starts is unknown.
#[tokio::test]
async fn a_malformed_trailer_section_fails_the_body_and_closes_its_connection() {
    let mut server = raw_server(Answer::BareLfTrailers).await;
    let client = client(&server);
    let response = send(&client, "{}").await.unwrap();
    assert_eq!(response.status, 200);
    let err = response.body.collect().await.unwrap_err();
    assert!(err.to_string().contains("bare LF"), "{err}");
    server.closed.recv().await.unwrap();
    assert_eq!(client.idle_connections(), 0);
}

/// What an early-answering server sends: a 413 with a JSON body.
const EARLY_413: &str = "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"error\":\"body too large\"}";

/// A server that reads a request's head, answers [`EARLY_413`] without
/// reading the body, then closes the connection (`close`: a reset, with
/// the body unread) or keeps it open and never reads again.
async fn early_answer_server(close: bool) -> http::Uri {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if !crate::helpers::read_request_head(&mut stream).await {
                    return;
                }
                stream.write_all(EARLY_413.as_bytes()).await.unwrap();
                if close {
                    let _ = stream.shutdown().await;
                } else {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    origin
}

/// Sends `body` as a chat request's body, with 10 s for the answer's head.
async fn send_large(
    client: &Client,
    body: &Bytes,
) -> Result<kimi_gateway::client::Response, kimi_gateway::client::ClientError> {
    let length = body.len().to_string();
    let write_head = |head: &mut Vec<u8>| {
        request_line(head, &http::Method::POST, "/v1/chat/completions");
        header_line(head, &http::header::HOST, b"provider.test");
        header_line(head, &http::header::CONTENT_LENGTH, length.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    client
        .send(write_head, OutgoingBody::from(body.clone()), deadline)
        .await
}

/// A provider that answers before it has read the request body and stops
/// reading (a 413 for a body too large) has its answer returned, whether
/// it then keeps the connection open or closes it: the body is written
/// while the response is read, and a write broken by the provider's close
/// gives way to the answer already received. The connection, its request
/// cut short, is not reused.
#[tokio::test]
async fn an_answer_before_the_body_was_read_is_returned() {
    let body = Bytes::from(vec![b'x'; 8 << 20]);
    for close in [false, true] {
        let client = Client::new(early_answer_server(close).await, Duration::from_secs(5));
        let response = send_large(&client, &body)
            .await
            .unwrap_or_else(|err| panic!("close={close}: {err}"));
        assert_eq!(response.status, 413, "close={close}");
        let answer = response.body.collect().await.unwrap().to_bytes();
        assert_eq!(answer, r#"{"error":"body too large"}"#, "close={close}");
        assert_eq!(client.idle_connections(), 0, "close={close}");
    }
}

/// A server that sends its `200` head as soon as it has the request's
/// head, then reads the whole body before sending its answer (the body's
/// length): an early success is no refusal, so the body is still written
/// whole, and the connection carries the next request.
#[tokio::test]
async fn an_early_success_head_still_gets_the_whole_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin: http::Uri = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut read = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 64 * 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&read[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .split("content-length: ")
                        .nth(1)
                        .and_then(|rest| rest.split("\r\n").next())
                        .unwrap()
                        .parse()
                        .unwrap();
                    read.drain(..head_end);
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n")
                        .await
                        .unwrap();
                    while read.len() < length {
                        let mut chunk = [0u8; 64 * 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&chunk[..n]),
                        }
                    }
                    read.drain(..length);
                    stream
                        .write_all(format!("{length:>12}").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    let client = Client::new(origin, Duration::from_secs(5));
    let body = Bytes::from(vec![b'x'; 8 << 20]);
    for _ in 0..2 {
        let length = body.len().to_string();
        let response = send_large(&client, &body).await.unwrap();
        assert_eq!(response.status, 200);
        // A body left half written would leave the server waiting for it.
        let answer = tokio::time::timeout(Duration::from_secs(10), response.body.collect())
            .await
            .expect("the server got the whole body and answered")
            .unwrap()
            .to_bytes();
        assert_eq!(answer.trim_ascii(), length.as_bytes());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was reused"
    );
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let mut server = raw_server(Answer::ChunkedEvents).await;
    let client = client(&server);
    let mut body = send(&client, "{}").await.unwrap().body;
    body.frame().await.unwrap().unwrap();
    drop(body);
    server.closed.recv().await.unwrap();
    assert_eq!(client.idle_connections(), 0);
    read_all(&client).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn frames_already_received_are_ready_without_a_wake_up() {
    let server = raw_server(Answer::ChunkedEvents).await;
    let client = client(&server);
    let mut body: PooledBody = send(&client, "{}").await.unwrap().body;
    // Wait for the first event; the server wrote all 50 in one write.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: 0\n\n");
    let mut ready = 1;
    while let Some(frame) = body.frame().now_or_never() {
        match frame {
            Some(frame) => {
                let data = frame.unwrap().into_data().unwrap();
                assert_eq!(data, format!("data: {ready}\n\n"));
                ready += 1;
            }
            None => break,
        }
    }
    // Loopback delivers one write in one read, so nothing is left pending.
    assert_eq!(ready, 50, "every buffered event was ready at once");
}

#[tokio::test]
async fn an_unreachable_origin_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(
        format!("http://{addr}/").parse().unwrap(),
        Duration::from_secs(5),
    );
    let err = send(&client, "{}").await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// What a TLS server saw of the client's handshake.
struct Handshake {
    server_name: Option<String>,
    alpn: Option<Vec<u8>>,
}

#[tokio::test]
async fn https_origins_are_reached_over_tls_with_sni_and_no_h2() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (handshakes_tx, mut handshakes) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let tls = acceptor.accept(stream).await.unwrap();
            let (_, session) = tls.get_ref();
            let _ = handshakes_tx.send(Handshake {
                server_name: session.server_name().map(str::to_owned),
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            });
            tokio::spawn(serve(tls, Answer::KeepAlive));
        }
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let origin = format!("https://localhost:{port}/").parse().unwrap();
    let client = Client::with_roots(origin, Duration::from_secs(5), roots);
    for _ in 0..2 {
        assert_eq!(read_all(&client).await, "{}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the TLS connection is reused"
    );
    let handshake = handshakes.recv().await.unwrap();
    assert_eq!(handshake.server_name.as_deref(), Some("localhost"));
    // No ALPN offered, so a server that prefers HTTP/2 stays on HTTP/1.1.
    assert_eq!(handshake.alpn, None);

    // The compiled-in roots do not trust this certificate.
    let untrusted = Client::new(
        format!("https://localhost:{port}/").parse().unwrap(),
        Duration::from_secs(5),
    );
    let err = send(&untrusted, "{}").await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// A deadline no test reaches.
fn far_off() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_secs(3600))
}
