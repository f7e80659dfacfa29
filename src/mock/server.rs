//! The mock's HTTP server and the handle tests use to inspect it: recorded
//! requests, gates to release stream chunks one by one, and a count of
//! requests the client (the gateway) abandoned.

use super::Flavour;
use super::fail::error_response;
use super::rendered::{Question, Rendered, Renderings, StreamShape};
use super::reply::Ask;
use super::scenario::Scenario;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
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
    /// `Bearer <api_key>`, the `Authorization` value every flavour expects.
    expected_authorization: String,
    renderings: Renderings,
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
        expected_authorization: format!("Bearer {}", options.api_key),
        renderings: Renderings::default(),
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

/// Vision requests carry base64 images: accept what a gateway would.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

const MSH_REQUEST_ID: HeaderName = HeaderName::from_static("msh-request-id");
const MSH_UID: HeaderName = HeaderName::from_static("msh-uid");
const MSH_GID: HeaderName = HeaderName::from_static("msh-gid");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for flavour in Flavour::ALL {
        let prefix = format!("/{}/v1", flavour.name());
        router = router
            .route(
                &format!("{prefix}/chat/completions"),
                post(move |State(shared), request| chat(shared, flavour, request)),
            )
            .route(&format!("{prefix}/models"), get(move || models(flavour)));
    }
    router.with_state(shared)
}

async fn models(flavour: Flavour) -> Response {
    let Some(preset) = crate::config::presets::find(flavour.name()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let data: Vec<_> = preset
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "owned_by": flavour.name()}))
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

async fn chat(shared: Arc<Shared>, flavour: Flavour, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let authorized = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        == Some(shared.expected_authorization.as_bytes());
    if shared.options.record {
        shared
            .recorded
            .lock()
            .expect("recorded lock")
            .push(Recorded {
                flavour,
                headers: parts.headers,
                body: body.clone(),
            });
        shared.changed.notify_waiters();
    }
    if !authorized {
        return error_response(
            flavour,
            super::scenario::MockError::Auth,
            &Scenario::default(),
        );
    }
    let mut scenario = Scenario::from_body(&body, flavour.name());
    if scenario.echo_key {
        scenario.echoed_key = shared
            .expected_authorization
            .strip_prefix("Bearer ")
            .map(str::to_string);
    }
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
        return error_response(flavour, error, &scenario);
    }
    let request: super::reply::MockRequest = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            guard.armed = false;
            return error_response(
                flavour,
                super::scenario::MockError::InvalidRequest,
                &Scenario::default(),
            );
        }
    };
    let question = Question {
        flavour,
        ask: Ask::from_request(&request, body.len()),
        stream: request.stream().then(|| StreamShape {
            chunks: scenario.chunks.unwrap_or(shared.options.default_chunks),
            chunk_bytes: scenario.chunk_bytes.unwrap_or(0),
        }),
        filler: if request.stream() {
            0
        } else {
            scenario.chunk_bytes.unwrap_or(0)
        },
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (body, content_type) = match shared.renderings.answer(&question) {
        Rendered::Stream(events) => (
            stream_body(&shared, &scenario, flavour, events, guard),
            "text/event-stream",
        ),
        Rendered::Completion(completion) => {
            guard.armed = false;
            let completion = if scenario.counts_as_floats {
                counts_as_floats(&completion)
            } else {
                completion
            };
            let completion = if scenario.empty_usage {
                usage_emptied(&completion)
            } else {
                completion
            };
            (Body::from(completion), "application/json")
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = flavour.success_status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    insert_provider_fields(headers, flavour, id);
    if let Some(key) = &scenario.echoed_key {
        let name = match flavour {
            Flavour::Moonshot => MSH_REQUEST_ID,
            _ => X_REQUEST_ID,
        };
        let quoting = HeaderValue::from_str(&format!("{id}-{key}"));
        headers.insert(name, quoting.expect("a key is a valid value"));
    }
    response
}

/// The fields each provider adds to an answer: its request id, and for
/// Moonshot account identifiers and a cookie a gateway must never pass on.
fn insert_provider_fields(headers: &mut HeaderMap, flavour: Flavour, id: u64) {
    match flavour {
        Flavour::Moonshot => {
            headers.insert(MSH_REQUEST_ID, HeaderValue::from(id));
            headers.insert(MSH_UID, HeaderValue::from_static("mock-user-1"));
            headers.insert(MSH_GID, HeaderValue::from_static("mock-group-1"));
            headers.insert(
                header::SET_COOKIE,
                HeaderValue::from_static("session=mock; Path=/"),
            );
        }
        _ => {
            headers.insert(X_REQUEST_ID, HeaderValue::from(id));
        }
    }
}

/// The error event of `error_event_after`: the provider overloaded.
const STREAM_ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The engine is currently overloaded, please try again later\",\"type\":\"engine_overloaded_error\"}}\n\n";
/// The error event with `empty_error`: an error that says nothing.
const EMPTY_ERROR_EVENT: &[u8] = b"data: {\"error\":{}}\n\n";
/// An error event named by its `event:` field, its data no error document.
const NAMED_ERROR_EVENT: &[u8] =
    b"event: error\ndata: {\"message\":\"The engine is currently overloaded\",\"code\":500}\n\n";

/// The error event with `document_error`, and the `[DONE]` after it.
const DOCUMENT_ERROR_EVENT: &[u8] =
    b"data: {\"statusCode\":504,\"message\":\"Generation timeout\"}\n\ndata: [DONE]\n\n";

/// The events with each one's last LF moved to the start of the next
/// write (`[DONE]` is sent whole, after the LF it follows).
fn split_last_lf(events: &[Bytes], done: &Bytes) -> (Arc<[Bytes]>, Bytes) {
    let mut owed = false;
    let mut moved = |event: &Bytes| {
        let mut out = Vec::with_capacity(event.len());
        if std::mem::replace(&mut owed, event.ends_with(b"\n")) {
            out.push(b'\n');
        }
        out.extend_from_slice(event.strip_suffix(b"\n").unwrap_or(event));
        Bytes::from(out)
    };
    let events: Arc<[Bytes]> = events.iter().map(&mut moved).collect();
    let done = match owed {
        true => Bytes::from([b"\n", &done[..]].concat()),
        false => done.clone(),
    };
    (events, done)
}

/// The rendered events with every LF replaced by `line_end`.
fn with_line_end(events: &[Bytes], line_end: &str) -> Arc<[Bytes]> {
    events
        .iter()
        .map(|event| Bytes::from(String::from_utf8_lossy(event).replace('\n', line_end)))
        .collect()
}

/// `event` (`data: JSON` and a blank line) with its JSON spread over several
/// `data:` lines: a new one after each comma outside strings, where the LF
/// SSE joins them with is whitespace to JSON.
fn split_data(event: &[u8]) -> Bytes {
    let Some(json) = event
        .strip_prefix(b"data: ")
        .and_then(|rest| rest.strip_suffix(b"\n\n"))
    else {
        return Bytes::copy_from_slice(event);
    };
    let mut out = b"data: ".to_vec();
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        out.push(byte);
        match byte {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b',' if !in_string => out.extend_from_slice(b"\ndata: "),
            _ => {}
        }
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The rendered events with the usage moved as `usage_on_last_choice`
/// asks, and the chunk carrying it stripped as `bare_usage_chunk` asks.
fn with_usage_moved(events: &[Bytes], scenario: &Scenario) -> Arc<[Bytes]> {
    let mut chunks: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|event| serde_json::from_slice(event.strip_prefix(b"data: ")?).ok())
        .collect();
    let has_choices = |chunk: &serde_json::Value| {
        chunk["choices"]
            .as_array()
            .is_some_and(|choices| !choices.is_empty())
    };
    if scenario.usage_on_last_choice {
        let mut usage = None;
        chunks.retain_mut(|chunk| {
            if let Some(found) = chunk
                .pointer_mut("/choices/0")
                .and_then(serde_json::Value::as_object_mut)
                .and_then(|choice| choice.remove("usage"))
            {
                usage = Some(found);
            }
            if !has_choices(chunk) && chunk.get("usage").is_some() {
                usage = chunk.as_object_mut().and_then(|c| c.remove("usage"));
                return false;
            }
            true
        });
        if let (Some(usage), Some(last)) = (usage, chunks.iter_mut().rev().find(|c| has_choices(c)))
        {
            last["usage"] = usage;
        }
    }
    if scenario.bare_usage_chunk {
        let carries_usage = |chunk: &serde_json::Value| {
            chunk.get("usage").is_some() || chunk["choices"][0].get("usage").is_some()
        };
        if let Some(chunk) = chunks.iter_mut().rev().find(|c| carries_usage(c)) {
            let chunk = chunk.as_object_mut().expect("a chunk is an object");
            chunk.remove("created");
            chunk.remove("model");
        }
    }
    chunks
        .iter()
        .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
        .collect()
}

/// `json` with every token count (a `…_tokens` member's digits) written
/// as a float: `"prompt_tokens":11` becomes `"prompt_tokens":11.0`.
fn counts_as_floats(json: &[u8]) -> Bytes {
    const KEY_END: &[u8] = b"_tokens\":";
    let mut out = Vec::with_capacity(json.len() + 64);
    let mut rest = json;
    while let Some(at) = memchr::memmem::find(rest, KEY_END) {
        let value = at + KEY_END.len();
        let digits = rest[value..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        out.extend_from_slice(&rest[..value + digits]);
        if digits > 0 {
            out.extend_from_slice(b".0");
        }
        rest = &rest[value + digits..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// `json` with every `"usage":{…}` object written `"usage":{}`.
fn usage_emptied(json: &[u8]) -> Bytes {
    const KEY: &[u8] = b"\"usage\":{";
    let mut out = Vec::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = memchr::memmem::find(rest, KEY) {
        let open = at + KEY.len();
        out.extend_from_slice(&rest[..open]);
        // The mock's own usage holds no strings: braces alone nest.
        let mut depth = 1;
        let close = rest[open..]
            .iter()
            .position(|&b| {
                depth += i32::from(b == b'{') - i32::from(b == b'}');
                depth == 0
            })
            .map_or(rest.len(), |at| open + at);
        rest = &rest[close..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// The rendered events, each with an `id:` line first, numbered from 1.
fn with_ids(events: &[Bytes]) -> Arc<[Bytes]> {
    (1..)
        .zip(events)
        .map(|(id, event)| {
            let mut with_id = format!("id: {id}\n").into_bytes();
            with_id.extend_from_slice(event);
            Bytes::from(with_id)
        })
        .collect()
}

/// The stream's body: one event per frame, honouring delays, gates and cuts.
/// Agentsflare's opening prompt-filter chunk is followed by the answer's
/// first chunk at once, as Azure sends them: the delays and gates are
/// between the answer's chunks.
fn stream_body(
    shared: &Shared,
    scenario: &Scenario,
    flavour: Flavour,
    events: Arc<[Bytes]>,
    guard: AbandonGuard,
) -> Body {
    let opening_chunks = usize::from(flavour == Flavour::Agentsflare);
    let delay = if scenario.chunk_delay.is_zero() {
        shared.options.default_chunk_delay
    } else {
        scenario.chunk_delay
    };
    let gate = scenario.gate.as_deref().map(|g| shared.gate(g));
    let first_event_delay = scenario.first_event_delay;
    let (cut_after, no_done) = (scenario.cut_after, scenario.no_done);
    let end_delay = scenario.end_delay;
    let error_event_after = scenario.error_event_after;
    let error_event = match (&scenario.echoed_key, scenario.empty_error) {
        _ if scenario.named_error => Bytes::from_static(NAMED_ERROR_EVENT),
        _ if scenario.document_error => Bytes::from_static(DOCUMENT_ERROR_EVENT),
        (_, true) => Bytes::from_static(EMPTY_ERROR_EVENT),
        (Some(key), false) => {
            let error = serde_json::json!({"error": {
                "message": format!("The engine is currently overloaded (key {key})"),
                "type": "engine_overloaded_error",
            }});
            Bytes::from(format!("data: {error}\n\n"))
        }
        (None, false) => Bytes::from_static(STREAM_ERROR_EVENT),
    };
    let events: Arc<[Bytes]> = if scenario.done_only {
        Arc::from([])
    } else {
        events
    };
    let events = if scenario.usage_on_last_choice || scenario.bare_usage_chunk {
        with_usage_moved(&events, scenario)
    } else {
        events
    };
    let events = if scenario.counts_as_floats {
        events.iter().map(|event| counts_as_floats(event)).collect()
    } else {
        events
    };
    let events = if scenario.empty_usage {
        events.iter().map(|event| usage_emptied(event)).collect()
    } else {
        events
    };
    let (events, error_event) = if scenario.split_data {
        let events: Arc<[Bytes]> = events.iter().map(|event| split_data(event)).collect();
        (events, split_data(&error_event))
    } else {
        (events, error_event)
    };
    let events = if scenario.event_ids {
        with_ids(&events)
    } else {
        events
    };
    let events = match scenario.line_end {
        Some(line_end) => with_line_end(&events, line_end),
        None => events,
    };
    let done = match scenario.line_end {
        Some(line_end) => Bytes::from("data: [DONE]\n\n".replace('\n', line_end)),
        None => Bytes::from_static(b"data: [DONE]\n\n"),
    };
    let done = if scenario.error_after_done {
        Bytes::from([&done[..], &error_event].concat())
    } else {
        done
    };
    let (events, done) = if scenario.split_crlf {
        split_last_lf(&events, &done)
    } else {
        (events, done)
    };
    let state = (0usize, events, guard);
    let stream = futures_util::stream::unfold(state, move |(i, events, mut guard)| {
        let (gate, done) = (gate.clone(), done.clone());
        let error_event = error_event.clone();
        async move {
            if i == usize::MAX {
                return None;
            }
            if i == 0 && !first_event_delay.is_zero() {
                tokio::time::sleep(first_event_delay).await;
            }
            if i > opening_chunks {
                if let Some(gate) = &gate {
                    gate.acquire().await.expect("gate open").forget();
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            if error_event_after == Some(i) {
                guard.armed = false;
                return Some((Ok(error_event.clone()), (usize::MAX, events, guard)));
            }
            if cut_after.is_some_and(|n| i >= n) {
                // Once pending first, so the server writes out the events
                // it holds: an error while they are still buffered would
                // drop them, and the head, with the connection.
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                guard.armed = false;
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock cut");
                return Some((Err(cut), (usize::MAX, events, guard)));
            }
            match i {
                i if i < events.len() => {
                    let event = events[i].clone();
                    Some((Ok(event), (i + 1, events, guard)))
                }
                i if i == events.len() && !no_done => {
                    guard.armed = false;
                    Some((Ok(done), (i + 1, events, guard)))
                }
                _ => {
                    guard.armed = false;
                    drop(guard);
                    if !end_delay.is_zero() {
                        tokio::time::sleep(end_delay).await;
                    }
                    None
                }
            }
        }
    });
    Body::from_stream(stream)
}
