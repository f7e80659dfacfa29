//! The mock's HTTP server and the handle tests use to inspect it: recorded
//! requests, gates to release stream chunks one by one, and a count of
//! requests the client (the gateway) abandoned.

use super::Flavour;
use super::fail::error_response;
use super::reply::{Ask, completion, stream_events};
use super::scenario::Scenario;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// How the mock behaves when a request does not say otherwise.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// The key every flavour expects as `Authorization: Bearer …`.
    pub api_key: String,
    /// Keep a copy of every request (tests); off for benchmarks.
    pub record: bool,
    pub default_chunks: usize,
    pub default_chunk_delay: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            api_key: "mock-key".into(),
            record: true,
            default_chunks: 3,
            default_chunk_delay: Duration::ZERO,
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub flavour: Flavour,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Shared {
    options: MockOptions,
    recorded: Mutex<Vec<Recorded>>,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    abandoned: AtomicU64,
    changed: Notify,
    next_id: AtomicU64,
    /// Requests seen per `fail_times` directive and flavour.
    failures: Mutex<HashMap<(Flavour, String), u64>>,
}

impl Shared {
    fn gate(&self, name: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().expect("gates lock");
        gates
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }
}

/// A running mock; dropping it stops the server.
pub struct MockHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockHandle {
    /// The base URL a gateway uses for this flavour.
    pub fn base_url(&self, flavour: Flavour) -> String {
        format!("http://{}/{}/v1", self.addr, flavour.name())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().expect("recorded lock").clone()
    }

    pub fn requests_for(&self, flavour: Flavour) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.flavour == flavour)
            .collect()
    }

    /// Lets `n` more chunks of streams waiting on `gate` go out.
    pub fn release(&self, gate: &str, n: usize) {
        self.shared.gate(gate).add_permits(n);
    }

    /// Requests whose client went away before the mock finished answering.
    pub fn abandoned(&self) -> u64 {
        self.shared.abandoned.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until at least `n` requests were abandoned.
    pub async fn wait_abandoned(&self, n: u64) -> bool {
        self.wait_for(|| self.abandoned() >= n).await
    }

    /// Waits (up to 10 s) until at least `n` requests were recorded.
    pub async fn wait_requests(&self, n: usize) -> bool {
        self.wait_for(|| self.requests().len() >= n).await
    }

    async fn wait_for(&self, condition: impl Fn() -> bool) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.changed.notified();
                if condition() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_ok()
    }
}

/// Serves the mock on `listener` in the background.
pub async fn spawn(listener: TcpListener, options: MockOptions) -> MockHandle {
    let addr = listener.local_addr().expect("bound listener");
    let shared = Arc::new(Shared {
        options,
        recorded: Mutex::new(Vec::new()),
        gates: Mutex::new(HashMap::new()),
        abandoned: AtomicU64::new(0),
        changed: Notify::new(),
        next_id: AtomicU64::new(1),
        failures: Mutex::new(HashMap::new()),
    });
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockHandle { addr, shared, task }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{flavour}/v1/chat/completions", post(chat))
        .route("/{flavour}/v1/models", get(models))
        // Vision requests carry base64 images: accept what a gateway would.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

async fn models(Path(flavour): Path<String>) -> Response {
    let Some(preset) = crate::config::presets::find(&flavour) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let data: Vec<_> = preset
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "owned_by": flavour}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// Counts a request as abandoned if dropped before it is disarmed.
struct AbandonGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    Path(flavour): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(flavour) = Flavour::parse(&flavour) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if shared.options.record {
        shared
            .recorded
            .lock()
            .expect("recorded lock")
            .push(Recorded {
                flavour,
                headers: headers.clone(),
                body: body.clone(),
            });
        shared.changed.notify_waiters();
    }
    let expected = format!("Bearer {}", shared.options.api_key);
    if headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        != Some(expected.as_bytes())
    {
        return error_response(flavour, super::scenario::MockError::Auth, None);
    }
    let mut scenario = Scenario::from_body(&body, flavour.name());
    if let Some(times) = scenario.fail_times {
        let mut failures = shared.failures.lock().expect("failures lock");
        let seen = failures
            .entry((flavour, scenario.directive.clone()))
            .or_insert(0);
        *seen += 1;
        if *seen > times {
            scenario.error = None;
            scenario.reset = false;
        }
    }
    if scenario.reset {
        // Unwinding out of the handler drops the connection without an
        // answer (resume_unwind skips the panic hook: nothing is printed).
        std::panic::resume_unwind(Box::new("mock reset"));
    }
    let mut guard = AbandonGuard {
        shared: shared.clone(),
        armed: true,
    };
    if !scenario.head_delay.is_zero() {
        tokio::time::sleep(scenario.head_delay).await;
    }
    if let Some(error) = scenario.error {
        guard.armed = false;
        return error_response(flavour, error, scenario.retry_after);
    }
    let request: super::reply::MockRequest = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            guard.armed = false;
            return error_response(flavour, super::scenario::MockError::InvalidRequest, None);
        }
    };
    let ask = Ask::from_request(&request, body.len());
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut response = if request.stream() {
        let chunks = scenario.chunks.unwrap_or(shared.options.default_chunks);
        let events = stream_events(flavour, &ask, chunks, scenario.chunk_bytes.unwrap_or(0));
        let mut response = Response::new(stream_body(shared.clone(), scenario, events, guard));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    } else {
        guard.armed = false;
        axum::Json(completion(flavour, &ask)).into_response()
    };
    *response.status_mut() = flavour.success_status();
    let headers = response.headers_mut();
    match flavour {
        Flavour::Moonshot => {
            headers.insert("msh-request-id", HeaderValue::from(id));
            // Account identifiers a gateway must never pass on.
            headers.insert("msh-uid", HeaderValue::from_static("mock-user-1"));
            headers.insert("msh-gid", HeaderValue::from_static("mock-group-1"));
            headers.insert(
                header::SET_COOKIE,
                HeaderValue::from_static("session=mock; Path=/"),
            );
        }
        _ => {
            headers.insert("x-request-id", HeaderValue::from(id));
        }
    }
    response
}

/// The stream's body: one event per frame, honouring delays, gates and cuts.
fn stream_body(
    shared: Arc<Shared>,
    scenario: Scenario,
    events: Vec<String>,
    guard: AbandonGuard,
) -> Body {
    let delay = if scenario.chunk_delay.is_zero() {
        shared.options.default_chunk_delay
    } else {
        scenario.chunk_delay
    };
    let gate = scenario.gate.as_deref().map(|g| shared.gate(g));
    let state = (0usize, events, guard);
    let stream = futures_util::stream::unfold(state, move |(i, events, mut guard)| {
        let gate = gate.clone();
        let scenario = scenario.clone();
        async move {
            if i == usize::MAX {
                return None;
            }
            if i > 0 {
                if let Some(gate) = &gate {
                    gate.acquire().await.expect("gate open").forget();
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            if scenario.cut_after.is_some_and(|n| i >= n) {
                guard.armed = false;
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock cut");
                return Some((Err(cut), (usize::MAX, events, guard)));
            }
            match i {
                i if i < events.len() => {
                    let event = Bytes::from(events[i].clone());
                    Some((Ok(event), (i + 1, events, guard)))
                }
                i if i == events.len() && !scenario.no_done => {
                    guard.armed = false;
                    Some((
                        Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                        (i + 1, events, guard),
                    ))
                }
                _ => {
                    guard.armed = false;
                    drop(guard);
                    None
                }
            }
        }
    });
    Body::from_stream(stream)
}
