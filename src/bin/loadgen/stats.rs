//! Measurement: latency histograms, per-worker counters and the load report.

use crate::Cli;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

pub(crate) fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// The `q` quantile in milliseconds, or null for an empty histogram.
pub(crate) fn percentile(h: &Histogram<u64>, q: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(ms(h.value_at_quantile(q)))
    }
}

/// What one worker saw during the measurement.
pub(crate) struct WorkerStats {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) reconnects: u64,
    pub(crate) bytes: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) ttfb: Histogram<u64>,
    pub(crate) last_done: Option<Instant>,
    pub(crate) first_error: Option<String>,
}

impl WorkerStats {
    pub(crate) fn new() -> Self {
        WorkerStats {
            requests: 0,
            errors: 0,
            reconnects: 0,
            bytes: 0,
            latency: histogram(),
            ttfb: histogram(),
            last_done: None,
            first_error: None,
        }
    }

    /// Adds another worker's counts to these.
    pub(crate) fn merge(&mut self, stats: WorkerStats) {
        self.requests += stats.requests;
        self.errors += stats.errors;
        self.reconnects += stats.reconnects;
        self.bytes += stats.bytes;
        self.latency.add(&stats.latency).expect("same bounds");
        self.ttfb.add(&stats.ttfb).expect("same bounds");
        self.last_done = self.last_done.max(stats.last_done);
        self.first_error = self.first_error.take().or(stats.first_error);
    }
}

/// The JSON object printed at the end of a load run measured over `secs`.
pub(crate) fn load_report(cli: &Cli, body_bytes: usize, secs: f64, total: &WorkerStats) -> Value {
    let (latency, ttfb) = (&total.latency, &total.ttfb);
    json!({
        "mode": "load",
        "url": cli.url().to_string(),
        "connections": cli.connections,
        "stream": cli.stream,
        "body_bytes": body_bytes,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "requests": total.requests,
        "errors": total.errors,
        "reconnects": total.reconnects,
        "rps": (total.requests as f64 / secs * 10.0).round() / 10.0,
        "latency_p50_ms": percentile(latency, 0.5),
        "latency_p90_ms": percentile(latency, 0.9),
        "latency_p99_ms": percentile(latency, 0.99),
        "latency_max_ms": if latency.is_empty() { Value::Null } else { json!(ms(latency.max())) },
        "latency_mean_ms": if latency.is_empty() { Value::Null } else { json!((latency.mean() / 10.0).round() / 100.0) },
        "ttfb_p50_ms": percentile(ttfb, 0.5),
        "ttfb_p99_ms": percentile(ttfb, 0.99),
        "bytes": total.bytes,
        "first_error": total.first_error,
        "cpu_seconds": process_cpu_seconds(),
    })
}

/// User and system CPU time this process has used so far: what driving
/// the load cost the load generator (its share of the core it shares
/// with the mock provider).
fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is
    // given, which points at one; it is read only when the call succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ((seconds(usage.ru_utime) + seconds(usage.ru_stime)) * 1e6).round() / 1e6
}
