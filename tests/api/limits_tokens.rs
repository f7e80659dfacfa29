//! Token limits: an estimate (prompt bytes / 4 + `max_tokens`) is reserved
//! at admission and settled to the provider's real usage when the response
//! ends, for plain and streamed answers; a spent daily budget is a quota
//! error that says not to retry, one with too little left for a request a
//! rate limit.

use crate::auth::spawn_with_keys;
use crate::helpers::*;
use serde_json::json;

fn body(stream: bool, max_tokens: u64, content: &str) -> serde_json::Value {
    json!({
        "model": "kimi-k2.6",
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    })
}

fn estimate(body: &serde_json::Value) -> u64 {
    body.to_string().len() as u64 / 4 + body["max_tokens"].as_u64().unwrap()
}

/// Tokens left in key team-a's own token limits.
fn tokens_left(app: &TestApp) -> u64 {
    let config = app.state.config();
    let key = config.keys.find(b"sk-a").unwrap();
    key.limits.as_ref().unwrap().local.tokens_left().unwrap()
}

fn in_flight(app: &TestApp) -> usize {
    let config = app.state.config();
    let key = config.keys.find(b"sk-a").unwrap();
    key.limits.as_ref().unwrap().local.in_flight()
}

#[tokio::test]
async fn a_plain_answer_settles_its_reservation_to_real_usage() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\n").await;
    let request = body(false, 1000, "hi");
    let response = app.chat_as("sk-a", request.clone()).await;
    assert_eq!(remaining_tokens(&response), 10000 - estimate(&request));
    let answer: serde_json::Value = response.json().await.unwrap();
    let used = answer["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < estimate(&request));
    wait_until("the reservation is settled", async || {
        tokens_left(&app) == 10000 - used
    })
    .await;
    // The next request sees the settled budget.
    let next = app.chat_as("sk-a", request.clone()).await;
    assert_eq!(remaining_tokens(&next), 10000 - used - estimate(&request));
}

#[tokio::test]
async fn a_stream_settles_to_the_usage_moonshot_puts_in_its_last_chunk() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\n").await;
    let request = body(true, 1000, "hi [mock chunks=4]");
    let response = app.chat_as("sk-a", request.clone()).await;
    assert_eq!(remaining_tokens(&response), 10000 - estimate(&request));
    let events = sse_data(response).await;
    let last: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let used = last["choices"][0]["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    wait_until("the stream's reservation is settled", async || {
        tokens_left(&app) == 10000 - used
    })
    .await;
}

/// Each of `n` choices may use the cap, and of two caps the larger counts:
/// the reservation covers what the provider may send.
#[tokio::test]
async fn the_estimate_covers_every_choice_and_the_larger_cap() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 100000\n").await;
    let mut request = body(false, 1000, "hi");
    request["n"] = json!(3);
    request["max_completion_tokens"] = json!(10);
    let prompt = request.to_string().len() as u64 / 4;
    let response = app.chat_as("sk-a", request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(remaining_tokens(&response), 100000 - (prompt + 3 * 1000));
}

/// A provider's `"usage": {}` reports nothing, as no usage does: the
/// request keeps its estimate rather than being charged nothing.
#[tokio::test]
async fn an_empty_usage_object_keeps_the_estimate() {
    for stream in [false, true] {
        let app = spawn_with_keys(
            "[keys.team-a.limits]\ntokens_per_day = 10000\nconcurrent_requests = 5\n",
        )
        .await;
        let request = body(stream, 1000, "hi [mock empty_usage]");
        let response = app.chat_as("sk-a", request.clone()).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains("\"usage\":{}"), "{text}");
        assert!(!text.contains("total_tokens"), "{text}");
        wait_until("the request is settled", async || in_flight(&app) == 0).await;
        assert_eq!(
            tokens_left(&app),
            10000 - estimate(&request),
            "stream: {stream}"
        );
    }
}

#[tokio::test]
async fn a_stream_the_client_leaves_keeps_its_estimate_and_frees_its_slot() {
    let app =
        spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\nconcurrent_requests = 5\n")
            .await;
    let request = body(true, 1000, "[mock gate=held chunks=5]");
    let response = app.chat_as("sk-a", request.clone()).await;
    let mut stream = response.bytes_stream();
    futures_util::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_flight(&app), 1);
    drop(stream);
    wait_until("the slot is released", async || in_flight(&app) == 0).await;
    assert_eq!(tokens_left(&app), 10000 - estimate(&request));
}

#[tokio::test]
async fn a_running_streams_reservation_holds_tokens_back_until_it_ends() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_minute = 2000\n").await;
    let began = std::time::Instant::now();
    let response = app
        .chat_as("sk-a", body(true, 1500, "[mock gate=g chunks=3]"))
        .await;
    assert_eq!(response.status(), 200);
    let held = estimate(&body(true, 1500, "[mock gate=g chunks=3]"));
    let next = body(false, 1500, "hi");
    let refused = app.chat_as("sk-a", next.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after-ms"));
    // What the bucket holds (the stream's reservation taken, and what has
    // refilled since: 33 tokens a second), not 0.
    let refilled = (began.elapsed().as_secs_f64() * 2000.0 / 60.0).ceil() as u64;
    let left = remaining_tokens(&refused);
    assert!(
        (2000 - held..=2000 - held + refilled + 1).contains(&left),
        "{left}"
    );
    let error = error_of(refused).await;
    assert_eq!(error["type"], "rate_limit_reached_error");
    assert_eq!(
        error["message"],
        format!(
            "rate limit reached for key team-a: 2000 tokens per minute ({left} left, the request is estimated at {} tokens)",
            estimate(&next)
        )
    );
    app.mock.release("g", 10);
    sse_data(response).await;
    wait_until("the stream's tokens are back", async || {
        tokens_left(&app) > 1600
    })
    .await;
    let admitted = app.chat_as("sk-a", body(false, 1500, "hi")).await;
    assert_eq!(admitted.status(), 200);
}

#[tokio::test]
async fn a_spent_daily_budget_is_a_quota_error() {
    assert_a_spent_day_is_a_quota_error("tokens_per_day = 50").await;
}

#[tokio::test]
async fn a_spent_daily_budget_is_reported_over_a_minute_limit_that_refuses_too() {
    // The minute limit is checked first and refuses too (for up to a
    // minute); the day's refusal, a spent quota, is the one that counts.
    assert_a_spent_day_is_a_quota_error("tokens_per_minute = 50\ntokens_per_day = 50").await;
}

/// A request a token limit refuses while a request limit is spent too is
/// told the longer wait (the request limit's): a client that waited only
/// for the tokens would be refused again.
#[tokio::test]
async fn a_token_refusal_names_a_spent_request_limit_that_waits_longer() {
    let app = spawn_with_keys(
        "[keys.team-a.limits]\nrequests_per_minute = 2\ntokens_per_minute = 1000\n",
    )
    .await;
    for _ in 0..2 {
        let admitted = app.chat_as("sk-a", body(false, 5, "x")).await;
        assert_eq!(admitted.status(), 200);
    }
    let refused = app.chat_as("sk-a", body(false, 950, "x")).await;
    assert_eq!(refused.status(), 429);
    let wait_ms: u64 = refused.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The request limit frees a request 30 s after the first; the tokens
    // (~45 over) refill in ~3 s.
    assert!(wait_ms > 20_000, "{wait_ms} ms");
    let error = error_of(refused).await;
    assert_eq!(error["code"], "requests_per_minute", "{error}");
}

/// With `limits` for `team-a` (a budget of 50 tokens a day among them), a
/// request that overdraws the full budget leaves a spent quota behind.
async fn assert_a_spent_day_is_a_quota_error(limits: &str) {
    let app = spawn_with_keys(&format!("[keys.team-a.limits]\n{limits}\n")).await;
    // A full budget admits a request estimated above it; its real usage
    // (a long prompt) is above the budget too, and leaves nothing.
    let first = app
        .chat_as("sk-a", body(false, 1000, &"x".repeat(400)))
        .await;
    assert_eq!(first.status(), 200);
    wait_until("the reservation is settled", async || {
        tokens_left(&app) == 0
    })
    .await;
    let quota = "exceeded_current_quota_error";
    assert_refused_by_the_day(&app, 0, quota, "daily token budget spent for key team-a").await;
}

/// Sends `team-a` a request of ~1,000 tokens that its budget of 50 a day
/// refuses, and checks the refusal: `left` tokens held, the error's type,
/// and its message, `prefix` then the limit, what is left and the estimate.
async fn assert_refused_by_the_day(app: &TestApp, left: u64, error_type: &str, prefix: &str) {
    let next = body(false, 1000, "hi");
    let refused = app.chat_as("sk-a", next.clone()).await;
    assert_eq!(refused.status(), 429);
    // Not for an SDK to retry either way: a spent budget cannot pass, and
    // a low one refills over hours, longer than an SDK should sleep.
    assert_eq!(refused.headers()["x-should-retry"], "false");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(remaining_tokens(&refused), left);
    let error = error_of(refused).await;
    assert_eq!(error["type"], error_type);
    assert_eq!(error["code"], "tokens_per_day");
    let estimate = estimate(&next);
    let expected = format!(
        "{prefix}: 50 tokens per day ({left} left, the request is estimated at {estimate} tokens)"
    );
    assert_eq!(error["message"], expected);
}

#[tokio::test]
async fn a_daily_budget_too_low_for_one_request_is_a_rate_limit() {
    // What is left would serve a smaller request: not a spent budget, and
    // the refusal says how much is left and what the request needed.
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 50\n").await;
    let first = app.chat_as("sk-a", body(false, 1000, "hi")).await;
    let answer: serde_json::Value = first.json().await.unwrap();
    let used = answer["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 50, "{used}");
    wait_until("the reservation is settled", async || {
        tokens_left(&app) == 50 - used
    })
    .await;
    let prefix = "daily token budget of key team-a too low for this request";
    assert_refused_by_the_day(&app, 50 - used, "rate_limit_reached_error", prefix).await;
}

#[tokio::test]
async fn a_failed_request_gives_its_tokens_back() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\n").await;
    let response = app
        .chat_as("sk-a", body(false, 1000, "[mock error=invalid_request]"))
        .await;
    assert_eq!(response.status(), 400);
    wait_until("the reservation is refunded", async || {
        tokens_left(&app) == 10000
    })
    .await;
}

/// A client that leaves while the gateway waits to try again, after an
/// attempt that failed, costs nothing: no provider is working on it.
#[tokio::test]
async fn a_client_that_leaves_between_attempts_gets_its_tokens_back() {
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\n").await;
    let mut request = body(false, 1000, "[mock error=rate_limit retry_after=3]");
    request["model"] = json!("moonshot/kimi-k2.6");
    app.chat_as_and_leave_when("sk-a", &request, "the first attempt failed", async || {
        app.mock.requests().len() == 1
    })
    .await;
    wait_until("the request ended", async || in_flight(&app) == 0).await;
    wait_until("the reservation is refunded", async || {
        tokens_left(&app) == 10000
    })
    .await;
    assert_eq!(app.mock.requests().len(), 1, "no second attempt");
}

#[tokio::test]
async fn a_providers_spent_budget_does_not_open_its_circuit() {
    // The gateway's own limit refuses before anything reaches the provider,
    // so it says nothing about the provider's health: more refusals than
    // the breaker's failure count still leave the circuit closed.
    let app = spawn_app_with(
        "[limits.providers.agentsflare]\ntokens_per_day = 50\n[breaker]\nconsecutive_failures = 2\n",
        &[],
    )
    .await;
    let chat = |max_tokens| json!({"model": "kimi-chat", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    // A full budget admits one request above it; what its answer used
    // leaves less than the next ones' estimates.
    assert_eq!(app.chat(chat(1000)).await.status(), 200);
    for _ in 0..4 {
        let refused = app.chat(chat(100)).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(error_of(refused).await["code"], "tokens_per_day");
    }
    let ready = app.readyz().await;
    assert!(
        !ready.to_string().contains("\"open\""),
        "no circuit opened: {ready}"
    );
    assert_eq!(app.mock.requests().len(), 1);
}

#[tokio::test]
async fn a_huge_max_tokens_cannot_wrap_the_token_arithmetic() {
    // u64::MAX would wrap the reservation to almost nothing without the
    // cap; with it the request is estimated at the cap, a full bucket
    // admits it, and the provider's real usage settles it.
    let app = spawn_with_keys("[keys.team-a.limits]\ntokens_per_day = 10000\n").await;
    let request = json!({
        "model": "kimi-k2.6",
        "max_tokens": u64::MAX,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = app.chat_as("sk-a", request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(remaining_tokens(&response), 0);
    let answer: serde_json::Value = response.json().await.unwrap();
    let used = answer["usage"]["total_tokens"].as_u64().unwrap();
    wait_until("the reservation is settled", async || {
        tokens_left(&app) == 10000 - used
    })
    .await;
}

/// Tokens left in the provider scope `[limits.providers.moonshot]`.
fn provider_tokens_left(app: &TestApp) -> u64 {
    let config = app.state.config();
    config.limits.providers["moonshot"]
        .local
        .tokens_left()
        .unwrap()
}

#[tokio::test]
async fn a_provider_limit_alone_settles_to_real_usage() {
    // No key, key-and-model or global scope: the provider's scope is the
    // only one, and it too is settled to the usage, not charged the
    // estimate on top of it.
    let app = spawn_app_with("[limits.providers.moonshot]\ntokens_per_day = 10000\n", &[]).await;
    let mut request = body(false, 1000, "hi");
    request["model"] = json!("kimi-k2-turbo-preview");
    let response = app.chat(request.clone()).await;
    assert_eq!(remaining_tokens(&response), 10000 - estimate(&request));
    let answer: serde_json::Value = response.json().await.unwrap();
    let used = answer["usage"]["total_tokens"].as_u64().unwrap();
    wait_until("the provider's reservation is settled", async || {
        provider_tokens_left(&app) == 10000 - used
    })
    .await;
    let next = app.chat(request.clone()).await;
    assert_eq!(remaining_tokens(&next), 10000 - used - estimate(&request));
}

#[tokio::test]
async fn a_client_that_leaves_while_a_provider_works_is_charged_the_estimate() {
    let app = spawn_with_keys(
        "[keys.team-a.limits]\ntokens_per_day = 10000\nconcurrent_requests = 5\n[limits.providers.moonshot]\ntokens_per_day = 10000\n",
    )
    .await;
    let mut request = body(false, 5000, "[mock head_delay_ms=5000]");
    request["model"] = json!("kimi-k2-turbo-preview");
    app.chat_as_and_leave_when("sk-a", &request, "the provider has it", async || {
        app.mock.requests().len() == 1
    })
    .await;
    wait_until("the slot is released", async || in_flight(&app) == 0).await;
    // The provider may have done the work: as for a stream the client
    // leaves, the estimate stays in both scopes.
    assert_eq!(tokens_left(&app), 10000 - estimate(&request));
    assert_eq!(provider_tokens_left(&app), 10000 - estimate(&request));
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_for_a_provider_gets_its_tokens_back() {
    let app = spawn_with_keys(
        "[keys.team-a.limits]\ntokens_per_day = 10000\nconcurrent_requests = 5\n[limits]\nprovider_queue_ms = 5000\n[limits.providers.moonshot]\nconcurrent_requests = 1\ntokens_per_day = 10000\n",
    )
    .await;
    let mut busy = body(false, 100, "[mock head_delay_ms=2000]");
    busy["model"] = json!("kimi-k2-turbo-preview");
    let first = {
        let app_client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        let busy = busy.to_string();
        tokio::spawn(async move {
            app_client
                .post(url)
                .header("content-type", "application/json")
                .bearer_auth("sk-a")
                .body(busy)
                .send()
                .await
                .unwrap()
        })
    };
    wait_until("the first request holds the provider's slot", async || {
        app.mock.requests().len() == 1
    })
    .await;
    let mut queued = body(false, 5000, "hi");
    queued["model"] = json!("kimi-k2-turbo-preview");
    app.chat_as_and_leave_when("sk-a", &queued, "it waits for the slot", async || {
        app.state.config().limits.providers["moonshot"]
            .local
            .queued()
            == 1
    })
    .await;
    wait_until("only the first request is in flight", async || {
        in_flight(&app) == 1
    })
    .await;
    // Nothing reached a provider: the queued request's tokens are back.
    assert_eq!(tokens_left(&app), 10000 - estimate(&busy));
    assert_eq!(provider_tokens_left(&app), 10000 - estimate(&busy));
    assert_eq!(first.await.unwrap().status(), 200);
}
