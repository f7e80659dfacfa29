//! Fail-over, retries and circuit breaking, with faults injected through the
//! mock. Each test checks what the client saw and what each provider saw.
//! `kimi-k2.6` is served by Moonshot then Agentsflare; `kimi-k2-turbo-preview`
//! by Moonshot alone.

use crate::helpers::*;
use kimi_gateway::mock::Flavour;
use std::time::Duration;

/// Fast backoff so tests do not wait on the default policy.
const FAST: &str = "[retry]\nbackoff_base_ms = 1\nbackoff_max_ms = 5\n";

fn seen(app: &TestApp, flavour: Flavour) -> usize {
    app.mock.requests_for(flavour).len()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn a_5xx_fails_over_to_the_next_provider() {
    let app = spawn_app_with(FAST, &[]).await;
    for stream in [false, true] {
        let response = app
            .chat(chat_body(
                "kimi-k2.6",
                "[mock moonshot:error=server]",
                stream,
            ))
            .await;
        assert_eq!(response.status(), 200, "stream={stream}");
        assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
        assert_eq!(header(&response, "x-gateway-attempts"), "2");
    }
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 2);
}

/// A provider that does not implement the request (501) would say so
/// again: the next target is tried, and the same one never again.
#[tokio::test]
async fn a_501_fails_over_without_asking_the_same_provider_again() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=not_implemented]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock error=not_implemented]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    // The SDKs would ask again and get the same answer.
    assert_eq!(header(&response, "x-should-retry"), "false");
    let error = error_of(response).await;
    assert_eq!(error["message"], "n > 1 is not supported", "{error}");
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 2);
}

/// AI/ML API's and Agentsflare's error shape (`{"message", "statusCode"}`)
/// under a 200 is that error too, read as the same body under its stated
/// status would be, for a stream request as for a plain one.
#[tokio::test]
async fn a_200_that_carries_a_resellers_error_is_that_error() {
    let app = spawn_app_with(FAST, &[]).await;
    for (model, directive, status, error_type) in [
        (
            "kimi-chat",
            "error=rate_limit",
            429,
            "rate_limit_reached_error",
        ),
        (
            "moonshot/kimi-k2-preview",
            "error=quota",
            429,
            "exceeded_current_quota_error",
        ),
        (
            "moonshot/kimi-k2-preview",
            "error=invalid_request",
            400,
            "invalid_request_error",
        ),
    ] {
        // A stream request refused so, before any event, too.
        for stream in [false, true] {
            let content = format!("[mock {directive} error_status_ok]");
            let response = app.chat(chat_body(model, &content, stream)).await;
            assert_eq!(response.status(), status, "{model} {directive} {stream}");
            let error = error_of(response).await;
            assert_eq!(error["type"], error_type, "{model} {directive}: {error}");
        }
    }
    // Moonshot's shape, to a stream request: the client's error, not a
    // retryable upstream_bad_response.
    let response = app
        .chat(chat_body(
            "moonshot/kimi-k2.6",
            "[mock error=invalid_request error_status_ok]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-gateway-attempts"), "1");
}

/// A 200 whose body is an error document (`{"error":{...}}`) is not an
/// answer: the SDKs would hand their caller a completion with no choices.
/// A server error fails over; a request error is the client's, as the
/// same error with its own status would be.
#[tokio::test]
async fn a_200_that_carries_an_error_is_an_error() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=server error_status_ok]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");

    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=invalid_request error_status_ok]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-gateway-attempts"), "1");
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    assert_eq!(
        error["message"], "Invalid request: messages must not be empty",
        "{error}"
    );
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 1);
    let metrics = scrape(&app).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kimi_gateway_requests_total{")
                && l.contains("status=\"400\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn connection_refused_fails_over() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/v1");
    let app = spawn_app_with(FAST, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(seen(&app, Flavour::Agentsflare), 1);
}

#[tokio::test]
async fn a_reset_before_the_first_byte_fails_over_for_streams_and_not() {
    let app = spawn_app_with(FAST, &[]).await;
    for (stream, directive) in [
        (false, "[mock moonshot:reset]"),
        (true, "[mock moonshot:reset]"),
        (true, "[mock moonshot:cut_after=0]"),
    ] {
        let response = app.chat(chat_body("kimi-k2.6", directive, stream)).await;
        assert_eq!(response.status(), 200, "{directive} stream={stream}");
        assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
        if stream {
            let events = sse_data(response).await;
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        }
    }
    assert_eq!(seen(&app, Flavour::Moonshot), 3);
    assert_eq!(seen(&app, Flavour::Agentsflare), 3);
}

#[tokio::test]
async fn after_the_first_byte_there_is_no_failover_but_an_error_event() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:cut_after=2 chunk_delay_ms=20]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "moonshot");
    let events = sse_data(response).await;
    assert!(events.last().unwrap().contains("\"error\""), "{events:?}");
    assert_eq!(seen(&app, Flavour::Agentsflare), 0);
}

#[tokio::test]
async fn a_slow_head_times_out_and_fails_over() {
    let config =
        format!("{FAST}[providers.moonshot.timeouts]\nfirst_byte_secs = 0.3\ntotal_secs = 0.3\n");
    let app = spawn_app_with(&config, &[]).await;
    for stream in [false, true] {
        let response = app
            .chat(chat_body(
                "kimi-k2.6",
                "[mock moonshot:head_delay_ms=30000]",
                stream,
            ))
            .await;
        assert_eq!(response.status(), 200, "stream={stream}");
        assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    }
    // The timed-out attempts were abandoned, not left running.
    assert!(app.mock.wait_abandoned(2).await);
}

/// A provider that hangs is failed over even when waiting for it used up
/// the retry deadline: the deadline stops retries and waits, not the first
/// try of a target not yet tried.
#[tokio::test]
async fn a_timeout_longer_than_the_retry_deadline_still_fails_over() {
    let config = format!(
        "{FAST}deadline_secs = 0.1\n\
         [providers.moonshot.timeouts]\nfirst_byte_secs = 0.3\ntotal_secs = 0.3\n"
    );
    let app = spawn_app_with(&config, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:head_delay_ms=30000]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
}

/// When every target has asked for a wait, the next attempt goes to the
/// one free soonest, not to the first in the list.
#[tokio::test]
async fn the_target_whose_wait_ends_first_is_tried_first() {
    let app = spawn_app_with(&format!("{FAST}max_attempts = 3\n"), &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=rate_limit moonshot:retry_after=3 \
             agentsflare:error=rate_limit agentsflare:retry_after=1 agentsflare:fail_times=1]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "3");
    assert_eq!(seen(&app, Flavour::Moonshot), 1);
}

/// Sends `directive` (a rate limit that clears after one answer) to
/// Moonshot's only model and checks that the gateway waited at least a
/// second before its second attempt there, which was served.
async fn assert_waited_then_served(directive: &str, what: &str) {
    let app = spawn_app_with(FAST, &[]).await;
    let started = std::time::Instant::now();
    let response = app
        .chat(chat_body("kimi-k2-turbo-preview", directive, false))
        .await;
    assert_eq!(response.status(), 200, "{what}");
    assert_eq!(header(&response, "x-gateway-attempts"), "2", "{what}");
    assert_eq!(seen(&app, Flavour::Moonshot), 2, "{what}");
    assert!(started.elapsed() >= Duration::from_secs(1), "{what}");
}

#[tokio::test]
async fn a_short_retry_after_is_honoured_on_the_same_provider() {
    assert_waited_then_served(
        "[mock error=rate_limit retry_after=1 fail_times=1]",
        "Retry-After: 1",
    )
    .await;
}

#[tokio::test]
async fn a_retry_after_date_is_honoured_as_the_wait_it_names() {
    // The date has whole seconds: two seconds ahead is at least one away.
    assert_waited_then_served(
        "[mock error=rate_limit retry_after=2 retry_after_as_date fail_times=1]",
        "Retry-After as a date",
    )
    .await;
}

#[tokio::test]
async fn moonshots_stated_wait_is_honoured_and_passed_on() {
    // Moonshot's 429 says "please try again after 1 seconds" and sends no
    // Retry-After.
    assert_waited_then_served("[mock error=rate_limit fail_times=1]", "the message's wait").await;

    let app = spawn_app_with("[retry]\nmax_attempts = 1\n", &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock error=rate_limit]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "1");
    assert_eq!(header(&response, "retry-after-ms"), "1000");
}

/// Has Moonshot answer `error` with the `wait` directive, and checks
/// that the target is skipped: a model Agentsflare serves too is answered
/// there after one Moonshot attempt, and Moonshot's own model gets the 429
/// after one attempt, with `passed_on` as its `Retry-After`.
async fn assert_moonshot_skipped(error: &str, wait: &str, passed_on: Option<&str>) {
    let app = spawn_app_with(FAST, &[]).await;
    let directive = format!("[mock moonshot:error={error} moonshot:{wait}]");
    let response = app.chat(chat_body("kimi-k2.6", &directive, false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(seen(&app, Flavour::Moonshot), 1);

    let directive = format!("[mock error={error} {wait}]");
    let response = app
        .chat(chat_body("kimi-k2-turbo-preview", &directive, false))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "x-gateway-attempts"), "1");
    let shown = response.headers().get("retry-after");
    assert_eq!(shown.map(|v| v.to_str().unwrap()), passed_on);
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
}

#[tokio::test]
async fn a_long_retry_after_skips_the_target_instead_of_waiting() {
    // With no other target, the client gets the provider's wait.
    assert_moonshot_skipped("rate_limit", "retry_after=60", Some("60")).await;
}

#[tokio::test]
async fn a_retry_after_that_is_no_wait_skips_the_target() {
    // "soon" is neither seconds nor a date, and the overloaded message
    // states no wait: the provider asked for a wait the gateway cannot
    // read, so it is not asked again at once, and no wait is passed on.
    assert_moonshot_skipped("overloaded", "retry_after=soon", None).await;
    assert_moonshot_skipped("overloaded", "retry_after_ms=soon", None).await;

    // A wait the message states stands in for it: waited, then served.
    assert_waited_then_served(
        "[mock error=rate_limit retry_after=soon fail_times=1]",
        "an unreadable Retry-After and the message's wait",
    )
    .await;
}

#[tokio::test]
async fn client_errors_are_not_retried_or_failed_over() {
    let app = spawn_app_with(FAST, &[]).await;
    for (error, status) in [("invalid_request", 400), ("content_filter", 400)] {
        let response = app
            .chat(chat_body(
                "kimi-k2.6",
                &format!("[mock error={error}]"),
                false,
            ))
            .await;
        assert_eq!(response.status().as_u16(), status, "{error}");
        assert_eq!(header(&response, "x-gateway-attempts"), "1");
    }
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 0);
}

/// A provider that does not have the model (retired there, or not open to
/// the gateway's account) is skipped: another may serve it. When none
/// does, the last one's 404 is the answer.
#[tokio::test]
async fn a_model_one_provider_does_not_have_fails_over() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=not_found]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");

    let response = app
        .chat(chat_body("kimi-k2.6", "[mock error=not_found]", false))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "resource_not_found_error", "{body}");
    // Each target once: a 404 is not retried where it was said.
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 2);
}

#[tokio::test]
async fn a_refused_key_skips_the_target_and_the_next_one_serves() {
    let app = spawn_app_with(FAST, &[("MOONSHOT_API_KEY", Some("revoked-key"))]).await;
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(
        seen(&app, Flavour::Moonshot),
        1,
        "the refused key is not retried"
    );
}

#[tokio::test]
async fn retries_stop_at_the_attempt_limit() {
    let config = format!("{FAST}max_attempts = 3\n[breaker]\nconsecutive_failures = 100\n");
    let app = spawn_app_with(&config, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock error=server]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 500);
    assert_eq!(header(&response, "x-gateway-attempts"), "3");
    assert_eq!(seen(&app, Flavour::Moonshot), 3);
}

#[tokio::test]
async fn a_burst_of_failures_is_ridden_out_by_retries() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock error=bad_gateway fail_times=2]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-attempts"), "3");
    let events = sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn several_keys_of_one_provider_are_separate_targets() {
    let config = format!(
        "{FAST}[providers.moonshot]\napi_key_envs = [\"MOONSHOT_API_KEY\", \"MOONSHOT_API_KEY_2\"]\n"
    );
    let app = spawn_app_with(
        &config,
        &[
            ("MOONSHOT_API_KEY", Some("revoked")),
            ("MOONSHOT_API_KEY_2", Some(PROVIDER_KEY)),
        ],
    )
    .await;
    // Whichever key is tried first, the request succeeds on the good one.
    for _ in 0..4 {
        let response = app
            .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-gateway-provider"), "moonshot");
    }
    let keys: std::collections::HashSet<String> = app
        .mock
        .requests_for(Flavour::Moonshot)
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert!(keys.contains(&format!("Bearer {PROVIDER_KEY}")));
}

#[tokio::test]
async fn weights_spread_load_among_equal_priorities() {
    let config = format!(
        "{FAST}[aliases.spread]\ntargets = [\n  {{ provider = \"moonshot\", model = \"kimi-k2.6\", priority = 0, weight = 1 }},\n  {{ provider = \"agentsflare\", model = \"kimi-k2.6\", priority = 0, weight = 3 }},\n]\n"
    );
    let app = spawn_app_with(&config, &[]).await;
    for _ in 0..200 {
        assert_eq!(
            app.chat(chat_body("spread", "hi", false)).await.status(),
            200
        );
    }
    let (moonshot, agentsflare) = (
        seen(&app, Flavour::Moonshot),
        seen(&app, Flavour::Agentsflare),
    );
    assert_eq!(moonshot + agentsflare, 200);
    // Expected 50/150; these bounds fail with odds below one in a million.
    assert!((20..=85).contains(&moonshot), "moonshot got {moonshot}");
}

/// A target's weight is the provider's share however many keys it has:
/// its keys split that share among them.
#[tokio::test]
async fn a_weight_is_split_among_the_providers_keys_not_multiplied_by_them() {
    let config = format!(
        "{FAST}[providers.moonshot]\napi_key_envs = [\"MOONSHOT_API_KEY\", \"MOONSHOT_API_KEY_2\", \"MOONSHOT_API_KEY_3\"]\n[aliases.spread]\ntargets = [\n  {{ provider = \"moonshot\", model = \"kimi-k2.6\", priority = 0, weight = 1 }},\n  {{ provider = \"agentsflare\", model = \"kimi-k2.6\", priority = 0, weight = 1 }},\n]\n"
    );
    let app = spawn_app_with(
        &config,
        &[
            ("MOONSHOT_API_KEY_2", Some(PROVIDER_KEY)),
            ("MOONSHOT_API_KEY_3", Some(PROVIDER_KEY)),
        ],
    )
    .await;
    for _ in 0..200 {
        assert_eq!(
            app.chat(chat_body("spread", "hi", false)).await.status(),
            200
        );
    }
    let moonshot = seen(&app, Flavour::Moonshot);
    assert_eq!(moonshot + seen(&app, Flavour::Agentsflare), 200);
    // Expected 100 each (150 if every key counted as a target of weight
    // 1); these bounds fail with odds below one in a million.
    assert!((65..=135).contains(&moonshot), "moonshot got {moonshot}");
}

#[tokio::test]
async fn the_circuit_opens_probes_half_open_and_closes_on_success() {
    let config = "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 2\ncooldown_secs = 1\nmax_cooldown_secs = 5\n";
    let app = spawn_app_with(config, &[]).await;
    let turbo = |content: &str| chat_body("kimi-k2-turbo-preview", content, false);
    for _ in 0..2 {
        assert_eq!(app.chat(turbo("[mock error=server]")).await.status(), 500);
    }
    // Open: the provider is not asked at all.
    let response = app.chat(turbo("hi")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        header(&response, "retry-after"),
        "1",
        "the cool-down is 1 s"
    );
    assert_eq!(error_of(response).await["code"], "circuit_open");
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    let state = turbo_circuit;
    assert_eq!(state(&app.readyz().await), "open");

    // After the cool-down, one probe; its failure re-opens the circuit.
    wait_for_state(&app, &state, "half_open").await;
    assert_eq!(app.chat(turbo("[mock error=server]")).await.status(), 500);
    assert_eq!(state(&app.readyz().await), "open");
    assert_eq!(seen(&app, Flavour::Moonshot), 3);

    // The next probe succeeds and closes it.
    wait_for_state(&app, &state, "half_open").await;
    assert_eq!(app.chat(turbo("hi")).await.status(), 200);
    assert_eq!(state(&app.readyz().await), "closed");
    assert_eq!(app.chat(turbo("hi")).await.status(), 200);
    assert_eq!(seen(&app, Flavour::Moonshot), 5);
}

/// A request whose retry waits a backoff while the circuit is half-open
/// does not hold the circuit's one probe through the wait: a request
/// arriving meanwhile is the probe, and is served.
#[tokio::test]
async fn a_retry_waiting_its_backoff_does_not_hold_the_half_open_probe() {
    let config = "[retry]\nmax_attempts = 2\nbackoff_base_ms = 3000\nbackoff_max_ms = 3000\n\
                  [breaker]\nconsecutive_failures = 1\ncooldown_secs = 1\n";
    let app = spawn_app_with(config, &[]).await;
    let turbo = |content: &str| chat_body("kimi-k2-turbo-preview", content, false);
    let state = turbo_circuit;
    // Sent while the circuit is closed, it fails once the circuit is
    // half-open; its retry then waits 1.5-3 s, and is served.
    let slow = tokio::spawn(
        app.client
            .post(app.url("/v1/chat/completions"))
            .json(&turbo(
                "[mock error=server fail_times=1 head_delay_ms=1500]",
            ))
            .send(),
    );
    wait_until("the slow request reaches the provider", async || {
        !app.mock.requests_for(Flavour::Moonshot).is_empty()
    })
    .await;
    assert_eq!(app.chat(turbo("[mock error=server]")).await.status(), 500);
    assert_eq!(state(&app.readyz().await), "open");
    wait_for_state(&app, &state, "half_open").await;
    let heads = "kimi_gateway_upstream_head_seconds_count{provider=\"moonshot\"}";
    wait_until("the slow request's first attempt fails", async || {
        sample(&scrape(&app).await, heads) == Some(2.0)
    })
    .await;
    assert!(!slow.is_finished(), "its retry waits the backoff");
    let response = app.chat(turbo("hi")).await;
    assert_eq!(response.status(), 200, "this request is the probe");
    assert_eq!(state(&app.readyz().await), "closed");
    assert!(
        !slow.is_finished(),
        "the probe went through during the backoff"
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200, "its retry finds the circuit closed");
    assert_eq!(header(&slow, "x-gateway-attempts"), "2");
}

/// A stream the provider cuts (or ends with a server error event) after
/// its first event was a successful attempt when it began; its failure
/// still counts against the circuit
/// (by the error ratio), so a provider whose streams keep dying part-way
/// is taken out of rotation. A stream the client leaves does not count.
#[tokio::test]
async fn streams_cut_part_way_open_the_circuit() {
    let config = "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 100\n\
                  error_ratio = 0.75\nmin_requests = 4\nwindow_secs = 60\ncooldown_secs = 60\n";
    let app = spawn_app_with(config, &[]).await;
    let turbo = |content: &str| chat_body("kimi-k2-turbo-preview", content, true);
    // Two cut, two ended by an error event that says nothing (a server
    // error; an overloaded one would say nothing of the provider's health).
    for directive in [
        "[mock chunks=5 cut_after=2 chunk_delay_ms=20]",
        "[mock chunks=5 error_event_after=2 empty_error chunk_delay_ms=20]",
    ] {
        for _ in 0..2 {
            let response = app.chat(turbo(directive)).await;
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap_or_default();
            assert!(!text.contains("[DONE]"), "{text}");
        }
    }
    let response = app.chat(turbo("hi")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_of(response).await["code"], "circuit_open");
    assert_eq!(seen(&app, Flavour::Moonshot), 4);
}

/// A refused key, spent credit or denied permission is the account's
/// state, not the target's health: each request gets the error that names
/// it (not a retryable `circuit_open`), and the circuit stays closed.
#[tokio::test]
async fn account_errors_never_open_the_circuit() {
    let config =
        "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 2\ncooldown_secs = 60\n";
    let app = spawn_app_with(config, &[]).await;
    for (directive, status) in [
        ("[mock error=auth]", 502),
        ("[mock error=quota]", 429),
        ("[mock error=permission]", 403),
    ] {
        for _ in 0..3 {
            let response = app
                .chat(chat_body("kimi-k2-turbo-preview", directive, false))
                .await;
            assert_eq!(response.status(), status, "{directive}");
            assert_eq!(header(&response, "x-should-retry"), "false");
        }
    }
    assert_eq!(seen(&app, Flavour::Moonshot), 9);
    let ready = app.readyz().await;
    let target = ready["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "moonshot/kimi-k2-turbo-preview")
        .unwrap()
        .clone();
    assert_eq!(target["state"], "closed", "{ready}");
}

/// The circuit state `/readyz` gives Moonshot's `kimi-k2-turbo-preview`.
fn turbo_circuit(ready: &serde_json::Value) -> String {
    ready["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "moonshot/kimi-k2-turbo-preview")
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_for_state(app: &TestApp, state: &impl Fn(&serde_json::Value) -> String, want: &str) {
    let wait = async {
        loop {
            if state(&app.readyz().await) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("circuit never became {want}"));
}

#[tokio::test]
async fn readiness_fails_when_every_circuit_is_open() {
    let config =
        "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 1\ncooldown_secs = 60\n";
    let app = spawn_app_with(
        config,
        &[("AIMLAPI_API_KEY", None), ("AGENTSFLARE_API_KEY", None)],
    )
    .await;
    assert_eq!(app.readyz().await["status"], "ready");
    let models: Vec<String> = app.state.config().providers[0].models.clone();
    for model in models {
        app.chat(chat_body(&model, "[mock error=server]", false))
            .await;
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["reason"], "every target's circuit is open");
}

/// A configuration that routes no model (every catalogue emptied) is not
/// ready, and says why: no circuit is open, there is no target at all.
#[tokio::test]
async fn readiness_fails_when_no_model_is_routable() {
    let config = "[providers.moonshot]\nmodels = []\n[providers.aimlapi]\nmodels = []\n\
                  [providers.agentsflare]\nmodels = []\n";
    let app = spawn_app_with(config, &[]).await;
    assert_eq!(
        app.state.config().out_of_service(),
        Some(kimi_gateway::config::OutOfService::NothingRoutable)
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["reason"], "no model is routable", "{body}");
}

/// A provider that answers 200 and then fails in its first event has sent
/// the client nothing: fail-over as for an HTTP error. Later, its error
/// event is the stream's end, counted as its error.
#[tokio::test]
async fn an_error_as_the_first_event_fails_over_and_a_later_one_is_forwarded() {
    let app = spawn_app_with(FAST, &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error_event_after=0]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");
    let events = sse_data(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // The same with the error's JSON spread over several data lines.
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error_event_after=0 split_data]",
            true,
        ))
        .await;
    assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    assert_eq!(header(&response, "x-gateway-attempts"), "2");

    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error_event_after=2 chunk_delay_ms=20]",
            true,
        ))
        .await;
    assert_eq!(header(&response, "x-gateway-provider"), "moonshot");
    let events = sse_data(response).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events[2].contains("engine_overloaded_error"), "{events:?}");
    assert_eq!(seen(&app, Flavour::Agentsflare), 2);
    let metrics = scrape(&app).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kimi_gateway_requests_total{")
                && l.contains("error_type=\"engine_overloaded_error\"")
                && l.contains("provider=\"moonshot\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// An error event the provider sends after `[DONE]` (here in the same
/// write) is not part of the answer: the stream is whole, the attempt is
/// not retried, and nothing is logged or counted as an error.
#[tokio::test]
async fn an_error_event_after_done_is_neither_relayed_nor_retried() {
    let app = spawn_app_with(FAST, &[]).await;
    for chunks in [0, 3] {
        let directive = format!("[mock moonshot:error_after_done chunks={chunks}]");
        let response = app.chat(chat_body("kimi-k2.6", &directive, true)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-gateway-provider"), "moonshot");
        assert_eq!(header(&response, "x-gateway-attempts"), "1");
        let events = sse_data(response).await;
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        assert!(!events.iter().any(|e| e.contains("error")), "{events:?}");
    }
    assert_eq!(seen(&app, Flavour::Moonshot), 2);
    assert_eq!(seen(&app, Flavour::Agentsflare), 0);
    let metrics = scrape(&app).await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("kimi_gateway_requests_total{")
                && l.contains("error_type=\"engine_overloaded_error\"")),
        "{metrics}"
    );
}

/// A provider that sends an error status and then never finishes its body:
/// the status already says the attempt failed, so fail-over does not wait
/// out the provider's whole deadline for the message.
#[tokio::test]
async fn an_error_whose_body_never_ends_fails_over_without_waiting_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                        content-length: 200\r\n\r\n{\"error\":";
            stream.write_all(head.as_bytes()).await.unwrap();
            open.push(stream);
        }
    });
    let config =
        format!("{FAST}[providers.moonshot.timeouts]\nfirst_byte_secs = 60\ntotal_secs = 60\n");
    let app = spawn_app_with(&config, &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    for stream in [false, true] {
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            app.chat(chat_body("kimi-k2.6", "hi", stream)),
        )
        .await
        .expect("failed over before the provider's deadline");
        assert_eq!(response.status(), 200, "stream={stream}");
        assert_eq!(header(&response, "x-gateway-provider"), "agentsflare");
    }
}
