//! Prometheus metrics: one registry per gateway, typed handles, one prefix.
//! Label values come only from configured names (routes, providers, client
//! key names) and fixed sets; a model that matches no route is `unknown`.

use crate::limits::ScopeKind;
use crate::metric_series::{SeriesCache, TargetSeries};
use crate::proxy::failover::{AttemptOutcome, BREAKER_OPEN};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

/// Route label for a request whose model matched no route.
pub const UNKNOWN_ROUTE: &str = "unknown";
/// Route or provider label when there was none (e.g. a malformed body).
pub const NONE: &str = "none";

/// Latency buckets from 1 ms to 10 min (LLM requests are long). 20 s is
/// a boundary because the shipped time-to-first-token alert's threshold
/// is: `histogram_quantile` interpolates inside a bucket, and between 10
/// and 30 s a few first tokens at 11 s read as a p99 near 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
];
/// The gateway's own overhead: microseconds to milliseconds, and up to a
/// second for what it waits on itself (Redis-backed limits, a loaded host).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_head: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub stream_duration: HistogramVec,
    pub stream_chunks: IntCounterVec,
    pub chunk_gap: HistogramVec,
    pub tokens: IntCounterVec,
    pub attempts: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub in_flight: IntGauge,
    pub open_streams: IntGauge,
    /// Client connections open on the main listener, and their cap.
    pub client_connections: IntGauge,
    pub client_connections_max: IntGauge,
    /// Request body bytes held, and their cap; brought up to date at
    /// scrape time.
    pub request_body_bytes: IntGauge,
    pub request_body_bytes_max: IntGauge,
    pub answer_bytes: IntGauge,
    pub answer_bytes_max: IntGauge,
    pub answer_waits: IntCounter,
    pub overhead: HistogramVec,
    /// `overhead` for the `before_upstream` phase, resolved once.
    pub overhead_before_upstream: Histogram,
    /// `overhead` for the `after_head` phase, resolved once.
    pub overhead_after_head: Histogram,
    pub reloads: IntCounterVec,
    /// 1 unless the last reload was rejected (the file on disk is not the
    /// configuration in use).
    pub last_reload_successful: IntGauge,
    pub model_refreshes: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    /// Log lines the output did not take (see `log_writer`); brought up
    /// to date at scrape time.
    pub log_lines_dropped: IntCounter,
    /// The rate-limit store's (Redis's) health and calls.
    pub store: crate::limits::StoreMetrics,
    series: SeriesCache,
    /// Held by a scrape from resetting the circuit gauges to rendering, so
    /// that a scrape never renders another one's half-set gauges.
    pub scrape: std::sync::Mutex<()>,
    /// `server.metrics_tokens_by_key` of the configuration in force.
    pub tokens_by_key: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn name(short: &str) -> String {
    format!("kimi_gateway_{short}")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = registry.clone();
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric.expect("valid metric definition");
                reg.register(Box::new(metric.clone()))
                    .expect("metric registered once");
                metric
            }};
        }
        let counter = |short: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name(short), help), labels)
        };
        let histogram = |short: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name(short), help).buckets(buckets.to_vec()),
                labels,
            )
        };
        let overhead = register!(histogram(
            "overhead_seconds",
            "Time the gateway itself spent: before the upstream request was sent, and after the response head arrived.",
            &["phase"],
            OVERHEAD_BUCKETS
        ));
        let metrics = Metrics {
            requests: register!(counter(
                "requests_total",
                "Requests answered, by route, provider, HTTP status and error type.",
                &["route", "provider", "status", "error_type"]
            )),
            request_duration: register!(histogram(
                "request_duration_seconds",
                "Time from the request to the end of its answer: a stream's end, a plain answer ready to be written.",
                &["route", "provider", "stream"],
                LATENCY_BUCKETS
            )),
            upstream_head: register!(histogram(
                "upstream_head_seconds",
                "Time from sending an upstream request to its response head (or to its timeout).",
                &["provider"],
                LATENCY_BUCKETS
            )),
            time_to_first_token: register!(histogram(
                "time_to_first_token_seconds",
                "Streams: time from the request to its first event.",
                &["route", "provider"],
                LATENCY_BUCKETS
            )),
            stream_duration: register!(histogram(
                "stream_duration_seconds",
                "Streams: time from the first event to the end.",
                &["route", "provider"],
                LATENCY_BUCKETS
            )),
            stream_chunks: register!(counter(
                "stream_chunks_total",
                "Streams: provider reads of whole events relayed to clients.",
                &["route", "provider"]
            )),
            chunk_gap: register!(histogram(
                "stream_chunk_gap_seconds",
                "Streams: silence between two upstream events.",
                &["provider"],
                LATENCY_BUCKETS
            )),
            tokens: register!(counter(
                "tokens_total",
                "Tokens reported by providers' usage, by kind (prompt, completion, cached).",
                &["route", "provider", "key", "kind"]
            )),
            attempts: register!(counter(
                "upstream_attempts_total",
                "Upstream attempts by outcome (success, retry, failover, breaker_open, key_rejected, client_closed, error).",
                &["provider", "outcome"]
            )),
            rate_limited: register!(counter(
                "rate_limited_total",
                "Refusals by a rate limit, by scope: requests (key, key_model, global), attempts (provider).",
                &["scope"]
            )),
            in_flight: register!(IntGauge::new(
                name("in_flight_requests"),
                "Requests being served (streams until they end)."
            )),
            open_streams: register!(IntGauge::new(
                name("open_streams"),
                "Streams being relayed."
            )),
            client_connections: register!(IntGauge::new(
                name("client_connections"),
                "Client connections open on the main listener."
            )),
            client_connections_max: register!(IntGauge::new(
                name("client_connections_max"),
                "Most client connections open at once on the main listener (server.max_connections)."
            )),
            request_body_bytes: register!(IntGauge::new(
                name("request_body_bytes"),
                "Request bytes held by requests being read or handled (bodies over 16 KiB, heads still arriving past 16 KiB)."
            )),
            request_body_bytes_max: register!(IntGauge::new(
                name("request_body_bytes_max"),
                "Most request body bytes held at once (server.max_body_bytes_total)."
            )),
            answer_bytes: register!(IntGauge::new(
                name("answer_bytes"),
                "Plain answer bytes held by answers being read or written (answers over 16 KiB)."
            )),
            answer_bytes_max: register!(IntGauge::new(
                name("answer_bytes_max"),
                "Most plain answer bytes held at once (server.max_answer_bytes_total)."
            )),
            answer_waits: register!(IntCounter::new(
                name("answer_waits_total"),
                "Plain answers that waited for room under server.max_answer_bytes_total."
            )),
            overhead_before_upstream: overhead.with_label_values(&["before_upstream"]),
            overhead_after_head: overhead.with_label_values(&["after_head"]),
            overhead,
            reloads: register!(counter(
                "config_reloads_total",
                "Configuration reloads by result (success, failure).",
                &["result"]
            )),
            last_reload_successful: register!(IntGauge::new(
                name("config_last_reload_successful"),
                "1 unless the last configuration reload was rejected (the previous configuration is still in use)."
            )),
            model_refreshes: register!(counter(
                "model_refreshes_total",
                "Asks of a provider's /models for its catalogue, by provider and result (success, failure).",
                &["provider", "result"]
            )),
            breaker_state: register!(IntGaugeVec::new(
                Opts::new(
                    name("breaker_state"),
                    "Circuit state per target: 0 closed, 1 half-open, 2 open."
                ),
                &["provider", "target"]
            )),
            log_lines_dropped: register!(IntCounter::new(
                name("log_lines_dropped_total"),
                "Log lines dropped because the output (stdout) did not take them (8 MiB were waiting) or failed (a full disk, a closed pipe)."
            )),
            store: crate::limits::StoreMetrics::register(&registry, "kimi_gateway_"),
            registry,
            series: SeriesCache::default(),
            scrape: std::sync::Mutex::new(()),
            tokens_by_key: std::sync::atomic::AtomicBool::new(true),
        };
        let build = register!(IntGaugeVec::new(
            Opts::new(name("build_info"), "Build information; always 1."),
            &["version"]
        ));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["success", "failure"] {
            metrics.reloads.with_label_values(&[result]);
        }
        metrics.last_reload_successful.set(1);
        for scope in [
            ScopeKind::Key,
            ScopeKind::KeyModel,
            ScopeKind::Global,
            ScopeKind::Provider,
        ] {
            metrics.rate_limited.with_label_values(&[scope.as_str()]);
        }
        metrics
    }

    /// Makes every provider's attempt series at 0, so that the first
    /// retry or error is an increase Prometheus sees (`rate()` and
    /// `increase()` take a series' first sample as its start, whatever its
    /// value). Series of providers that left the configuration stay.
    pub fn prime_providers<'a>(&self, providers: impl IntoIterator<Item = &'a str>) {
        for provider in providers {
            for outcome in AttemptOutcome::ALL {
                self.attempts
                    .with_label_values(&[provider, outcome.as_str()]);
            }
            self.attempts.with_label_values(&[provider, BREAKER_OPEN]);
        }
    }

    /// The success-path series of requests to `provider` through `route`,
    /// resolved on first use and then kept.
    pub fn series(&self, route: &str, provider: &str) -> Arc<TargetSeries> {
        self.series.get(self, route, provider)
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}
