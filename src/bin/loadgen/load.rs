//! Load mode: closed-loop workers, one keep-alive connection each.

use crate::Cli;
use crate::client::{Failure, exchange};
use crate::stats::{WorkerStats, load_report, micros};
use crate::target::Target;
use kimi_gateway::client::Client;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The measurement window, shared by the workers.
struct Phases {
    warm_end: Instant,
    end: Instant,
    max_requests: Option<u64>,
    issued: AtomicU64,
}

pub(crate) async fn load(cli: &Cli, target: Arc<Target>) -> Result<Value, String> {
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
    let mut total = WorkerStats::new();
    for worker in workers {
        let stats = worker.await.map_err(|e| e.to_string())?;
        total.merge(stats);
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
    Ok(load_report(cli, target.body.len(), secs, &total))
}

async fn load_worker(target: Arc<Target>, phases: Arc<Phases>) -> WorkerStats {
    let mut stats = WorkerStats::new();
    // A client of its own: one keep-alive connection, opened again if the
    // target closes it.
    let client = Client::new(target.origin.clone(), Duration::from_secs(5));
    let mut connected_once = false;
    while Instant::now() < phases.end {
        if connected_once && client.idle_connections() == 0 {
            stats.reconnects += 1;
        }
        let started = Instant::now();
        let measuring = started >= phases.warm_end;
        if measuring
            && let Some(max) = phases.max_requests
            && phases.issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let result = exchange(&client, &target, started).await;
        let done = Instant::now();
        let counted = measuring && done <= phases.end;
        match result {
            Ok(exchange) => {
                connected_once = true;
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
            Err(failure) => {
                let (Failure::Connect(err) | Failure::Exchange(err)) = &failure;
                if counted {
                    stats.requests += 1;
                    stats.errors += 1;
                    stats.last_done = Some(done);
                    stats.first_error.get_or_insert_with(|| err.clone());
                }
                if let Failure::Connect(_) = failure {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    stats
}
