//! The test harness: a mock provider and a gateway, each a real HTTP server
//! on 127.0.0.1:0, wired together through the same configuration code the
//! binary uses.

use futures_util::StreamExt;
use kimi_gateway::config;
use kimi_gateway::mock::{self, Flavour, MockHandle, MockOptions};
use kimi_gateway::state::AppState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub const PROVIDER_KEY: &str = "mock-key";

/// Config for tests about one attempt's outcome: no retries, no fail-over
/// timing, and circuits that never open.
pub const SINGLE_ATTEMPT: &str = "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 1000000\nmin_requests = 1000000\n";

pub struct TestApp {
    pub addr: SocketAddr,
    pub mock: MockHandle,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A gateway with all three providers keyed and pointed at one mock.
pub async fn spawn_app() -> TestApp {
    spawn_app_with("", &[]).await
}

/// A gateway with extra TOML config and environment changes (`None` unsets).
pub async fn spawn_app_with(toml: &str, env_changes: &[(&str, Option<&str>)]) -> TestApp {
    spawn_app_from(ConfigSource::Text(toml), env_changes).await
}

/// Where a test gateway's configuration comes from.
pub enum ConfigSource<'a> {
    Text(&'a str),
    /// A file, so the test can rewrite it and reload.
    File(&'a std::path::Path),
}

pub async fn spawn_app_from(
    source: ConfigSource<'_>,
    env_changes: &[(&str, Option<&str>)],
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock::spawn(listener, MockOptions::default()).await;
    let mut env: HashMap<String, String> = HashMap::new();
    for flavour in Flavour::ALL {
        let upper = flavour.name().to_uppercase();
        env.insert(format!("{upper}_API_KEY"), PROVIDER_KEY.into());
        env.insert(format!("{upper}_BASE_URL"), mock.base_url(flavour));
    }
    for (name, value) in env_changes {
        match value {
            Some(v) => env.insert(name.to_string(), v.to_string()),
            None => env.remove(*name),
        };
    }
    let lookup = move |name: &str| env.get(name).cloned();
    let config = match source {
        ConfigSource::Text(toml) => config::resolve(toml, &lookup),
        ConfigSource::File(path) => config::load_reusing(Some(path), None, &lookup),
    }
    .unwrap_or_else(|errors| panic!("test config invalid:\n{errors}"));
    let listener = kimi_gateway::listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        config.server.client_send_buffer,
    )
    .unwrap();
    let state = AppState::with_env(config, Arc::new(lookup));
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kimi_gateway::server::run(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        mock,
        client: reqwest::Client::new(),
        state,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Starts the graceful shutdown (as SIGTERM would) and returns the
    /// server task, which ends when the drain is over.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let _ = self.shutdown.take().expect("shut down once").send(());
        self.server.take().expect("server running")
    }

    /// GET /readyz as JSON.
    pub async fn readyz(&self) -> serde_json::Value {
        self.get_json("/readyz").await
    }

    /// GET `path` as JSON, whatever the status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a raw body to the chat endpoint.
    pub async fn chat_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        self.chat_raw(body.to_string()).await
    }

    /// [`TestApp::chat_as`] by a client that leaves once `reached` holds
    /// (the request got as far as the test is about: a provider has it, it
    /// waits in a queue): checks that it was still unanswered then.
    pub async fn chat_as_and_leave_when(
        &self,
        key: &str,
        body: &serde_json::Value,
        what: &str,
        reached: impl AsyncFnMut() -> bool,
    ) {
        let request = self
            .client
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .bearer_auth(key)
            .body(body.to_string())
            .send();
        let sent = tokio::spawn(request);
        wait_until(what, reached).await;
        assert!(!sent.is_finished(), "answered before the client left");
        sent.abort();
        let _ = sent.await;
    }

    /// POSTs to the chat endpoint with `Authorization: Bearer <key>`.
    pub async fn chat_as(&self, key: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .bearer_auth(key)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

/// Polls `condition` until it holds (10 s at most): for effects that land
/// just after a response ends, such as a released concurrency slot.
pub async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A minimal chat body for `model`, with `content` as the user message.
pub fn chat_body(model: &str, content: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    })
}

/// The ids of a `GET /v1/models` answer, in order.
pub fn model_ids(list: &serde_json::Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_string())
        .collect()
}

/// The parsed OpenAI error body of a response.
pub async fn error_of(response: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    assert!(
        body["error"]["message"].is_string(),
        "not an OpenAI error: {body}"
    );
    assert!(
        body["error"]["type"].is_string(),
        "not an OpenAI error: {body}"
    );
    let error = body["error"].as_object().unwrap();
    assert!(
        error.contains_key("code") && error.contains_key("param"),
        "{body}"
    );
    body["error"].clone()
}

/// Reads a whole SSE body and returns its `data:` payloads in order.
pub async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The events' data up to and including `[DONE]`, read as the sync OpenAI
/// Python SDK reads a stream: it closes the response right there, without
/// reading the body's end.
pub async fn sse_data_until_done(mut response: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if text.ends_with("data: [DONE]\n\n") {
            break;
        }
    }
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The response's `x-ratelimit-remaining-tokens`.
pub fn remaining_tokens(response: &reqwest::Response) -> u64 {
    response.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The value of the sample whose line starts with `series` (name + labels).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The gateway's `/metrics` text.
pub async fn scrape(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A provider that answers every connection with `answer` once it has a
/// request's head, then closes it: its base URL.
pub async fn raw_provider(answer: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request_head(&mut stream).await;
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        }
    });
    url
}

/// Reads from `stream` until a request head has ended: false when the
/// connection closed or failed first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    true
}
