//! Providers that send without end, as fast as the socket takes it: the
//! gateway holds at most `server.max_response_bytes` of an answer or of one
//! stream event, and still notices a client that leaves.

use crate::helpers::*;
use std::time::Duration;

/// A provider that reads a request head, writes `head` and then `filler`
/// for ever (until a write fails). It runs on threads of its own, so it
/// sends as fast as the gateway reads, as a provider on another machine
/// would. The receiver gets a message when the gateway has closed the
/// provider's connection.
async fn endless_provider(
    head: &'static str,
    filler: &'static [u8],
) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (closed, closed_seen) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let closed = closed.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut request = Vec::new();
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let filler = filler.repeat(65536 / filler.len());
                while stream.write_all(&filler).is_ok() {}
                let _ = closed.send(());
            });
        }
    });
    (url, closed_seen)
}

const STREAM_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

/// A gateway in front of the provider at `url`, holding at most 1 MiB of
/// an answer, and its answer to one chat request.
async fn ask(url: &str, stream: bool) -> (TestApp, reqwest::Response) {
    let limited = format!("{SINGLE_ATTEMPT}[server]\nmax_response_bytes = 1048576\n");
    let app = spawn_app_with(&limited, &[("MOONSHOT_BASE_URL", Some(url))]).await;
    let response = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", stream))
        .await;
    (app, response)
}

async fn assert_too_large(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.status(), 502);
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_response_too_large", "{error}");
    error
}

#[tokio::test]
async fn a_plain_answer_without_end_is_cut_at_the_limit() {
    let (url, mut closed) = endless_provider(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"a\":\"",
        b"xxxxxxxx",
    )
    .await;
    let (_app, response) = ask(&url, false).await;
    let error = assert_too_large(response).await;
    assert!(
        error["message"].as_str().unwrap().contains("1048576 bytes"),
        "{error}"
    );
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the provider's connection is closed");
}

#[tokio::test]
async fn a_plain_answer_declared_over_the_limit_is_refused_before_it_is_read() {
    let (url, _closed) = endless_provider(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n",
        b"x",
    )
    .await;
    let (_app, response) = ask(&url, false).await;
    assert_too_large(response).await;
}

#[tokio::test]
async fn a_stream_event_without_end_fails_the_attempt_before_the_first_event() {
    let (url, _closed) = endless_provider(STREAM_HEAD, b"data: {\"GGGGGGGG").await;
    let (_app, response) = ask(&url, true).await;
    assert_too_large(response).await;
}

#[tokio::test]
async fn a_stream_event_without_end_ends_the_stream_after_the_first_event() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"GG";
    let (url, mut closed) = endless_provider(head, b"GGGGGGGG").await;
    let (_app, response) = ask(&url, true).await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("\"hi\""), "{events:?}");
    let error: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_response_too_large");
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the provider's connection is closed");
}

/// The provider sends comments as fast as it can before its first event
/// (each dropped, none held): the client that gives up is still noticed,
/// and the provider's connection closed, long before the first-byte limit.
#[tokio::test]
async fn a_client_that_leaves_a_provider_sending_at_full_speed_is_noticed() {
    let (url, mut closed) = endless_provider(STREAM_HEAD, b": ping\n\n").await;
    // A receive buffer the kernel does not grow: every read of the flood
    // is ready at once, and the handler spends the task's cooperative
    // budget at every poll (see `unbudgeted`), which hid the client's
    // leaving.
    let config = format!("{SINGLE_ATTEMPT}[providers.moonshot]\nreceive_buffer_bytes = 262144\n");
    let app = spawn_app_with(&config, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    let request = app.chat(chat_body("kimi-k2-turbo-preview", "hi", true));
    // The head never comes (no event does): the client gives up.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), request)
            .await
            .is_err()
    );
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the provider's connection is closed once the client left");
}

/// A gateway whose Moonshot is the provider at `url`, with one attempt and
/// `timeouts` (a TOML body for `[providers.moonshot.timeouts]`).
async fn with_timeouts(url: &str, timeouts: &str) -> TestApp {
    let config = format!("{SINGLE_ATTEMPT}[providers.moonshot.timeouts]\n{timeouts}");
    spawn_app_with(&config, &[("MOONSHOT_BASE_URL", Some(url))]).await
}

/// Well past every limit these tests set, well short of the defaults: an
/// answer by then came from the limit under test.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// Comments sent as fast as the gateway reads them, before any event:
/// reading them spends the task's cooperative budget at every poll, and
/// the first-byte limit must fire all the same.
#[tokio::test]
async fn a_provider_flooding_comments_before_its_first_event_meets_the_first_byte_limit() {
    let (url, mut closed) = endless_provider(STREAM_HEAD, b": x\n\n").await;
    let app = with_timeouts(&url, "first_byte_secs = 1\n").await;
    let request = app.chat(chat_body("kimi-k2-turbo-preview", "hi", true));
    let response = tokio::time::timeout(ANSWER_WAIT, request)
        .await
        .expect("answered at the first-byte limit");
    assert_eq!(response.status(), 504);
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the provider's connection is closed");
}

/// One event, then comments as fast as the gateway reads them: comments
/// are no events, and the idle limit ends the stream with its error event.
#[tokio::test]
async fn a_provider_flooding_comments_after_an_event_meets_the_idle_limit() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let (url, _closed) = endless_provider(head, b": x\n\n").await;
    let app = with_timeouts(&url, "idle_secs = 1\n").await;
    let mut response = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", true))
        .await;
    assert_eq!(response.status(), 200);
    // The comments pass on: only the stream's last bytes are kept.
    let mut tail = Vec::new();
    let read_to_end = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            tail.extend_from_slice(&chunk);
            tail.drain(..tail.len().saturating_sub(4096));
        }
    };
    tokio::time::timeout(ANSWER_WAIT, read_to_end)
        .await
        .expect("the stream ended at the idle limit");
    let tail = String::from_utf8_lossy(&tail);
    let last = tail.trim_end().rsplit("\n\n").next().unwrap();
    let error: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap_or(last)).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout", "{last}");
}

/// Interim (1xx) heads without end, before any final head: the head's
/// deadline (`first_byte_secs` for a stream) fires all the same.
#[tokio::test]
async fn a_provider_flooding_interim_heads_meets_the_head_deadline() {
    let (url, mut closed) = endless_provider("", b"HTTP/1.1 100 Continue\r\n\r\n").await;
    let app = with_timeouts(&url, "first_byte_secs = 1\n").await;
    let request = app.chat(chat_body("kimi-k2-turbo-preview", "hi", true));
    let response = tokio::time::timeout(ANSWER_WAIT, request)
        .await
        .expect("answered at the head deadline");
    assert_eq!(response.status(), 504);
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the provider's connection is closed");
}

/// A plain answer's body sent without end as fast as the gateway reads it,
/// under a size limit it would take long to reach: `total_secs` ends it.
#[tokio::test]
async fn a_plain_answer_flooding_in_meets_the_total_limit() {
    let (url, _closed) = endless_provider(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"a\":\"",
        b"xxxxxxxx",
    )
    .await;
    let config = format!(
        "{SINGLE_ATTEMPT}[server]\nmax_response_bytes = 100000000000\n\
         max_answer_bytes_total = 100000000000\n\
         [providers.moonshot.timeouts]\ntotal_secs = 1\n"
    );
    let app = spawn_app_with(&config, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    let request = app.chat(chat_body("kimi-k2-turbo-preview", "hi", false));
    let response = tokio::time::timeout(ANSWER_WAIT, request)
        .await
        .expect("answered at the total limit");
    assert_eq!(response.status(), 504);
}
