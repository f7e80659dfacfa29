//! `loadgen`: a closed-loop HTTP/1.1 load generator for comparing the gateway
//! with nginx and with the mock provider itself (driven by `benches/load.sh`).
//!
//! Load mode: `--connections N` workers, each with one keep-alive connection
//! (`TCP_NODELAY`), send the same POST back to back for `--warmup` seconds and
//! then `--duration` seconds, and one JSON object is printed on stdout:
//! request and error counts, rate, latency and time-to-first-body-byte
//! percentiles, and response bytes. Only requests that start after the
//! warm-up and finish before the end are counted.
//!
//! Hold mode (`--hold-streams N`): opens N streaming requests (the upstream is
//! told to send slow chunks), writes `--ready-file` once every stream has its
//! first byte (or failed), and keeps reading them until SIGINT/SIGTERM or
//! `--duration` seconds, so the proxy's memory per open stream can be read.

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop HTTP/1.1 load generator for chat completion endpoints")]
struct Cli {
    /// Endpoint to POST to, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long)]
    url: Uri,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured seconds (load mode); seconds to hold the streams (hold mode).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before the measurement starts (load mode).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Send this file as the request body instead of the built-in one.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Model named in the built-in body.
    #[arg(long, default_value = "kimi-k2-turbo-preview")]
    model: String,
    /// Ask for a stream (`"stream":true` in the built-in body).
    #[arg(long)]
    stream: bool,
    /// A mock directive put in the built-in body's message, e.g. `chunks=10`.
    #[arg(long)]
    mock: Option<String>,
    /// Stop after this many measured requests (the duration still caps the run).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Sent as `Authorization: Bearer …` (empty: no header).
    #[arg(long, default_value = "mock-key")]
    api_key: String,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Hold mode: open this many concurrent streams and keep them open.
    #[arg(long)]
    hold_streams: Option<usize>,
    /// Hold mode: file written (JSON counts) once every stream is open or failed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Hold mode: connection attempts in flight at once while opening.
    #[arg(long, default_value_t = 128)]
    open_parallel: usize,
}

/// Everything a worker needs to build and send its request.
struct Target {
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    body: Bytes,
}

impl Target {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .expect("valid request");
        if let Some(auth) = &self.auth {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        request
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<Value, String> {
    let target = Arc::new(target(&cli).await?);
    match cli.hold_streams {
        Some(n) => hold(&cli, target, n).await,
        None => load(&cli, target).await,
    }
}

async fn target(cli: &Cli) -> Result<Target, String> {
    if cli.url.scheme_str() != Some("http") {
        return Err(format!("{}: only http:// URLs are supported", cli.url));
    }
    let authority = cli
        .url
        .authority()
        .ok_or_else(|| format!("{}: no host", cli.url))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|e| format!("{}: {e}", authority.host()))?
        .next()
        .ok_or_else(|| format!("{}: no address", authority.host()))?;
    let path = cli
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<Uri>()
        .map_err(|e| e.to_string())?;
    let body = match &cli.body_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into(),
        None => built_in_body(cli),
    };
    let auth = (!cli.api_key.is_empty())
        .then(|| HeaderValue::try_from(format!("Bearer {}", cli.api_key)))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Target {
        addr,
        uri: path,
        host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
        auth,
        body,
    })
}

/// A small chat request, about the size of a short interactive prompt.
fn built_in_body(cli: &Cli) -> Bytes {
    let mut content = String::from("Say hello in one short sentence.");
    if let Some(directive) = &cli.mock {
        content.push_str(&format!(" [mock {directive}]"));
    }
    let mut body = json!({
        "model": cli.model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": content},
        ],
        "temperature": 0.6,
        "max_tokens": 64,
    });
    if cli.stream {
        body["stream"] = json!(true);
    }
    serde_json::to_vec(&body).expect("json").into()
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// What one worker saw during the measurement.
struct WorkerStats {
    requests: u64,
    errors: u64,
    reconnects: u64,
    bytes: u64,
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    last_done: Option<Instant>,
    first_error: Option<String>,
}

struct Phases {
    warm_end: Instant,
    end: Instant,
    max_requests: Option<u64>,
    issued: AtomicU64,
}

async fn load(cli: &Cli, target: Arc<Target>) -> Result<Value, String> {
    if cli.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(cli.warmup);
    let phases = Arc::new(Phases {
        warm_end,
        end: warm_end + Duration::from_secs_f64(cli.duration),
        max_requests: cli.max_requests,
        issued: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..cli.connections)
        .map(|_| tokio::spawn(load_worker(target.clone(), phases.clone())))
        .collect();
    let mut total = WorkerStats {
        requests: 0,
        errors: 0,
        reconnects: 0,
        bytes: 0,
        latency: histogram(),
        ttfb: histogram(),
        last_done: None,
        first_error: None,
    };
    for worker in workers {
        let stats = worker.await.map_err(|e| e.to_string())?;
        total.requests += stats.requests;
        total.errors += stats.errors;
        total.reconnects += stats.reconnects;
        total.bytes += stats.bytes;
        total.latency.add(&stats.latency).expect("same bounds");
        total.ttfb.add(&stats.ttfb).expect("same bounds");
        total.last_done = total.last_done.max(stats.last_done);
        total.first_error = total.first_error.or(stats.first_error);
    }
    // A run cut short by --max-requests is measured up to its last answer.
    let measured_end = match (cli.max_requests, total.last_done) {
        (Some(_), Some(last)) => last.min(phases.end),
        _ => phases.end,
    };
    let secs = measured_end
        .saturating_duration_since(phases.warm_end)
        .as_secs_f64()
        .max(1e-9);
    let (latency, ttfb) = (&total.latency, &total.ttfb);
    let pct = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            Value::Null
        } else {
            json!(ms(h.value_at_quantile(q)))
        }
    };
    Ok(json!({
        "mode": "load",
        "url": cli.url.to_string(),
        "connections": cli.connections,
        "stream": cli.stream,
        "body_bytes": target.body.len(),
        "seconds": (secs * 1000.0).round() / 1000.0,
        "requests": total.requests,
        "errors": total.errors,
        "reconnects": total.reconnects,
        "rps": (total.requests as f64 / secs * 10.0).round() / 10.0,
        "latency_p50_ms": pct(latency, 0.5),
        "latency_p90_ms": pct(latency, 0.9),
        "latency_p99_ms": pct(latency, 0.99),
        "latency_max_ms": if latency.is_empty() { Value::Null } else { json!(ms(latency.max())) },
        "latency_mean_ms": if latency.is_empty() { Value::Null } else { json!((latency.mean() / 10.0).round() / 100.0) },
        "ttfb_p50_ms": pct(ttfb, 0.5),
        "ttfb_p99_ms": pct(ttfb, 0.99),
        "bytes": total.bytes,
        "first_error": total.first_error,
    }))
}

async fn load_worker(target: Arc<Target>, phases: Arc<Phases>) -> WorkerStats {
    let mut stats = WorkerStats {
        requests: 0,
        errors: 0,
        reconnects: 0,
        bytes: 0,
        latency: histogram(),
        ttfb: histogram(),
        last_done: None,
        first_error: None,
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut connected_once = false;
    while Instant::now() < phases.end {
        let mut s = match sender.take() {
            Some(s) => s,
            None => match connect(target.addr).await {
                Ok(s) => {
                    if connected_once {
                        stats.reconnects += 1;
                    }
                    connected_once = true;
                    s
                }
                Err(err) => {
                    if Instant::now() >= phases.warm_end {
                        stats.requests += 1;
                        stats.errors += 1;
                        stats.first_error.get_or_insert(err);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            // The server closed the idle connection: open another.
            continue;
        }
        let started = Instant::now();
        let measuring = started >= phases.warm_end;
        if measuring
            && let Some(max) = phases.max_requests
            && phases.issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let result = exchange(&mut s, target.request(), started).await;
        let done = Instant::now();
        let counted = measuring && done <= phases.end;
        match result {
            Ok(exchange) => {
                sender = Some(s);
                if counted {
                    stats.requests += 1;
                    stats.bytes += exchange.bytes;
                    stats.last_done = Some(done);
                    if exchange.status.is_success() {
                        stats.latency.saturating_record(micros(done - started));
                        if let Some(ttfb) = exchange.ttfb {
                            stats.ttfb.saturating_record(micros(ttfb));
                        }
                    } else {
                        stats.errors += 1;
                        stats
                            .first_error
                            .get_or_insert_with(|| format!("HTTP {}", exchange.status));
                    }
                }
            }
            Err(err) => {
                if counted {
                    stats.requests += 1;
                    stats.errors += 1;
                    stats.last_done = Some(done);
                    stats.first_error.get_or_insert(err);
                }
            }
        }
    }
    stats
}

struct Exchange {
    status: http::StatusCode,
    ttfb: Option<Duration>,
    bytes: u64,
}

/// One request, its whole response body read; time to the first body byte.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    started: Instant,
) -> Result<Exchange, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut ttfb = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body: {e}"))?;
        if let Some(data) = frame.data_ref()
            && !data.is_empty()
        {
            ttfb.get_or_insert_with(|| started.elapsed());
            bytes += data.len() as u64;
        }
    }
    Ok(Exchange {
        status,
        ttfb,
        bytes,
    })
}

/// Hold mode counters, shared by the stream tasks.
#[derive(Default)]
struct HoldState {
    open: AtomicUsize,
    failed: AtomicUsize,
    ended_early: AtomicUsize,
    bytes: AtomicU64,
    settled: Notify,
    first_error: Mutex<Option<String>>,
    ttfb: Mutex<Option<Histogram<u64>>>,
}

impl HoldState {
    fn settled_count(&self) -> usize {
        self.open.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }

    fn fail(&self, err: String) {
        self.first_error.lock().expect("lock").get_or_insert(err);
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.settled.notify_one();
    }
}

async fn hold(cli: &Cli, target: Arc<Target>, n: usize) -> Result<Value, String> {
    let state = Arc::new(HoldState {
        ttfb: Mutex::new(Some(histogram())),
        ..HoldState::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(cli.open_parallel.max(1)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(hold_one(
                target.clone(),
                state.clone(),
                permits.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let mut stop_signal = std::pin::pin!(stop_signal());
    let mut interrupted = false;
    loop {
        let notified = state.settled.notified();
        if state.settled_count() >= n {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = &mut stop_signal => { interrupted = true; break; }
        }
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    let counts = json!({
        "open": state.open.load(Ordering::SeqCst),
        "failed": state.failed.load(Ordering::SeqCst),
        "ramp_secs": (ramp_secs * 1000.0).round() / 1000.0,
    });
    eprintln!("loadgen: holding {counts}");
    if let Some(path) = &cli.ready_file {
        std::fs::write(path, format!("{counts}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !interrupted {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(cli.duration)) => {}
            _ = &mut stop_signal => {}
        }
    }
    let still_open = state.open.load(Ordering::SeqCst) - state.ended_early.load(Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let ttfb = state.ttfb.lock().expect("lock").take().expect("histogram");
    let pct = |q: f64| {
        if ttfb.is_empty() {
            Value::Null
        } else {
            json!(ms(ttfb.value_at_quantile(q)))
        }
    };
    Ok(json!({
        "mode": "hold",
        "url": cli.url.to_string(),
        "streams": n,
        "open": state.open.load(Ordering::SeqCst),
        "failed": state.failed.load(Ordering::SeqCst),
        "ended_early": state.ended_early.load(Ordering::SeqCst),
        "open_at_stop": still_open,
        "ramp_secs": (ramp_secs * 1000.0).round() / 1000.0,
        "ttfb_p50_ms": pct(0.5),
        "ttfb_p99_ms": pct(0.99),
        "bytes": state.bytes.load(Ordering::SeqCst),
        "first_error": state.first_error.lock().expect("lock").clone(),
    }))
}

/// Opens one stream, waits for its first body byte, then reads it until stop.
async fn hold_one(
    target: Arc<Target>,
    state: Arc<HoldState>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = permits.acquire_owned().await.expect("semaphore open");
    let started = Instant::now();
    let opened = tokio::time::timeout(Duration::from_secs(60), open_stream(&target)).await;
    drop(permit);
    let (_sender, mut body, first) = match opened {
        Err(_) => return state.fail("timed out opening the stream".into()),
        Ok(Err(err)) => return state.fail(err),
        Ok(Ok(open)) => open,
    };
    state
        .ttfb
        .lock()
        .expect("lock")
        .as_mut()
        .expect("histogram")
        .saturating_record(micros(started.elapsed()));
    state.bytes.fetch_add(first, Ordering::Relaxed);
    state.open.fetch_add(1, Ordering::SeqCst);
    state.settled.notify_one();
    let read_rest = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                state.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => {}
        _ = read_rest => { state.ended_early.fetch_add(1, Ordering::SeqCst); }
    }
}

type OpenStream = (SendRequest<Full<Bytes>>, Incoming, u64);

async fn open_stream(target: &Target) -> Result<OpenStream, String> {
    let mut sender = connect(target.addr).await?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let response = sender
        .send_request(target.request())
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = response.into_body();
    loop {
        match body.frame().await {
            None => return Err("stream ended before its first byte".into()),
            Some(Err(e)) => return Err(format!("response body: {e}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    let first = data.len() as u64;
                    return Ok((sender, body, first));
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
