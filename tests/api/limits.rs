//! Request limits in every scope (key, key and model, provider, global):
//! the request over the limit gets 429 with `Retry-After`, `retry-after-ms`
//! and a message naming the scope; responses carry the `x-ratelimit-*`
//! headers of the tightest scope; a reload keeps unchanged limiters' state.

use crate::auth::spawn_with_keys;
use crate::helpers::*;

/// Sends `n` requests as `key` and returns their statuses.
async fn statuses(app: &TestApp, key: &str, model: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let response = app.chat_as(key, chat_body(model, "hi", false)).await;
        out.push(response.status().as_u16());
    }
    out
}

/// Checks a refusal: 429, the type, both retry headers, the message.
async fn assert_refused(response: reqwest::Response, error_type: &str, message: &str) {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let retry_ms: u64 = response.headers()["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after >= 1 && retry_after * 1000 >= retry_ms,
        "{retry_after} {retry_ms}"
    );
    assert!(retry_ms > 0);
    let error = error_of(response).await;
    assert_eq!(error["type"], error_type);
    assert_eq!(error["message"], message, "{error}");
}

/// Milliseconds in an `x-ratelimit-reset-*` value below an hour (`250ms`,
/// `19.2s`, `1m0s`).
fn reset_ms(value: &str) -> u64 {
    if let Some(ms) = value.strip_suffix("ms") {
        return ms.parse().unwrap();
    }
    let (minutes, seconds) = value.split_once('m').unwrap_or(("0", value));
    let minutes: u64 = minutes.parse().unwrap();
    let secs: f64 = seconds.strip_suffix('s').unwrap().parse().unwrap();
    minutes * 60_000 + (secs * 1000.0).round() as u64
}

/// With `key_limits` for team-a and Agentsflare limited to one request a
/// minute, team-a's second `kimi-chat` request: refused by the provider
/// limit, whose fields it shows (one request, none left).
async fn refused_by_agentsflare(key_limits: &str) -> reqwest::Response {
    let app = spawn_with_keys(&format!(
        "{key_limits}\n[limits.providers.agentsflare]\nrequests_per_minute = 1\n"
    ))
    .await;
    assert_eq!(statuses(&app, "sk-a", "kimi-chat", 1).await, [200]);
    let refused = app
        .chat_as("sk-a", chat_body("kimi-chat", "hi", false))
        .await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "1", "{h:?}");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0", "{h:?}");
    refused
}

/// With a key limit that has room and a provider limit that refused, the
/// 429's fields are the provider's: the tightest, with nothing left.
#[tokio::test]
async fn a_provider_refusal_shows_the_provider_limit_over_the_keys() {
    let refused = refused_by_agentsflare(
        "[keys.team-a.limits]\nrequests_per_minute = 100\ntokens_per_minute = 100000\n",
    )
    .await;
    let h = refused.headers();
    assert_eq!(h.get_all("x-ratelimit-limit-requests").iter().count(), 1);
    // The key's token limit is the only token window.
    assert_eq!(h["x-ratelimit-limit-tokens"], "100000", "{h:?}");
}

/// A key-and-model limit spent by the same request (nothing left, full in
/// a minute) looks as tight as the provider limit that refused it; the
/// 429's fields are still the refusing limit's, reset as retry-after-ms.
#[tokio::test]
async fn a_provider_refusal_shows_its_limit_over_a_spent_key_limit() {
    let refused = refused_by_agentsflare(
        "[keys.team-a.model_limits.\"kimi-chat\"]\nrequests_per_minute = 2\n",
    )
    .await;
    let h = refused.headers();
    let retry_ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    let reset = h["x-ratelimit-reset-requests"].to_str().unwrap();
    assert_eq!(reset_ms(reset), retry_ms, "{reset} against {retry_ms} ms");
}

#[tokio::test]
async fn a_keys_requests_per_minute() {
    let app = spawn_with_keys("[keys.team-a.limits]\nrequests_per_minute = 3\n").await;
    assert_eq!(
        statuses(&app, "sk-a", "kimi-k2.6", 3).await,
        [200, 200, 200]
    );
    let refused = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
    assert_refused(
        refused,
        "rate_limit_reached_error",
        "rate limit reached for key team-a: 3 requests per minute",
    )
    .await;
    // Another key is not affected, and refused requests never left.
    assert_eq!(statuses(&app, "sk-b", "kimi-k2.6", 1).await, [200]);
    assert_eq!(app.mock.requests().len(), 4);
    let text = scrape(&app).await;
    assert!(
        text.contains("kimi_gateway_rate_limited_total{scope=\"key\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_keys_requests_per_minute_on_one_model() {
    let app =
        spawn_with_keys("[keys.team-a.model_limits.\"kimi-k2.6\"]\nrequests_per_minute = 3\n")
            .await;
    assert_eq!(
        statuses(&app, "sk-a", "kimi-k2.6", 3).await,
        [200, 200, 200]
    );
    assert_refused(
        app.chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
            .await,
        "rate_limit_reached_error",
        "rate limit reached for key team-a on model kimi-k2.6: 3 requests per minute",
    )
    .await;
    assert_eq!(statuses(&app, "sk-a", "kimi-chat", 2).await, [200, 200]);
}

#[tokio::test]
async fn a_providers_requests_per_minute() {
    let app = spawn_with_keys("[limits.providers.agentsflare]\nrequests_per_minute = 3\n").await;
    assert_eq!(
        statuses(&app, "sk-a", "kimi-chat", 3).await,
        [200, 200, 200]
    );
    let refused = app
        .chat_as("sk-a", chat_body("kimi-chat", "hi", false))
        .await;
    // The refusing provider limit is the answer's x-ratelimit-* fields,
    // each once, its reset the same wait as retry-after-ms.
    let h = refused.headers();
    for name in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ] {
        assert_eq!(h.get_all(name).iter().count(), 1, "{name}: {h:?}");
    }
    assert_eq!(h["x-ratelimit-limit-requests"], "3");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let retry_ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    let reset = h["x-ratelimit-reset-requests"].to_str().unwrap();
    assert_eq!(reset_ms(reset), retry_ms, "{reset} against {retry_ms} ms");
    assert!(h.get("x-ratelimit-limit-tokens").is_none(), "{h:?}");
    assert_refused(
        refused,
        "rate_limit_reached_error",
        "rate limit reached for provider agentsflare: 3 requests per minute",
    )
    .await;
    // Moonshot is not limited, so its models still go through.
    assert_eq!(statuses(&app, "sk-b", "kimi-k2.6", 1).await, [200]);
}

#[tokio::test]
async fn a_provider_over_its_limit_fails_over_to_the_next_target() {
    let app = spawn_app_with(
        "[limits.providers.moonshot]\nrequests_per_minute = 1\n",
        &[],
    )
    .await;
    let first = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(first.headers()["x-gateway-provider"], "moonshot");
    let second = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-gateway-provider"], "agentsflare");
    let text = scrape(&app).await;
    assert!(
        text.contains("kimi_gateway_rate_limited_total{scope=\"provider\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_global_requests_per_minute_applies_to_anonymous_callers_too() {
    let app = spawn_app_with("[limits.global]\nrequests_per_minute = 3\n", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            app.chat(chat_body("kimi-chat", "hi", false)).await.status(),
            200
        );
    }
    assert_refused(
        app.chat(chat_body("kimi-k2.6", "hi", false)).await,
        "rate_limit_reached_error",
        "rate limit reached for the gateway: 3 requests per minute",
    )
    .await;
}

#[tokio::test]
async fn headers_show_the_tightest_scope() {
    let app = spawn_with_keys(
        "[keys.team-a.limits]\nrequests_per_minute = 60\ntokens_per_minute = 100000\n\
         [limits.global]\nrequests_per_minute = 10\n",
    )
    .await;
    let body = chat_body("kimi-k2.6", "hi", false);
    let estimate = body.to_string().len() as u64 / 4 + 1024;
    let response = app.chat_as("sk-a", body).await;
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "10");
    assert_eq!(h["x-ratelimit-remaining-requests"], "9");
    assert_eq!(h["x-ratelimit-reset-requests"], "6s");
    assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
    assert_eq!(
        h["x-ratelimit-remaining-tokens"],
        (100000 - estimate).to_string().as_str()
    );
    assert!(
        h["x-ratelimit-reset-tokens"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    // Errors after admission carry them too.
    let response = app.chat_as("sk-a", chat_body("nope", "hi", false)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "8");
}

#[tokio::test]
async fn a_reload_keeps_the_state_of_unchanged_limits() {
    reload_keeps_unchanged_limits("").await;
}

/// A reload keeps an unchanged limit's state and starts a changed one
/// afresh, with `limits_table` (`[limits]`, the backend) in the file.
pub async fn reload_keeps_unchanged_limits(limits_table: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let limited = format!(
        "{limits_table}[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
         [keys.team-a.limits]\nrequests_per_minute = 3\n"
    );
    std::fs::write(&path, &limited).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(statuses(&app, "sk-a", "kimi-k2.6", 2).await, [200, 200]);
    // Another change to the file: the key's limiter carries on.
    std::fs::write(&path, format!("{limited}[retry]\nmax_attempts = 2\n")).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(statuses(&app, "sk-a", "kimi-k2.6", 2).await, [200, 429]);
    // A changed limit starts afresh.
    std::fs::write(&path, limited.replace("= 3", "= 4")).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(
        statuses(&app, "sk-a", "kimi-k2.6", 5).await,
        [200, 200, 200, 200, 429]
    );
    // Another limit of the scope changed: the request limit carries on.
    let tokens_added = limited.replace("= 3", "= 4") + "tokens_per_minute = 100000\n";
    std::fs::write(&path, tokens_added).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(statuses(&app, "sk-a", "kimi-k2.6", 1).await, [429]);
}

#[tokio::test]
async fn a_request_refused_by_the_global_limit_costs_its_key_nothing() {
    a_broader_refusal_costs_the_narrower_scopes_nothing("").await;
}

/// A request the gateway's limit refuses leaves its key's limit as it was
/// (all or nothing over the scopes), with `limits_table` (`[limits]`, the
/// backend) in the file: team-a may send two a minute, the gateway one.
/// Its two refused requests are not counted against its own two, so once
/// the gateway's limit is raised it still has one left.
pub async fn a_broader_refusal_costs_the_narrower_scopes_nothing(limits_table: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |global: u32| {
        format!(
            "{limits_table}[limits.global]\nrequests_per_minute = {global}\n\
             [keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 2\n"
        )
    };
    std::fs::write(&path, config(1)).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(
        statuses(&app, "sk-a", "kimi-k2.6", 3).await,
        [200, 429, 429]
    );
    // The gateway's limit changed, so it starts afresh; the key's did not.
    std::fs::write(&path, config(100)).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let admitted = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(admitted.status(), 200);
    assert_eq!(admitted.headers()["x-ratelimit-remaining-requests"], "0");
    assert_refused(
        app.chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
            .await,
        "rate_limit_reached_error",
        "rate limit reached for key team-a: 2 requests per minute",
    )
    .await;
}

/// Of the request limits of a request's scopes, the one spent longest is
/// named, not the first checked: here the key's minute frees a request in
/// 30 s, the gateway's in 60 s, and a client that waited 30 s would be
/// refused again.
#[tokio::test]
async fn a_request_refusal_names_the_limit_spent_longest() {
    let app = spawn_with_keys(
        "[limits.global]\nrequests_per_minute = 1\n[keys.team-a.limits]\nrequests_per_minute = 2\n",
    )
    .await;
    assert_eq!(statuses(&app, "sk-a", "kimi-k2.6", 1).await, [200]);
    for _ in 0..2 {
        let refused = app
            .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
            .await;
        let wait_ms: u64 = refused.headers()["retry-after-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait_ms > 45_000, "{wait_ms} ms");
        assert_refused(
            refused,
            "rate_limit_reached_error",
            "rate limit reached for the gateway: 1 requests per minute",
        )
        .await;
    }
}

/// An error a provider answered with, after its limits admitted the
/// attempt, carries that provider's window among the request's scopes as
/// a success would: here the tightest, 10 requests a minute with each
/// attempt taken from it (three per request), not the key's 100.
#[tokio::test]
async fn a_providers_error_answer_shows_the_providers_window() {
    for key_limits in ["[keys.team-a.limits]\nrequests_per_minute = 100\n", ""] {
        let app = spawn_with_keys(&format!(
            "{key_limits}\n[limits.providers.agentsflare]\nrequests_per_minute = 10\n"
        ))
        .await;
        let failed = app
            .chat_as(
                "sk-a",
                chat_body("agentsflare/kimi-k2.6", "[mock error=server]", false),
            )
            .await;
        assert_eq!(failed.status(), 500);
        let h = failed.headers();
        assert_eq!(h["x-gateway-attempts"], "3", "{h:?}");
        assert_eq!(h["x-ratelimit-limit-requests"], "10", "{h:?}");
        assert_eq!(h["x-ratelimit-remaining-requests"], "7", "{h:?}");
    }
}
