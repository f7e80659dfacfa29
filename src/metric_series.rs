//! The labelled series a request touches, resolved once per route and
//! provider (and per client key for token counts) and then kept. Every
//! `with_label_values` hashes its label set with SipHash under a lock, and
//! a request would need seven to eleven of them; this makes two lookups of
//! its own. Only the success path is cached: refusals and errors, with
//! their many status and error-type labels, still resolve their series.

use crate::metrics::Metrics;
use foldhash::fast::RandomState;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Series per route, then per provider.
type ByRoute = HashMap<Arc<str>, HashMap<Arc<str>, Arc<TargetSeries>, RandomState>, RandomState>;

/// Every (route, provider) pair's series, created on first use. Label values
/// are configured names, so the map stays as small as the configuration.
#[derive(Default)]
pub struct SeriesCache {
    by_route: RwLock<ByRoute>,
}

impl SeriesCache {
    /// The series of requests to `provider` through `route` (see
    /// [`Metrics::series`]).
    pub(crate) fn get(&self, metrics: &Metrics, route: &str, provider: &str) -> Arc<TargetSeries> {
        let cached = self
            .by_route
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(route)
            .and_then(|providers| providers.get(provider))
            .cloned();
        cached.unwrap_or_else(|| self.create(metrics, route, provider))
    }

    #[cold]
    fn create(&self, metrics: &Metrics, route: &str, provider: &str) -> Arc<TargetSeries> {
        let mut by_route = self
            .by_route
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_route
            .entry(route.into())
            .or_default()
            .entry(provider.into())
            .or_insert_with(|| Arc::new(TargetSeries::new(metrics, route, provider)))
            .clone()
    }
}

/// One (route, provider) pair's series on the success path.
pub struct TargetSeries {
    /// `requests_total` with status 200 and no error.
    pub requests_ok: IntCounter,
    /// `request_duration_seconds`, non-stream then stream.
    pub duration: [Histogram; 2],
    pub upstream_head: Histogram,
    pub time_to_first_token: Histogram,
    pub stream_duration: Histogram,
    pub stream_chunks: IntCounter,
    pub chunk_gap: Histogram,
    /// `upstream_attempts_total` with outcome `success`.
    pub attempt_success: IntCounter,
    tokens: TokenSeries,
}

impl std::fmt::Debug for TargetSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSeries")
            .field("route", &self.tokens.route)
            .field("provider", &self.tokens.provider)
            .finish_non_exhaustive()
    }
}

impl TargetSeries {
    fn new(metrics: &Metrics, route: &str, provider: &str) -> Self {
        let both = [route, provider];
        TargetSeries {
            requests_ok: metrics.requests.with_label_values(&[
                route,
                provider,
                "200",
                crate::metrics::NONE,
            ]),
            duration: ["false", "true"].map(|stream| {
                metrics
                    .request_duration
                    .with_label_values(&[route, provider, stream])
            }),
            upstream_head: metrics.upstream_head.with_label_values(&[provider]),
            time_to_first_token: metrics.time_to_first_token.with_label_values(&both),
            stream_duration: metrics.stream_duration.with_label_values(&both),
            stream_chunks: metrics.stream_chunks.with_label_values(&both),
            chunk_gap: metrics.chunk_gap.with_label_values(&[provider]),
            attempt_success: metrics.attempts.with_label_values(&[provider, "success"]),
            tokens: TokenSeries {
                vec: metrics.tokens.clone(),
                route: route.into(),
                provider: provider.into(),
                by_key: RwLock::default(),
            },
        }
    }

    /// `tokens_total` for `key`: prompt, completion and cached.
    pub fn tokens(&self, key: &str) -> Arc<[IntCounter; 3]> {
        self.tokens.get(key)
    }
}

/// One pair's token counters, per client key name.
struct TokenSeries {
    vec: IntCounterVec,
    route: Arc<str>,
    provider: Arc<str>,
    by_key: RwLock<HashMap<Arc<str>, Arc<[IntCounter; 3]>, RandomState>>,
}

impl TokenSeries {
    fn get(&self, key: &str) -> Arc<[IntCounter; 3]> {
        let cached = self
            .by_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .cloned();
        cached.unwrap_or_else(|| self.create(key))
    }

    #[cold]
    fn create(&self, key: &str) -> Arc<[IntCounter; 3]> {
        let counters = ["prompt", "completion", "cached"].map(|kind| {
            self.vec
                .with_label_values(&[&*self.route, &*self.provider, key, kind])
        });
        self.by_key
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key.into())
            .or_insert_with(|| Arc::new(counters))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_series_are_the_registry_series() {
        let metrics = Metrics::new();
        let series = metrics.series("kimi", "moonshot");
        assert!(Arc::ptr_eq(&series, &metrics.series("kimi", "moonshot")));
        series.requests_ok.inc();
        series.duration[1].observe(0.5);
        series.tokens("team-a")[2].inc_by(7);
        let other = metrics.series("kimi", "aimlapi");
        other.attempt_success.inc();
        let text = String::from_utf8(metrics.render()).unwrap();
        for line in [
            r#"kimi_gateway_requests_total{error_type="none",provider="moonshot",route="kimi",status="200"} 1"#,
            r#"kimi_gateway_request_duration_seconds_count{provider="moonshot",route="kimi",stream="true"} 1"#,
            r#"kimi_gateway_tokens_total{key="team-a",kind="cached",provider="moonshot",route="kimi"} 7"#,
            r#"kimi_gateway_upstream_attempts_total{outcome="success",provider="aimlapi"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Resolving a series makes it visible at zero, as with_label_values does.
        assert!(text.contains(
            r#"kimi_gateway_upstream_attempts_total{outcome="success",provider="moonshot"} 0"#
        ));
    }
}
