//! Concurrency limits: a slot is held until the response body ends or the
//! client leaves; a provider at its cap queues a request briefly, then
//! answers `engine_overloaded_error`, which sends the request on to another
//! provider of the same model.

use crate::auth::spawn_with_keys;
use crate::helpers::*;
use futures_util::StreamExt;

fn key_in_flight(app: &TestApp) -> usize {
    let config = app.state.config();
    let key = config.keys.find(b"sk-a").unwrap();
    key.limits.as_ref().unwrap().local.in_flight()
}

fn provider_queued(app: &TestApp, provider: &str) -> usize {
    app.state.config().limits.providers[provider].local.queued()
}

/// Starts a stream held at `gate` and returns it after its first event.
async fn held_stream(
    app: &TestApp,
    key: Option<&str>,
    model: &str,
    gate: &str,
) -> reqwest::Response {
    let body = chat_body(model, &format!("[mock gate={gate} chunks=3]"), true);
    let response = match key {
        Some(key) => app.chat_as(key, body).await,
        None => app.chat(body).await,
    };
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test]
async fn a_keys_slot_is_released_when_the_stream_ends_or_the_client_leaves() {
    let app = spawn_with_keys("[keys.team-a.limits]\nconcurrent_requests = 1\n").await;
    let running = held_stream(&app, Some("sk-a"), "kimi-k2.6", "g1").await;
    let refused = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after-ms"));
    let error = error_of(refused).await;
    assert_eq!(error["type"], "rate_limit_reached_error");
    assert_eq!(
        error["message"],
        "rate limit reached for key team-a: 1 concurrent requests"
    );
    // Other keys are not limited.
    let other = app
        .chat_as("sk-b", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(other.status(), 200);

    app.mock.release("g1", 10);
    sse_data(running).await;
    wait_until("the slot is released", async || key_in_flight(&app) == 0).await;

    let left = held_stream(&app, Some("sk-a"), "kimi-k2.6", "g2").await;
    assert_eq!(key_in_flight(&app), 1);
    drop(left.bytes_stream());
    wait_until("the slot is released", async || key_in_flight(&app) == 0).await;
    let response = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(response.status(), 200);
}

/// A client that closes its stream and asks again at once, on a new
/// connection, is not refused by its own slot: the new request can be
/// read before the close is seen, and waits briefly for the slot.
#[test]
fn a_client_that_leaves_a_stream_and_asks_again_at_once_is_not_refused() {
    leaves_a_stream_and_asks_again("");
}

/// Ten times, with key `team`'s `concurrent_requests = 1` and `limits`
/// (a `[limits]` table): a stream opened and closed after its second
/// event, then a plain request on a new connection at once, which must be
/// answered 200. Against the gateway's binary, whose scheduler the race
/// depends on (the accept loop's new connection task runs before the tasks
/// woken with it, the closed connection's among them), with a plain
/// blocking client.
pub(crate) fn leaves_a_stream_and_asks_again(limits: &str) {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(crate::cli::mock_for_start());
    let config = crate::cli::config_file(&format!(
        "{limits}\n[keys.team]\nsecret_env = \"TEAM_KEY\"\n\
         [keys.team.limits]\nconcurrent_requests = 1\n"
    ));
    let mut command = crate::cli::gateway();
    command
        .env("MOONSHOT_API_KEY", "k")
        .env(
            "MOONSHOT_BASE_URL",
            mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
        )
        .env("TEAM_KEY", "sk-team");
    let path = config.path().to_str().unwrap();
    let (_gateway, _stdout, addr) = crate::cli::start(
        command,
        &["--listen", crate::cli::ANY_PORT, "--config", path],
    );
    let request = |body: serde_json::Value| {
        crate::raw_client::chat_request(&body.to_string()).replacen(
            "\r\n",
            "\r\nauthorization: Bearer sk-team\r\n",
            1,
        )
    };
    let stream = request(chat_body(
        "kimi-k2-turbo-preview",
        "[mock chunks=40 chunk_delay_ms=250]",
        true,
    ));
    let plain = request(chat_body("kimi-k2-turbo-preview", "hi", false));
    let statuses: Vec<String> = (0..10)
        .map(|_| {
            let mut left = std::net::TcpStream::connect(&addr).unwrap();
            left.write_all(stream.as_bytes()).unwrap();
            let mut read = Vec::new();
            while read.windows(5).filter(|w| w == b"data:").count() < 2 {
                let mut buf = [0u8; 4096];
                let n = left.read(&mut buf).unwrap();
                assert!(n > 0, "the stream ended early");
                read.extend_from_slice(&buf[..n]);
            }
            drop(left);
            let mut next = std::net::TcpStream::connect(&addr).unwrap();
            next.write_all(plain.as_bytes()).unwrap();
            let mut head = [0u8; 12];
            next.read_exact(&mut head).unwrap();
            String::from_utf8_lossy(&head).into_owned()
        })
        .collect();
    assert!(statuses.iter().all(|s| s == "HTTP/1.1 200"), "{statuses:?}");
}

#[tokio::test]
async fn a_provider_at_its_cap_queues_then_is_overloaded() {
    let app = spawn_app_with(
        &format!(
            "{SINGLE_ATTEMPT}[limits]\nprovider_queue_ms = 100\n\
             [limits.providers.moonshot]\nconcurrent_requests = 1\n"
        ),
        &[],
    )
    .await;
    let running = held_stream(&app, None, "kimi-k2-turbo-preview", "g").await;
    let started = std::time::Instant::now();
    let refused = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-should-retry"], "true");
    // The client is asked to wait a second, not the queue wait: its SDK
    // would spend its retries within half a second.
    assert_eq!(refused.headers()["retry-after-ms"], "1000");
    let error = error_of(refused).await;
    assert_eq!(error["type"], "engine_overloaded_error");
    assert_eq!(
        error["message"],
        "provider moonshot is busy: 1 concurrent requests"
    );
    app.mock.release("g", 10);
    sse_data(running).await;
}

#[tokio::test]
async fn a_queued_request_takes_the_slot_that_frees() {
    let app = spawn_app_with(
        "[limits]\nprovider_queue_ms = 10000\n[limits.providers.moonshot]\nconcurrent_requests = 1\n",
        &[],
    )
    .await;
    let running = held_stream(&app, None, "kimi-k2-turbo-preview", "g").await;
    let queued = turbo_in_background(&app);
    wait_until("the request queues", async || {
        provider_queued(&app, "moonshot") == 1
    })
    .await;
    app.mock.release("g", 10);
    sse_data(running).await;
    assert_eq!(queued.await.unwrap().0, 200);
}

/// Sends a plain request for Moonshot's own model from a task of its own;
/// the task gives its status and when it came.
fn turbo_in_background(
    app: &TestApp,
) -> tokio::task::JoinHandle<(reqwest::StatusCode, std::time::Instant)> {
    let (client, url) = (app.client.clone(), app.url("/v1/chat/completions"));
    tokio::spawn(async move {
        let body = chat_body("kimi-k2-turbo-preview", "hi", false).to_string();
        let response = client.post(url).body(body).send().await.unwrap();
        (response.status(), std::time::Instant::now())
    })
}

/// A request whose queue time ran out is queued again at once on its next
/// attempt there: a slot that frees just after takes it, instead of
/// waiting out the queue's length or the backoff (which left the slot to
/// newcomers).
#[tokio::test]
async fn a_request_refused_after_queueing_queues_again_at_once() {
    let app = spawn_app_with(
        "[retry]\nmax_attempts = 3\nbackoff_base_ms = 5000\nbackoff_max_ms = 5000\n\
         [limits]\nprovider_queue_ms = 2000\n[limits.providers.moonshot]\nconcurrent_requests = 1\n",
        &[],
    )
    .await;
    let running = held_stream(&app, None, "kimi-k2-turbo-preview", "g").await;
    let queued = turbo_in_background(&app);
    let retries = app
        .state
        .metrics
        .attempts
        .with_label_values(&["moonshot", "retry"]);
    wait_until("the first queue wait ran out", async || retries.get() == 1).await;
    app.mock.release("g", 10);
    let released = std::time::Instant::now();
    sse_data(running).await;
    let (status, answered) = queued.await.unwrap();
    assert_eq!(status, 200);
    // Waiting out the queue's length (2 s) or the backoff (5 s) first
    // would take that much more.
    let took = answered.duration_since(released);
    assert!(took < std::time::Duration::from_millis(1900), "{took:?}");
}

#[tokio::test]
async fn a_model_of_two_providers_fails_over_when_the_first_is_at_its_cap() {
    let app = spawn_app_with(
        "[limits]\nprovider_queue_ms = 50\n[limits.providers.moonshot]\nconcurrent_requests = 1\n",
        &[],
    )
    .await;
    let running = held_stream(&app, None, "kimi-k2.6", "g").await;
    assert_eq!(running.headers()["x-gateway-provider"], "moonshot");
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "agentsflare");
    assert_eq!(response.headers()["x-gateway-attempts"], "2");
    app.mock.release("g", 10);
    let mut stream = running.bytes_stream();
    while stream.next().await.is_some() {}
}

/// A provider that keeps its body open after `[DONE]` (for a minute here)
/// holds neither the client's response nor the key's slot: the response
/// ends at `[DONE]`, and the key's next request is admitted.
#[tokio::test]
async fn a_stream_ends_at_done_though_the_provider_keeps_its_body_open() {
    let app = spawn_with_keys("[keys.team-a.limits]\nconcurrent_requests = 1\n").await;
    for _ in 0..2 {
        let body = chat_body("kimi-k2.6", "[mock chunks=2 end_delay_ms=60000]", true);
        let response = app.chat_as("sk-a", body).await;
        assert_eq!(response.status(), 200);
        let data = tokio::time::timeout(std::time::Duration::from_secs(10), sse_data(response))
            .await
            .expect("the response ends at [DONE]");
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        wait_until("the slot is released", async || key_in_flight(&app) == 0).await;
    }
}

/// A key at its concurrency cap whose requests per minute are spent too is
/// told the longer wait, the minute's: a client that waited the cap's 1 s
/// would be refused again (the Redis backend answers the same).
#[tokio::test]
async fn a_busy_key_with_a_spent_request_limit_is_told_the_longer_wait() {
    let app =
        spawn_with_keys("[keys.team-a.limits]\nconcurrent_requests = 1\nrequests_per_minute = 1\n")
            .await;
    let running = held_stream(&app, Some("sk-a"), "kimi-k2.6", "g").await;
    let refused = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(refused.status(), 429);
    let wait_ms: u64 = refused.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait_ms > 50_000, "{wait_ms} ms");
    let error = error_of(refused).await;
    assert_eq!(error["code"], "requests_per_minute", "{error}");
    app.mock.release("g", 10);
    drop(running);
}
