//! Streams: chunks arrive one by one as the provider sends them, failures
//! after the first byte end with one error event, a client that leaves
//! cancels the upstream, and many streams run at once.

use crate::helpers::*;
use futures_util::StreamExt;
use std::time::Duration;

/// Reads from `stream` until `buffer` holds `events` complete events.
async fn read_events(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    events: usize,
) {
    let wait = async {
        while buffer.matches("\n\n").count() < events {
            let chunk = stream.next().await.expect("stream ended early").unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("events did not arrive");
}

#[tokio::test]
async fn chunks_reach_the_client_while_the_provider_is_still_streaming() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock gate=g chunks=3]", true))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    // The mock holds every event after the first until the gate opens, so
    // each event seen here was forwarded before the next one existed.
    read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(buffer.matches("\n\n").count(), 1);
    for seen in 2..=4 {
        app.mock.release("g", 1);
        read_events(&mut stream, &mut buffer, seen).await;
        assert_eq!(buffer.matches("\n\n").count(), seen);
    }
    app.mock.release("g", 10);
    while let Some(chunk) = stream.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(buffer.ends_with("data: [DONE]\n\n"), "{buffer}");
}

#[tokio::test]
async fn stream_bytes_are_the_providers_bytes() {
    let app = spawn_app().await;
    let events = sse_data(app.chat(chat_body("kimi-chat", "hi", true)).await).await;
    // Agentsflare's Azure-style opening chunk, with no choice, is dropped:
    // code written for OpenAI reads `choices[0]` of every chunk.
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().all(|c| c["choices"][0].is_object()),
        "{events:?}"
    );
    assert_eq!(streamed_text(&chunks), "Hello from agentsflare ");
}

/// A provider set to pass them on sends its opening prompt-filter chunk
/// first, as it came.
#[tokio::test]
async fn prompt_filter_chunks_pass_when_the_provider_is_set_to() {
    let app = spawn_app_with(
        "[providers.agentsflare]\npass_prompt_filter_chunks = true\n",
        &[],
    )
    .await;
    let events = sse_data(app.chat(chat_body("kimi-chat", "hi", true)).await).await;
    assert!(events[0].contains("prompt_filter_results"), "{events:?}");
    let opening: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(opening["choices"], serde_json::json!([]));
    let chunks: Vec<serde_json::Value> = events[1..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(streamed_text(&chunks), "Hello from agentsflare ");
}

/// The content of `chunks`' first choices, in order.
fn streamed_text(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn a_cut_mid_stream_ends_with_an_error_event_and_no_done() {
    let app = spawn_app().await;
    // Paced, and all at once (the mock writes its events out before the cut).
    for directive in [
        "[mock cut_after=2 chunks=5 chunk_delay_ms=20]",
        "[mock cut_after=2 chunks=5]",
    ] {
        a_cut_after_two_events(&app, directive).await;
    }
}

async fn a_cut_after_two_events(app: &TestApp, directive: &str) {
    let response = app.chat(chat_body("kimi-k2.6", directive, true)).await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert_eq!(last["error"]["code"], "upstream_unreachable", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("moonshot")
    );
    assert_eq!(
        events.len(),
        3,
        "two forwarded events, then the error: {events:?}"
    );
}

#[tokio::test]
async fn a_stream_closed_without_done_is_reported_as_incomplete() {
    let app = spawn_app().await;
    let events = sse_data(
        app.chat(chat_body("kimi-k2.6", "[mock no_done]", true))
            .await,
    )
    .await;
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before it was complete"),
        "{last}"
    );
    assert_eq!(last["error"]["code"], "upstream_unreachable", "{last}");
}

#[tokio::test]
async fn a_failure_before_the_first_event_is_a_real_http_error() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock cut_after=0]", true))
        .await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_of(response).await["type"], "server_error");
}

/// An event the provider names `error` whose data has no `error` member
/// (the SDKs would take it for a chunk) ends the stream as an error: the
/// gateway's own error event in its place mid-stream, a failed attempt
/// (failed over) as the first event.
#[tokio::test]
async fn an_event_named_error_is_an_error_without_an_error_member() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body(
            "moonshot/kimi-k2.6",
            "[mock error_event_after=2 named_error]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    assert_eq!(events.len(), 3, "two chunks, then the error: {events:?}");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["message"], "The engine is currently overloaded",
        "{last}"
    );
    assert_eq!(last["error"]["type"], "server_error", "{last}");

    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error_event_after=0 named_error]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "agentsflare");
    assert_eq!(sse_data(response).await.last().unwrap(), "[DONE]");
}

/// AI/ML API's and Agentsflare's error document mid-stream, with `[DONE]`
/// after it (the SDKs would take it for a chunk, and the stream for a
/// whole answer): the gateway's own error event in its place, the stream
/// ended there, and counted as the failure it is.
#[tokio::test]
async fn an_error_document_mid_stream_ends_it_as_an_error() {
    let app = spawn_app().await;
    // (The mock counts Agentsflare's opening chunk, which is dropped.)
    for (model, chunks) in [("moonshot/kimi-k2-preview", 2), ("kimi-chat", 1)] {
        let response = app
            .chat(chat_body(
                model,
                "[mock error_event_after=2 document_error]",
                true,
            ))
            .await;
        assert_eq!(response.status(), 200);
        let events = sse_data(response).await;
        assert_eq!(
            events.len(),
            chunks + 1,
            "chunks, then the error: {events:?}"
        );
        let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["message"], "Generation timeout", "{last}");
        assert_eq!(last["error"]["type"], "server_error", "{last}");
    }
    let metrics = scrape(&app).await;
    let failed = r#"kimi_gateway_requests_total{error_type="server_error",provider="aimlapi",route="moonshot/kimi-k2-preview",status="200"} 1"#;
    assert!(
        metrics.lines().any(|l| l == failed),
        "{failed} in:\n{metrics}"
    );
}

/// A stream whose first event is `[DONE]` is no answer: a failed attempt
/// (failed over when another target serves the model), not an empty 200.
#[tokio::test]
async fn a_stream_of_done_alone_is_a_bad_response_and_fails_over() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock moonshot:done_only]", true))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "agentsflare");
    let events = sse_data(response).await;
    assert!(events.len() > 2, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");

    let response = app
        .chat(chat_body("moonshot/kimi-k2.6", "[mock done_only]", true))
        .await;
    assert_eq!(response.status(), 502);
    let error = error_of(response).await;
    assert_eq!(error["code"], "upstream_bad_response", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("[DONE] before any chunk"),
        "{error}"
    );
}

#[tokio::test]
async fn silence_longer_than_the_idle_timeout_ends_the_stream_with_an_error() {
    let app = spawn_app_with("[providers.moonshot.timeouts]\nidle_secs = 0.2\n", &[]).await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock gate=never chunks=3]", true))
        .await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert_eq!(last["error"]["code"], "upstream_timeout");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no complete stream event for 200ms"),
        "{last}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock gate=held chunks=5]", true))
        .await;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(app.mock.abandoned(), 0);
    drop(stream);
    // The mock is still waiting on its gate; only a closed connection ends it.
    assert!(
        app.mock.wait_abandoned(1).await,
        "upstream was not cancelled"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_before_the_head_cancels_the_upstream_request() {
    let app = spawn_app().await;
    let client = app.client.clone();
    let url = app.url("/v1/chat/completions");
    let request = tokio::spawn(async move {
        client
            .post(url)
            .body(chat_body("kimi-k2.6", "[mock head_delay_ms=30000]", false).to_string())
            .send()
            .await
    });
    // Wait until the request has reached the provider, then abandon it.
    assert!(app.mock.wait_requests(1).await);
    request.abort();
    assert!(
        app.mock.wait_abandoned(1).await,
        "upstream was not cancelled"
    );
}

#[tokio::test]
async fn hundreds_of_concurrent_streams_all_complete() {
    let app = spawn_app().await;
    let streams = (0..300).map(|i| {
        let model = ["kimi-k2.6", "moonshot/kimi-k2-preview", "kimi-chat"][i % 3];
        let request = app.chat(chat_body(model, "[mock chunks=20]", true));
        async move { sse_data(request.await).await }
    });
    let results = futures_util::future::join_all(streams).await;
    for events in results {
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(events.len() >= 22, "{}", events.len());
    }
}
