//! Every error is OpenAI-shaped with a documented type: the gateway's own
//! (bad JSON, body limit) and each provider's, translated from its own shape.

use crate::helpers::*;
use kimi_gateway::mock::Flavour;
use std::time::Duration;

fn model_of(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Moonshot => "kimi-k2-turbo-preview",
        Flavour::Aimlapi => "moonshot/kimi-k2-preview",
        Flavour::Agentsflare => "kimi-chat",
    }
}

#[tokio::test]
async fn provider_errors_map_to_the_documented_types() {
    let app = spawn_app_with(SINGLE_ATTEMPT, &[]).await;
    // (scenario, expected status, expected type) for every flavour.
    let table = [
        ("invalid_request", 400, "invalid_request_error"),
        ("content_filter", 400, "content_filter"),
        ("permission", 403, "permission_denied_error"),
        ("not_found", 404, "resource_not_found_error"),
        ("rate_limit", 429, "rate_limit_reached_error"),
        ("overloaded", 429, "engine_overloaded_error"),
        ("quota", 429, "exceeded_current_quota_error"),
        ("server", 500, "server_error"),
        ("bad_gateway", 502, "server_error"),
        ("unavailable", 503, "server_error"),
        ("overloaded_529", 429, "engine_overloaded_error"),
        ("generation_timeout", 504, "server_error"),
    ];
    for flavour in Flavour::ALL {
        for (scenario, status, error_type) in table {
            for stream in [false, true] {
                let body = chat_body(
                    model_of(flavour),
                    &format!("[mock error={scenario}]"),
                    stream,
                );
                let response = app.chat(body).await;
                let what = format!("{} {scenario} stream={stream}", flavour.name());
                assert_eq!(response.status().as_u16(), status, "{what}");
                // The provider's id for the failed request, for its support:
                // Moonshot's header, AI/ML API's body `requestId`.
                let upstream_id = response
                    .headers()
                    .get("x-upstream-request-id")
                    .map(|id| id.to_str().unwrap().to_owned());
                let expected = match flavour {
                    Flavour::Moonshot => Some("mock-error-request"),
                    Flavour::Aimlapi => Some("aiml-req-1"),
                    Flavour::Agentsflare => None,
                };
                assert_eq!(upstream_id.as_deref(), expected, "{what}");
                let error = error_of(response).await;
                assert_eq!(error["type"], error_type, "{what}: {error}");
            }
        }
    }
}

/// A stream whose first event is the provider's error is answered as an
/// ordinary error, and like one it names the provider's request id.
#[tokio::test]
async fn a_first_event_error_names_the_providers_request_id() {
    let app = spawn_app_with(SINGLE_ATTEMPT, &[]).await;
    for flavour in [Flavour::Moonshot, Flavour::Agentsflare] {
        let body = chat_body(model_of(flavour), "[mock error_event_after=0]", true);
        let response = app.chat(body).await;
        assert_eq!(response.status(), 429, "{}", flavour.name());
        assert_numbered_upstream_id(&response);
        let error = error_of(response).await;
        assert_eq!(error["type"], "engine_overloaded_error");
    }
}

/// Agentsflare's opening prompt-filter chunk is no part of the answer: an
/// error event right after it is still the attempt's error, answered (and
/// failed over) as an HTTP error, with nothing of the stream sent.
#[tokio::test]
async fn an_error_after_the_opening_prompt_filter_chunk_is_the_attempts_error() {
    let app = spawn_app_with(SINGLE_ATTEMPT, &[]).await;
    let body = chat_body(
        model_of(Flavour::Agentsflare),
        "[mock error_event_after=1]",
        true,
    );
    let response = app.chat(body).await;
    assert_eq!(response.status(), 429);
    let error = error_of(response).await;
    assert_eq!(error["type"], "engine_overloaded_error");
}

/// The response names the provider's request id from its head: the mock
/// numbers its answers.
fn assert_numbered_upstream_id(response: &reqwest::Response) {
    let upstream_id = response.headers().get("x-upstream-request-id");
    let upstream_id = upstream_id.map(|id| id.to_str().unwrap().to_owned());
    assert!(
        upstream_id
            .as_deref()
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        "{upstream_id:?}"
    );
}

/// A good head whose body then fails (here, larger than the gateway
/// holds) still names the provider's request id.
#[tokio::test]
async fn a_body_that_fails_after_a_good_head_names_the_providers_request_id() {
    let limited = format!("{SINGLE_ATTEMPT}[server]\nmax_response_bytes = 100\n");
    let app = spawn_app_with(&limited, &[]).await;
    let response = app
        .chat(chat_body(model_of(Flavour::Moonshot), "hi", false))
        .await;
    assert_eq!(response.status(), 502);
    assert_numbered_upstream_id(&response);
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_response_too_large", "{error}");
}

#[tokio::test]
async fn aimlapi_out_of_credits_is_a_quota_error_not_a_permission_error() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body(
            "moonshot/kimi-k2-preview",
            "[mock error=quota]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let error = error_of(response).await;
    assert_eq!(error["type"], "exceeded_current_quota_error");
    assert!(error["message"].as_str().unwrap().contains("credits"));
}

#[tokio::test]
async fn a_provider_refusing_the_gateways_key_is_a_server_error_that_names_the_variable() {
    let app = spawn_app_with("", &[("MOONSHOT_API_KEY", Some("wrong-moonshot-key-123"))]).await;
    for model in ["kimi-k2-turbo-preview", "kimi-chat [mock error=auth]"] {
        let (model, content) = model.split_once(' ').unwrap_or((model, "hi"));
        let response = app.chat(chat_body(model, content, false)).await;
        assert_eq!(response.status(), 502, "{model}");
        assert_eq!(response.headers()["x-should-retry"], "false");
        let text = response.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "upstream_key_rejected");
        assert!(text.contains("_API_KEY"), "{text}");
        assert!(
            !text.contains("wrong-moonshot-key-123"),
            "key leaked: {text}"
        );
    }
}

#[tokio::test]
async fn retry_after_from_the_provider_is_forwarded() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock error=rate_limit retry_after=7]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-should-retry"], "true");
}

#[tokio::test]
async fn retry_after_ms_from_the_provider_is_forwarded_in_whole_milliseconds() {
    // A fraction is rounded up.
    let app = spawn_app().await;
    let content = "[mock error=rate_limit retry_after_ms=2.5]";
    let response = app.chat(chat_body("kimi-k2.6", content, false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after-ms"], "3");
}

/// A wait of zero asks for none: passed on, the Node SDK would retry a
/// 429 at once. It is left out, and the wait the provider's message
/// states ("try again after 1 seconds") is the client's.
#[tokio::test]
async fn a_providers_zero_wait_is_not_passed_on() {
    let app = spawn_app().await;
    for directive in ["retry_after_ms=0", "retry_after=0"] {
        let content = format!("[mock error=rate_limit {directive}]");
        let response = app.chat(chat_body("kimi-k2.6", &content, false)).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after-ms"], "1000", "{directive}");
        assert_eq!(response.headers()["retry-after"], "1", "{directive}");
        assert_eq!(response.headers()["x-should-retry"], "true", "{directive}");
    }
}

/// A wait longer than a minute is passed on, but as the caller's to
/// schedule: `x-should-retry: false`, or the Node SDK would sleep that
/// long inside the call.
#[tokio::test]
async fn a_wait_over_a_minute_is_not_marked_retryable() {
    let app = spawn_app().await;
    for (directive, retry) in [("retry_after=60", "true"), ("retry_after=3600", "false")] {
        let content = format!("[mock error=rate_limit {directive}]");
        let response = app.chat(chat_body("kimi-k2.6", &content, false)).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["x-should-retry"], retry, "{directive}");
        let (_, secs) = directive.split_once('=').unwrap();
        assert_eq!(response.headers()["retry-after"], secs, "{directive}");
    }
}

#[tokio::test]
async fn a_2xx_that_is_not_json_is_a_bad_gateway() {
    let app = spawn_app().await;
    for stream in [false, true] {
        let response = app
            .chat(chat_body("kimi-k2.6", "[mock error=non_json]", stream))
            .await;
        assert_eq!(response.status(), 502, "stream={stream}");
        let error = error_of(response).await;
        assert_eq!(error["type"], "server_error");
        assert_eq!(error["code"], "upstream_bad_response");
    }
}

#[tokio::test]
async fn an_unreachable_provider_is_a_bad_gateway() {
    // Bind a port, then free it: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/v1");
    let app = spawn_app_with(SINGLE_ATTEMPT, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    let response = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
        .await;
    assert_eq!(response.status(), 502);
    let error = error_of(response).await;
    assert_eq!(error["type"], "server_error");
    assert!(error["message"].as_str().unwrap().contains("moonshot"));
}

/// A provider that refuses a large body as soon as it has the request
/// head (413, without reading the body) and closes the connection: the
/// client gets the provider's 413, not a broken pipe's 502 or a timeout.
#[tokio::test]
async fn a_provider_refusing_a_large_body_before_reading_it_is_answered_with_its_413() {
    let error =
        r#"{"error":{"message":"request entity too large","type":"invalid_request_error"}}"#;
    let url = raw_provider(format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{error}",
        error.len()
    ).into_bytes())
    .await;
    let app = spawn_app_with(SINGLE_ATTEMPT, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    let large = chat_body("kimi-k2-turbo-preview", &"x".repeat(8 << 20), false);
    let started = std::time::Instant::now();
    let response = app.chat(large).await;
    assert_eq!(response.status(), 413);
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("request entity too large"),
        "{error}"
    );
    // Not after a timeout: the answer was there at once.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A provider reached that answers with something other than what was
/// asked: not HTTP, a head that cannot be read one way only, a 2xx body
/// compressed though the gateway asked for none, an HTML page. A 502
/// `upstream_bad_response` that says so, not `upstream_unreachable`.
#[tokio::test]
async fn a_response_that_is_not_what_was_asked_is_a_bad_response() {
    let gzip_json =
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00";
    let mut gzipped = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        gzip_json.len()
    )
    .into_bytes();
    gzipped.extend_from_slice(gzip_json);
    for (answer, says) in [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), "not valid HTTP"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n{}".to_vec(),
            "not valid HTTP",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}".to_vec(),
            "not valid HTTP",
        ),
        (gzipped, "compressed body (Content-Encoding: gzip)"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\r\n<html></html>"
                .to_vec(),
            "not JSON",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "compressed body (Transfer-Encoding: gzip)",
        ),
        // A stream request: an event stream that ends before any event.
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 14\r\n\r\n: ping\nid: 1\n\n"
                .to_vec(),
            "before sending any event",
        ),
    ] {
        let url = raw_provider(answer).await;
        let app = spawn_app_with(SINGLE_ATTEMPT, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
        let stream = says.contains("event");
        let response = app
            .chat(chat_body("kimi-k2-turbo-preview", "hi", stream))
            .await;
        assert_eq!(response.status(), 502, "{says}");
        let error = error_of(response).await;
        assert_eq!(error["type"], "server_error", "{error}");
        assert_eq!(error["code"], "upstream_bad_response", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says) && message.contains("moonshot"), "{error}");
    }
}

/// A stream request answered with an event stream that is no answer:
/// framing that cannot be read, a body that ends inside its first event,
/// an error event that is not whole JSON (a string or an object left
/// open, which would hide the key it quotes). A 502
/// `upstream_bad_response` before any byte went out, and the key quoted
/// in the provider's event reaches neither the client nor the log.
#[tokio::test]
async fn a_stream_that_is_no_answer_is_a_bad_response() {
    let stream_head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";
    for (answer, says) in [
        (
            format!("{stream_head}transfer-encoding: chunked\r\n\r\nzz\r\ndata: {{}}\r\n"),
            "not valid HTTP",
        ),
        (
            format!("{stream_head}content-length: 10\r\n\r\ndata: {{\"id"),
            "before sending any event (inside its first)",
        ),
        (
            format!(
                "{stream_head}connection: close\r\n\r\ndata: {{\"error\":\"invalid key {PROVIDER_KEY}\n\n"
            ),
            "not valid JSON",
        ),
        (
            format!(
                "{stream_head}connection: close\r\n\r\ndata: {{\"error\":{{\"message\":\"{PROVIDER_KEY}\n\n"
            ),
            "not valid JSON",
        ),
    ] {
        let url = raw_provider(answer.into_bytes()).await;
        let app = spawn_app_with(SINGLE_ATTEMPT, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
        let response = app
            .chat(chat_body("kimi-k2-turbo-preview", "hi", true))
            .await;
        assert_eq!(response.status(), 502, "{says}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(PROVIDER_KEY), "{text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        let error = &error["error"];
        assert_eq!(error["code"], "upstream_bad_response", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{says}: {error}"
        );
    }
}

/// A request body sent compressed is refused by name (415), not as JSON
/// that does not parse; `identity` is no compression.
#[tokio::test]
async fn a_compressed_request_body_is_refused_as_such() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&chat_body("kimi-k2.6", "hi", false)).unwrap();
    // One `Content-Encoding` field per value.
    let send = |encodings: &'static [&'static str]| {
        let mut request = app
            .client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        for encoding in encodings {
            request = request.header("content-encoding", *encoding);
        }
        request.body(body.clone()).send()
    };
    let response = send(&["gzip"]).await.unwrap();
    assert_eq!(response.status(), 415);
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "unsupported_content_encoding");
    assert!(
        error["message"].as_str().unwrap().contains("gzip"),
        "{error}"
    );
    assert_eq!(send(&["identity"]).await.unwrap().status(), 200);
    assert_eq!(send(&["Identity, identity"]).await.unwrap().status(), 200);
    // Every field counts, not only the first.
    let response = send(&["identity", "br"]).await.unwrap();
    assert_eq!(response.status(), 415);
    assert!(
        error_of(response).await["message"]
            .as_str()
            .unwrap()
            .contains("(br)")
    );
    // Only a registered coding is named: the field's text could be a key
    // sent in the wrong field.
    let response = send(&["sk-secret-in-the-wrong-field"]).await.unwrap();
    assert_eq!(response.status(), 415);
    let message = error_of(response).await["message"].to_string();
    assert!(
        !message.contains("secret") && message.contains("an unknown coding"),
        "{message}"
    );
}

#[tokio::test]
async fn no_response_head_in_time_is_a_gateway_timeout() {
    let config = format!(
        "{SINGLE_ATTEMPT}[providers.moonshot.timeouts]\ntotal_secs = 0.3\nfirst_byte_secs = 0.3\n"
    );
    let app = spawn_app_with(&config, &[]).await;
    for stream in [false, true] {
        let response = app
            .chat(chat_body(
                "kimi-k2-turbo-preview",
                "[mock head_delay_ms=20000]",
                stream,
            ))
            .await;
        assert_eq!(response.status(), 504, "stream={stream}");
        let error = error_of(response).await;
        assert_eq!(error["type"], "server_error");
        assert_eq!(error["code"], "upstream_timeout");
        assert!(
            error["message"].as_str().unwrap().contains("timed out"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_connection_not_made_in_time_is_a_gateway_timeout() {
    // A listener that never accepts, its queue already full: the kernel
    // drops further connection attempts, so connecting waits, as it does
    // for a host that does not answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(stream);
        assert!(queued.len() < 64, "the listener's queue never filled");
    }
    let url = format!("http://{addr}/v1");
    // The connect timeout passing, and the request's own deadline passing
    // first while connecting (a stream's first-byte deadline shorter than
    // the connect timeout): both say it was the connection.
    for (timeouts, stream) in [
        ("connect_secs = 0.2", false),
        ("connect_secs = 30\nfirst_byte_secs = 0.2", true),
    ] {
        let config = format!("{SINGLE_ATTEMPT}[providers.moonshot.timeouts]\n{timeouts}\n");
        let app = spawn_app_with(&config, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
        let response = app
            .chat(chat_body("kimi-k2-turbo-preview", "hi", stream))
            .await;
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["x-should-retry"], "true");
        let error = error_of(response).await;
        assert_eq!(error["code"], "upstream_timeout");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("timed out connecting to provider moonshot"),
            "{timeouts}: {error}"
        );
    }
    drop(listener);
}

#[tokio::test]
async fn a_stream_head_without_a_first_event_in_time_is_a_gateway_timeout() {
    // The head is held until the first event, so the wait for it is the
    // same first-byte deadline and the same error as a late head.
    let config = format!("{SINGLE_ATTEMPT}[providers.moonshot.timeouts]\nfirst_byte_secs = 0.3\n");
    let app = spawn_app_with(&config, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock first_event_delay_ms=20000]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 504);
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_timeout");
    assert_eq!(
        error["message"],
        "timed out waiting for the first event from provider moonshot"
    );
}

#[tokio::test]
async fn malformed_requests_are_400_with_the_parameter() {
    let app = spawn_app().await;
    for (body, param) in [
        (r#"{"model":"kimi-k2.6","messages":[}"#, None),
        (r#"{"messages":[]}"#, Some("model")),
        (r#"{"model":"kimi-k2.6"}"#, Some("messages")),
        ("", None),
    ] {
        let response = app.chat_raw(body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["x-should-retry"], "false");
        let error = error_of(response).await;
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
    }
    assert!(
        app.mock.requests().is_empty(),
        "nothing invalid was forwarded"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1024\n", &[]).await;
    let big = chat_body("kimi-k2.6", &"x".repeat(2000), false).to_string();
    let response = app.chat_raw(big.clone()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_of(response).await["type"], "invalid_request_error");
    // Without a Content-Length (chunked), the limit applies while reading.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app.chat_raw(reqwest::Body::wrap_stream(chunks)).await;
    assert_eq!(response.status(), 413);
    // The gateway is still serving.
    let ok = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(ok.status(), 200);
}

/// An unknown path is a 404 `resource_not_found_error` naming what is
/// served; a served path but for a doubled or trailing slash (a base URL
/// ending in `/` joined with `/chat/completions`) is told so.
#[tokio::test]
async fn an_unknown_path_is_404_and_a_stray_slash_is_named() {
    let app = spawn_app().await;
    for (method, path, stray) in [
        (reqwest::Method::POST, "//v1/chat/completions", true),
        (reqwest::Method::POST, "/v1/chat/completions/", true),
        (reqwest::Method::GET, "/v1//models", true),
        (reqwest::Method::GET, "/v1/nothing", false),
    ] {
        let answer = app
            .client
            .request(method, format!("http://{}{path}", app.addr))
            .json(&chat_body("kimi-k2-turbo-preview", "hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["type"], "resource_not_found_error", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("/v1/chat/completions and /v1/models"),
            "{message}"
        );
        assert_eq!(
            message.contains("doubled or trailing slash"),
            stray,
            "{path}: {message}"
        );
    }
    // A model's path goes to the model lookup, which names the slash too.
    for (path, stray) in [
        ("/v1/models//kimi-k2-turbo-preview", true),
        ("/v1/models/kimi-k2-turbo-preview/", true),
        ("/v1/models/no-such-model", false),
    ] {
        let answer = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        let error = error_of(answer).await;
        assert_eq!(error["code"], "model_not_found", "{path}");
        let message = error["message"].as_str().unwrap();
        assert_eq!(
            message.contains("doubled or trailing slash"),
            stray,
            "{path}: {message}"
        );
    }
}
