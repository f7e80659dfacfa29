//! Hold mode (`--hold-streams`): open many slow streams and keep them open.

use crate::Cli;
use crate::client::{Sender, connect};
use crate::stats::{histogram, micros, percentile};
use crate::target::Target;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

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

pub(crate) async fn hold(cli: &Cli, target: Arc<Target>, n: usize) -> Result<Value, String> {
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
    Ok(json!({
        "mode": "hold",
        "url": cli.url().to_string(),
        "streams": n,
        "open": state.open.load(Ordering::SeqCst),
        "failed": state.failed.load(Ordering::SeqCst),
        "ended_early": state.ended_early.load(Ordering::SeqCst),
        "open_at_stop": still_open,
        "ramp_secs": (ramp_secs * 1000.0).round() / 1000.0,
        "ttfb_p50_ms": percentile(&ttfb, 0.5),
        "ttfb_p99_ms": percentile(&ttfb, 0.99),
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

type OpenStream = (Sender, Incoming, u64);

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
