//! The rate-limit store's own metrics: whether Redis is reachable, its
//! outages, how long each kind of call takes and how many fail, and the
//! requests decided without it. Registered with the gateway's metrics and
//! handed to each Redis backend a configuration builds.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::time::Duration;

/// From a tenth of a millisecond (a local Redis) to the largest timeout.
const CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The kinds of call the backend makes.
#[derive(Debug, Clone, Copy)]
pub enum StoreCall {
    /// A request's (or an attempt's) admission script.
    Admit,
    /// The settlement script at a response's end.
    Settle,
    /// A long response's lease refresh.
    Refresh,
    /// The health probe and keep-alive (an access check: see
    /// `hold::check_access`).
    Ping,
    /// A new connection (at start, after a reload, while Redis is down).
    Connect,
}

impl StoreCall {
    pub const ALL: [StoreCall; 5] = [
        StoreCall::Admit,
        StoreCall::Settle,
        StoreCall::Refresh,
        StoreCall::Ping,
        StoreCall::Connect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreCall::Admit => "admit",
            StoreCall::Settle => "settle",
            StoreCall::Refresh => "refresh",
            StoreCall::Ping => "ping",
            StoreCall::Connect => "connect",
        }
    }
}

#[derive(Clone)]
pub struct StoreMetrics {
    /// 1 while Redis answers, 0 while it does not; set at scrape time, and
    /// only when the configuration counts limits in Redis.
    pub up: IntGaugeVec,
    outages: IntCounter,
    calls: HistogramVec,
    errors: IntCounterVec,
    unavailable: IntCounterVec,
}

impl StoreMetrics {
    /// The metrics, registered with `registry` under `prefix`.
    pub fn register(registry: &prometheus::Registry, prefix: &str) -> StoreMetrics {
        let name = |short: &str| format!("{prefix}rate_limit_store_{short}");
        let metrics = StoreMetrics {
            up: IntGaugeVec::new(
                Opts::new(
                    name("up"),
                    "Whether the rate-limit store (Redis) answers: 1 yes, 0 no.",
                ),
                &["backend"],
            )
            .expect("valid"),
            outages: IntCounter::new(
                name("outages_total"),
                "Times the rate-limit store became unreachable (each is logged once).",
            )
            .expect("valid"),
            calls: HistogramVec::new(
                HistogramOpts::new(
                    name("call_seconds"),
                    "Rate-limit store calls by kind (admit, settle, refresh, ping, connect), failed ones included.",
                )
                .buckets(CALL_BUCKETS.to_vec()),
                &["call"],
            )
            .expect("valid"),
            errors: IntCounterVec::new(
                Opts::new(
                    name("errors_total"),
                    "Rate-limit store calls that failed or timed out, by kind.",
                ),
                &["call"],
            )
            .expect("valid"),
            unavailable: IntCounterVec::new(
                Opts::new(
                    name("unavailable_total"),
                    "Admissions decided without the store while it was unreachable: \
                     by local limits (on_redis_error open) or refused with 503 (closed).",
                ),
                &["effect"],
            )
            .expect("valid"),
        };
        for collector in [
            Box::new(metrics.up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.outages.clone()),
            Box::new(metrics.calls.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.unavailable.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        for call in StoreCall::ALL {
            metrics.errors.with_label_values(&[call.as_str()]);
        }
        for effect in ["local_limits", "refused"] {
            metrics.unavailable.with_label_values(&[effect]);
        }
        metrics
    }

    pub fn observe(&self, call: StoreCall, took: Duration, ok: bool) {
        self.calls
            .with_label_values(&[call.as_str()])
            .observe(took.as_secs_f64());
        if !ok {
            self.errors.with_label_values(&[call.as_str()]).inc();
        }
    }

    pub fn outage(&self) {
        self.outages.inc();
    }

    /// Outages since the gateway started (each logged once), over every
    /// configuration it ran: what `/readyz` reports too.
    pub fn outages(&self) -> u64 {
        self.outages.get()
    }

    /// An admission decided without the store: by local limits or refused.
    pub fn unavailable(&self, refused: bool) {
        let effect = if refused { "refused" } else { "local_limits" };
        self.unavailable.with_label_values(&[effect]).inc();
    }
}
