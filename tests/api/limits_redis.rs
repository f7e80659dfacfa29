//! Limits shared through Redis: two gateways admit the configured limit in
//! total, tokens settle in Redis, concurrency leases are released, refreshed
//! while a stream runs and expire when their replica is gone; when Redis
//! goes away, fail-open falls back to local limits and fail-closed answers
//! 503, and `/readyz` says so.

use crate::auth::spawn_with_keys;
use crate::helpers::*;
use crate::redis_server::RedisServer;
use redis::AsyncCommands;
use serde_json::json;
use std::io::BufRead;
use std::sync::{Arc, Mutex};

/// The lease set of `team-a`'s `concurrent_requests = 1`.
const LEASES: &str = "kimi-gateway:key:team-a:conc:1";

fn redis_limits(redis: &RedisServer, on_error: &str, key_limits: &str) -> String {
    format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"{on_error}\"\n\
         [keys.team-a.limits]\n{key_limits}\n",
        redis.url()
    )
}

/// Redis limits the gateway waits up to 10 s for (a stall is waited out,
/// not an outage), with 60 s leases: `team-a` at one request at a time,
/// and `key_limits`.
fn patient_limits(redis: &RedisServer, key_limits: &str) -> String {
    format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 10000\n\
         redis_lease_secs = 60\n[keys.team-a.limits]\nconcurrent_requests = 1\n{key_limits}\n",
        redis.url()
    )
}

fn hi() -> serde_json::Value {
    chat_body("kimi-k2.6", "hi", false)
}

/// Waits until `team-a`'s lease set is empty (`what` happened), then
/// checks that `app` admits a request again.
async fn assert_slot_free(redis: &RedisServer, app: &TestApp, what: &str) {
    wait_until(what, async || redis.zcard(LEASES).await == 0).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
}

/// A client that closes its stream and asks again at once is not refused
/// by its own lease, which is given back in Redis as the close is seen.
#[test]
fn a_client_that_leaves_a_stream_and_asks_again_at_once_is_not_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = runtime.block_on(RedisServer::start());
    let limits = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    crate::limits_concurrency::leaves_a_stream_and_asks_again(&limits);
}

#[tokio::test]
async fn two_gateways_admit_the_limit_in_total() {
    let redis = RedisServer::start().await;
    let config = redis_limits(&redis, "open", "requests_per_minute = 3");
    let (one, two) = (
        spawn_with_keys(&config).await,
        spawn_with_keys(&config).await,
    );
    let mut statuses = Vec::new();
    for app in [&one, &two, &one, &two, &one, &two] {
        statuses.push(app.chat_as("sk-a", hi()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(one.readyz().await["limits"]["healthy"], true);
}

/// A limit whose interval is not a whole number of milliseconds still
/// counts whole requests: the first of 100,000 leaves 99,999.
#[tokio::test]
async fn remaining_requests_are_counted_without_rounding_down() {
    let redis = RedisServer::start().await;
    let app = spawn_with_keys(&redis_limits(
        &redis,
        "open",
        "requests_per_minute = 100000",
    ))
    .await;
    let response = app.chat_as("sk-a", hi()).await;
    assert_eq!(
        response.headers()["x-ratelimit-remaining-requests"],
        "99999"
    );
}

#[tokio::test]
async fn tokens_are_settled_in_redis_for_plain_and_streamed_answers() {
    let redis = RedisServer::start().await;
    // A concurrency limit in the same scope: its lease goes in the same
    // script call as the settlement, so an empty lease set means settled.
    let config = redis_limits(
        &redis,
        "open",
        "tokens_per_day = 10000\nconcurrent_requests = 1",
    );
    let (one, two) = (
        spawn_with_keys(&config).await,
        spawn_with_keys(&config).await,
    );
    let request = |stream: bool| {
        json!({"model": "kimi-k2.6", "stream": stream, "max_tokens": 1000,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    let estimate = |body: &serde_json::Value| body.to_string().len() as u64 / 4 + 1000;

    let plain = one.chat_as("sk-a", request(false)).await;
    assert_eq!(remaining_tokens(&plain), 10000 - estimate(&request(false)));
    let answer: serde_json::Value = plain.json().await.unwrap();
    let used_plain = answer["usage"]["total_tokens"].as_u64().unwrap();
    wait_until("settled", async || redis.zcard(LEASES).await == 0).await;

    let streamed = two.chat_as("sk-a", request(true)).await;
    assert_eq!(
        remaining_tokens(&streamed),
        10000 - used_plain - estimate(&request(true))
    );
    let events = sse_data(streamed).await;
    let last: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let used_stream = last["choices"][0]["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    wait_until("settled", async || redis.zcard(LEASES).await == 0).await;

    let third = one.chat_as("sk-a", request(false)).await;
    assert_eq!(
        remaining_tokens(&third),
        10000 - used_plain - used_stream - estimate(&request(false))
    );
}

fn fifty_tokens_ask(content: &str) -> serde_json::Value {
    json!({"model": "kimi-k2.6", "max_tokens": 1000,
           "messages": [{"role": "user", "content": content}]})
}

/// A fresh Redis and gateway with `team-a` at 50 tokens a day (and a
/// minute), once a request with `content` has been answered and settled;
/// and its usage.
async fn fifty_tokens_a_day_after(content: &str) -> (RedisServer, TestApp, u64) {
    let redis = RedisServer::start().await;
    let limits = "tokens_per_minute = 50\ntokens_per_day = 50\nconcurrent_requests = 1";
    let app = spawn_with_keys(&redis_limits(&redis, "open", limits)).await;
    let first = app.chat_as("sk-a", fifty_tokens_ask(content)).await;
    assert_eq!(first.status(), 200);
    let answer: serde_json::Value = first.json().await.unwrap();
    let used = answer["usage"]["total_tokens"].as_u64().unwrap();
    wait_until("settled", async || redis.zcard(LEASES).await == 0).await;
    (redis, app, used)
}

/// A token limit in Redis that refuses a request says what it holds, in
/// `x-ratelimit-remaining-tokens` and the message: a daily budget with
/// some left is a rate limit, one with nothing left a spent quota. Of the
/// two limits that refuse, the day's (the longer wait) is the one named.
#[tokio::test]
async fn a_token_refusal_in_redis_says_what_is_left() {
    let (_redis, app, used) = fifty_tokens_a_day_after("hi").await;
    let refused = app.chat_as("sk-a", fifty_tokens_ask("hi")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(remaining_tokens(&refused), 50 - used);
    // The day's wait is hours: longer than an SDK should sleep in a call.
    assert_eq!(refused.headers()["x-should-retry"], "false");
    let error = error_of(refused).await;
    assert_eq!(error["type"], "rate_limit_reached_error");
    assert_eq!(error["code"], "tokens_per_day");
    let left = format!("({} left, the request is estimated at", 50 - used);
    assert!(
        error["message"].as_str().unwrap().contains(&left),
        "{error}"
    );

    // Spent: a full bucket's overdraft (a long prompt) leaves nothing.
    let (_redis, app, _) = fifty_tokens_a_day_after(&"x".repeat(400)).await;
    let refused = app.chat_as("sk-a", fifty_tokens_ask("hi")).await;
    assert_eq!(remaining_tokens(&refused), 0);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    let error = error_of(refused).await;
    assert_eq!(error["type"], "exceeded_current_quota_error");
    assert_eq!(error["code"], "tokens_per_day");
}

#[tokio::test]
async fn a_client_that_leaves_while_a_provider_works_keeps_its_estimate_in_redis() {
    let redis = RedisServer::start().await;
    let config = redis_limits(
        &redis,
        "open",
        "tokens_per_day = 10000\nconcurrent_requests = 1",
    );
    let app = spawn_with_keys(&config).await;
    let slow = json!({"model": "kimi-k2.6", "max_tokens": 5000,
                      "messages": [{"role": "user", "content": "[mock head_delay_ms=5000]"}]});
    app.chat_as_and_leave_when("sk-a", &slow, "the provider has it", async || {
        app.mock.requests().len() == 1
    })
    .await;
    // The lease goes in the same script call as any token change.
    wait_until("released", async || redis.zcard(LEASES).await == 0).await;
    let next = app.chat_as("sk-a", hi()).await;
    let estimate = |body: &serde_json::Value| body.to_string().len() as u64 / 4;
    assert_eq!(
        remaining_tokens(&next),
        10000 - (estimate(&slow) + 5000) - (estimate(&hi()) + 1024)
    );
}

/// Two replicas sharing `redis` (leases of `lease_secs`, `team-a` at one
/// request at a time, and `settings` in `[limits]`), and a stream on the
/// first that holds the slot until gate `g` opens. A lease must outlast
/// any stall of a loaded machine between its refreshes, or the other
/// replica is admitted.
async fn a_stream_holding_the_slot(
    redis: &RedisServer,
    lease_secs: f64,
    settings: &str,
) -> (TestApp, TestApp, reqwest::Response) {
    let config = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_lease_secs = {lease_secs}\n{settings}\n\
         [keys.team-a.limits]\nconcurrent_requests = 1\n",
        redis.url()
    );
    let (one, two) = (
        spawn_with_keys(&config).await,
        spawn_with_keys(&config).await,
    );
    let running = one
        .chat_as(
            "sk-a",
            chat_body("kimi-k2.6", "[mock gate=g chunks=3]", true),
        )
        .await;
    assert_eq!(running.status(), 200);
    (one, two, running)
}

#[tokio::test]
async fn concurrency_leases_are_released_refreshed_and_expire() {
    let redis = RedisServer::start().await;
    // A running stream holds the slot on every replica...
    let (one, two, running) = a_stream_holding_the_slot(&redis, 1.5, "").await;
    let refused = two.chat_as("sk-a", hi()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        error_of(refused).await["message"],
        "rate limit reached for key team-a: 1 concurrent requests"
    );
    // ...past its first lease, because it is refreshed.
    let mut conn = redis.connection().await.unwrap();
    let members: Vec<(String, f64)> = conn.zrange_withscores(LEASES, 0, -1).await.unwrap();
    let (lease, first_expiry) = members[0].clone();
    // Whole milliseconds: Redis keeps a small sorted set's fractional
    // scores as text and parses them again on every insert.
    assert_eq!(first_expiry.fract(), 0.0, "lease expiry {first_expiry}");
    wait_until("the lease is refreshed", async || {
        let score: Option<f64> = conn.zscore(LEASES, &lease).await.unwrap();
        score.is_some_and(|s| s > first_expiry)
    })
    .await;
    let refreshed: f64 = conn.zscore(LEASES, &lease).await.unwrap();
    assert_eq!(refreshed.fract(), 0.0, "refreshed lease expiry {refreshed}");
    wait_until("the first lease would have expired", async || {
        redis.now_ms().await > first_expiry
    })
    .await;
    assert_eq!(two.chat_as("sk-a", hi()).await.status(), 429);

    // Its end releases the slot.
    one.mock.release("g", 10);
    sse_data(running).await;
    assert_slot_free(&redis, &two, "the lease is released").await;

    // A client that leaves releases it too.
    let left = two
        .chat_as(
            "sk-a",
            chat_body("kimi-k2.6", "[mock gate=h chunks=3]", true),
        )
        .await;
    assert_eq!(redis.zcard(LEASES).await, 1);
    drop(left.bytes_stream());
    wait_until("the lease is released", async || {
        redis.zcard(LEASES).await == 0
    })
    .await;

    // A lease left by a replica that died expires instead of leaking.
    let expired = redis.now_ms().await - 1.0;
    let _: () = conn.zadd(LEASES, "dead-replica", expired).await.unwrap();
    assert_eq!(one.chat_as("sk-a", hi()).await.status(), 200);
    let alive = redis.now_ms().await + 60_000.0;
    let _: () = conn.zadd(LEASES, "busy-replica", alive).await.unwrap();
    assert_eq!(one.chat_as("sk-a", hi()).await.status(), 429);
}

/// A stream holds `team-a`'s one slot on replica `one` (leases of 1 s);
/// `lose` makes Redis lose its lease while it runs, and the refreshes put
/// it back: replica `two` is refused until the stream ends.
async fn a_lost_lease_comes_back(lose: impl AsyncFnOnce(&RedisServer)) {
    let redis = RedisServer::start().await;
    let settings = "redis_timeout_ms = 100";
    let (one, two, running) = a_stream_holding_the_slot(&redis, 1.0, settings).await;
    assert_eq!(redis.zcard(LEASES).await, 1);
    lose(&redis).await;
    wait_until("the running stream's lease is back", async || {
        redis.zcard(LEASES).await == 1
    })
    .await;
    wait_until("Redis is healthy again", async || {
        two.readyz().await["limits"]["healthy"] == true
    })
    .await;
    assert_eq!(two.chat_as("sk-a", hi()).await.status(), 429);
    one.mock.release("g", 10);
    sse_data(running).await;
    assert_slot_free(&redis, &two, "the lease is released").await;
}

/// Redis restarted without its data (or someone flushed it) while a
/// stream ran.
#[tokio::test]
async fn a_lease_redis_lost_is_added_back_while_its_stream_runs() {
    a_lost_lease_comes_back(async |redis: &RedisServer| {
        let mut conn = redis.connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        assert_eq!(redis.zcard(LEASES).await, 0);
    })
    .await;
}

/// A stall longer than twice the lease: the lease set expired meanwhile.
#[tokio::test]
async fn a_lease_that_expired_during_a_stall_is_added_back_while_its_stream_runs() {
    a_lost_lease_comes_back(async |redis: &RedisServer| {
        redis.pause();
        // The stall itself is the case: nothing to wait for but time.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        redis.resume();
    })
    .await;
}

/// A request admitted while Redis is stalled for `stall` (fail-open: on
/// local limits) leaves no lease behind once Redis answers again: the
/// admission sent before the stall still runs then, and its lease belongs
/// to no request.
async fn a_stalled_admissions_lease_is_released(stall: std::time::Duration) {
    let redis = RedisServer::start().await;
    let config = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 100\n\
         redis_lease_secs = 60\n[keys.team-a.limits]\nconcurrent_requests = 1\n",
        redis.url()
    );
    let app = spawn_with_keys(&config).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    redis.pause();
    let during = app.chat_as("sk-a", hi()).await;
    // The stall itself is the case: nothing to wait for but time.
    tokio::time::sleep(stall).await;
    redis.resume();
    assert_eq!(during.status(), 200);
    wait_until("Redis answers again", async || {
        app.readyz().await["limits"]["healthy"] == true
    })
    .await;
    assert_slot_free(&redis, &app, "the stalled admission's lease is released").await;
}

#[tokio::test]
async fn a_lease_taken_while_redis_stalled_is_released_when_it_answers() {
    a_stalled_admissions_lease_is_released(std::time::Duration::ZERO).await;
}

/// A stall longer than any retry schedule of the release would cover: the
/// release goes out behind the stalled admission on its own connection,
/// so it runs right after it.
#[tokio::test]
async fn a_lease_taken_during_a_long_stall_is_released_when_redis_answers() {
    a_stalled_admissions_lease_is_released(std::time::Duration::from_secs(6)).await;
}

/// A client that leaves while its admission call waits on a stalled Redis:
/// the call still runs once Redis answers, and its lease, which no request
/// owns, is released right behind it, not held until the lease expires.
#[tokio::test]
async fn a_client_that_leaves_during_a_stalled_admission_leaves_no_lease() {
    let redis = RedisServer::start().await;
    // 10 a minute: each admission keeps the limit's key for 6 s more (at
    // 1,000 a minute it expired 60 ms after each, sooner than a poll
    // might look).
    let app = spawn_with_keys(&patient_limits(&redis, "requests_per_minute = 10")).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    // The request limit's arrival time: it moves when an admission runs.
    let mut conn = redis.connection().await.unwrap();
    let rpm = "kimi-gateway:key:team-a:rpm:10";
    let admitted: f64 = conn.get(rpm).await.unwrap();
    redis.pause();
    // In flight: its admission call has gone to the stalled Redis (the
    // gauge rises in the poll that sends it).
    app.chat_as_and_leave_when("sk-a", &hi(), "the admission waits", async || {
        sample(&scrape(&app).await, "kimi_gateway_in_flight_requests") == Some(1.0)
    })
    .await;
    wait_until("the gateway saw the client leave", async || {
        let text = scrape(&app).await;
        sample(&text, "kimi_gateway_in_flight_requests") == Some(0.0)
            && text.contains(r#"status="499""#)
    })
    .await;
    redis.resume();
    wait_until("the abandoned admission has run", async || {
        conn.get::<_, Option<f64>>(rpm)
            .await
            .unwrap()
            .is_some_and(|at| at > admitted)
    })
    .await;
    assert_slot_free(&redis, &app, "the abandoned admission's lease is released").await;
}

/// A Redis reached over TLS (`rediss://`), its certificate checked against
/// `redis_ca_file`: limits are shared as over plain TCP. Without the file
/// the compiled-in roots do not know the certificate, and the gateway
/// does not take it.
#[tokio::test]
async fn limits_are_shared_through_a_redis_reached_over_tls() {
    let redis = RedisServer::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("redis-ca.pem");
    std::fs::write(&ca, redis.certificate()).unwrap();
    let config = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\n\
         on_redis_error = \"closed\"\n[keys.team-a.limits]\nrequests_per_minute = 2\n",
        redis.url(),
        ca.display()
    );
    let (one, two) = (
        spawn_with_keys(&config).await,
        spawn_with_keys(&config).await,
    );
    let mut statuses = Vec::new();
    for app in [&one, &two, &one] {
        statuses.push(app.chat_as("sk-a", hi()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(one.readyz().await["limits"]["healthy"], true);

    // The built-in roots: the certificate is unknown, Redis unreachable
    // for the gateway (fail-closed: 503).
    let untrusted =
        spawn_with_keys(&redis_limits(&redis, "closed", "requests_per_minute = 2")).await;
    let response = untrusted.chat_as("sk-a", hi()).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        error_of(response).await["code"],
        "rate_limit_store_unavailable"
    );

    // A reload to certificates that do not verify is a mistake in the new
    // configuration, refused like a wrong password: the running one stays.
    let path = dir.path().join("gateway.toml");
    let reloaded_config = |ca: &std::path::Path| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\n\
             on_redis_error = \"closed\"\n[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 1000\n",
            redis.url(),
            ca.display()
        )
    };
    std::fs::write(&path, reloaded_config(&ca)).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    let other_ca = dir.path().join("other-ca.pem");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    std::fs::write(&path, reloaded_config(&other_ca)).unwrap();
    assert!(
        !kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
            .await
    );
    let ready = app.readyz().await;
    assert_eq!(ready["limits"]["healthy"], true, "{ready}");
    assert_eq!(ready["limits"]["outages"], 0, "{ready}");
    let problems = ready["last_reload"]["problems"].to_string();
    assert!(problems.contains("refused"), "{problems}");
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
}

/// `redis_ca_file` is checked with the configuration: only with a
/// `rediss://` URL, and a file that holds a certificate.
#[test]
fn a_redis_ca_file_that_cannot_serve_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let problems = |url: &str, ca: &str| {
        let toml = format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_ca_file = \"{ca}\"\n"
        );
        match kimi_gateway::config::resolve(&toml, &|_| None) {
            Ok(_) => String::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    };
    let missing = dir.path().join("missing.pem");
    let garbled = dir.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (url, ca, says) in [
        (
            "redis://127.0.0.1:6379",
            garbled.display().to_string(),
            "rediss://",
        ),
        ("REDISS://127.0.0.1:6380", garbled.display().to_string(), ""),
        (
            "rediss://127.0.0.1:6380",
            missing.display().to_string(),
            "cannot read",
        ),
        (
            "rediss://127.0.0.1:6380",
            not_pem.display().to_string(),
            "no PEM certificate",
        ),
    ] {
        let problems = problems(url, &ca);
        assert!(
            problems.contains("limits.redis_ca_file") && problems.contains(says),
            "{url} {ca}: {problems}"
        );
    }
}

/// Redis closes the gateway's connection (its idle `timeout`, a restart,
/// `CLIENT KILL`): the next request goes through on a new connection, in
/// fail-closed mode too, and no outage is counted.
#[tokio::test]
async fn a_connection_redis_closed_is_replaced_without_an_outage() {
    let redis = RedisServer::start().await;
    let app = spawn_with_keys(&redis_limits(&redis, "closed", "requests_per_minute = 100")).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    let mut conn = redis.connection().await.unwrap();
    for _ in 0..3 {
        // Every connection but the test's own: the gateway's.
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    }
    let ready = app.readyz().await;
    assert_eq!(ready["limits"]["healthy"], true, "{ready}");
    assert_eq!(ready["limits"]["outages"], 0, "{ready}");
}

/// Redis closes the gateway's connection while a stream holds a lease:
/// the stream's settlement, the first call on the closed connection, goes
/// out once more on a new one, so the lease is released as the stream ends
/// (the next request is admitted at `concurrent_requests = 1`) and no
/// outage is counted.
#[tokio::test]
async fn a_settlement_on_a_connection_redis_closed_is_sent_again() {
    let redis = RedisServer::start().await;
    let app = spawn_with_keys(&patient_limits(&redis, "")).await;
    let mut conn = redis.connection().await.unwrap();
    for round in 0..3 {
        let running = app
            .chat_as(
                "sk-a",
                chat_body("kimi-k2.6", &format!("[mock gate=s{round} chunks=2]"), true),
            )
            .await;
        assert_eq!(running.status(), 200);
        assert_eq!(redis.zcard(LEASES).await, 1);
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        app.mock.release(&format!("s{round}"), 10);
        sse_data(running).await;
        // The response ends once Redis has its settlement.
        assert_eq!(redis.zcard(LEASES).await, 0, "round {round}");
        assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    }
    let ready = app.readyz().await;
    assert_eq!(ready["limits"]["healthy"], true, "{ready}");
    assert_eq!(ready["limits"]["outages"], 0, "{ready}");
}

/// With no request running, the keep-alive ping finds a Redis that is
/// gone: `/readyz` says so (and, fail-closed, answers 503) before a request
/// meets it.
#[tokio::test]
async fn a_redis_lost_while_idle_shows_in_readyz() {
    let mut redis = RedisServer::start().await;
    let app = spawn_with_keys(&redis_limits(&redis, "closed", "requests_per_minute = 100")).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    redis.kill();
    wait_until("/readyz reports Redis unhealthy", async || {
        app.readyz().await["limits"]["healthy"] == false
    })
    .await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn without_redis_fail_open_falls_back_to_local_limits() {
    let mut redis = RedisServer::start().await;
    let app = spawn_with_keys(&redis_limits(&redis, "open", "requests_per_minute = 3")).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    assert_eq!(app.readyz().await["limits"]["healthy"], true);
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "up{backend=\"redis\"}"), 1.0);
    assert_eq!(
        store_sample(&metrics, "call_seconds_count{call=\"admit\"}"),
        1.0
    );
    assert_eq!(store_sample(&metrics, "outages_total"), 0.0);
    redis.kill();
    // The local limiter starts afresh: three more, then refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.chat_as("sk-a", hi()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let ready = app.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["limits"]["backend"], "redis");
    assert_eq!(ready["limits"]["healthy"], false);
    assert_eq!(
        ready["limits"]["outages"], 1,
        "one outage, however many requests"
    );
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "up{backend=\"redis\"}"), 0.0);
    assert_eq!(store_sample(&metrics, "outages_total"), 1.0);
    // The first call failed (and its retry on a new connection, if any).
    assert!(store_sample(&metrics, "errors_total{call=\"admit\"}") >= 1.0);
    assert_eq!(
        store_sample(&metrics, "unavailable_total{effect=\"local_limits\"}"),
        4.0
    );
    assert_eq!(
        store_sample(&metrics, "unavailable_total{effect=\"refused\"}"),
        0.0
    );
}

/// A provider limit that cannot be checked for want of Redis is the
/// gateway's failure, not the provider's: its circuit stays closed, and the
/// client hears of the store, not of a failing provider.
#[tokio::test]
async fn an_unreachable_store_never_opens_a_providers_circuit() {
    let mut redis = RedisServer::start().await;
    let config = format!(
        "{}[limits.providers.moonshot]\nconcurrent_requests = 4\n\
         [breaker]\nconsecutive_failures = 1\n[retry]\nmax_attempts = 2\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n",
        redis_limits(&redis, "closed", "")
    );
    let app = spawn_with_keys(&config).await;
    let body = || chat_body("moonshot/kimi-k2.6", "hi", false);
    assert_eq!(app.chat_as("sk-a", body()).await.status(), 200);
    redis.kill();
    for _ in 0..3 {
        let response = app.chat_as("sk-a", body()).await;
        // Not retried after a backoff: the store is not probed that often.
        assert_eq!(response.headers()["x-gateway-attempts"], "1");
        let error = error_of(response).await;
        assert_eq!(error["code"], "rate_limit_store_unavailable", "{error}");
    }
    let metrics = scrape(&app).await;
    let breaker = r#"kimi_gateway_breaker_state{provider="moonshot",target="moonshot/kimi-k2.6"}"#;
    assert_eq!(sample(&metrics, breaker), Some(0.0), "{metrics}");
    assert_eq!(
        app.mock.requests().len(),
        1,
        "only the first reached the provider"
    );
}

/// One of the rate-limit store's series in a scrape.
fn store_sample(metrics: &str, series: &str) -> f64 {
    let name = format!("kimi_gateway_rate_limit_store_{series}");
    sample(metrics, &name).unwrap_or_else(|| panic!("{name} in {metrics}"))
}

#[tokio::test]
async fn without_redis_fail_closed_answers_503() {
    let mut redis = RedisServer::start().await;
    let app = spawn_with_keys(&redis_limits(&redis, "closed", "requests_per_minute = 100")).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    redis.kill();
    for _ in 0..3 {
        let response = app.chat_as("sk-a", hi()).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["retry-after-ms"], "1000");
        let error = error_of(response).await;
        assert_eq!(error["type"], "server_error");
        assert_eq!(error["code"], "rate_limit_store_unavailable");
    }
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let ready: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ready["limits"]["healthy"], false);
    assert_eq!(ready["limits"]["outages"], 1);
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "outages_total"), 1.0);
    assert_eq!(
        store_sample(&metrics, "unavailable_total{effect=\"refused\"}"),
        3.0
    );
}

#[tokio::test]
async fn an_outage_is_logged_once_however_many_requests_meet_it() {
    let mut redis = RedisServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = kimi_gateway::mock::spawn(listener, Default::default()).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n{}",
        redis_limits(&redis, "open", "requests_per_minute = 1000")
    );
    std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_kimi-gateway"))
        .arg("--listen")
        .arg(crate::cli::ANY_PORT)
        .arg("--config")
        .arg(file.path())
        .env("TEAM_A_KEY", "sk-a")
        .env("MOONSHOT_API_KEY", PROVIDER_KEY)
        .env(
            "MOONSHOT_BASE_URL",
            mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
        )
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = gateway.stdout.take().unwrap();
    let mut gateway = crate::cli::Running(gateway);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = std::io::BufReader::new(stdout);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let logged = |needle: &str| {
        let lines = lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    };
    wait_until("the gateway listens", async || logged("listening") == 1).await;
    let addr = {
        let lines = lines.lock().unwrap();
        let line = lines.iter().find(|l| l.contains("listening")).unwrap();
        let rest = line.split("\"listen\":\"").nth(1).unwrap();
        rest.split('"').next().unwrap().to_string()
    };

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let send = || {
        client
            .post(&url)
            .bearer_auth("sk-a")
            .body(hi().to_string())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    redis.kill();
    for _ in 0..5 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    // A reload that turns the outage's effect around says so (the line
    // before still says requests fall back to local limits).
    let closed = config.replace("on_redis_error = \"open\"", "on_redis_error = \"closed\"");
    assert_ne!(closed, config);
    std::fs::write(file.path(), closed).unwrap();
    wait_until("the reload is logged", async || {
        logged("still out of reach after a reload: now requests under a key") == 1
    })
    .await;
    assert_eq!(send().await.unwrap().status(), 503);
    // Lines reach stdout in batches: wait for every request's access line
    // (written after the outage's) before stopping the gateway.
    wait_until("seven requests logged", async || {
        logged("\"target\":\"access\"") == 7
    })
    .await;
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(
        logged("rate-limit store (Redis) unreachable"),
        1,
        "{:?}",
        lines.lock().unwrap()
    );
}

/// A gateway stopped with SIGTERM gives back the Redis lease of a request
/// it served to the end during the drain before it exits, rather than
/// leaving the slot held on every replica until the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_gateway_settles_its_redis_limits_before_it_exits() {
    use kimi_gateway::mock::{self, Flavour, MockOptions};
    let redis = RedisServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider = mock::spawn(listener, MockOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_lease_secs = 60\n\
             [keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n[keys.team-a.limits]\nconcurrent_requests = 1\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kimi-gateway"))
        .args([
            "--listen",
            crate::cli::ANY_PORT,
            "--config",
            config.to_str().unwrap(),
        ])
        .env("MOONSHOT_API_KEY", PROVIDER_KEY)
        .env("MOONSHOT_BASE_URL", provider.base_url(Flavour::Moonshot))
        .env("TEAM_A_KEY", "sk-a")
        .env_remove("AIMLAPI_API_KEY")
        .env_remove("AGENTSFLARE_API_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut child = crate::cli::Running(child);
    let addr = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the gateway exited"
        );
        if let Some(rest) = line
            .split("\"listen\":\"")
            .nth(1)
            .filter(|_| line.contains("listening"))
        {
            break rest.split('"').next().unwrap().to_string();
        }
    };
    let streaming = tokio::spawn(async move {
        let body = chat_body("kimi-k2.6", "[mock chunk_delay_ms=200 chunks=4]", true);
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth("sk-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    });
    wait_until("the stream holds its lease", async || {
        redis.zcard(LEASES).await == 1
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let answer = streaming.await.unwrap();
    assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    assert_eq!(redis.zcard(LEASES).await, 0, "the lease was given back");
}

/// A client that sends each request the moment the last one ended (a
/// stream: its `[DONE]`, where the sync Python SDK closes), to either
/// replica, meets neither the last one's lease nor its unsettled estimate:
/// the end goes out once Redis has the settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_client_never_meets_its_last_requests_lease_or_estimate() {
    let redis = RedisServer::start().await;
    let config = redis_limits(
        &redis,
        "open",
        "concurrent_requests = 1\ntokens_per_day = 1000000",
    );
    let (one, two) = (
        spawn_with_keys(&config).await,
        spawn_with_keys(&config).await,
    );
    let mut used = 0;
    let began = std::time::Instant::now();
    for i in 0..100 {
        let app = if i % 3 == 0 { &one } else { &two };
        let body = chat_body("kimi-k2.6", "hi", i % 2 == 1);
        let estimate = body.to_string().len() as u64 / 4 + 1024;
        let response = app.chat_as("sk-a", body).await;
        assert_eq!(response.status(), 200, "request {i}");
        // Unsettled, the last request would still hold its estimate
        // (~1000 tokens more than it used); the bucket refills a token
        // every 86.4 ms meanwhile (what the time so far refilled, however
        // slow the machine), and rounds down.
        let expected = 1_000_000 - used - estimate;
        let refilled = (began.elapsed().as_secs_f64() / 0.0864).ceil() as u64;
        let remaining = remaining_tokens(&response);
        assert!(
            (expected - 1..=expected + refilled + 1).contains(&remaining),
            "request {i}: {remaining} tokens left, {expected} expected"
        );
        used += if i % 2 == 1 {
            let events = sse_data_until_done(response).await;
            let last: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            last["choices"][0]["usage"]["total_tokens"]
                .as_u64()
                .unwrap()
        } else {
            let answer: serde_json::Value = response.json().await.unwrap();
            answer["usage"]["total_tokens"].as_u64().unwrap()
        };
        assert_eq!(redis.zcard(LEASES).await, 0, "request {i}");
    }
}

/// Redis stalls after a request was admitted: its response (a plain
/// answer; a stream, up to its `[DONE]`) does not end before Redis has
/// taken its settlement, so the lease is gone the moment the client has
/// the end.
async fn a_response_ends_only_once_settled(stream: bool) {
    let redis = RedisServer::start().await;
    let app = spawn_with_keys(&patient_limits(&redis, "")).await;
    let directive = if stream {
        "[mock gate=g chunks=3]"
    } else {
        "[mock head_delay_ms=200]"
    };
    let resumed = std::sync::atomic::AtomicBool::new(false);
    let reading = async {
        let response = app
            .chat_as("sk-a", chat_body("kimi-k2.6", directive, stream))
            .await;
        assert_eq!(response.status(), 200);
        // A stream is read until `[DONE]`, where the sync Python SDK
        // stops reading and closes; a plain answer to its end.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            body.extend_from_slice(&chunk);
            if stream && body.ends_with(b"data: [DONE]\n\n") {
                break;
            }
        }
        (body, resumed.load(std::sync::atomic::Ordering::SeqCst))
    };
    let stalling = async {
        wait_until("admitted", async || redis.zcard(LEASES).await == 1).await;
        redis.pause();
        app.mock.release("g", 10);
        // The stall itself is the case: the response would end during it.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        resumed.store(true, std::sync::atomic::Ordering::SeqCst);
        redis.resume();
    };
    let ((body, ended_after_resume), ()) = tokio::join!(reading, stalling);
    assert!(
        ended_after_resume,
        "the response ended before Redis had its settlement"
    );
    if stream {
        assert!(body.ends_with(b"data: [DONE]\n\n"));
    } else {
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["object"], "chat.completion");
    }
    assert_eq!(redis.zcard(LEASES).await, 0);
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
}

#[tokio::test]
async fn a_plain_answer_ends_only_once_its_redis_limits_are_settled() {
    a_response_ends_only_once_settled(false).await;
}

#[tokio::test]
async fn a_stream_ends_only_once_its_redis_limits_are_settled() {
    a_response_ends_only_once_settled(true).await;
}

#[tokio::test]
async fn a_reload_keeps_unchanged_redis_limits_and_starts_changed_ones_afresh() {
    let redis = RedisServer::start().await;
    let table = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    crate::limits::reload_keeps_unchanged_limits(&table).await;
}

#[tokio::test]
async fn a_request_refused_by_the_global_redis_limit_costs_its_key_nothing() {
    let redis = RedisServer::start().await;
    let table = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    crate::limits::a_broader_refusal_costs_the_narrower_scopes_nothing(&table).await;
}

/// Redis settings that would hold responses too long, let leases expire
/// while they are refreshed, or mix gateways' keys are refused by name,
/// with local limits too (before anyone switches the backend), and beside
/// a Redis URL that is refused.
#[test]
fn redis_settings_out_of_range_are_refused() {
    let problems_with = |backend: &str, settings: &str| {
        let text = format!("[limits]\n{backend}\n{settings}");
        match kimi_gateway::config::resolve(&text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|p| p.path.clone()).collect::<Vec<_>>(),
        }
    };
    let problems = |settings: &str| {
        let redis = problems_with(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"",
            settings,
        );
        assert_eq!(problems_with("", settings), redis, "local: {settings}");
        redis
    };
    assert_eq!(
        problems_with(
            "backend = \"redis\"\nredis_url = \"http://x\"",
            "redis_timeout_ms = 0\nredis_key_prefix = \"a b\""
        ),
        [
            "limits.redis_timeout_ms",
            "limits.redis_key_prefix",
            "limits.redis_url"
        ]
    );
    assert_eq!(problems(""), Vec::<String>::new());
    assert_eq!(
        problems("redis_timeout_ms = 10000\nredis_lease_secs = 11"),
        Vec::<String>::new()
    );
    for (settings, path) in [
        ("redis_timeout_ms = 0", "limits.redis_timeout_ms"),
        (
            "redis_timeout_ms = 10001\nredis_lease_secs = 60",
            "limits.redis_timeout_ms",
        ),
        (
            "redis_timeout_ms = 500\nredis_lease_secs = 0.5",
            "limits.redis_lease_secs",
        ),
        ("redis_key_prefix = \"\"", "limits.redis_key_prefix"),
        (
            "redis_lease_secs = 0.0011\nredis_timeout_ms = 1",
            "limits.redis_lease_secs",
        ),
        ("redis_lease_secs = 86401", "limits.redis_lease_secs"),
        (
            "redis_key_prefix = \"two words\"",
            "limits.redis_key_prefix",
        ),
    ] {
        assert_eq!(problems(settings), [path], "{settings}");
    }
}

/// A reload that changes a Redis setting makes a new connection before it
/// swaps the configuration in: `/readyz` never reports a reachable store
/// unreachable meanwhile, and the outage count carries on across reloads,
/// local limits in between included.
#[tokio::test]
async fn a_reload_that_changes_redis_settings_stays_ready() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |url: &str, timeout_ms: u64| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_redis_error = \"closed\"\n\
             redis_timeout_ms = {timeout_ms}\n[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 1000\n"
        )
    };
    std::fs::write(&path, config(&redis.url(), 250)).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    let readyz_status = async || {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        (status, body["limits"]["outages"].as_u64().unwrap())
    };
    for timeout_ms in [300, 350, 400] {
        std::fs::write(&path, config(&redis.url(), timeout_ms)).unwrap();
        assert!(
            kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
                .await
        );
        assert_eq!(readyz_status().await, (200, 0), "timeout {timeout_ms} ms");
    }
    // A Redis that is not there: known unreachable once the reload is in.
    std::fs::write(&path, config("redis://127.0.0.1:1", 250)).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(readyz_status().await, (503, 1));
    std::fs::write(&path, config(&redis.url(), 250)).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(readyz_status().await, (200, 1));
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    // Local limits in between: the count is the gateway's, not a backend's.
    let local = config(&redis.url(), 250).replace("backend = \"redis\"", "backend = \"local\"");
    std::fs::write(&path, local).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    std::fs::write(&path, config(&redis.url(), 250)).unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(readyz_status().await, (200, 1));
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "outages_total"), 1.0);
    assert_eq!(store_sample(&metrics, "up{backend=\"redis\"}"), 1.0);
    // The dead URL's connection attempts failed, and were counted.
    assert!(store_sample(&metrics, "errors_total{call=\"connect\"}") >= 1.0);
}

/// A reload to a Redis that accepts connections but answers nothing (a
/// stalled host) waits for it at most twice `redis_timeout_ms` in all,
/// the check and the first connection together, and is taken as an
/// outage.
#[tokio::test]
async fn a_reload_to_a_stalled_redis_waits_twice_the_timeout_at_most() {
    let redis = RedisServer::start().await;
    let stalled = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |url: &str| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout_ms = 1000\n\
             [keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 1000\n"
        )
    };
    std::fs::write(&path, config(&redis.url())).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    stalled.pause();
    std::fs::write(&path, config(&stalled.url())).unwrap();
    let began = std::time::Instant::now();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let took = began.elapsed();
    // Twice 1 s, and room for the reload's own work; the check and the
    // connection each taking their own budget take 3-4 s.
    assert!(took < std::time::Duration::from_millis(2600), "{took:?}");
    assert!(took >= std::time::Duration::from_millis(1990), "{took:?}");
    wait_until("the stalled Redis is an outage", async || {
        app.readyz().await["limits"]["outages"] == 1
    })
    .await;
    // Fail-open: requests go on, on local limits.
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    stalled.resume();
}

/// A reload to a Redis that answers but refuses the gateway (a wrong
/// password, a database it does not have, a user its ACL denies PING, the
/// scripts or the key prefix, a read-only replica, TLS asked of a port
/// that speaks plain Redis) is a
/// mistake in the new configuration: rejected, the running one stays (still
/// ready, no outage), and the problem says why without the password.
#[tokio::test]
async fn a_reload_to_a_redis_that_refuses_the_gateway_is_rejected() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await.unwrap();
    for user in [
        &["SETUSER", "gw", "on", ">right-pass", "~*", "&*", "+@all"][..],
        &["SETUSER", "limited", "on", ">right-pass", "-@all"],
        &[
            "SETUSER",
            "noscripts",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-@scripting",
        ],
        &[
            "SETUSER",
            "otherkeys",
            "on",
            ">right-pass",
            "~other:*",
            "+@all",
        ],
        // One command each of the scripts runs: the admission's, the
        // settlement's, and one the admission and the refresh share.
        &[
            "SETUSER",
            "nozcard",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-zcard",
        ],
        &[
            "SETUSER",
            "nozrem",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-zrem",
        ],
        &[
            "SETUSER",
            "nozadd",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-zadd",
        ],
        &[
            "SETUSER",
            "nodel",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-del",
        ],
        // Loading the scripts, which Redis loses in a restart or a flush,
        // though it has them now.
        &[
            "SETUSER",
            "noload",
            "on",
            ">right-pass",
            "~*",
            "+@all",
            "-script",
        ],
    ] {
        redis::cmd("ACL")
            .arg(user)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |url: &str| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_redis_error = \"closed\"\n\
             [keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 1000\n"
        )
    };
    std::fs::write(&path, config(&redis.url())).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    let port = redis.port;
    // A read-only replica (a managed Redis's reader endpoint) answers
    // everything and takes no writes.
    let replica = RedisServer::start().await;
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query_async::<()>(&mut replica.connection().await.unwrap())
        .await
        .unwrap();
    for url in [
        replica.url(),
        format!("redis://gw:wrong-pass@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}/99"),
        format!("redis://limited:right-pass@127.0.0.1:{port}"),
        format!("redis://noscripts:right-pass@127.0.0.1:{port}"),
        format!("redis://otherkeys:right-pass@127.0.0.1:{port}"),
        format!("redis://nozcard:right-pass@127.0.0.1:{port}"),
        format!("redis://nozrem:right-pass@127.0.0.1:{port}"),
        format!("redis://nozadd:right-pass@127.0.0.1:{port}"),
        format!("redis://nodel:right-pass@127.0.0.1:{port}"),
        format!("redis://noload:right-pass@127.0.0.1:{port}"),
        // TLS asked of a port that speaks plain Redis: its handshake only
        // times out, which must not be taken for an outage.
        format!("rediss://gw:right-pass@127.0.0.1:{port}"),
    ] {
        std::fs::write(&path, config(&url)).unwrap();
        assert!(
            !kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
                .await,
            "{url} was taken"
        );
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["limits"]["outages"], 0, "{url}: {body}");
        let problems = body["last_reload"]["problems"].to_string();
        assert!(
            problems.contains("limits.redis_url") && problems.contains("refused"),
            "{url}: {problems}"
        );
        assert!(!problems.contains("-pass"), "{url}: {problems}");
        assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200, "{url}");
    }
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "outages_total"), 0.0);
    // The right password is taken.
    std::fs::write(
        &path,
        config(&format!("redis://gw:right-pass@127.0.0.1:{port}")),
    )
    .unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
}

/// A Redis whose ACL lets the gateway in but denies the scripts is down
/// for the gateway, steadily: fail-closed, every request 503 and `/readyz`
/// 503 with one outage, not ready between failing requests and an outage
/// counted (and logged) per request.
#[tokio::test]
async fn a_redis_that_denies_the_scripts_is_down_not_flapping() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await.unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "noscripts",
            "on",
            ">pw",
            "~*",
            "+@all",
            "-@scripting",
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://noscripts:pw@127.0.0.1:{}", redis.port);
    let app = spawn_with_keys(&format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_redis_error = \"closed\"\n\
         [keys.team-a.limits]\nrequests_per_minute = 1000\n"
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat_as("sk-a", hi()).await.status(), 503);
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["limits"]["outages"], 1, "{body}");
    }
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "outages_total"), 1.0);
    assert_eq!(store_sample(&metrics, "up{backend=\"redis\"}"), 0.0);
}

/// Redis's password rotated while the gateway was away (its connection
/// closed, the reconnection refused), then set back: the gateway connects
/// again by itself, without a restart or a reload.
#[tokio::test]
async fn a_refused_reconnection_is_tried_again_until_redis_lets_the_gateway_in() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await.unwrap();
    let set_password = async |conn: &mut redis::aio::MultiplexedConnection, password: &str| {
        redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "gw",
                "on",
                "resetpass",
                &format!(">{password}"),
                "~*",
                "+@all",
            ])
            .query_async::<()>(conn)
            .await
            .unwrap();
    };
    set_password(&mut conn, "pw1").await;
    let url = format!("redis://gw:pw1@127.0.0.1:{}", redis.port);
    let app = spawn_with_keys(&format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_redis_error = \"closed\"\n\
         [keys.team-a.limits]\nrequests_per_minute = 1000\n"
    ))
    .await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);

    set_password(&mut conn, "pw2").await;
    redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "gw"])
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 503);
    let healthy = async || app.readyz().await["limits"]["healthy"] == true;
    wait_until("the gateway sees the outage", async || !healthy().await).await;

    set_password(&mut conn, "pw1").await;
    wait_until("the gateway is let in again", healthy).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
}

/// Reloads that change Redis settings in the middle of an outage continue
/// it: one outage, in `/readyz` and in the metrics, however many reloads,
/// whether a request met the outage first or the reloads did.
#[tokio::test]
async fn reloads_during_an_outage_count_it_once() {
    reloads_during_an_outage(true).await;
}

#[tokio::test]
async fn reloads_right_after_redis_stalls_count_one_outage() {
    reloads_during_an_outage(false).await;
}

async fn reloads_during_an_outage(request_first: bool) {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = |timeout_ms: u64| {
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"closed\"\n\
             redis_timeout_ms = {timeout_ms}\n[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n\
             [keys.team-a.limits]\nrequests_per_minute = 1000\n",
            redis.url()
        )
    };
    std::fs::write(&path, config(100)).unwrap();
    let app = spawn_app_from(ConfigSource::File(&path), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    redis.pause();
    if request_first {
        assert_eq!(app.chat_as("sk-a", hi()).await.status(), 503);
    }
    for timeout_ms in [110, 120, 130] {
        std::fs::write(&path, config(timeout_ms)).unwrap();
        assert!(
            kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
                .await
        );
        let ready = app.readyz().await;
        assert_eq!(ready["limits"]["healthy"], false, "{ready}");
        assert_eq!(ready["limits"]["outages"], 1, "{ready}");
        assert_eq!(store_sample(&scrape(&app).await, "outages_total"), 1.0);
    }
    redis.resume();
    wait_until("Redis is healthy again", async || {
        app.readyz().await["limits"]["healthy"] == true
    })
    .await;
    assert_eq!(app.chat_as("sk-a", hi()).await.status(), 200);
    assert_eq!(app.readyz().await["limits"]["outages"], 1);
    assert_eq!(store_sample(&scrape(&app).await, "outages_total"), 1.0);
}

/// A Redis that cannot be reached when the gateway starts is an outage at
/// once, before any request or readiness probe meets it.
#[tokio::test]
async fn a_redis_down_at_start_shows_without_a_request() {
    let app = spawn_with_keys(
        "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n\
         [keys.team-a.limits]\nrequests_per_minute = 10\n",
    )
    .await;
    wait_until("the outage is counted", async || {
        sample(
            &scrape(&app).await,
            "kimi_gateway_rate_limit_store_outages_total",
        ) == Some(1.0)
    })
    .await;
    let metrics = scrape(&app).await;
    assert_eq!(store_sample(&metrics, "up{backend=\"redis\"}"), 0.0);
    assert!(store_sample(&metrics, "errors_total{call=\"connect\"}") >= 1.0);
}

/// A `rediss://` URL to a port that serves plain Redis only times out its
/// handshake; at start the outage's log line says what it is, as a reload
/// with that URL does, rather than a network fault.
#[tokio::test]
async fn a_tls_url_to_a_plain_redis_is_named_at_start() {
    let redis = RedisServer::start().await;
    let file = crate::cli::config_file(&format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"rediss://127.0.0.1:{}\"\n\
         [keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n[keys.team-a.limits]\nrequests_per_minute = 10\n",
        redis.port
    ));
    let mut command = crate::cli::gateway();
    command.env("TEAM_A_KEY", "sk-a");
    let path = file.path().to_str().unwrap().to_string();
    let (_gateway, mut stdout, _addr) = crate::cli::start(
        command,
        &["--listen", crate::cli::ANY_PORT, "--config", &path],
    );
    let line = crate::cli::wait_for_line(&mut stdout, "rate-limit store (Redis)");
    assert!(line.contains("answers plain Redis, not TLS"), "{line}");
    assert!(line.contains("refuses the gateway"), "{line}");
}
