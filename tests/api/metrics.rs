//! `/metrics`: the series and their labels after real traffic, the separate
//! metrics listener, `promtool check metrics`, and a real Prometheus
//! scraping the gateway.

use crate::helpers::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `upstream_attempts_total` of `provider` with `outcome`.
fn attempts(text: &str, provider: &str, outcome: &str) -> Option<f64> {
    let series = format!(
        r#"kimi_gateway_upstream_attempts_total{{outcome="{outcome}",provider="{provider}"}}"#
    );
    sample(text, &series)
}

/// Leaves the request `waiting` sends, waits until the gateway has none in
/// flight, and scrapes it.
async fn leave_and_scrape(
    app: &TestApp,
    waiting: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) -> String {
    waiting.abort();
    wait_until("the request is over", async || {
        sample(&scrape(app).await, "kimi_gateway_in_flight_requests") == Some(0.0)
    })
    .await;
    scrape(app).await
}

#[tokio::test]
async fn traffic_shows_up_with_bounded_labels() {
    let app = spawn_app_with("[retry]\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n", &[]).await;
    assert_eq!(
        app.chat(chat_body("kimi-k2-turbo-preview", "hi", false))
            .await
            .status(),
        200
    );
    let events = sse_data(
        app.chat(chat_body("kimi-k2-turbo-preview", "[mock chunks=4]", true))
            .await,
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        app.chat(chat_body("no-such-model-x1", "hi", false))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:error=server]",
            false
        ))
        .await
        .status(),
        200
    );

    let text = scrape(&app).await;
    let ok = r#"kimi_gateway_requests_total{error_type="none",provider="moonshot",route="kimi-k2-turbo-preview",status="200"}"#;
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    // A client's unknown model string never becomes a label value.
    assert!(!text.contains("no-such-model-x1"));
    let unknown = r#"kimi_gateway_requests_total{error_type="resource_not_found_error",provider="none",route="unknown",status="404"}"#;
    assert_eq!(sample(&text, unknown), Some(1.0));
    // Tokens from usage, the stream's included (Moonshot: in choices[0]).
    let prompt = r#"kimi_gateway_tokens_total{key="anonymous",kind="completion",provider="moonshot",route="kimi-k2-turbo-preview"}"#;
    assert_eq!(
        sample(&text, prompt),
        Some(7.0 + 4.0),
        "non-stream 7 + stream 4"
    );
    let cached = r#"kimi_gateway_tokens_total{key="anonymous",kind="cached",provider="moonshot",route="kimi-k2-turbo-preview"}"#;
    assert_eq!(sample(&text, cached), Some(4.0));
    // Fail-over is counted per provider and outcome.
    let failover =
        r#"kimi_gateway_upstream_attempts_total{outcome="failover",provider="moonshot"}"#;
    assert_eq!(sample(&text, failover), Some(1.0));
    let success =
        r#"kimi_gateway_upstream_attempts_total{outcome="success",provider="agentsflare"}"#;
    assert_eq!(sample(&text, success), Some(1.0));
    let ttft = r#"kimi_gateway_time_to_first_token_seconds_count{provider="moonshot",route="kimi-k2-turbo-preview"}"#;
    assert_eq!(sample(&text, ttft), Some(1.0));
    let chunks =
        r#"kimi_gateway_stream_chunks_total{provider="moonshot",route="kimi-k2-turbo-preview"}"#;
    assert!(sample(&text, chunks).unwrap() >= 4.0);
    assert_eq!(sample(&text, "kimi_gateway_in_flight_requests"), Some(0.0));
    assert_eq!(sample(&text, "kimi_gateway_open_streams"), Some(0.0));
    assert!(text.contains("kimi_gateway_overhead_seconds_bucket{phase=\"before_upstream\""));
    assert!(text.contains("kimi_gateway_build_info{version="));
    let breaker = r#"kimi_gateway_breaker_state{provider="moonshot",target="moonshot/kimi-k2.6"}"#;
    assert_eq!(sample(&text, breaker), Some(0.0));
}

/// A stream ended by an event over `server.max_response_bytes` counts the
/// reads relayed before it, not the reads of the events dropped with it.
#[tokio::test]
async fn reads_dropped_with_an_oversized_event_are_not_counted_as_relayed() {
    let app = spawn_app_with("[server]\nmax_response_bytes = 4096\n", &[]).await;
    let response = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock chunks=3 chunk_bytes=5000]",
            true,
        ))
        .await;
    assert_eq!(response.status(), 200);
    let events = sse_data(response).await;
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_response_too_large",
        "{events:?}"
    );
    let relayed = events.len() - 1;
    let text = scrape(&app).await;
    let chunks =
        r#"kimi_gateway_stream_chunks_total{provider="moonshot",route="kimi-k2-turbo-preview"}"#;
    let counted = sample(&text, chunks).unwrap();
    assert!(
        (1.0..=relayed as f64).contains(&counted),
        "{counted} counted, {relayed} relayed"
    );
}

/// A failed attempt that no other follows is counted `error`, whatever ended
/// the request: no attempts left, the retry deadline, or the failure
/// opening the only circuit there was.
/// A provider's usage beyond any real count (2^64 - 1) is counted as
/// 2^32 - 1: added as sent, the 64-bit counter would wrap and go down,
/// which Prometheus reads as a restart.
#[tokio::test]
async fn an_absurd_usage_is_counted_bounded_and_the_counter_never_goes_down() {
    let answer = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615,"total_tokens":5}}"#;
    let url = raw_provider(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        )
        .into_bytes(),
    )
    .await;
    let app = spawn_app_with("", &[("MOONSHOT_BASE_URL", Some(&url))]).await;
    for _ in 0..2 {
        let response = app
            .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
            .await;
        assert_eq!(response.status(), 200);
    }
    let metrics = scrape(&app).await;
    for kind in ["prompt", "completion"] {
        let series = format!(
            r#"kimi_gateway_tokens_total{{key="anonymous",kind="{kind}",provider="moonshot",route="kimi-k2-turbo-preview"}}"#
        );
        assert_eq!(
            sample(&metrics, &series),
            Some(2.0 * f64::from(u32::MAX)),
            "{series} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_last_attempt_is_an_error_whatever_ended_the_request() {
    let circuit = "[retry]\nmax_attempts = 3\n[breaker]\nconsecutive_failures = 1\n";
    let deadline = "[retry]\nmax_attempts = 3\ndeadline_secs = 1\nbackoff_base_ms = 60000\nbackoff_max_ms = 60000\n";
    let attempts = "[retry]\nmax_attempts = 2\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n";
    for (config, tried, retried) in [(circuit, 1, 0), (deadline, 1, 0), (attempts, 2, 1)] {
        let app = spawn_app_with(config, &[]).await;
        let body = chat_body("moonshot/kimi-k2.6", "[mock moonshot:error=server]", false);
        let response = app.chat(body).await;
        assert_eq!(response.status(), 500, "{config}");
        assert_eq!(response.headers()["x-gateway-attempts"], tried.to_string());
        let text = scrape(&app).await;
        let outcome = |name: &str| {
            let series = format!(
                r#"kimi_gateway_upstream_attempts_total{{outcome="{name}",provider="moonshot"}}"#
            );
            sample(&text, &series).unwrap_or(0.0)
        };
        assert_eq!(outcome("error"), 1.0, "{config}{text}");
        assert_eq!(outcome("retry"), f64::from(retried), "{config}{text}");
        assert_eq!(outcome("failover"), 0.0, "{config}{text}");
    }
}

/// Whether a failed attempt was a retry or a failover is where the next
/// one went: with two providers the third attempt goes back to the first,
/// another target than the second's.
#[tokio::test]
async fn an_attempt_followed_at_another_target_is_a_failover() {
    let app = spawn_app_with(
        "[retry]\nmax_attempts = 3\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n",
        &[],
    )
    .await;
    let body = chat_body(
        "kimi-latest",
        "[mock moonshot:error=server agentsflare:error=server]",
        false,
    );
    assert_eq!(app.chat(body).await.status(), 500);
    let text = scrape(&app).await;
    let total = |outcome: &str| -> f64 {
        ["moonshot", "agentsflare"]
            .iter()
            .filter_map(|provider| {
                let series = format!(
                    r#"kimi_gateway_upstream_attempts_total{{outcome="{outcome}",provider="{provider}"}}"#
                );
                sample(&text, &series)
            })
            .sum()
    };
    assert_eq!(total("failover"), 2.0, "{text}");
    assert_eq!(total("retry"), 0.0, "{text}");
    assert_eq!(total("error"), 1.0, "{text}");
}

/// A client that leaves while the next attempt waits out its backoff: the
/// failed attempt is counted as the retry it was, not lost and not `error`.
#[tokio::test]
async fn an_attempt_whose_retry_the_client_left_is_counted_a_retry() {
    let app = spawn_app_with(
        "[retry]\nbackoff_base_ms = 20000\nbackoff_max_ms = 20000\n",
        &[],
    )
    .await;
    let body = chat_body("moonshot/kimi-k2.6", "[mock moonshot:error=server]", false);
    let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
    let waiting = tokio::spawn(request.send());
    // The error's head (and with it its body, in the same write) is in.
    let head = r#"kimi_gateway_upstream_head_seconds_count{provider="moonshot"}"#;
    wait_until("the first attempt failed", async || {
        sample(&scrape(&app).await, head) == Some(1.0)
    })
    .await;
    let text = leave_and_scrape(&app, waiting).await;
    let outcome = |name: &str| attempts(&text, "moonshot", name).unwrap_or(0.0);
    assert_eq!(outcome("retry"), 1.0, "{text}");
    assert_eq!(outcome("error"), 0.0, "{text}");
    assert_eq!(app.mock.requests().len(), 1, "no second attempt");
}

/// An attempt that timed out waiting for its head is in the head-time
/// histogram with the time it waited: a hanging provider shows in its
/// tail. One refused before any head is not.
#[tokio::test]
async fn a_head_that_timed_out_counts_with_the_time_it_waited() {
    let app = spawn_app_with(
        "[providers.moonshot.timeouts]\nfirst_byte_secs = 0.3\ntotal_secs = 0.3\n",
        &[],
    )
    .await;
    let response = app
        .chat(chat_body(
            "kimi-k2.6",
            "[mock moonshot:head_delay_ms=30000]",
            false,
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "agentsflare");
    let text = scrape(&app).await;
    let moonshot = |part: &str| {
        sample(
            &text,
            &format!(r#"kimi_gateway_upstream_head_seconds_{part}{{provider="moonshot"}}"#),
        )
    };
    assert_eq!(moonshot("count"), Some(1.0), "{text}");
    let waited = moonshot("sum").unwrap();
    assert!((0.3..5.0).contains(&waited), "{waited}");
    assert_eq!(attempts(&text, "moonshot", "failover"), Some(1.0), "{text}");
}

/// Series of rare events exist at 0 from the start, so that Prometheus
/// sees their first count as an increase: every configured provider's
/// attempt outcomes and every rate-limit scope.
#[tokio::test]
async fn attempt_and_refusal_series_start_at_zero() {
    let app = spawn_app().await;
    let text = scrape(&app).await;
    for provider in ["moonshot", "aimlapi", "agentsflare"] {
        for outcome in [
            "success",
            "retry",
            "failover",
            "key_rejected",
            "error",
            "client_closed",
            "breaker_open",
        ] {
            assert_eq!(
                attempts(&text, provider, outcome),
                Some(0.0),
                "{provider} {outcome}"
            );
        }
    }
    for scope in ["key", "key_model", "global", "provider"] {
        let series = format!(r#"kimi_gateway_rate_limited_total{{scope="{scope}"}}"#);
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
}

/// A provider that never answers (its connection reset before a head)
/// still gets its route's success series at 0 with the first request sent
/// to it, the baseline an error ratio is read against.
#[tokio::test]
async fn a_provider_down_from_the_start_has_its_success_series_at_zero() {
    let app = spawn_app_with("[retry]\nmax_attempts = 1\n", &[]).await;
    let response = app
        .chat(chat_body("moonshot/kimi-k2.6", "[mock reset]", false))
        .await;
    assert_eq!(response.status(), 502);
    let text = scrape(&app).await;
    let success = r#"kimi_gateway_requests_total{error_type="none",provider="moonshot",route="moonshot/kimi-k2.6",status="200"}"#;
    assert_eq!(sample(&text, success), Some(0.0), "{text}");
}

/// An attempt under way when the client leaves has an outcome too: the
/// provider was asked (and may bill for it) though nothing came of it.
#[tokio::test]
async fn an_attempt_the_client_left_is_counted_client_closed() {
    let app = spawn_app().await;
    let body = chat_body("moonshot/kimi-k2.6", "[mock head_delay_ms=20000]", false);
    let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
    let waiting = tokio::spawn(request.send());
    wait_until("the attempt reached the provider", async || {
        app.mock.requests().len() == 1
    })
    .await;
    let text = leave_and_scrape(&app, waiting).await;
    let outcome = |name: &str| attempts(&text, "moonshot", name);
    assert_eq!(outcome("client_closed"), Some(1.0), "{text}");
    for other in ["success", "retry", "failover", "error"] {
        assert_eq!(outcome(other), Some(0.0), "{other}: {text}");
    }
}

/// A failed attempt whose client leaves during the backoff before the
/// retry is counted as the retry it was heading for, once, and the retry
/// that never began is not counted at all.
#[tokio::test]
async fn a_failed_attempt_whose_client_left_in_the_backoff_is_a_retry() {
    let app = spawn_app_with(
        "[retry]\nmax_attempts = 2\nbackoff_base_ms = 20000\nbackoff_max_ms = 20000\n",
        &[],
    )
    .await;
    let body = chat_body("moonshot/kimi-k2.6", "[mock error=server]", false);
    let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
    let waiting = tokio::spawn(request.send());
    let heads = "kimi_gateway_upstream_head_seconds_count{provider=\"moonshot\"}";
    wait_until("the first attempt failed", async || {
        sample(&scrape(&app).await, heads) == Some(1.0)
    })
    .await;
    let text = leave_and_scrape(&app, waiting).await;
    let outcome = |name: &str| attempts(&text, "moonshot", name);
    assert_eq!(outcome("retry"), Some(1.0), "{text}");
    for other in ["success", "failover", "error", "client_closed"] {
        assert_eq!(outcome(other), Some(0.0), "{other}: {text}");
    }
    assert_eq!(app.mock.requests().len(), 1, "no retry was sent");
}

/// The gateway's own time before an attempt leaves out what is not its
/// own: earlier attempts' provider time and the backoff between them.
#[tokio::test]
async fn overhead_before_upstream_leaves_out_earlier_attempts() {
    let app = spawn_app_with(
        "[retry]\nmax_attempts = 3\nbackoff_base_ms = 100\nbackoff_max_ms = 100\n",
        &[],
    )
    .await;
    let body = chat_body(
        "moonshot/kimi-k2.6",
        "[mock error=server head_delay_ms=150]",
        false,
    );
    let response = app.chat(body).await;
    assert_eq!(response.headers()["x-gateway-attempts"], "3");
    let text = scrape(&app).await;
    let phase = r#"{phase="before_upstream"}"#;
    let count = sample(
        &text,
        &format!("kimi_gateway_overhead_seconds_count{phase}"),
    );
    assert_eq!(count, Some(3.0), "{text}");
    // Measured from arrival, the three would add up to over 0.45 s.
    let sum = sample(&text, &format!("kimi_gateway_overhead_seconds_sum{phase}")).unwrap();
    assert!(sum < 0.15, "{sum}");
}

/// A client's slow upload is not the gateway's own time: the overhead
/// before the upstream request starts once the body has come.
#[tokio::test]
async fn overhead_before_upstream_leaves_out_the_clients_upload() {
    use crate::raw_client::{Client, chat_request};
    let app = spawn_app().await;
    let request = chat_request(&chat_body("moonshot/kimi-k2.6", "hi", false).to_string());
    let (first, rest) = request.split_at(request.len() - 10);
    let mut client = Client::connect(app.addr).await;
    client.send(first).await;
    // The client pausing mid-body, as a slow link does: nothing in the
    // gateway to wait for, so a pause it is.
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.send(rest).await;
    assert_eq!(client.response().await.status, 200);
    let text = scrape(&app).await;
    let phase = r#"{phase="before_upstream"}"#;
    let count = sample(
        &text,
        &format!("kimi_gateway_overhead_seconds_count{phase}"),
    );
    assert_eq!(count, Some(1.0), "{text}");
    let sum = sample(&text, &format!("kimi_gateway_overhead_seconds_sum{phase}")).unwrap();
    assert!(sum < 0.2, "{sum}");
    // Waits of its own up to a second are told apart.
    assert!(
        text.contains(r#"kimi_gateway_overhead_seconds_bucket{phase="before_upstream",le="1"}"#)
    );
}

#[tokio::test]
async fn open_streams_and_in_flight_count_live_streams() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock gate=live chunks=2]", true))
        .await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "kimi_gateway_open_streams"), Some(1.0));
    assert_eq!(sample(&text, "kimi_gateway_in_flight_requests"), Some(1.0));
    app.mock.release("live", 10);
    sse_data(response).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "kimi_gateway_open_streams"), Some(0.0));
    assert_eq!(sample(&text, "kimi_gateway_in_flight_requests"), Some(0.0));
}

/// A request refused for another member than its model (400) is counted
/// under the route its model names, not under `unknown`.
#[tokio::test]
async fn a_bad_request_naming_a_routed_model_is_counted_under_its_route() {
    let app = spawn_app().await;
    let response = app
        .chat(serde_json::json!({
            "model": "kimi-k2.6",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": "yes",
        }))
        .await;
    assert_eq!(response.status(), 400);
    let text = scrape(&app).await;
    let counted = r#"kimi_gateway_requests_total{error_type="invalid_request_error",provider="none",route="kimi-k2.6",status="400"}"#;
    assert_eq!(sample(&text, counted), Some(1.0), "{text}");
}

#[tokio::test]
async fn a_separate_metrics_address_keeps_metrics_off_the_main_listener() {
    let app = spawn_app_with("[server]\nmetrics_listen = \"127.0.0.1:0\"\n", &[]).await;
    let main = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 404);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(kimi_gateway::metrics_listener::serve(
        listener,
        app.state.clone(),
    ));
    let scraped = app
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    // The date field is the gateway's own (hyper's is off), one a client
    // can read.
    let date = scraped.headers()["date"].to_str().unwrap().to_owned();
    let dated = httpdate::parse_http_date(&date).unwrap();
    let skew = dated
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|early| early.duration());
    assert!(skew < std::time::Duration::from_secs(5), "{date}");
    let text = scraped.text().await.unwrap();
    assert!(text.contains("kimi_gateway_build_info"));
    // A scraper pointed at the main listener is a wrong path there,
    // counted like any other, not a scrape left out of the counts.
    let wrong = r#"kimi_gateway_requests_total{error_type="resource_not_found_error",provider="none",route="none",status="404"}"#;
    assert_eq!(sample(&text, wrong), Some(1.0), "{text}");
    // The probes are answered there too (and still on the main listener).
    for path in ["/healthz", "/readyz"] {
        for base in [format!("http://{addr}"), app.url("")] {
            let probe = app
                .client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(probe.status(), 200, "{base}{path}");
        }
    }
    // Readiness's details are on the metrics listener only: the main one
    // is public, and its callers need no key for the probes.
    let readiness = |base: String| {
        let client = app.client.clone();
        async move {
            let probe = client.get(format!("{base}/readyz")).send().await.unwrap();
            probe.json::<serde_json::Value>().await.unwrap()
        }
    };
    let full = readiness(format!("http://{addr}")).await;
    assert_eq!(full["status"], "ready");
    for detail in ["providers", "targets", "config", "last_reload", "limits"] {
        assert!(full.get(detail).is_some(), "{detail}: {full}");
    }
    let brief = readiness(app.url("")).await;
    assert_eq!(
        brief,
        serde_json::json!({"status": "ready", "reason": null, "draining": false})
    );
    // Anything else gets an OpenAI-shaped error that names what is served.
    let chat = app
        .client
        .post(format!("http://{addr}/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 404);
    let message = error_of(chat).await["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("serves /metrics, /healthz and /readyz"),
        "{message}"
    );
    let post = app
        .client
        .post(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET,HEAD");
    assert_eq!(error_of(post).await["type"], "invalid_request_error");
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let app = spawn_app().await;
    app.chat(chat_body("kimi-k2.6", "hi", true))
        .await
        .text()
        .await
        .unwrap();
    app.chat(chat_body("kimi-k2.6", "[mock error=rate_limit]", false))
        .await;
    let text = scrape(&app).await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {report}");
    assert!(
        report.trim().is_empty(),
        "promtool found problems: {report}"
    );
}

/// A real Prometheus, started on a free port with a generated scrape
/// config; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kimi-gateway\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs Debian's prometheus)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_series() {
    let app = spawn_app().await;
    for _ in 0..3 {
        assert_eq!(
            app.chat(chat_body("kimi-chat", "hi", false)).await.status(),
            200
        );
    }
    let prometheus = start_prometheus(app.addr);
    let query = r#"sum(kimi_gateway_requests_total{route="kimi-chat",provider="agentsflare",status="200"})"#;
    let wait = async {
        loop {
            let answer = app
                .client
                .get(format!("{}/api/v1/query", prometheus.url))
                .query(&[("query", query)])
                .send()
                .await;
            if let Ok(answer) = answer
                && let Ok(body) = answer.json::<serde_json::Value>().await
                && let Some(value) = body["data"]["result"][0]["value"][1].as_str()
            {
                return value.to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let value = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("Prometheus never returned the series");
    assert_eq!(value, "3");
}

/// Counted with the route and the provider of the attempt under way: here
/// the second, after the first provider failed.
#[tokio::test]
async fn a_request_the_client_leaves_before_its_answer_is_counted_as_499() {
    let app = spawn_app().await;
    // One plain request and one stream, both waiting for the second
    // provider's head.
    let mut waiting = Vec::new();
    for stream in [false, true] {
        let body = chat_body(
            "kimi-latest",
            "[mock moonshot:error=server agentsflare:head_delay_ms=60000]",
            stream,
        );
        let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
        waiting.push(tokio::spawn(request.send()));
    }
    wait_until("both requests wait for the second provider", async || {
        let text = scrape(&app).await;
        sample(&text, "kimi_gateway_in_flight_requests") == Some(2.0)
            && sample(
                &text,
                r#"kimi_gateway_upstream_attempts_total{outcome="failover",provider="moonshot"}"#,
            ) == Some(2.0)
    })
    .await;
    // The clients give up: their connections close.
    for request in waiting {
        request.abort();
    }
    wait_until("both requests are over", async || {
        sample(&scrape(&app).await, "kimi_gateway_in_flight_requests") == Some(0.0)
    })
    .await;
    let text = scrape(&app).await;
    let left = r#"kimi_gateway_requests_total{error_type="none",provider="agentsflare",route="kimi-latest",status="499"}"#;
    assert_eq!(sample(&text, left), Some(2.0), "{text}");
    for stream in ["false", "true"] {
        let timed = format!(
            r#"kimi_gateway_request_duration_seconds_count{{provider="agentsflare",route="kimi-latest",stream="{stream}"}}"#
        );
        assert_eq!(sample(&text, &timed), Some(1.0), "{text}");
    }
}

/// A client that leaves while its body is still coming: nothing was read
/// that names a model, so no route or provider.
#[tokio::test]
async fn a_request_left_while_its_body_is_read_is_counted_with_no_route() {
    let app = spawn_app().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\":\"kimi-latest\"";
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .unwrap();
    wait_until("the request is in flight", async || {
        sample(&scrape(&app).await, "kimi_gateway_in_flight_requests") == Some(1.0)
    })
    .await;
    drop(socket);
    wait_until("the request is over", async || {
        sample(&scrape(&app).await, "kimi_gateway_in_flight_requests") == Some(0.0)
    })
    .await;
    let text = scrape(&app).await;
    let left = r#"kimi_gateway_requests_total{error_type="none",provider="none",route="none",status="499"}"#;
    assert_eq!(sample(&text, left), Some(1.0), "{text}");
}

/// Health probes and scrapes are not counted; any other request is, on a
/// wrong path or with a wrong method too (route and provider `none`); a
/// stream that fails before its first event is timed as a stream.
#[tokio::test]
async fn every_request_but_probes_is_counted_and_a_failed_stream_is_a_stream() {
    let app = spawn_app_with(SINGLE_ATTEMPT, &[]).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "{path}");
    }
    // An SDK whose base URL lacks `/v1`, and a probe path posted to.
    let missing_v1 = app.client.post(app.url("/chat/completions")).send();
    assert_eq!(missing_v1.await.unwrap().status(), 404);
    let posted_probe = app.client.post(app.url("/healthz")).send();
    assert_eq!(posted_probe.await.unwrap().status(), 405);
    let failed = app
        .chat(chat_body(
            "kimi-k2-turbo-preview",
            "[mock error=invalid_request]",
            true,
        ))
        .await;
    assert_eq!(failed.status(), 400);
    failed.bytes().await.unwrap();

    let text = scrape(&app).await;
    let not_found = r#"kimi_gateway_requests_total{error_type="resource_not_found_error",provider="none",route="none",status="404"}"#;
    assert_eq!(sample(&text, not_found), Some(1.0), "{text}");
    let wrong_method = r#"kimi_gateway_requests_total{error_type="invalid_request_error",provider="none",route="none",status="405"}"#;
    assert_eq!(sample(&text, wrong_method), Some(1.0), "{text}");
    let probes = r#"kimi_gateway_requests_total{error_type="none",provider="none",route="none",status="200"}"#;
    assert_eq!(sample(&text, probes), None, "{text}");
    let as_stream = r#"kimi_gateway_request_duration_seconds_count{provider="moonshot",route="kimi-k2-turbo-preview",stream="true"}"#;
    assert_eq!(sample(&text, as_stream), Some(1.0), "{text}");
    let as_plain = r#"kimi_gateway_request_duration_seconds_count{provider="moonshot",route="kimi-k2-turbo-preview",stream="false"}"#;
    assert_eq!(sample(&text, as_plain).unwrap_or(0.0), 0.0, "{text}");
}

/// Scrapes at the same time each see every circuit's series: one scrape's
/// reset of the circuit gauges never shows in another's rendering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scrapes_each_see_every_circuit() {
    let app = std::sync::Arc::new(spawn_app().await);
    let circuits = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("kimi_gateway_breaker_state{"))
            .count()
    };
    let expected = circuits(&scrape(&app).await);
    assert!(expected > 10, "{expected}");
    let scrapers: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut short = Vec::new();
                for _ in 0..150 {
                    let seen = circuits(&scrape(&app).await);
                    if seen != expected {
                        short.push(seen);
                    }
                }
                short
            })
        })
        .collect();
    for scraper in scrapers {
        let short = scraper.await.unwrap();
        assert!(short.is_empty(), "scrapes with {short:?} of {expected}");
    }
}

/// A scrape does not hold up the runtime's worker while it renders (with
/// thousands of client keys that takes a third of a second): while one
/// waits, here for the scrape lock the test holds, on a runtime of one
/// worker, requests are still answered, and the scrape is once it can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_scrape_under_way_holds_up_no_request() {
    let app = spawn_app().await;
    let held = app.state.metrics.scrape.lock().unwrap();
    let scraping = tokio::spawn(
        app.client
            .get(format!("http://{}/metrics", app.addr))
            .send(),
    );
    for _ in 0..20 {
        // Probed from a thread of its own, whose timeout does not depend
        // on the runtime the scrape would hold.
        let addr = app.addr;
        let probed = std::thread::spawn(move || {
            kimi_gateway::healthcheck::probe(addr, "/healthz", Duration::from_secs(5))
        })
        .join()
        .unwrap();
        assert_eq!(probed, Ok(()), "answered while a scrape waits");
    }
    assert!(!scraping.is_finished());
    drop(held);
    let scraped = scraping.await.unwrap().unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("kimi_gateway_"));
}

/// With `server.metrics_tokens_by_key = false` the token counters have one
/// series per route, provider and kind whatever the client key (their
/// `key` label empty, which Prometheus reads as none): with thousands of
/// keys, per-key series would be most of the scrape.
#[tokio::test]
async fn token_counters_per_key_can_be_turned_off() {
    let app = crate::auth::spawn_with_keys("[server]\nmetrics_tokens_by_key = false\n").await;
    for key in ["sk-a", "sk-b"] {
        let answer = app.chat_as(key, chat_body("kimi-k2.6", "hi", false)).await;
        assert_eq!(answer.status(), 200);
    }
    let text = scrape(&app).await;
    let series: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("kimi_gateway_tokens_total{") && line.contains(r#"kind="completion""#)
        })
        .collect();
    assert_eq!(
        series,
        [
            r#"kimi_gateway_tokens_total{key="",kind="completion",provider="moonshot",route="kimi-k2.6"} 14"#
        ],
        "{text}"
    );
}
